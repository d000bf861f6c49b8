//! The crypto licence: a signed file naming the customer, the licensed features and a
//! validity period, verified with a configurable Ed25519 key. Secure peering needs a
//! valid licence with the `secure-peering` feature (DESIGN.md section 2, rule 10).

mod server;
mod state;

pub use server::{LicenceServer, LicenceSource, RemoteLicence};
pub use state::{InstalledLicence, LicenceOrigin, NoVerifyingKey, VerifyLicence};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::credentials::Secret;

/// The feature that secure peering requires.
pub const SECURE_PEERING: &str = "secure-peering";

const FORMAT: &str = "shunt-licence/1";

/// Why a licence is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LicenceError {
    /// No licence is installed and no licence server answered.
    #[error(
        "no licence is installed: install a licence file or point the appliance at a licence server"
    )]
    NoLicence,
    /// The file is not a Shunt licence.
    #[error("not a valid licence file: {0}")]
    Malformed(String),
    /// The signature does not verify under the configured key.
    #[error(
        "the licence signature does not verify: the file was altered or was issued for another \
         licensing key; ask your vendor for a new licence"
    )]
    BadSignature,
    /// The verifying key is malformed.
    #[error("the licence verifying key is invalid: it must be a 32-byte Ed25519 public key (hex)")]
    BadVerifyingKey,
    /// The licence has expired.
    #[error("the licence {licence_id} expired at {not_after} (unix time): renew it")]
    Expired {
        /// Licence identifier.
        licence_id: String,
        /// End of validity, seconds since the epoch.
        not_after: u64,
    },
    /// The licence is not valid yet.
    #[error(
        "the licence {licence_id} is valid only from {not_before} (unix time): check the clock"
    )]
    NotYetValid {
        /// Licence identifier.
        licence_id: String,
        /// Start of validity, seconds since the epoch.
        not_before: u64,
    },
    /// The licence lacks a needed feature.
    #[error(
        "the licence {licence_id} does not include {feature:?} (it has {has:?}): obtain a licence with it"
    )]
    MissingFeature {
        /// Licence identifier.
        licence_id: String,
        /// The feature required.
        feature: String,
        /// The features licensed.
        has: Vec<String>,
    },
    /// Talking to the licence server failed.
    #[error("licence server {server}: {detail}")]
    Server {
        /// The server's address.
        server: String,
        /// What went wrong.
        detail: String,
    },
    /// The daemon was started without a licence verifying key.
    #[error(
        "no licence verifying key is configured on this appliance: start shunt-control with \
         --licence-verifying-key HEX (the vendor's Ed25519 public key)"
    )]
    NoVerifyingKey,
    /// The licence could not be obtained or read.
    #[error("no usable licence: {0}")]
    Unusable(String),
    /// Signing failed (issuing side).
    #[error("cannot sign the licence: {0}")]
    Signing(String),
}

/// What a licence grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenceTerms {
    /// Unique identifier of this licence.
    pub licence_id: String,
    /// Licensee.
    pub customer: String,
    /// Licensed features, e.g. `secure-peering`.
    pub features: Vec<String>,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: u64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: u64,
}

/// The file as stored: the exact signed body text and its signature.
#[derive(Serialize, Deserialize)]
struct LicenceFile {
    format: String,
    body: String,
    signature: String,
}

/// A licence whose signature has been verified (its dates and features not yet checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Licence {
    terms: LicenceTerms,
    file: Vec<u8>,
}

/// Licence state for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LicenceState {
    /// Usable now.
    Valid,
    /// Not valid before `not_before`.
    NotYetValid,
    /// Past `not_after`.
    Expired,
}

/// What `status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenceStatus {
    /// The terms.
    pub terms: LicenceTerms,
    /// Valid, expired or not yet valid.
    pub state: LicenceState,
    /// Time left until expiry (zero when expired).
    pub remaining: Duration,
}

impl Licence {
    /// The terms.
    pub fn terms(&self) -> &LicenceTerms {
        &self.terms
    }

    /// The file bytes, as installed (to persist or serve).
    pub fn file(&self) -> &[u8] {
        &self.file
    }

    /// Checks validity at `now` and that `feature` is licensed.
    pub fn check(&self, feature: &str, now: SystemTime) -> Result<(), LicenceError> {
        let t = &self.terms;
        let now = unix(now);
        if now < t.not_before {
            return Err(LicenceError::NotYetValid {
                licence_id: t.licence_id.clone(),
                not_before: t.not_before,
            });
        }
        if now > t.not_after {
            return Err(LicenceError::Expired {
                licence_id: t.licence_id.clone(),
                not_after: t.not_after,
            });
        }
        if !t.features.iter().any(|f| f == feature) {
            return Err(LicenceError::MissingFeature {
                licence_id: t.licence_id.clone(),
                feature: feature.to_owned(),
                has: t.features.clone(),
            });
        }
        Ok(())
    }

    /// Status with expiry at `now`.
    pub fn status(&self, now: SystemTime) -> LicenceStatus {
        let t = &self.terms;
        let secs = unix(now);
        let state = if secs < t.not_before {
            LicenceState::NotYetValid
        } else if secs > t.not_after {
            LicenceState::Expired
        } else {
            LicenceState::Valid
        };
        LicenceStatus {
            terms: t.clone(),
            state,
            remaining: Duration::from_secs(t.not_after.saturating_sub(secs)),
        }
    }
}

/// Whether secure peering may be enabled with the installed licence (if any).
pub fn secure_peering_allowed(
    licence: Option<&Licence>,
    now: SystemTime,
) -> Result<(), LicenceError> {
    licence
        .ok_or(LicenceError::NoLicence)?
        .check(SECURE_PEERING, now)
}

/// Verifies licence files with the vendor's Ed25519 public key.
#[derive(Clone, Debug)]
pub struct LicenceVerifier {
    public_key: Vec<u8>,
}

impl LicenceVerifier {
    /// A verifier for a raw 32-byte Ed25519 public key.
    pub fn new(public_key: &[u8]) -> Result<Self, LicenceError> {
        if public_key.len() != 32 {
            return Err(LicenceError::BadVerifyingKey);
        }
        Ok(Self {
            public_key: public_key.to_vec(),
        })
    }

    /// A verifier for a hex-encoded key (as kept in configuration).
    pub fn from_hex(text: &str) -> Result<Self, LicenceError> {
        Self::new(&hex::decode(text.trim()).map_err(|_| LicenceError::BadVerifyingKey)?)
    }

    /// Checks the file's format and signature.
    pub fn verify(&self, file: &[u8]) -> Result<Licence, LicenceError> {
        let parsed: LicenceFile =
            serde_json::from_slice(file).map_err(|e| LicenceError::Malformed(e.to_string()))?;
        if parsed.format != FORMAT {
            return Err(LicenceError::Malformed(format!(
                "unknown format {:?}",
                parsed.format
            )));
        }
        let signature = hex::decode(&parsed.signature)
            .map_err(|_| LicenceError::Malformed("signature is not hex".into()))?;
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(parsed.body.as_bytes(), &signature)
            .map_err(|_| LicenceError::BadSignature)?;
        let terms: LicenceTerms = serde_json::from_str(&parsed.body)
            .map_err(|e| LicenceError::Malformed(e.to_string()))?;
        Ok(Licence {
            terms,
            file: file.to_vec(),
        })
    }
}

/// The vendor side: signs licence files. Used by tests and licence tooling.
pub struct LicenceSigner {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for LicenceSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenceSigner")
            .field("public_key", &hex::encode(self.public_key()))
            .finish()
    }
}

impl LicenceSigner {
    /// A fresh signing key; returns it with its PKCS#8 form to keep as a secret.
    pub fn generate() -> Result<(Self, Secret), LicenceError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| LicenceError::Signing(e.to_string()))?;
        let secret = Secret::from_slice(pkcs8.as_ref());
        Ok((Self::from_pkcs8(&secret)?, secret))
    }

    /// Loads a signing key from PKCS#8.
    pub fn from_pkcs8(pkcs8: &Secret) -> Result<Self, LicenceError> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.expose())
            .map_err(|e| LicenceError::Signing(e.to_string()))?;
        Ok(Self { key })
    }

    /// The public key for [`LicenceVerifier::new`].
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// Signs `terms` into licence file bytes.
    pub fn sign(&self, terms: &LicenceTerms) -> Result<Vec<u8>, LicenceError> {
        let body =
            serde_json::to_string(terms).map_err(|e| LicenceError::Signing(e.to_string()))?;
        let signature = hex::encode(self.key.sign(body.as_bytes()).as_ref());
        serde_json::to_vec_pretty(&LicenceFile {
            format: FORMAT.into(),
            body,
            signature,
        })
        .map_err(|e| LicenceError::Signing(e.to_string()))
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(features: &[&str], from: u64, to: u64) -> LicenceTerms {
        LicenceTerms {
            licence_id: "L-1".into(),
            customer: "Example Ltd".into(),
            features: features.iter().map(|s| s.to_string()).collect(),
            not_before: from,
            not_after: to,
        }
    }

    #[test]
    fn valid_licence_allows_secure_peering() {
        let (signer, _) = LicenceSigner::generate().unwrap();
        let now = SystemTime::now();
        let file = signer
            .sign(&terms(&[SECURE_PEERING], unix(now) - 10, unix(now) + 3600))
            .unwrap();
        let lic = LicenceVerifier::new(&signer.public_key())
            .unwrap()
            .verify(&file)
            .unwrap();
        secure_peering_allowed(Some(&lic), now).unwrap();
        let status = lic.status(now);
        assert_eq!(status.state, LicenceState::Valid);
        assert!(status.remaining > Duration::from_secs(3500));
    }

    #[test]
    fn each_failure_has_its_reason() {
        let (signer, _) = LicenceSigner::generate().unwrap();
        let (other, _) = LicenceSigner::generate().unwrap();
        let now = SystemTime::now();
        let verifier = LicenceVerifier::new(&signer.public_key()).unwrap();

        let foreign = other.sign(&terms(&[SECURE_PEERING], 0, u64::MAX)).unwrap();
        assert!(matches!(
            verifier.verify(&foreign),
            Err(LicenceError::BadSignature)
        ));

        let file = signer.sign(&terms(&[SECURE_PEERING], 0, u64::MAX)).unwrap();
        let tampered = String::from_utf8(file)
            .unwrap()
            .replace("Example Ltd", "Other Ltd");
        assert!(matches!(
            verifier.verify(tampered.as_bytes()),
            Err(LicenceError::BadSignature)
        ));

        let expired = signer
            .sign(&terms(&[SECURE_PEERING], 0, unix(now) - 1))
            .unwrap();
        let lic = verifier.verify(&expired).unwrap();
        assert!(matches!(
            secure_peering_allowed(Some(&lic), now),
            Err(LicenceError::Expired { .. })
        ));
        assert_eq!(lic.status(now).state, LicenceState::Expired);

        let no_feature = signer.sign(&terms(&["compression"], 0, u64::MAX)).unwrap();
        let lic = verifier.verify(&no_feature).unwrap();
        let err = secure_peering_allowed(Some(&lic), now).unwrap_err();
        assert!(err.to_string().contains("secure-peering"), "{err}");

        assert!(matches!(
            secure_peering_allowed(None, now),
            Err(LicenceError::NoLicence)
        ));
        assert!(matches!(
            verifier.verify(b"{}"),
            Err(LicenceError::Malformed(_))
        ));
    }
}
