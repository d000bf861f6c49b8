//! The AEAD stage: AES-256-GCM (aws-lc-rs) sealing and opening in place, with the
//! nonce built from the lane and the counter.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use super::header::HEADER_LEN;
use super::keys::SecretKey;

/// Length of the GCM authentication tag that follows a sealed payload.
pub const TAG_LEN: usize = 16;

/// The AES-256-GCM nonce of a packet: lane (2 bytes, big-endian), two zero bytes,
/// counter (8 bytes, big-endian). Unique as long as a (key, lane, counter) triple is
/// never sealed twice, which the session guarantees.
pub fn nonce(lane: u16, counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..2].copy_from_slice(&lane.to_be_bytes());
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// An expanded AES-256-GCM key for one direction and epoch. The aws-lc context
/// wipes its key schedule when freed; `Debug` prints no key material.
pub struct PacketKey {
    key: LessSafeKey,
}

/// Authentication failed (wrong key, tampered header or payload, truncated tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailed;

impl PacketKey {
    /// Expands `secret` into a cipher context.
    pub fn new(secret: &SecretKey) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, secret.dangerous_as_bytes())
            .expect("a 32-byte key is always valid for AES-256-GCM");
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `payload` in place, authenticating `header`, and returns the tag.
    #[inline]
    pub fn seal(
        &self,
        lane: u16,
        counter: u64,
        header: &[u8; HEADER_LEN],
        payload: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let nonce = Nonce::assume_unique_for_key(nonce(lane, counter));
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), payload)
            .expect("AES-256-GCM sealing fails only beyond 64 GiB per packet");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts `ciphertext_and_tag` in place, authenticating `header`; returns the
    /// plaintext length (the payload is the prefix of the buffer).
    #[inline]
    pub fn open(
        &self,
        lane: u16,
        counter: u64,
        header: &[u8; HEADER_LEN],
        ciphertext_and_tag: &mut [u8],
    ) -> Result<usize, AuthFailed> {
        let nonce = Nonce::assume_unique_for_key(nonce(lane, counter));
        self.key
            .open_in_place(nonce, Aad::from(header), ciphertext_and_tag)
            .map(|plain| plain.len())
            .map_err(|_| AuthFailed)
    }
}

impl fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacketKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let key = PacketKey::new(&SecretKey::from_bytes([9; 32]));
        let header = [1u8; HEADER_LEN];
        let mut buf = b"payload under test".to_vec();
        let tag = key.seal(3, 42, &header, &mut buf);
        assert_ne!(&buf[..], b"payload under test");
        buf.extend_from_slice(&tag);

        let mut ok = buf.clone();
        assert_eq!(key.open(3, 42, &header, &mut ok), Ok(18));
        assert_eq!(&ok[..18], b"payload under test");

        let mut wrong_counter = buf.clone();
        assert_eq!(
            key.open(3, 43, &header, &mut wrong_counter),
            Err(AuthFailed)
        );
        let mut wrong_lane = buf.clone();
        assert_eq!(key.open(4, 42, &header, &mut wrong_lane), Err(AuthFailed));
        let mut bad_header = header;
        bad_header[5] ^= 1;
        let mut c = buf.clone();
        assert_eq!(key.open(3, 42, &bad_header, &mut c), Err(AuthFailed));
        let mut short = buf[..TAG_LEN - 1].to_vec();
        assert_eq!(key.open(3, 42, &header, &mut short), Err(AuthFailed));
        assert_eq!(format!("{key:?}"), "PacketKey(<redacted>)");
    }

    #[test]
    fn nonce_layout() {
        assert_eq!(
            nonce(0x0102, 0x0304_0506_0708_090A),
            [1, 2, 0, 0, 3, 4, 5, 6, 7, 8, 9, 10]
        );
    }
}
