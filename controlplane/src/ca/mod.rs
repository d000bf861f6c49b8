//! The appliance-generated credential mode: a private CA on one appliance, and the
//! enrollment of another appliance by certificate signing request, so the enrolled
//! appliance's private key never leaves it.
//!
//! Flow (the management API carries the messages):
//! 1. CA appliance: [`Ca::generate`] once.
//! 2. Remote appliance: [`Enrollment::make_csr`] makes a key (kept in its keystore) and a CSR.
//! 3. CA appliance: [`Ca::sign_csr`] issues a leaf for the remote's name/address.
//! 4. Remote appliance: [`Enrollment::install_issued`] checks and installs it with the CA
//!    certificate, which becomes its trust anchor for partners.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};

use crate::credentials::{
    CertificateInfo, CipherSpec, CredentialError, ImportedIdentity, KeyFormat, PartnerVerifier,
    PeeringCredentials, PrivateKey, Secret, SecretStore, SecretStoreError, StoredIdentity,
    Verification,
};

/// Why a CA or enrollment step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Certificate or key generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// The CSR is malformed or its signature does not verify.
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(String),
    /// An appliance name is neither a DNS name nor an IP address.
    #[error("{0:?} is not a valid appliance name: use a DNS name or an IP address")]
    BadName(String),
    /// No enrollment is pending on this appliance.
    #[error("no enrollment is pending: make a CSR first")]
    NoPendingEnrollment,
    /// The issued certificate is not for the pending key or not from the CA.
    #[error("the issued certificate cannot be installed: {0}")]
    NotInstallable(String),
    /// Credential handling failed.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The keystore refused.
    #[error(transparent)]
    SecretStore(#[from] SecretStoreError),
}

/// A private certificate authority whose key lives in a `SecretStore`.
#[derive(Clone, Debug)]
pub struct Ca {
    cert: CertificateDer<'static>,
    key_name: String,
}

/// A leaf certificate the CA issued, and the CA certificate to install with it.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The leaf, DER.
    pub certificate: CertificateDer<'static>,
    /// The CA certificate, DER.
    pub ca_certificate: CertificateDer<'static>,
    /// The leaf's names and validity.
    pub info: CertificateInfo,
}

impl Ca {
    /// Creates a new CA (ECDSA P-256) valid for `validity`; its key goes to `store`.
    pub fn generate(
        common_name: &str,
        validity: Duration,
        store: &dyn SecretStore,
        key_name: &str,
    ) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = (now + validity).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let pkcs8 = PrivateKey::new(KeyFormat::Pkcs8, Secret::new(key.serialize_der()));
        store.put(key_name, &pkcs8.to_secret())?;
        Ok(Self {
            cert: cert.der().clone(),
            key_name: key_name.to_owned(),
        })
    }

    /// A CA whose certificate is known and whose key is stored under `key_name`.
    pub fn load(cert: CertificateDer<'static>, key_name: &str) -> Self {
        Self {
            cert,
            key_name: key_name.to_owned(),
        }
    }

    /// The CA certificate (install it as a trust anchor).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate as PEM.
    pub fn certificate_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.cert.to_vec()))
    }

    /// Issues a leaf for the key in `csr`, naming the appliance `names` (DNS names or IP
    /// addresses, the first also the common name), valid for `validity`. Names requested
    /// inside the CSR are ignored: the CA decides what the certificate says.
    pub fn sign_csr(
        &self,
        store: &dyn SecretStore,
        csr: &CertificateSigningRequestDer<'_>,
        names: &[String],
        validity: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let request = CertificateSigningRequestParams::from_der(csr)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let first = names
            .first()
            .ok_or_else(|| CaError::BadName(String::new()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(first);
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = (now + validity).into();
        params.serial_number = Some(random_serial());

        let key = self.signing_key(store)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert, key).map_err(gen_err)?;
        let cert = params
            .signed_by(&request.public_key, &issuer)
            .map_err(gen_err)?;
        let info = CertificateInfo::from_der(cert.der())?;
        Ok(IssuedCertificate {
            certificate: cert.der().clone(),
            ca_certificate: self.cert.clone(),
            info,
        })
    }

    fn signing_key(&self, store: &dyn SecretStore) -> Result<KeyPair, CaError> {
        let key = PrivateKey::from_secret(&store.get(&self.key_name)?)?;
        key.with_der(|der| match der {
            rustls::pki_types::PrivateKeyDer::Pkcs8(der) => KeyPair::try_from(der).map_err(gen_err),
            _ => Err(CaError::Generate("the CA key is not PKCS#8".into())),
        })
    }
}

/// The enrolled side of the appliance-generated mode.
#[derive(Clone, Debug)]
pub struct Enrollment {
    key_name: String,
}

/// The outcome of a successful enrollment.
#[derive(Clone, Debug)]
pub struct Installed {
    /// The appliance's certificate; its key is in the secret store.
    pub identity: StoredIdentity,
    /// The private CA's certificate, to trust for partners.
    pub ca_certificate: CertificateDer<'static>,
}

impl Installed {
    /// Peering credentials that trust exactly the private CA, with full verification.
    pub fn peering_credentials(&self) -> PeeringCredentials {
        PeeringCredentials {
            identity: self.identity.clone(),
            trust: vec![self.ca_certificate.clone()],
            verification: Verification::Full,
            ciphers: CipherSpec::default(),
        }
    }
}

impl Enrollment {
    /// Enrollment whose installed key will be stored under `key_name`.
    pub fn new(key_name: &str) -> Self {
        Self {
            key_name: key_name.to_owned(),
        }
    }

    fn pending_name(&self) -> String {
        format!("{}.pending", self.key_name)
    }

    /// Makes a fresh key (kept in `store` as pending) and a CSR for `appliance`.
    /// The installed key stays in use until [`install_issued`](Self::install_issued).
    pub fn make_csr(
        &self,
        store: &dyn SecretStore,
        appliance: &str,
    ) -> Result<CertificateSigningRequestDer<'static>, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(appliance);
        params.subject_alt_names = vec![san(appliance)?];
        let csr = params.serialize_request(&key).map_err(gen_err)?;
        let pkcs8 = PrivateKey::new(KeyFormat::Pkcs8, Secret::new(key.serialize_der()));
        store.put(&self.pending_name(), &pkcs8.to_secret())?;
        Ok(csr.der().clone())
    }

    /// Checks that `certificate` is for the pending key and chains to `ca_certificate`,
    /// then makes the pending key the installed one.
    pub fn install_issued(
        &self,
        store: &dyn SecretStore,
        certificate: CertificateDer<'static>,
        ca_certificate: CertificateDer<'static>,
    ) -> Result<Installed, CaError> {
        let pending = match store.get(&self.pending_name()) {
            Err(SecretStoreError::NotFound { .. }) => return Err(CaError::NoPendingEnrollment),
            other => other?,
        };
        let key = PrivateKey::from_secret(&pending)?;
        let identity =
            ImportedIdentity::new(vec![certificate.clone()], key).map_err(|e| match e {
                CredentialError::KeyMismatch => CaError::NotInstallable(
                    "it was issued for a different key; make a new CSR".into(),
                ),
                other => other.into(),
            })?;
        check_chain(&certificate, &ca_certificate)?;
        let identity = identity.store(store, &self.key_name)?;
        store.remove(&self.pending_name())?;
        Ok(Installed {
            identity,
            ca_certificate,
        })
    }
}

/// True when `info`'s certificate expires within `window` of `now` (or already has):
/// time to make a new CSR.
pub fn renewal_due(info: &CertificateInfo, now: SystemTime, window: Duration) -> bool {
    now + window >= info.not_after
}

fn check_chain(
    leaf: &CertificateDer<'static>,
    ca: &CertificateDer<'static>,
) -> Result<(), CaError> {
    use rustls::client::danger::ServerCertVerifier;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = PartnerVerifier::new(
        Verification::ChainOnly,
        std::slice::from_ref(ca),
        None,
        provider,
    )?;
    let name = rustls::pki_types::ServerName::try_from("enrollment.invalid")
        .map_err(|e| CaError::BadName(e.to_string()))?;
    verifier
        .verify_server_cert(leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
        .map_err(|e| CaError::NotInstallable(format!("it does not chain to the given CA: {e}")))?;
    Ok(())
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn san(name: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    rustls::pki_types::DnsName::try_from(name).map_err(|_| CaError::BadName(name.to_owned()))?;
    Ok(SanType::DnsName(
        name.try_into()
            .map_err(|_| CaError::BadName(name.to_owned()))?,
    ))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn gen_err(e: rcgen::Error) -> CaError {
    CaError::Generate(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::MemorySecretStore;

    #[test]
    fn enroll_in_process() {
        let ca_store = MemorySecretStore::new();
        let ca = Ca::generate(
            "Shunt CA",
            Duration::from_secs(86400 * 365),
            &ca_store,
            "ca",
        )
        .unwrap();
        let remote = MemorySecretStore::new();
        let enrollment = Enrollment::new("identity");
        let csr = enrollment.make_csr(&remote, "site-b.example").unwrap();
        let issued = ca
            .sign_csr(
                &ca_store,
                &csr,
                &["site-b.example".into(), "127.0.0.1".into()],
                Duration::from_secs(86400),
            )
            .unwrap();
        assert_eq!(
            issued.info.subject_alt_names,
            ["site-b.example", "127.0.0.1"]
        );
        let installed = enrollment
            .install_issued(&remote, issued.certificate, issued.ca_certificate)
            .unwrap();
        assert!(installed.identity.certified_key(&remote).is_ok());
        assert!(matches!(
            remote.get("identity.pending"),
            Err(SecretStoreError::NotFound { .. })
        ));
        // The CA's key never went to the remote, the remote's key never to the CA.
        assert!(remote.get("ca").is_err());
        assert!(ca_store.get("identity").is_err());
    }

    #[test]
    fn install_refuses_foreign_ca_and_wrong_key() {
        let ca_store = MemorySecretStore::new();
        let ca = Ca::generate("CA one", Duration::from_secs(86400), &ca_store, "ca").unwrap();
        let other = Ca::generate("CA two", Duration::from_secs(86400), &ca_store, "ca2").unwrap();
        let remote = MemorySecretStore::new();
        let enrollment = Enrollment::new("id");
        let csr = enrollment.make_csr(&remote, "b.example").unwrap();
        let issued = ca
            .sign_csr(
                &ca_store,
                &csr,
                &["b.example".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let err = enrollment
            .install_issued(
                &remote,
                issued.certificate.clone(),
                other.certificate().clone(),
            )
            .unwrap_err();
        assert!(matches!(err, CaError::NotInstallable(_)), "{err}");
        // A second CSR replaces the pending key; the first certificate no longer fits.
        enrollment.make_csr(&remote, "b.example").unwrap();
        let err = enrollment
            .install_issued(&remote, issued.certificate, issued.ca_certificate)
            .unwrap_err();
        assert!(matches!(err, CaError::NotInstallable(_)), "{err}");
    }

    #[test]
    fn renewal_window() {
        let store = MemorySecretStore::new();
        let ca = Ca::generate("CA", Duration::from_secs(86400), &store, "ca").unwrap();
        let enrollment = Enrollment::new("id");
        let csr = enrollment.make_csr(&store, "a.example").unwrap();
        let issued = ca
            .sign_csr(
                &store,
                &csr,
                &["a.example".into()],
                Duration::from_secs(10 * 86400),
            )
            .unwrap();
        let now = SystemTime::now();
        assert!(!renewal_due(&issued.info, now, Duration::from_secs(86400)));
        assert!(renewal_due(
            &issued.info,
            now,
            Duration::from_secs(11 * 86400)
        ));
    }
}
