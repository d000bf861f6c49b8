//! The licence state the control plane keeps, and the seam through which a
//! licence file is verified. Secure peering cannot be enabled without a
//! valid licence (DESIGN.md section 2, rule 10).

use std::time::{SystemTime, UNIX_EPOCH};

/// What is known about the installed licence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceState {
    pub holder: String,
    /// Seconds since the Unix epoch; 0 when there is no licence.
    pub expires_at_unix: u64,
    /// "file", "server host:port" or "none".
    pub source: String,
    /// Why the licence is not valid; empty when it is.
    pub detail: String,
}

impl LicenceState {
    pub fn none() -> Self {
        Self {
            holder: String::new(),
            expires_at_unix: 0,
            source: "none".into(),
            detail: "no licence installed: install a licence file or set a licence server".into(),
        }
    }

    pub fn is_valid_now(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.detail.is_empty() && self.expires_at_unix > now
    }
}

/// A verified licence's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLicence {
    pub holder: String,
    pub expires_at_unix: u64,
}

/// Checks a licence file's signature against the configured verifying key.
/// The implementation comes from the licensing library; see
/// `service/licensing.rs` for how the daemon uses it.
pub trait LicenceVerifier: Send + Sync {
    /// The licence's holder and expiry, or why it is refused (a sentence an
    /// operator can act on).
    fn verify(&self, licence: &[u8]) -> Result<VerifiedLicence, String>;
}

/// The verifier used when the daemon has no licence verifying key
/// configured: every licence file is refused, with that reason.
#[derive(Debug, Default)]
pub struct NoVerifyingKey;

impl LicenceVerifier for NoVerifyingKey {
    fn verify(&self, _licence: &[u8]) -> Result<VerifiedLicence, String> {
        Err("no licence verifying key is configured on this appliance: start shunt-control with the \
             vendor's licence verifying key"
            .into())
    }
}
