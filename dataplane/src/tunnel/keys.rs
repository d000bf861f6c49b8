//! Key material: 256-bit secrets that wipe themselves, and the HKDF schedule that
//! turns a pre-shared key into one key per epoch.

use std::fmt;

use aws_lc_rs::hkdf;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of every tunnel key in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Salt of the manual-keying schedule; changing it changes every derived key.
const SCHEDULE_SALT: &[u8] = b"shunt tunnel v1 manual keying";

/// A 256-bit secret: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// Not hexadecimal.
    #[error("key is not hexadecimal (use 64 hex digits, e.g. from `openssl rand -hex 32`)")]
    NotHex,
    /// Wrong length.
    #[error("key has {0} bytes, expected 32 (64 hex digits)")]
    Length(usize),
}

impl SecretKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads a key written as 64 hexadecimal digits (surrounding spaces ignored).
    pub fn from_hex(text: &str) -> Result<Self, KeyParseError> {
        let text = text.trim();
        let mut bytes = hex::decode(text).map_err(|_| KeyParseError::NotHex)?;
        let key = match <[u8; KEY_LEN]>::try_from(bytes.as_slice()) {
            Ok(k) => Ok(Self(k)),
            Err(_) => Err(KeyParseError::Length(bytes.len())),
        };
        bytes.zeroize();
        key
    }

    /// The raw bytes; only for building cipher contexts inside this module tree.
    pub(crate) fn dangerous_as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// The send and receive keys of one epoch of a session.
#[derive(Debug, Clone)]
pub struct EpochKeys {
    /// Seals what this appliance sends to the partner.
    pub send: SecretKey,
    /// Opens what the partner sends to this appliance.
    pub receive: SecretKey,
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(psk: &SecretKey, label: &[u8], context: &[u8], out: &mut [u8]) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SCHEDULE_SALT).extract(psk.dangerous_as_bytes());
    let info = [label, context];
    // Expanding at most 32 bytes from SHA-256 is always within HKDF's 255 * 32 limit.
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA256 expand of <= 32 bytes cannot fail");
}

/// The key of `epoch` derived from a directional pre-shared key:
/// `HKDF-SHA256(salt = "shunt tunnel v1 manual keying", ikm = psk,
/// info = "epoch key" || epoch as u32 big-endian)`.
pub fn derive_epoch_key(psk: &SecretKey, epoch: u32) -> SecretKey {
    let mut out = [0u8; KEY_LEN];
    expand(psk, b"epoch key", &epoch.to_be_bytes(), &mut out);
    let key = SecretKey(out);
    out.zeroize();
    key
}

/// A session index derived from a directional pre-shared key (`info = "session
/// index"`, first four bytes): both ends compute the receiver's index from the key
/// that seals toward it, so manual keying needs no configured indices.
pub fn derive_session_index(psk: &SecretKey) -> u32 {
    let mut out = [0u8; 4];
    expand(psk, b"session index", &[], &mut out);
    u32::from_be_bytes(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_are_checked_and_never_printed() {
        let k = SecretKey::from_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(k.dangerous_as_bytes(), &[0xab; 32]);
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
        assert_eq!(SecretKey::from_hex("abc"), Err(KeyParseError::NotHex));
        assert_eq!(
            SecretKey::from_hex(&"00".repeat(16)),
            Err(KeyParseError::Length(16))
        );
        assert_eq!(
            SecretKey::from_hex("zz".repeat(32).as_str()),
            Err(KeyParseError::NotHex)
        );
    }

    #[test]
    fn epochs_and_directions_give_distinct_keys() {
        let a = SecretKey::from_bytes([1; 32]);
        let b = SecretKey::from_bytes([2; 32]);
        assert_ne!(derive_epoch_key(&a, 0), derive_epoch_key(&a, 1));
        assert_ne!(derive_epoch_key(&a, 5), derive_epoch_key(&b, 5));
        assert_eq!(derive_epoch_key(&a, 5), derive_epoch_key(&a, 5));
        assert_ne!(derive_session_index(&a), derive_session_index(&b));
    }
}
