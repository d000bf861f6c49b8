//! The tunnel header: a fixed 20-byte, versioned, big-endian header carried in front of
//! every tunnel payload and authenticated as AEAD associated data.
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
//! +-+-+-----------+---------------+---------------+---------------+
//! |0|0|  version  |     type      |     flags     |   key epoch   |
//! +-+-+-----------+---------------+---------------+---------------+
//! |             lane              | control kind  |   reserved    |
//! +-------------------------------+---------------+---------------+
//! |                    receiver session index                     |
//! +---------------------------------------------------------------+
//! |                                                               |
//! +                       counter (64 bits)                       +
//! |                                                               |
//! +---------------------------------------------------------------+
//! ```
//!
//! The first byte keeps its top two bits zero so that QUIC packets (which always set
//! one of them) sharing the tunnel's UDP port can be told apart by the XDP program.

use thiserror::Error;

/// Length of the tunnel header in bytes.
pub const HEADER_LEN: usize = 20;
/// The only header version this build speaks.
pub const VERSION: u8 = 1;
/// Mask of the two bits of the first byte that must be zero (QUIC sets one of them).
pub const QUIC_BITS: u8 = 0xC0;

/// Flag: the payload is sealed with AES-256-GCM and followed by a 16-byte tag.
pub const FLAG_ENCRYPTED: u8 = 0x01;
/// Every flag bit this version defines; the others must be zero.
const KNOWN_FLAGS: u8 = FLAG_ENCRYPTED;

/// What a tunnel packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// An encoded LAN packet.
    Data,
    /// An in-band control message of the given kind.
    Control(ControlKind),
}

/// Sub-type of an in-band control message. Unknown kinds parse (the format is
/// extensible) and are left to the receiver to count and ignore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlKind {
    /// The codec asks its partner to forget history ranges it could not decode.
    ForgetRanges,
    /// The codec's summary of the sender's encoder lane (which history it holds,
    /// after a restart): for the receiver's decoder of that lane, which answers with
    /// [`ControlKind::DecoderSummary`].
    HistorySummary,
    /// The summary of the sender's decoder of a lane, answering a
    /// [`ControlKind::HistorySummary`]: for the receiver's encoder of that lane.
    DecoderSummary,
    /// The summary of the sender's decoder of a lane, sent unasked after the sender
    /// started: for the receiver's encoder, which sends its
    /// [`ControlKind::HistorySummary`] in return.
    DecoderSummaryRequest,
    /// A kind this build does not know.
    Other(u8),
}

impl ControlKind {
    /// The kind's byte on the wire (never zero).
    pub fn to_byte(self) -> u8 {
        match self {
            Self::ForgetRanges => 1,
            Self::HistorySummary => 2,
            Self::DecoderSummary => 3,
            Self::DecoderSummaryRequest => 4,
            Self::Other(b) => b,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => None,
            1 => Some(Self::ForgetRanges),
            2 => Some(Self::HistorySummary),
            3 => Some(Self::DecoderSummary),
            4 => Some(Self::DecoderSummaryRequest),
            b => Some(Self::Other(b)),
        }
    }
}

/// A parsed (or to be written) tunnel header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Data or control (with its kind).
    pub packet_type: PacketType,
    /// Flag bits (`FLAG_*`).
    pub flags: u8,
    /// Low eight bits of the sender's key epoch.
    pub epoch: u8,
    /// The sender's lane (its encoder stream, one per sending worker).
    pub lane: u16,
    /// The receiver's index for this session, chosen by the receiver.
    pub receiver_index: u32,
    /// Per lane and key packet counter; also the AEAD nonce.
    pub counter: u64,
}

/// Why bytes are not a valid tunnel header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer bytes than a header.
    #[error("tunnel packet of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated(usize),
    /// One of the two top bits of the first byte is set: this is QUIC, not the tunnel.
    #[error("first byte {0:#04x} has a QUIC bit set; not a tunnel packet")]
    NotTunnel(u8),
    /// A version this build does not speak.
    #[error("tunnel header version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    /// Unknown packet type byte.
    #[error("unknown tunnel packet type {0}")]
    PacketType(u8),
    /// Control kind zero on a control packet, or non-zero on a data packet.
    #[error("control kind {kind} does not match packet type {packet_type}")]
    ControlKind {
        /// Type byte.
        packet_type: u8,
        /// Control kind byte.
        kind: u8,
    },
    /// Flag bits this version does not define.
    #[error("unknown tunnel flags {0:#04x}")]
    Flags(u8),
    /// The reserved byte is not zero.
    #[error("reserved header byte is {0:#04x}, must be zero")]
    Reserved(u8),
}

const TYPE_DATA: u8 = 0;
const TYPE_CONTROL: u8 = 1;

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        let (ty, kind) = match self.packet_type {
            PacketType::Data => (TYPE_DATA, 0),
            PacketType::Control(k) => (TYPE_CONTROL, k.to_byte()),
        };
        out[0] = VERSION;
        out[1] = ty;
        out[2] = self.flags;
        out[3] = self.epoch;
        out[4..6].copy_from_slice(&self.lane.to_be_bytes());
        out[6] = kind;
        out[7] = 0;
        out[8..12].copy_from_slice(&self.receiver_index.to_be_bytes());
        out[12..20].copy_from_slice(&self.counter.to_be_bytes());
    }

    /// Returns the header as bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        self.write(&mut out);
        out
    }

    /// Parses the header at the start of `packet`. Strict: every reserved bit and
    /// unknown value is rejected, except unknown control kinds.
    pub fn parse(packet: &[u8]) -> Result<Self, HeaderError> {
        let Some(b) = packet.first_chunk::<HEADER_LEN>() else {
            return Err(HeaderError::Truncated(packet.len()));
        };
        if b[0] & QUIC_BITS != 0 {
            return Err(HeaderError::NotTunnel(b[0]));
        }
        if b[0] != VERSION {
            return Err(HeaderError::Version(b[0]));
        }
        let packet_type = match (b[1], ControlKind::from_byte(b[6])) {
            (TYPE_DATA, None) => PacketType::Data,
            (TYPE_CONTROL, Some(kind)) => PacketType::Control(kind),
            (TYPE_DATA | TYPE_CONTROL, _) => {
                return Err(HeaderError::ControlKind {
                    packet_type: b[1],
                    kind: b[6],
                });
            }
            (other, _) => return Err(HeaderError::PacketType(other)),
        };
        if b[2] & !KNOWN_FLAGS != 0 {
            return Err(HeaderError::Flags(b[2]));
        }
        if b[7] != 0 {
            return Err(HeaderError::Reserved(b[7]));
        }
        Ok(Self {
            packet_type,
            flags: b[2],
            epoch: b[3],
            lane: u16::from_be_bytes([b[4], b[5]]),
            receiver_index: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            counter: u64::from_be_bytes([b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19]]),
        })
    }

    /// Whether the payload is AEAD-sealed.
    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Header {
        Header {
            packet_type: PacketType::Control(ControlKind::ForgetRanges),
            flags: FLAG_ENCRYPTED,
            epoch: 7,
            lane: 0x0102,
            receiver_index: 0xA1B2_C3D4,
            counter: 0x0011_2233_4455_6677,
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let b = sample().to_bytes();
        assert_eq!(
            b,
            [
                1, 1, 1, 7, 0x01, 0x02, 1, 0, 0xA1, 0xB2, 0xC3, 0xD4, 0x00, 0x11, 0x22, 0x33, 0x44,
                0x55, 0x66, 0x77
            ]
        );
        assert_eq!(b[0] & QUIC_BITS, 0);
    }

    #[test]
    fn rejects_quic_and_bad_fields() {
        let good = sample().to_bytes();
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            Header::parse(&b)
        };
        assert_eq!(with(0, 0x40), Err(HeaderError::NotTunnel(0x40)));
        assert_eq!(with(0, 0xC1), Err(HeaderError::NotTunnel(0xC1)));
        assert_eq!(with(0, 2), Err(HeaderError::Version(2)));
        assert_eq!(with(1, 9), Err(HeaderError::PacketType(9)));
        assert_eq!(with(2, 0x81), Err(HeaderError::Flags(0x81)));
        assert_eq!(with(7, 1), Err(HeaderError::Reserved(1)));
        assert!(matches!(with(6, 0), Err(HeaderError::ControlKind { .. })));
        assert_eq!(
            Header::parse(&good[..HEADER_LEN - 1]),
            Err(HeaderError::Truncated(HEADER_LEN - 1))
        );
        let mut data = good;
        data[1] = 0;
        assert!(matches!(
            Header::parse(&data),
            Err(HeaderError::ControlKind { .. })
        ));
        assert_eq!(
            with(6, 200).map(|h| h.packet_type),
            Ok(PacketType::Control(ControlKind::Other(200)))
        );
    }

    proptest! {
        #[test]
        fn round_trips(kind in 0u8..6, flags in 0u8..2, epoch: u8, lane: u16, idx: u32, counter: u64,
                       tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let packet_type = match kind {
                0 => PacketType::Data,
                1 => PacketType::Control(ControlKind::ForgetRanges),
                2 => PacketType::Control(ControlKind::HistorySummary),
                3 => PacketType::Control(ControlKind::DecoderSummary),
                4 => PacketType::Control(ControlKind::DecoderSummaryRequest),
                _ => PacketType::Control(ControlKind::Other(77)),
            };
            let h = Header { packet_type, flags, epoch, lane, receiver_index: idx, counter };
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(&tail);
            prop_assert_eq!(Header::parse(&b), Ok(h));
        }

        #[test]
        fn parse_never_panics_and_reencodes(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(h) = Header::parse(&bytes) {
                prop_assert_eq!(&h.to_bytes()[..], &bytes[..HEADER_LEN]);
            }
        }
    }
}
