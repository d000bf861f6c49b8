//! Credentials for secure peering: the appliance's certificate and private key, the CA
//! stores partners are verified against, the verification setting and the cipher
//! specification. Private keys only ever live in a [`SecretStore`].

mod cipher;
mod import;
mod legacy_pem;
mod secret;
mod trust;
mod verify;

pub use cipher::CipherSpec;
pub use import::{
    CertificateInfo, ImportedIdentity, KeyFormat, PrivateKey, StoredIdentity,
    certificates_from_pem, import_pem, import_pkcs12, private_key_from_pem,
};
pub use secret::{MemorySecretStore, Secret, SecretStore, SecretStoreError};
pub use trust::TrustStores;
pub(crate) use verify::quic_signature_methods;
pub use verify::{PartnerVerifier, Verification};

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

/// Why a credential could not be imported or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The text is not valid PEM.
    #[error("not valid PEM: {0}")]
    BadPem(String),
    /// No `CERTIFICATE` block was found.
    #[error("no certificate found: supply the certificate as PEM (`-----BEGIN CERTIFICATE-----`)")]
    NoCertificate,
    /// A certificate could not be parsed.
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    /// No private key block was found.
    #[error(
        "no private key found: supply a PEM key (PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY or \
         ENCRYPTED PRIVATE KEY)"
    )]
    NoPrivateKey,
    /// The key is encrypted and no password was given.
    #[error("the private key is encrypted: supply its password")]
    PasswordNeeded,
    /// The password does not decrypt the key or file.
    #[error("wrong password: the key or PKCS#12 file could not be decrypted with it")]
    WrongPassword,
    /// The key is encrypted with something this appliance cannot decrypt.
    #[error("unsupported key encryption: {0}")]
    UnsupportedEncryption(String),
    /// The key type is not usable for TLS.
    #[error("unsupported private key (use RSA 2048+ or ECDSA P-256/P-384, or Ed25519): {0}")]
    UnsupportedKey(String),
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate: check you paired the right files")]
    KeyMismatch,
    /// The PKCS#12 file could not be read.
    #[error("PKCS#12 file cannot be read: {0}")]
    Pkcs12(String),
    /// A key read back from the secret store is damaged.
    #[error("the stored private key is damaged: import the credentials again")]
    StoredKeyCorrupt,
    /// The named CA store does not exist.
    #[error("no CA store named {0:?}: import CA certificates into it first")]
    NoTrustStore(String),
    /// Verification needs at least one trusted CA certificate.
    #[error(
        "the CA store is empty: import the CA certificate that issued the partners' certificates"
    )]
    EmptyTrustStore,
    /// Unknown verification setting.
    #[error("unknown verification setting {0:?}: use full, chain-only or dangerous-none")]
    UnknownVerification(String),
    /// Cipher names that cannot be honoured.
    #[error("cannot honour cipher(s) {names:?}: the signaling tunnel supports {supported}")]
    UnsupportedCiphers {
        /// The entries that cannot be used.
        names: Vec<String>,
        /// What can be used instead.
        supported: String,
    },
    /// The secret store refused.
    #[error(transparent)]
    SecretStore(#[from] SecretStoreError),
}

/// Everything secure peering needs to authenticate this appliance and its partners.
#[derive(Clone, Debug)]
pub struct PeeringCredentials {
    /// This appliance's certificate chain; its key is in the secret store.
    pub identity: StoredIdentity,
    /// CA certificates partners' certificates must chain to (or pinned self-signed ones).
    pub trust: Vec<CertificateDer<'static>>,
    /// How strictly partners are checked.
    pub verification: Verification,
    /// Which TLS 1.3 suites may be used.
    pub ciphers: CipherSpec,
}

impl PeeringCredentials {
    /// Loads the private key; fails with `SecretStore(Sealed)` while the keystore is sealed.
    pub fn certified_key(
        &self,
        store: &dyn SecretStore,
    ) -> Result<Arc<CertifiedKey>, CredentialError> {
        self.identity.certified_key(store)
    }
}
