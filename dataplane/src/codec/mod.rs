//! Compression history codec: per-partner, per-lane history rings, a
//! content-defined match finder, a token stream with zstd on the residue,
//! loss recovery by in-band "forget" messages, and an on-disk history store.
//!
//! The codec is pure code: no sockets, clocks or threads. The fast path calls
//! [`Encoder::encode`] and [`Decoder::decode`] per packet with caller-owned
//! output buffers; control messages ([`ForgetRanges`], [`HistorySummary`]) are
//! produced and consumed as byte slices the tunnel carries as control payloads.
//! See `docs/codec.md` for the wire formats.
#![forbid(unsafe_code)]

mod decoder;
mod dictionary;
mod encoder;
mod gear;
mod ranges;
mod ring;
pub mod store;
mod wire;

pub use decoder::{DecodedMeta, Decoder, DecoderStats};
pub use dictionary::{MAX_DICTIONARY_BYTES, MIN_DICTIONARY_BYTES, ZstdDictionary};
pub use encoder::{EncodedMeta, Encoder, EncoderStats, FrameKind};
pub use ranges::RangeSet;
pub use wire::{ControlMessage, ForgetRanges, HistorySummary, MAX_FRAME_OVERHEAD};

/// Bytes of an encoded payload's position field (bytes 1..9 of every frame).
pub const POSITION_LEN: usize = 8;

/// The history position and payload length an encoded payload names, read from its
/// header without decoding it (the payload length of a frame that misses is still
/// known, so framing around it can go on).
pub fn frame_extent(frame: &[u8]) -> Result<(u64, usize), CodecError> {
    let h = wire::parse_frame_header(frame)?;
    Ok((h.position, h.payload_len))
}

/// Settings shared by both ends of a lane. Both partners must use the same
/// `history_bytes` for a lane (it decides where positions land in the ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecConfig {
    /// Size of the in-memory history ring per lane, a power of two ≥ 1 MiB.
    pub history_bytes: usize,
    /// Largest payload the fast path hands to the codec.
    pub max_payload: usize,
    /// Bytes at the end of the history the encoder never references from a
    /// later packet, so ordinary reordering does not produce misses.
    pub reorder_guard_bytes: u64,
    /// log2 of the number of slots in the fingerprint index.
    pub index_bits: u32,
    /// zstd level for the residue (1–3 recommended, 0 disables zstd).
    pub zstd_level: i32,
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self {
            history_bytes: 64 << 20,
            max_payload: 9216,
            reorder_guard_bytes: 32 << 10,
            index_bits: 20,
            zstd_level: 1,
        }
    }
}

impl CodecConfig {
    /// Checks the settings; the codec constructors call this.
    pub fn validate(&self) -> Result<(), CodecError> {
        let bad = |what: &'static str| Err(CodecError::Config(what));
        if !self.history_bytes.is_power_of_two() || self.history_bytes < (1 << 20) {
            return bad("history_bytes must be a power of two of at least 1 MiB");
        }
        if self.max_payload == 0 || self.max_payload > (1 << 16) {
            return bad("max_payload must be between 1 and 65536");
        }
        if self.max_payload * 4 > self.history_bytes {
            return bad("history_bytes must hold at least four maximal payloads");
        }
        if !(10..=26).contains(&self.index_bits) {
            return bad("index_bits must be between 10 and 26");
        }
        if !(0..=9).contains(&self.zstd_level) {
            return bad("zstd_level must be between 0 and 9");
        }
        Ok(())
    }
}

/// Errors of the codec. A [`CodecError::Miss`] is the expected outcome of a
/// reference into history the decoder does not hold; the others mean a
/// malformed frame, a misused API or a bad configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The frame references history this decoder does not hold (lost,
    /// overwritten, or not yet arrived). Drop the packet; a forget message is
    /// queued for the sender (see [`Decoder::take_control`]).
    #[error(
        "history miss: frame at {position} references [{start}, {end}) which is not held; packet dropped"
    )]
    Miss {
        /// Position of the frame that missed.
        position: u64,
        /// Start of the referenced range.
        start: u64,
        /// End of the referenced range.
        end: u64,
    },
    /// The restored payload does not match the frame's checksum: the history
    /// differs from the sender's. Treated like a miss.
    #[error("restored payload at {position} fails its checksum; packet dropped")]
    ChecksumMismatch {
        /// Position of the frame.
        position: u64,
    },
    /// The frame is not a valid encoded payload.
    #[error("malformed encoded payload: {0}")]
    Malformed(&'static str),
    /// The output buffer given to encode/decode is too small.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    OutputTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The payload is larger than the configured `max_payload`.
    #[error("payload of {len} bytes exceeds max_payload {max}; raise max_payload")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A control message could not be parsed.
    #[error("malformed control message: {0}")]
    Control(&'static str),
    /// The configuration is invalid.
    #[error("invalid codec configuration: {0}")]
    Config(&'static str),
    /// zstd failed to set up a context.
    #[error("zstd context setup failed: {0}; check the zstd level")]
    Zstd(#[source] std::io::Error),
    /// A zstd dictionary is unusable (size, unreadable file, refused by zstd).
    #[error("{0}")]
    Dictionary(String),
}

impl CodecError {
    /// True when the packet was dropped because of history it could not use;
    /// such drops are counted and recovered by forget messages.
    pub fn is_miss(&self) -> bool {
        matches!(self, Self::Miss { .. } | Self::ChecksumMismatch { .. })
    }
}
