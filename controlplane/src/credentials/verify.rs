//! The certificate-verification setting and the verifier that applies it to partners,
//! in both directions (the partner's server certificate and its client certificate).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DistinguishedName, Error, RootCertStore};

use super::CredentialError;
use super::import::CertificateInfo;

/// How strictly a partner's certificate is checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verification {
    /// Chain to a trusted CA, validity period, and the partner's configured name
    /// (DNS name or IP address) in the certificate's subject alternative names.
    #[default]
    Full,
    /// Chain and validity, no name check (for certificates without usable names).
    ChainOnly,
    /// No certificate check at all; the partner only proves it holds the key of the
    /// certificate it shows. Lab use only: anyone can impersonate a partner.
    DangerousNone,
}

impl Verification {
    /// The setting's name as operators type it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::ChainOnly => "chain-only",
            Self::DangerousNone => "dangerous-none",
        }
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verification {
    type Err = CredentialError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "full" => Ok(Self::Full),
            "chain-only" | "chain" => Ok(Self::ChainOnly),
            "dangerous-none" => Ok(Self::DangerousNone),
            _ => Err(CredentialError::UnknownVerification(s.to_owned())),
        }
    }
}

/// Verifies a partner's certificate per [`Verification`], as TLS client or server.
///
/// A self-signed certificate placed in the trust store itself is accepted as pinned
/// (OpenSSL's `req -x509` marks such certificates `CA:TRUE`, which plain WebPKI path
/// building refuses as an end entity); its validity and name are still checked.
pub struct PartnerVerifier {
    mode: Verification,
    pinned: Vec<CertificateDer<'static>>,
    expected_name: Option<ServerName<'static>>,
    server: Option<Arc<WebPkiServerVerifier>>,
    client: Option<Arc<dyn ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PartnerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartnerVerifier")
            .field("mode", &self.mode)
            .field("expected_name", &self.expected_name)
            .finish()
    }
}

impl PartnerVerifier {
    /// A verifier trusting `roots`; `expected_name` is the partner's name for the
    /// client-certificate name check (server certificates are checked against the
    /// name the connection is made to).
    pub fn new(
        mode: Verification,
        roots: &[CertificateDer<'static>],
        expected_name: Option<ServerName<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CredentialError> {
        let (server, client) = if mode == Verification::DangerousNone {
            (None, None)
        } else {
            let mut store = RootCertStore::empty();
            for c in roots {
                store
                    .add(c.clone())
                    .map_err(|e| CredentialError::BadCertificate(e.to_string()))?;
            }
            if store.is_empty() {
                return Err(CredentialError::EmptyTrustStore);
            }
            let store = Arc::new(store);
            let server =
                WebPkiServerVerifier::builder_with_provider(store.clone(), provider.clone())
                    .build()
                    .map_err(|e| CredentialError::BadCertificate(e.to_string()))?;
            let client = WebPkiClientVerifier::builder_with_provider(store, provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| CredentialError::BadCertificate(e.to_string()))?;
            (Some(server), Some(client))
        };
        Ok(Self {
            mode,
            pinned: roots.to_vec(),
            expected_name,
            server,
            client,
            provider,
        })
    }

    fn check_pinned(
        &self,
        cert: &CertificateDer<'_>,
        name: Option<&ServerName<'_>>,
        now: UnixTime,
    ) -> Result<(), Error> {
        let info = CertificateInfo::from_der(cert)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let now_secs = now.as_secs();
        let secs = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        if now_secs > secs(info.not_after) {
            return Err(Error::InvalidCertificate(CertificateError::Expired));
        }
        if now_secs < secs(info.not_before) {
            return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
        }
        self.check_name(cert, name)
    }

    fn check_name(
        &self,
        cert: &CertificateDer<'_>,
        name: Option<&ServerName<'_>>,
    ) -> Result<(), Error> {
        match (self.mode, name) {
            (Verification::Full, Some(name)) => {
                let parsed = ParsedCertificate::try_from(cert)?;
                rustls::client::verify_server_name(&parsed, name)
            }
            _ => Ok(()),
        }
    }

    fn is_pinned(&self, cert: &CertificateDer<'_>) -> bool {
        self.pinned.iter().any(|p| p.as_ref() == cert.as_ref())
    }
}

/// The signature half of a rustls certificate verifier (server or client side) for
/// QUIC, which is TLS 1.3 only: TLS 1.2 signatures are refused, TLS 1.3 signatures and
/// the offered schemes come from the `CryptoProvider` in field `$provider`. Shared by
/// every verifier in the crate so the three methods exist once.
macro_rules! quic_signature_methods {
    ($provider:ident) => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &::rustls::pki_types::CertificateDer<'_>,
            _: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            // QUIC is TLS 1.3 only.
            Err(::rustls::Error::PeerIncompatible(
                ::rustls::PeerIncompatible::Tls13RequiredForQuic,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.$provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use quic_signature_methods;

impl ServerCertVerifier for PartnerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(server) = &self.server else {
            return Ok(ServerCertVerified::assertion());
        };
        if self.is_pinned(end_entity) {
            self.check_pinned(end_entity, Some(server_name), now)?;
            return Ok(ServerCertVerified::assertion());
        }
        match server.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.mode == Verification::ChainOnly => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    quic_signature_methods!(provider);
}

impl ClientCertVerifier for PartnerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // The plain hello channel shares the endpoint and carries no client
        // certificate; the secure channel checks for one after the handshake.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let Some(client) = &self.client else {
            return Ok(ClientCertVerified::assertion());
        };
        if self.is_pinned(end_entity) {
            self.check_pinned(end_entity, self.expected_name.as_ref(), now)?;
            return Ok(ClientCertVerified::assertion());
        }
        client.verify_client_cert(end_entity, intermediates, now)?;
        self.check_name(end_entity, self.expected_name.as_ref())?;
        Ok(ClientCertVerified::assertion())
    }

    quic_signature_methods!(provider);
}
