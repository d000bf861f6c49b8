//! The daemon's side of licensing: which verifier `shunt-control` was started
//! with, and the licence currently installed (from a file or a licence server).

use std::time::SystemTime;

use super::{Licence, LicenceError, LicenceVerifier, secure_peering_allowed};

/// Checks a licence file's signature. [`LicenceVerifier`] (the vendor's Ed25519
/// key) is the real one; [`NoVerifyingKey`] refuses everything, with that reason.
pub trait VerifyLicence: Send + Sync {
    /// The verified licence, or why it is refused.
    fn verify_file(&self, file: &[u8]) -> Result<Licence, LicenceError>;
}

impl VerifyLicence for LicenceVerifier {
    fn verify_file(&self, file: &[u8]) -> Result<Licence, LicenceError> {
        self.verify(file)
    }
}

/// The verifier used when the daemon has no licence verifying key configured:
/// every licence file is refused, and the error says how to configure one.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoVerifyingKey;

impl VerifyLicence for NoVerifyingKey {
    fn verify_file(&self, _file: &[u8]) -> Result<Licence, LicenceError> {
        Err(LicenceError::NoVerifyingKey)
    }
}

/// Where the installed licence came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenceOrigin {
    /// Nothing installed.
    None,
    /// Installed as a file through the API.
    File,
    /// Fetched from a licence server at this address.
    Server(String),
}

impl std::fmt::Display for LicenceOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::File => f.write_str("file"),
            Self::Server(addr) => write!(f, "server {addr}"),
        }
    }
}

/// The licence the appliance holds now.
#[derive(Debug, Clone)]
pub struct InstalledLicence {
    /// The verified licence, if any.
    pub licence: Option<Licence>,
    /// Where it came from.
    pub origin: LicenceOrigin,
    /// Why the last attempt to get a licence failed (a licence server that did not
    /// answer, a file that was refused at start); the licence, if any, is kept.
    pub problem: Option<String>,
}

impl InstalledLicence {
    /// No licence.
    pub fn none() -> Self {
        Self {
            licence: None,
            origin: LicenceOrigin::None,
            problem: None,
        }
    }

    /// Whether secure peering may be enabled at `now`, and if not why.
    pub fn check(&self, now: SystemTime) -> Result<(), LicenceError> {
        match (&self.licence, &self.problem) {
            (None, Some(problem)) => Err(LicenceError::Unusable(problem.clone())),
            (licence, _) => secure_peering_allowed(licence.as_ref(), now),
        }
    }

    /// Whether the licence allows secure peering now.
    pub fn is_valid_now(&self) -> bool {
        self.check(SystemTime::now()).is_ok()
    }
}
