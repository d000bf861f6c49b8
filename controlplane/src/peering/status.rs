//! Partner state as monitoring shows it, and why a partner is not secure.

use std::fmt;

/// Who noticed a certificate problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectedBy {
    /// This appliance rejected the partner's certificate.
    Us,
    /// The partner rejected this appliance's certificate.
    Partner,
}

impl fmt::Display for DetectedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Us => "the partner's certificate",
            Self::Partner => "our certificate (as the partner reports)",
        })
    }
}

/// Why a partner relationship is not secure (or not up).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Secure peering is disabled on this appliance.
    LocalOff,
    /// The partner answered that its secure peering is off (with its stated cause).
    PeerNotSecured {
        /// What the partner said, e.g. "keystore sealed".
        peer_says: Option<String>,
    },
    /// A certificate was not issued by a trusted CA.
    WrongCa {
        /// Whose certificate.
        detected_by: DetectedBy,
    },
    /// A certificate has expired or is not valid yet.
    Expired {
        /// Whose certificate.
        detected_by: DetectedBy,
    },
    /// A certificate does not carry the partner's configured name.
    NameMismatch {
        /// Whose certificate.
        detected_by: DetectedBy,
    },
    /// Another certificate problem.
    CertificateRejected {
        /// Whose certificate.
        detected_by: DetectedBy,
        /// The TLS detail.
        detail: String,
    },
    /// TLS found nothing in common (cipher suites or signature algorithms).
    NoCommonAlgorithms {
        /// Who gave up.
        detected_by: DetectedBy,
    },
    /// The keystore is sealed, so the private key is unavailable.
    KeystoreSealed,
    /// No valid licence for secure peering.
    NoLicence(String),
    /// Credentials are missing or unusable.
    Credentials(String),
    /// The partner did not answer.
    Unreachable(String),
    /// The partner stopped answering keepalives.
    KeepaliveTimeout,
    /// The partner closed the signaling connection.
    ClosedByPartner(String),
    /// The partner broke the signaling protocol.
    Protocol(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LocalOff => write!(f, "secure peering is disabled on this appliance"),
            Self::PeerNotSecured {
                peer_says: Some(why),
            } => {
                write!(
                    f,
                    "peer not secured: the partner's secure peering is off ({why})"
                )
            }
            Self::PeerNotSecured { peer_says: None } => {
                write!(f, "peer not secured: the partner's secure peering is off")
            }
            Self::WrongCa { detected_by } => {
                write!(
                    f,
                    "wrong CA: {detected_by} is not issued by a trusted CA; import the right CA certificate"
                )
            }
            Self::Expired { detected_by } => {
                write!(
                    f,
                    "expired: {detected_by} is expired or not yet valid; renew it"
                )
            }
            Self::NameMismatch { detected_by } => write!(
                f,
                "name mismatch: {detected_by} does not name the partner as configured; fix the partner \
                 name or the certificate's subject alternative names"
            ),
            Self::CertificateRejected {
                detected_by,
                detail,
            } => {
                write!(f, "certificate rejected: {detected_by}: {detail}")
            }
            Self::NoCommonAlgorithms { .. } => write!(
                f,
                "TLS handshake failure: no cipher suite or signature algorithm in common; compare \
                 both appliances' cipher specifications"
            ),
            Self::KeystoreSealed => write!(
                f,
                "keystore sealed: open the keystore to enable secure peering"
            ),
            Self::NoLicence(why) => write!(f, "no licence: {why}"),
            Self::Credentials(why) => write!(f, "credentials unusable: {why}"),
            Self::Unreachable(why) => write!(f, "partner unreachable: {why}"),
            Self::KeepaliveTimeout => write!(f, "partner stopped answering keepalives"),
            Self::ClosedByPartner(why) => {
                write!(f, "partner closed the signaling connection: {why}")
            }
            Self::Protocol(why) => write!(f, "signaling protocol error: {why}"),
        }
    }
}

/// Connection state of the signaling link to a partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Trying to reach the partner.
    Connecting,
    /// Signaling is up and the partner answers (`Connected Available`).
    ConnectedAvailable,
    /// No link; waiting before the next attempt.
    Down,
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connecting => "Connecting",
            Self::ConnectedAvailable => "Connected Available",
            Self::Down => "Down",
        })
    }
}

/// One partner as monitoring lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartnerStatus {
    /// The partner's configured name.
    pub partner: String,
    /// Link state.
    pub connection: Connection,
    /// True when a mutually authenticated relationship exists.
    pub secure: bool,
    /// Why the partner is not secure (None when secure, or both sides have it off).
    pub reason: Option<Reason>,
    /// Current key epoch (0 before the first).
    pub epoch: u64,
    /// Consecutive failed attempts since the last success.
    pub reconnect_attempts: u32,
    /// What the partner's last hello said about its secure peering (None before one).
    pub partner_secure_peering: Option<bool>,
    /// How traffic to this partner must be treated (DESIGN.md section 2, mode matrix).
    pub traffic: TrafficMode,
}

/// Treatment of traffic to a partner, from the mode matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficMode {
    /// Both sides have secure peering off: compressed, not encrypted.
    CompressedNotEncrypted,
    /// Secure relationship established: compressed and encrypted.
    CompressedAndEncrypted,
    /// Any other case (one side off, authentication failed, unknown yet).
    Untouched,
}

impl TrafficMode {
    /// The matrix: `local_on` is this appliance's setting, `partner_on` the partner's
    /// announced one, `secure` whether mutual authentication succeeded.
    pub fn from_matrix(local_on: bool, partner_on: Option<bool>, secure: bool) -> Self {
        match (local_on, partner_on, secure) {
            (true, Some(true), true) => Self::CompressedAndEncrypted,
            (false, Some(false), _) => Self::CompressedNotEncrypted,
            _ => Self::Untouched,
        }
    }
}

impl PartnerStatus {
    pub(crate) fn new(partner: &str) -> Self {
        Self {
            partner: partner.to_owned(),
            connection: Connection::Connecting,
            secure: false,
            reason: None,
            epoch: 0,
            reconnect_attempts: 0,
            partner_secure_peering: None,
            traffic: TrafficMode::Untouched,
        }
    }
}

/// Application close codes on signaling connections.
pub(crate) mod close {
    pub const UPGRADE: u32 = 1;
    pub const UNKNOWN_PARTNER: u32 = 2;
    pub const NO_CLIENT_CERTIFICATE: u32 = 3;
    pub const PROTOCOL: u32 = 4;
    pub const SHUTDOWN: u32 = 5;
}

const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_BAD_CERTIFICATE: u8 = 42;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

/// Maps a QUIC connection error to the reason operators see.
pub(crate) fn classify(err: &quinn::ConnectionError, established: bool) -> Reason {
    use quinn::ConnectionError as E;
    match err {
        E::TransportError(te) => match crypto_alert(u64::from(te.code)) {
            Some(alert) => alert_reason(alert, DetectedBy::Us, &te.reason),
            None => Reason::Protocol(te.to_string()),
        },
        E::ConnectionClosed(frame) => match crypto_alert(u64::from(frame.error_code)) {
            Some(alert) => alert_reason(
                alert,
                DetectedBy::Partner,
                &String::from_utf8_lossy(&frame.reason),
            ),
            None => Reason::ClosedByPartner(frame.to_string()),
        },
        E::ApplicationClosed(app) => {
            let why = String::from_utf8_lossy(&app.reason).into_owned();
            match u32::try_from(u64::from(app.error_code)).unwrap_or(0) {
                close::NO_CLIENT_CERTIFICATE => Reason::CertificateRejected {
                    detected_by: DetectedBy::Partner,
                    detail: "no client certificate was presented".into(),
                },
                close::UNKNOWN_PARTNER => Reason::ClosedByPartner(
                    "the partner does not have this appliance configured".into(),
                ),
                _ => Reason::ClosedByPartner(why),
            }
        }
        E::TimedOut if established => Reason::KeepaliveTimeout,
        E::TimedOut => Reason::Unreachable("no answer before the handshake timed out".into()),
        E::Reset => Reason::Unreachable("the partner reset the connection (it restarted?)".into()),
        E::LocallyClosed => Reason::Protocol("closed locally".into()),
        other => Reason::Protocol(other.to_string()),
    }
}

fn crypto_alert(code: u64) -> Option<u8> {
    (0x100..0x200).contains(&code).then(|| (code - 0x100) as u8)
}

fn alert_reason(alert: u8, detected_by: DetectedBy, detail: &str) -> Reason {
    let lower = detail.to_ascii_lowercase();
    match alert {
        ALERT_UNKNOWN_CA => Reason::WrongCa { detected_by },
        ALERT_CERTIFICATE_EXPIRED => Reason::Expired { detected_by },
        ALERT_BAD_CERTIFICATE if detected_by == DetectedBy::Partner || lower.contains("name") => {
            Reason::NameMismatch { detected_by }
        }
        ALERT_HANDSHAKE_FAILURE => Reason::NoCommonAlgorithms { detected_by },
        ALERT_NO_APPLICATION_PROTOCOL => Reason::PeerNotSecured { peer_says: None },
        ALERT_CERTIFICATE_REQUIRED => Reason::CertificateRejected {
            detected_by,
            detail: "a client certificate is required".into(),
        },
        _ => Reason::CertificateRejected {
            detected_by,
            detail: format!("TLS alert {alert}: {detail}"),
        },
    }
}
