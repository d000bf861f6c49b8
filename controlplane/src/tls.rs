//! TLS for the management API: the daemon's own self-signed certificate,
//! made at first start, and its SHA-256 fingerprint, which clients pin.

use std::path::Path;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::durable;

/// Subject name of the management certificate; clients use it as SNI.
pub const MANAGEMENT_NAME: &str = "shunt-control";

/// The management certificate and key, as PEM.
pub struct ManagementIdentity {
    pub certificate_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
    pub fingerprint: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the management certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "management certificate {0} is not valid PEM; delete it (and the key) to have a new one made"
    )]
    BadPem(std::path::PathBuf),
    #[error(
        "fingerprint {0:?} is not 64 hex digits (SHA-256), as printed by shunt-control at start"
    )]
    BadFingerprint(String),
}

/// Loads `cert.pem`/`key.pem` from `dir`, creating them on first start.
pub fn load_or_create_identity(dir: &Path) -> Result<ManagementIdentity, TlsError> {
    let cert_path = dir.join("management-cert.pem");
    let key_path = dir.join("management-key.pem");
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io {
            action,
            path,
            source,
        }
    };
    if !cert_path.exists() || !key_path.exists() {
        let names = vec![MANAGEMENT_NAME.to_owned(), "localhost".to_owned()];
        let made = rcgen::generate_simple_self_signed(names)?;
        durable::write_atomic(
            &key_path,
            made.signing_key.serialize_pem().as_bytes(),
            0o600,
        )
        .map_err(io("write", &key_path))?;
        durable::write_atomic(&cert_path, made.cert.pem().as_bytes(), 0o644)
            .map_err(io("write", &cert_path))?;
        tracing::info!(path = %cert_path.display(), "management certificate created");
    }
    let certificate_pem = std::fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
    let key_pem =
        zeroize::Zeroizing::new(std::fs::read_to_string(&key_path).map_err(io("read", &key_path))?);
    let der = pem_to_der(&certificate_pem).ok_or_else(|| TlsError::BadPem(cert_path.clone()))?;
    Ok(ManagementIdentity {
        fingerprint: fingerprint(&der),
        certificate_pem,
        key_pem,
    })
}

/// Lower-case hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Parses a fingerprint as printed (hex, colons and case ignored).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let cleaned: String = text
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    hex::decode(cleaned.to_ascii_lowercase())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| TlsError::BadFingerprint(text.to_owned()))
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// A rustls client configuration that accepts exactly the server whose
/// certificate has the pinned SHA-256 fingerprint (and speaks HTTP/2).
pub fn pinned_client_config(pin: [u8; 32]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer { pin, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// Verifies the server by its certificate's fingerprint, and the handshake
/// signatures with that certificate's key as usual.
#[derive(Debug)]
struct PinnedServer {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if seen == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "management certificate fingerprint is {}, not the pinned one; check --fingerprint",
                hex::encode(seen)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_fingerprint_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_identity(dir.path()).unwrap();
        let second = load_or_create_identity(dir.path()).unwrap();
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(first.fingerprint.len(), 64);
        let upper_with_colons = first
            .fingerprint
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            hex::encode(parse_fingerprint(&upper_with_colons).unwrap()),
            first.fingerprint
        );
        assert!(parse_fingerprint("abc").is_err());
    }
}
