//! Import of operator-provided certificate/key pairs: PEM (plain, PKCS#8-encrypted or
//! legacy OpenSSL-encrypted keys) and PKCS#12.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use rustls::sign::CertifiedKey;

use zeroize::Zeroize;

use super::CredentialError;
use super::legacy_pem;
use super::secret::{Secret, SecretStore};

/// How a private key's DER bytes are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// PKCS#8 `PrivateKeyInfo` (`BEGIN PRIVATE KEY`).
    Pkcs8,
    /// PKCS#1 `RSAPrivateKey` (`BEGIN RSA PRIVATE KEY`).
    Pkcs1,
    /// SEC1 `ECPrivateKey` (`BEGIN EC PRIVATE KEY`).
    Sec1,
}

impl KeyFormat {
    fn tag(self) -> u8 {
        match self {
            Self::Pkcs8 => 1,
            Self::Pkcs1 => 2,
            Self::Sec1 => 3,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Pkcs8),
            2 => Some(Self::Pkcs1),
            3 => Some(Self::Sec1),
            _ => None,
        }
    }
}

/// A private key in memory: format plus DER bytes, wiped on drop.
#[derive(Clone)]
pub struct PrivateKey {
    format: KeyFormat,
    der: Secret,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({:?}, redacted)", self.format)
    }
}

impl PrivateKey {
    /// Wraps DER bytes of a known format.
    pub fn new(format: KeyFormat, der: Secret) -> Self {
        Self { format, der }
    }

    /// The key's framing.
    pub fn format(&self) -> KeyFormat {
        self.format
    }

    /// Serializes for a `SecretStore`: one format byte, then the DER.
    pub fn to_secret(&self) -> Secret {
        let mut bytes = Vec::with_capacity(self.der.len() + 1);
        bytes.push(self.format.tag());
        bytes.extend_from_slice(self.der.expose());
        Secret::new(bytes)
    }

    /// Parses what [`to_secret`](Self::to_secret) wrote.
    pub fn from_secret(secret: &Secret) -> Result<Self, CredentialError> {
        let bytes = secret.expose();
        let format = bytes
            .first()
            .and_then(|t| KeyFormat::from_tag(*t))
            .ok_or(CredentialError::StoredKeyCorrupt)?;
        Ok(Self {
            format,
            der: Secret::from_slice(&bytes[1..]),
        })
    }

    /// Runs `f` with the key as rustls wants it; the temporary copy is wiped after.
    pub fn with_der<R>(&self, f: impl FnOnce(&PrivateKeyDer<'static>) -> R) -> R {
        let mut der = self.to_der();
        let result = f(&der);
        der.zeroize();
        result
    }

    /// The key as rustls wants it. The copy does not wipe itself: prefer
    /// [`with_der`](Self::with_der), or call `zeroize()` on it after use.
    pub fn to_der(&self) -> PrivateKeyDer<'static> {
        let der = self.der.expose().to_vec();
        match self.format {
            KeyFormat::Pkcs8 => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
            KeyFormat::Pkcs1 => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
            KeyFormat::Sec1 => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
        }
    }
}

/// What an operator sees about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject distinguished name, OpenSSL style.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// DNS names and IP addresses from the subject alternative names.
    pub subject_alt_names: Vec<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// SHA-256 of the DER, hex.
    pub fingerprint_sha256: String,
}

impl CertificateInfo {
    /// Parses the interesting fields of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CredentialError> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| CredentialError::BadCertificate(e.to_string()))?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                    GeneralName::IPAddress(ip) => sans.push(ip_to_string(ip)),
                    _ => {}
                }
            }
        }
        let to_time = |t: ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH
            }
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            subject_alt_names: sans,
            not_before: to_time(cert.validity().not_before),
            not_after: to_time(cert.validity().not_after),
            fingerprint_sha256: hex::encode(digest.as_ref()),
        })
    }

    /// True when `now` lies inside the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

fn ip_to_string(raw: &[u8]) -> String {
    match raw.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(raw).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(raw).unwrap_or_default()).to_string(),
        _ => hex::encode(raw),
    }
}

/// A certificate chain with its private key, checked to belong together.
#[derive(Clone, Debug)]
pub struct ImportedIdentity {
    /// End-entity certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the end-entity certificate.
    pub key: PrivateKey,
    /// The end-entity certificate's names and validity.
    pub info: CertificateInfo,
}

impl ImportedIdentity {
    /// Checks that `key` belongs to the first certificate of `chain`.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKey,
    ) -> Result<Self, CredentialError> {
        let first = chain.first().ok_or(CredentialError::NoCertificate)?;
        let info = CertificateInfo::from_der(first)?;
        let signer = key
            .with_der(any_supported_type)
            .map_err(|e| CredentialError::UnsupportedKey(e.to_string()))?;
        match CertifiedKey::new(chain.clone(), signer).keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => return Err(CredentialError::KeyMismatch),
        }
        Ok(Self { chain, key, info })
    }

    /// Moves the private key into `store` under `key_name`; returns the public half.
    pub fn store(
        self,
        store: &dyn SecretStore,
        key_name: &str,
    ) -> Result<StoredIdentity, CredentialError> {
        store.put(key_name, &self.key.to_secret())?;
        Ok(StoredIdentity {
            chain: self.chain,
            key_name: key_name.to_owned(),
            info: self.info,
        })
    }
}

/// An identity whose private key lives in a `SecretStore`.
#[derive(Clone, Debug)]
pub struct StoredIdentity {
    /// End-entity certificate first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// Name of the private key in the secret store.
    pub key_name: String,
    /// The end-entity certificate's names and validity.
    pub info: CertificateInfo,
}

impl StoredIdentity {
    /// Loads the key from `store` and returns a rustls signing identity.
    pub fn certified_key(
        &self,
        store: &dyn SecretStore,
    ) -> Result<Arc<CertifiedKey>, CredentialError> {
        let key = PrivateKey::from_secret(&store.get(&self.key_name)?)?;
        let signer = key
            .with_der(any_supported_type)
            .map_err(|e| CredentialError::UnsupportedKey(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), signer)))
    }
}

/// Imports PEM text: `cert_pem` holds the certificate (and optionally intermediates),
/// `key_pem` the private key (it may be the same text as `cert_pem`). An encrypted key
/// needs `password`.
pub fn import_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    password: Option<&Secret>,
) -> Result<ImportedIdentity, CredentialError> {
    let chain = certificates_from_pem(cert_pem)?;
    let key = private_key_from_pem(key_pem, password)?;
    ImportedIdentity::new(chain, key)
}

/// Imports a PKCS#12 (`.p12`/`.pfx`) file protected by `password`.
pub fn import_pkcs12(der: &[u8], password: &Secret) -> Result<ImportedIdentity, CredentialError> {
    let password = std::str::from_utf8(password.expose())
        .map_err(|_| CredentialError::Pkcs12("the file password must be UTF-8 text".into()))?;
    let store = p12_keystore::KeyStore::from_pkcs12(
        der,
        password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    )
    .map_err(|e| match e {
        p12_keystore::error::Error::MacError(_) => CredentialError::WrongPassword,
        other => CredentialError::Pkcs12(other.to_string()),
    })?;
    let (_, chain) = store.private_key_chain().ok_or_else(|| {
        CredentialError::Pkcs12("the file holds no private key with its certificate".into())
    })?;
    let key = PrivateKey::new(KeyFormat::Pkcs8, Secret::from_slice(chain.key().as_der()));
    let certs: Vec<CertificateDer<'static>> = chain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    ImportedIdentity::new(order_chain(certs), key)
}

/// Parses every `CERTIFICATE` block of a PEM text, in order.
pub fn certificates_from_pem(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, CredentialError> {
    let blocks = pem::parse_many(text).map_err(|e| CredentialError::BadPem(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = blocks
        .into_iter()
        .filter(|b| {
            matches!(
                b.tag(),
                "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE"
            )
        })
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(CredentialError::NoCertificate);
    }
    for c in &certs {
        CertificateInfo::from_der(c)?;
    }
    Ok(certs)
}

/// Finds the private key in a PEM text and decrypts it if needed.
pub fn private_key_from_pem(
    text: &[u8],
    password: Option<&Secret>,
) -> Result<PrivateKey, CredentialError> {
    let blocks = pem::parse_many(text).map_err(|e| CredentialError::BadPem(e.to_string()))?;
    for block in blocks {
        let encrypted_legacy = block
            .headers()
            .get("Proc-Type")
            .is_some_and(|v| v.contains("ENCRYPTED"));
        let format = match block.tag() {
            "PRIVATE KEY" => KeyFormat::Pkcs8,
            "RSA PRIVATE KEY" => KeyFormat::Pkcs1,
            "EC PRIVATE KEY" => KeyFormat::Sec1,
            "ENCRYPTED PRIVATE KEY" => {
                let password = password.ok_or(CredentialError::PasswordNeeded)?;
                return decrypt_pkcs8(block.contents(), password);
            }
            _ => continue,
        };
        if encrypted_legacy {
            let password = password.ok_or(CredentialError::PasswordNeeded)?;
            let dek = block.headers().get("DEK-Info").ok_or_else(|| {
                CredentialError::BadPem("encrypted key without a DEK-Info header".into())
            })?;
            let der = legacy_pem::decrypt(dek, block.contents(), password)?;
            check_key_der(format, &der)?;
            return Ok(PrivateKey::new(format, der));
        }
        return Ok(PrivateKey::new(format, Secret::new(block.into_contents())));
    }
    Err(CredentialError::NoPrivateKey)
}

fn decrypt_pkcs8(der: &[u8], password: &Secret) -> Result<PrivateKey, CredentialError> {
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der)
        .map_err(|e| CredentialError::BadPem(format!("encrypted PKCS#8: {e}")))?;
    let doc = info.decrypt(password.expose()).map_err(|e| match e {
        // pkcs5 reports a bad padding after decryption as either variant.
        pkcs8::Error::EncryptedPrivateKey(
            pkcs5::Error::DecryptFailed | pkcs5::Error::EncryptFailed,
        ) => CredentialError::WrongPassword,
        pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::UnsupportedAlgorithm { oid }) => {
            CredentialError::UnsupportedEncryption(format!(
                "PKCS#8 encryption algorithm {oid}; re-encrypt with \
                 `openssl pkcs8 -topk8 -v2 aes-256-cbc -in key.pem -out key-aes.pem`"
            ))
        }
        other => CredentialError::UnsupportedEncryption(other.to_string()),
    })?;
    let der = Secret::from_slice(doc.as_bytes());
    check_key_der(KeyFormat::Pkcs8, &der).map_err(|_| CredentialError::WrongPassword)?;
    Ok(PrivateKey::new(KeyFormat::Pkcs8, der))
}

/// Cheap structural check: a wrong password usually yields bytes that are not DER.
fn check_key_der(format: KeyFormat, der: &Secret) -> Result<(), CredentialError> {
    let key = PrivateKey::new(format, der.clone());
    key.with_der(any_supported_type)
        .map(|_| ())
        .map_err(|_| CredentialError::WrongPassword)
}

/// PKCS#12 files do not promise an order; put the certificate whose subject is no
/// other certificate's issuer (the leaf) first.
fn order_chain(mut certs: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    let infos: Vec<Option<CertificateInfo>> = certs
        .iter()
        .map(|c| CertificateInfo::from_der(c).ok())
        .collect();
    let leaf = infos.iter().position(|me| {
        let Some(me) = me else { return false };
        !infos
            .iter()
            .flatten()
            .any(|other| other.issuer == me.subject && other != me)
    });
    if let Some(i) = leaf {
        let leaf = certs.remove(i);
        certs.insert(0, leaf);
    }
    certs
}
