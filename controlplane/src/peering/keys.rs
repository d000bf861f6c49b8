//! Session keys for the data plane.
//!
//! Schedule, per secure signaling connection:
//! - `E = TLS-Exporter("EXPORTER-shunt-tunnel-keys", context, 32)` where context is
//!   `"shunt-v1" || initiator_index (u32 BE) || responder_index (u32 BE)`;
//! - for each epoch n ≥ 1 the partners exchange fresh ephemeral X25519 keys over the
//!   signaling stream; `PRK = HKDF-Extract(salt = E, ikm = X25519 shared secret)`;
//! - `key(n, dir) = HKDF-Expand(PRK, "shunt epoch key" || n (u64 BE) || dir, 32)`,
//!   dir = `"i2r"` or `"r2i"`; the initiator sends with i2r, the responder with r2i.
//!
//! An epoch key reveals neither E nor any ephemeral secret, and each epoch's
//! ephemeral secrets are dropped (wiped) once its keys exist, so a leaked old key
//! does not reveal a new one.

use std::fmt;

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::rand::SystemRandom;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::PeeringError;

/// TLS exporter label.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-shunt-tunnel-keys";

/// A 256-bit tunnel key (AES-256-GCM); wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct TunnelKey([u8; 32]);

impl TunnelKey {
    /// The key bytes, for the data plane's AEAD only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelKey(redacted)")
    }
}

/// Keys for one epoch with one partner, as handed to the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKeys {
    /// The partner's configured name.
    pub partner: String,
    /// Key epoch (1, 2, ...), carried in every tunnel packet header.
    pub epoch: u64,
    /// Key for packets this appliance sends.
    pub tx_key: TunnelKey,
    /// Key for packets this appliance receives.
    pub rx_key: TunnelKey,
    /// Session index the partner puts in packets to us.
    pub local_index: u32,
    /// Session index we put in packets to the partner.
    pub remote_index: u32,
}

/// Which end of the signaling connection this appliance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Opened the QUIC connection.
    Initiator,
    /// Accepted it.
    Responder,
}

/// The exporter secret of one TLS session.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ExporterSecret([u8; 32]);

impl ExporterSecret {
    /// Wraps exporter output.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// The exporter context for a pair of session indices.
pub fn exporter_context(initiator_index: u32, responder_index: u32) -> Vec<u8> {
    let mut ctx = b"shunt-v1".to_vec();
    ctx.extend_from_slice(&initiator_index.to_be_bytes());
    ctx.extend_from_slice(&responder_index.to_be_bytes());
    ctx
}

/// This side's half of an epoch's X25519 exchange.
pub struct EphemeralHalf {
    private: EphemeralPrivateKey,
    public: [u8; 32],
}

impl EphemeralHalf {
    /// A fresh ephemeral key pair.
    pub fn generate() -> Result<Self, PeeringError> {
        let private = EphemeralPrivateKey::generate(&X25519, &SystemRandom::new())
            .map_err(|_| PeeringError::Crypto("cannot generate an X25519 key".into()))?;
        let public = private
            .compute_public_key()
            .map_err(|_| PeeringError::Crypto("cannot compute an X25519 public key".into()))?;
        let public = <[u8; 32]>::try_from(public.as_ref())
            .map_err(|_| PeeringError::Crypto("unexpected X25519 key length".into()))?;
        Ok(Self { private, public })
    }

    /// The public key to send.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// Completes the exchange with the partner's public key and derives the epoch keys.
    /// The ephemeral private key is consumed.
    pub fn finish(
        self,
        exporter: &ExporterSecret,
        peer_public: &[u8],
        epoch: u64,
        side: Side,
    ) -> Result<(TunnelKey, TunnelKey), PeeringError> {
        let peer = UnparsedPublicKey::new(&X25519, peer_public);
        agreement::agree_ephemeral(
            self.private,
            peer,
            PeeringError::Crypto("X25519 exchange failed (bad partner key)".into()),
            |shared| Ok(derive_epoch(exporter, shared, epoch, side)),
        )?
    }
}

/// The HKDF step of the schedule (pure; exposed for tests).
pub fn derive_epoch(
    exporter: &ExporterSecret,
    shared: &[u8],
    epoch: u64,
    side: Side,
) -> Result<(TunnelKey, TunnelKey), PeeringError> {
    let prk = Salt::new(HKDF_SHA256, &exporter.0).extract(shared);
    let expand = |dir: &[u8]| -> Result<TunnelKey, PeeringError> {
        let epoch_be = epoch.to_be_bytes();
        let info: [&[u8]; 3] = [b"shunt epoch key", &epoch_be, dir];
        let mut out = [0u8; 32];
        prk.expand(&info, HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .map_err(|_| PeeringError::Crypto("HKDF expand failed".into()))?;
        Ok(TunnelKey(out))
    };
    let i2r = expand(b"i2r")?;
    let r2i = expand(b"r2i")?;
    Ok(match side {
        Side::Initiator => (i2r, r2i),
        Side::Responder => (r2i, i2r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_and_epochs_differ() {
        let e = || ExporterSecret::new([7; 32]);
        let mut seen = Vec::new();
        for epoch in 1..=3 {
            let a = EphemeralHalf::generate().unwrap();
            let b = EphemeralHalf::generate().unwrap();
            let (pa, pb) = (a.public(), b.public());
            let (a_tx, a_rx) = a.finish(&e(), &pb, epoch, Side::Initiator).unwrap();
            let (b_tx, b_rx) = b.finish(&e(), &pa, epoch, Side::Responder).unwrap();
            assert_eq!(a_tx, b_rx);
            assert_eq!(a_rx, b_tx);
            assert_ne!(a_tx, a_rx);
            assert!(!seen.contains(&a_tx));
            seen.push(a_tx);
        }
    }

    #[test]
    fn same_shared_secret_different_epoch_number_differs() {
        let e = ExporterSecret::new([1; 32]);
        let (k1, _) = derive_epoch(&e, &[9; 32], 1, Side::Initiator).unwrap();
        let (k2, _) = derive_epoch(&e, &[9; 32], 2, Side::Initiator).unwrap();
        assert_ne!(k1, k2);
        assert_eq!(format!("{k1:?}"), "TunnelKey(redacted)");
    }
}
