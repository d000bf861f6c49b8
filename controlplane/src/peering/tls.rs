//! rustls/quinn configurations for the two signaling channels sharing one endpoint:
//! the unauthenticated hello channel (ALPN `shunt-hello/1`) and the mutually
//! authenticated secure channel (ALPN `shunt-secure/1`).

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{Error, SignatureScheme};

use super::{PeeringError, SecureSetup};
use crate::credentials::PartnerVerifier;

/// ALPN of the hello channel.
pub const HELLO_ALPN: &[u8] = b"shunt-hello/1";
/// ALPN of the secure channel.
pub const SECURE_ALPN: &[u8] = b"shunt-secure/1";
/// Server name the hello channel uses (its certificate is not checked).
pub const HELLO_SERVER_NAME: &str = "shunt-hello.invalid";

/// Keepalive and idle settings shared by both channels.
pub fn transport(
    keepalive: Duration,
    idle: Duration,
) -> Result<Arc<quinn::TransportConfig>, PeeringError> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keepalive));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle)
            .map_err(|_| PeeringError::Config("idle timeout too large".into()))?,
    ));
    Ok(Arc::new(t))
}

/// A throwaway self-signed identity for the hello channel's TLS server side.
pub fn hello_identity() -> Result<Arc<CertifiedKey>, PeeringError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PeeringError::Crypto(e.to_string()))?;
    let params = rcgen::CertificateParams::new(vec![HELLO_SERVER_NAME.to_owned()])
        .map_err(|e| PeeringError::Crypto(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| PeeringError::Crypto(e.to_string()))?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|e| PeeringError::Crypto(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

fn initial_suite() -> Result<rustls::quic::Suite, PeeringError> {
    aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .ok_or_else(|| PeeringError::Crypto("QUIC initial suite unavailable".into()))
}

fn provider_for(setup: Option<&SecureSetup>) -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    if let Some(setup) = setup {
        provider.cipher_suites = setup.credentials.ciphers.rustls_suites();
    }
    Arc::new(provider)
}

/// Client side of the hello channel.
pub fn hello_client(
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, PeeringError> {
    let provider = provider_for(None);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PeeringError::Crypto(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnauthenticatedHello { provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![HELLO_ALPN.to_vec()];
    client(tls, transport)
}

/// Client side of the secure channel to a partner named `partner` (checked per setting).
pub fn secure_client(
    setup: &SecureSetup,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, PeeringError> {
    let provider = provider_for(Some(setup));
    let verifier = PartnerVerifier::new(
        setup.credentials.verification,
        &setup.credentials.trust,
        None,
        provider.clone(),
    )?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PeeringError::Crypto(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(OwnIdentity(setup.key.clone())));
    tls.alpn_protocols = vec![SECURE_ALPN.to_vec()];
    client(tls, transport)
}

/// Server side for one partner: always the hello channel, plus the secure channel
/// when `setup` is given (client certificates verified against `partner_name`).
pub fn server(
    setup: Option<&SecureSetup>,
    partner_name: &str,
    hello_key: Arc<CertifiedKey>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, PeeringError> {
    let provider = provider_for(setup);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PeeringError::Crypto(e.to_string()))?;
    let resolver = Arc::new(ByChannel {
        hello: hello_key,
        secure: setup.map(|s| s.key.clone()),
    });
    let mut tls = match setup {
        Some(setup) => {
            let name = ServerName::try_from(partner_name.to_owned()).map_err(|_| {
                PeeringError::Config(format!(
                    "partner name {partner_name:?} is not a DNS name or IP address"
                ))
            })?;
            let verifier = PartnerVerifier::new(
                setup.credentials.verification,
                &setup.credentials.trust,
                Some(name),
                provider,
            )?;
            builder
                .with_client_cert_verifier(Arc::new(verifier))
                .with_cert_resolver(resolver)
        }
        None => builder.with_no_client_auth().with_cert_resolver(resolver),
    };
    tls.alpn_protocols = vec![HELLO_ALPN.to_vec()];
    if setup.is_some() {
        tls.alpn_protocols.push(SECURE_ALPN.to_vec());
    }
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::with_initial(Arc::new(tls), initial_suite()?)
        .map_err(|e| PeeringError::Crypto(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

fn client(
    tls: rustls::ClientConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, PeeringError> {
    let crypto = QuicClientConfig::with_initial(Arc::new(tls), initial_suite()?)
        .map_err(|e| PeeringError::Crypto(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// The hello channel's client deliberately accepts any server certificate: the hello
/// only announces whether secure peering is on and carries no secrets or keys. The
/// server must still prove possession of the key it shows.
#[derive(Debug)]
struct UnauthenticatedHello {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for UnauthenticatedHello {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    crate::credentials::quic_signature_methods!(provider);
}

#[derive(Debug)]
struct OwnIdentity(Arc<CertifiedKey>);

impl ResolvesClientCert for OwnIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Shows the configured certificate on the secure channel, the throwaway one on hello.
#[derive(Debug)]
struct ByChannel {
    hello: Arc<CertifiedKey>,
    secure: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ByChannel {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wants_secure = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == SECURE_ALPN));
        match (&self.secure, wants_secure) {
            (Some(key), true) => Some(key.clone()),
            _ => Some(self.hello.clone()),
        }
    }
}
