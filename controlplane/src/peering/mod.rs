//! Secure peering between appliances: signaling over QUIC on the tunnel's UDP port, the
//! hello that tells whether each side runs secure peering, the mutually authenticated
//! channel, partner state with reasons, reconnection, and per-epoch session keys for the
//! data plane. See docs/peering.md.

mod backoff;
mod endpoint;
mod keys;
mod messages;
mod session;
mod status;
mod tls;

pub use backoff::{Backoff, BackoffPolicy};
pub use endpoint::{PeeringEndpoint, PeeringEvent};
pub use keys::{
    EXPORTER_LABEL, EphemeralHalf, ExporterSecret, SessionKeys, Side, TunnelKey, derive_epoch,
    exporter_context,
};
pub use messages::{
    Hello, MAX_MESSAGE, PROTOCOL_VERSION, Signal, decode, read_signal, write_signal,
};
pub use status::{Connection, DetectedBy, PartnerStatus, Reason, TrafficMode};
pub use tls::{HELLO_ALPN, SECURE_ALPN};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

use crate::credentials::{CredentialError, PeeringCredentials, SecretStore, SecretStoreError};
use crate::licence::{Licence, secure_peering_allowed};

/// Why the peering endpoint could not start or act.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeeringError {
    /// The UDP port could not be bound.
    #[error(
        "cannot listen for signaling on {addr}: {source}; is another process using the tunnel port?"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Invalid configuration.
    #[error("peering configuration: {0}")]
    Config(String),
    /// TLS or key-exchange failure.
    #[error("peering cryptography: {0}")]
    Crypto(String),
    /// The partner broke the signaling protocol.
    #[error("signaling protocol: {0}")]
    Protocol(String),
    /// No partner of that name is configured.
    #[error("no partner named {0:?} is configured")]
    UnknownPartner(String),
    /// The partner has no secure session to rekey.
    #[error("partner {0:?} has no secure session")]
    NotSecure(String),
    /// Credentials problem.
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// Endpoint settings.
#[derive(Clone, Debug)]
pub struct PeeringConfig {
    /// This appliance's name, announced in hellos.
    pub appliance: String,
    /// The tunnel's UDP address (signaling shares it).
    pub listen: SocketAddr,
    /// Keepalive interval on signaling connections.
    pub keepalive: Duration,
    /// A partner silent this long is declared dead.
    pub idle_timeout: Duration,
    /// Interval between key epochs (minutes in production).
    pub rekey_interval: Duration,
    /// Reconnection backoff.
    pub backoff: BackoffPolicy,
}

impl PeeringConfig {
    /// Production defaults: keepalive 5 s, dead after 20 s, new epoch every 10 minutes.
    pub fn new(appliance: &str, listen: SocketAddr) -> Self {
        Self {
            appliance: appliance.to_owned(),
            listen,
            keepalive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            rekey_interval: Duration::from_secs(600),
            backoff: BackoffPolicy::default(),
        }
    }
}

/// Which side opens the signaling connection to a partner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// The side with the lower tunnel address initiates.
    #[default]
    Auto,
    /// This appliance initiates.
    Initiator,
    /// The partner initiates.
    Responder,
}

/// A statically configured partner.
#[derive(Clone, Debug)]
pub struct PartnerConfig {
    /// The partner's name: the DNS name or IP address its certificate must carry.
    pub name: String,
    /// The partner's tunnel UDP address.
    pub address: SocketAddr,
    /// Who initiates.
    pub role: Role,
}

/// Ready-to-use secure peering material (the private key loaded from the keystore).
pub struct SecureSetup {
    /// The credentials.
    pub credentials: PeeringCredentials,
    /// The identity with its loaded key.
    pub key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for SecureSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureSetup")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// This appliance's secure-peering state as the endpoint uses it.
#[derive(Clone, Debug)]
pub enum LocalSecurity {
    /// Disabled by the operator.
    Off,
    /// Enabled but not usable, for this reason (keystore sealed, no licence, ...).
    Blocked(Reason),
    /// Enabled and usable.
    On(Arc<SecureSetup>),
}

impl LocalSecurity {
    /// Enables secure peering if the licence allows it and the keystore yields the key;
    /// otherwise `Blocked` with the reason.
    pub fn enable(
        credentials: PeeringCredentials,
        store: &dyn SecretStore,
        licence: Option<&Licence>,
        now: SystemTime,
    ) -> Self {
        if let Err(e) = secure_peering_allowed(licence, now) {
            return Self::Blocked(Reason::NoLicence(e.to_string()));
        }
        match credentials.certified_key(store) {
            Ok(key) => Self::On(Arc::new(SecureSetup { credentials, key })),
            Err(CredentialError::SecretStore(SecretStoreError::Sealed)) => {
                Self::Blocked(Reason::KeystoreSealed)
            }
            Err(e) => Self::Blocked(Reason::Credentials(e.to_string())),
        }
    }

    /// What a hello says about this appliance.
    fn hello_flag(&self) -> (bool, Option<String>) {
        match self {
            Self::Off => (false, Some("disabled".into())),
            Self::Blocked(Reason::KeystoreSealed) => (false, Some("keystore sealed".into())),
            Self::Blocked(Reason::NoLicence(_)) => (false, Some("no licence".into())),
            Self::Blocked(_) => (false, Some("credentials unusable".into())),
            Self::On(_) => (true, None),
        }
    }

    /// The reason partners are not secure because of this side, if any.
    fn local_reason(&self) -> Option<Reason> {
        match self {
            Self::Off => Some(Reason::LocalOff),
            Self::Blocked(r) => Some(r.clone()),
            Self::On(_) => None,
        }
    }
}
