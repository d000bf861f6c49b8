//! Wire formats: the encoded-payload frame, its token stream, and the control
//! messages (forget-ranges, history summary). All integers little-endian.

use super::CodecError;

/// Frame format version (high nibble of the first byte).
pub(crate) const FRAME_VERSION: u8 = 1;
/// Bytes of a frame header in "sent as is" form (kind byte + position).
pub(crate) const RAW_HEADER: usize = 1 + 8;
/// Worst-case growth of a payload: a frame is never longer than this plus the payload.
pub const MAX_FRAME_OVERHEAD: usize = RAW_HEADER;

pub(crate) const KIND_RAW: u8 = 0;
pub(crate) const KIND_TOKENS: u8 = 1;
pub(crate) const KIND_TOKENS_ZSTD: u8 = 2;
/// zstd(tokens) with the partner's zstd dictionary.
pub(crate) const KIND_TOKENS_ZSTD_DICT: u8 = 3;

pub(crate) const TOKEN_LITERAL: u8 = 0;
pub(crate) const TOKEN_COPY: u8 = 1;
pub(crate) const TOKEN_REPEAT: u8 = 2;

/// Parsed frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameHeader {
    pub kind: u8,
    pub position: u64,
    /// Original payload length (for raw frames, the body length).
    pub payload_len: usize,
    /// xxh3-64 of the original payload (0 for raw frames, which carry it verbatim).
    pub checksum: u64,
    /// Offset of the body in the frame.
    pub body_at: usize,
}

pub(crate) fn parse_frame_header(frame: &[u8]) -> Result<FrameHeader, CodecError> {
    if frame.len() < RAW_HEADER {
        return Err(CodecError::Malformed("frame shorter than its header"));
    }
    if frame[0] >> 4 != FRAME_VERSION {
        return Err(CodecError::Malformed("unknown frame version"));
    }
    let kind = frame[0] & 0x0f;
    let position = u64::from_le_bytes(frame[1..9].try_into().expect("8 bytes"));
    match kind {
        KIND_RAW => Ok(FrameHeader {
            kind,
            position,
            payload_len: frame.len() - RAW_HEADER,
            checksum: 0,
            body_at: RAW_HEADER,
        }),
        KIND_TOKENS | KIND_TOKENS_ZSTD | KIND_TOKENS_ZSTD_DICT => {
            let mut at = RAW_HEADER;
            let payload_len = read_varint(frame, &mut at)?;
            let sum = frame
                .get(at..at + 8)
                .ok_or(CodecError::Malformed("truncated checksum"))?;
            let checksum = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
            let payload_len = usize::try_from(payload_len)
                .map_err(|_| CodecError::Malformed("payload length"))?;
            Ok(FrameHeader {
                kind,
                position,
                payload_len,
                checksum,
                body_at: at + 8,
            })
        }
        _ => Err(CodecError::Malformed("unknown frame kind")),
    }
}

/// Writes a compressed-frame header; returns its length.
pub(crate) fn write_frame_header(
    out: &mut [u8],
    kind: u8,
    position: u64,
    payload_len: usize,
    checksum: u64,
) -> usize {
    out[0] = (FRAME_VERSION << 4) | kind;
    out[1..9].copy_from_slice(&position.to_le_bytes());
    if kind == KIND_RAW {
        return RAW_HEADER;
    }
    let mut at = RAW_HEADER;
    write_varint(out, &mut at, payload_len as u64);
    out[at..at + 8].copy_from_slice(&checksum.to_le_bytes());
    at + 8
}

/// Bytes of `v` as a LEB128 varint.
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// LEB128 varint into a buffer the caller sized (at most 10 bytes).
#[inline]
pub(crate) fn write_varint(out: &mut [u8], at: &mut usize, mut v: u64) {
    while v >= 0x80 {
        out[*at] = (v as u8) | 0x80;
        *at += 1;
        v >>= 7;
    }
    out[*at] = v as u8;
    *at += 1;
}

#[inline]
pub(crate) fn read_varint(buf: &[u8], at: &mut usize) -> Result<u64, CodecError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf
            .get(*at)
            .ok_or(CodecError::Malformed("truncated varint"))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(CodecError::Malformed("varint too long"))
}

/// Appends a token header (type + length) to `out`. Length ≥ 1.
#[inline]
pub(crate) fn push_token(out: &mut Vec<u8>, kind: u8, len: usize) {
    debug_assert!(len >= 1);
    if len <= 63 {
        out.push((kind << 6) | (len as u8 - 1));
    } else {
        out.push((kind << 6) | 63);
        push_varint(out, (len - 64) as u64);
    }
}

#[inline]
pub(crate) fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a token header: (type, length).
#[inline]
pub(crate) fn read_token(buf: &[u8], at: &mut usize) -> Result<(u8, usize), CodecError> {
    let tag = *buf
        .get(*at)
        .ok_or(CodecError::Malformed("truncated token"))?;
    *at += 1;
    let code = usize::from(tag & 63);
    let len = if code < 63 {
        code + 1
    } else {
        let extra = read_varint(buf, at)?;
        usize::try_from(extra)
            .ok()
            .and_then(|e| e.checked_add(64))
            .ok_or(CodecError::Malformed("token length"))?
    };
    Ok((tag >> 6, len))
}

// === control messages ===

const CONTROL_VERSION: u8 = 1;
const CONTROL_FORGET: u8 = 1;
const CONTROL_SUMMARY: u8 = 2;
/// Most ranges one control message carries.
pub(crate) const MAX_CONTROL_RANGES: usize = 64;

/// "Stop referencing these ranges": sent by a decoder to the encoder of the
/// same lane after a miss or when it sees a hole (lost packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgetRanges {
    /// Lane (encoder stream) the ranges belong to.
    pub lane: u16,
    /// Half-open position ranges `[start, end)`.
    pub ranges: Vec<(u64, u64)>,
}

/// What one side holds of a lane's history, exchanged after a restart (or any
/// re-establishment) so both use only history they both hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySummary {
    /// Lane the summary describes.
    pub lane: u16,
    /// Random identifier of the lane's history (chosen by the encoder side).
    pub history_id: u64,
    /// Highest position the side has seen (the next position the encoder uses).
    pub high_water: u64,
    /// Held ranges, ascending, at most 64 (the newest ones).
    pub ranges: Vec<(u64, u64)>,
}

/// A parsed control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// See [`ForgetRanges`].
    Forget(ForgetRanges),
    /// See [`HistorySummary`].
    Summary(HistorySummary),
}

impl ControlMessage {
    /// Parses a control payload produced by [`ForgetRanges::write`] or
    /// [`HistorySummary::write`].
    pub fn parse(buf: &[u8]) -> Result<Self, CodecError> {
        let first = *buf.first().ok_or(CodecError::Control("empty message"))?;
        if first >> 4 != CONTROL_VERSION {
            return Err(CodecError::Control("unknown control version"));
        }
        let mut r = Reader { buf, at: 1 };
        match first & 0x0f {
            CONTROL_FORGET => {
                let lane = r.u16()?;
                let ranges = r.ranges()?;
                r.end()?;
                Ok(Self::Forget(ForgetRanges { lane, ranges }))
            }
            CONTROL_SUMMARY => {
                let lane = r.u16()?;
                let history_id = r.u64()?;
                let high_water = r.u64()?;
                let ranges = r.ranges()?;
                r.end()?;
                Ok(Self::Summary(HistorySummary {
                    lane,
                    history_id,
                    high_water,
                    ranges,
                }))
            }
            _ => Err(CodecError::Control("unknown control type")),
        }
    }
}

/// Writes `ranges` (at most [`MAX_CONTROL_RANGES`]) after a count byte.
fn write_ranges(out: &mut [u8], at: usize, ranges: &[(u64, u64)]) -> Result<usize, CodecError> {
    let n = ranges.len().min(MAX_CONTROL_RANGES);
    let need = at + 1 + n * 16;
    if out.len() < need {
        return Err(CodecError::OutputTooSmall {
            need,
            have: out.len(),
        });
    }
    out[at] = n as u8;
    let mut at = at + 1;
    for &(s, e) in &ranges[ranges.len() - n..] {
        out[at..at + 8].copy_from_slice(&s.to_le_bytes());
        out[at + 8..at + 16].copy_from_slice(&e.to_le_bytes());
        at += 16;
    }
    Ok(at)
}

impl ForgetRanges {
    /// Serialized size upper bound.
    pub const MAX_LEN: usize = 4 + MAX_CONTROL_RANGES * 16;

    /// Writes the message; returns its length. Keeps the newest 64 ranges.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, CodecError> {
        if out.len() < 3 {
            return Err(CodecError::OutputTooSmall {
                need: 3,
                have: out.len(),
            });
        }
        out[0] = (CONTROL_VERSION << 4) | CONTROL_FORGET;
        out[1..3].copy_from_slice(&self.lane.to_le_bytes());
        write_ranges(out, 3, &self.ranges)
    }
}

impl HistorySummary {
    /// Serialized size upper bound.
    pub const MAX_LEN: usize = 20 + MAX_CONTROL_RANGES * 16;

    /// Writes the message; returns its length. Keeps the newest 64 ranges.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, CodecError> {
        if out.len() < 19 {
            return Err(CodecError::OutputTooSmall {
                need: 19,
                have: out.len(),
            });
        }
        out[0] = (CONTROL_VERSION << 4) | CONTROL_SUMMARY;
        out[1..3].copy_from_slice(&self.lane.to_le_bytes());
        out[3..11].copy_from_slice(&self.history_id.to_le_bytes());
        out[11..19].copy_from_slice(&self.high_water.to_le_bytes());
        write_ranges(out, 19, &self.ranges)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let s = self
            .buf
            .get(self.at..self.at + n)
            .ok_or(CodecError::Control("truncated"))?;
        self.at += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn ranges(&mut self) -> Result<Vec<(u64, u64)>, CodecError> {
        let n = usize::from(self.take(1)?[0]);
        if n > MAX_CONTROL_RANGES {
            return Err(CodecError::Control("too many ranges"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let (s, e) = (self.u64()?, self.u64()?);
            if s > e {
                return Err(CodecError::Control("range start after end"));
            }
            v.push((s, e));
        }
        Ok(v)
    }
    fn end(&self) -> Result<(), CodecError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(CodecError::Control("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_round_trip() {
        let f = ForgetRanges {
            lane: 3,
            ranges: vec![(1, 5), (10, 20)],
        };
        let mut buf = [0u8; ForgetRanges::MAX_LEN];
        let n = f.write(&mut buf).unwrap();
        assert_eq!(
            ControlMessage::parse(&buf[..n]).unwrap(),
            ControlMessage::Forget(f)
        );
        let s = HistorySummary {
            lane: 1,
            history_id: 77,
            high_water: 900,
            ranges: vec![(0, 900)],
        };
        let mut buf = [0u8; HistorySummary::MAX_LEN];
        let n = s.write(&mut buf).unwrap();
        assert_eq!(
            ControlMessage::parse(&buf[..n]).unwrap(),
            ControlMessage::Summary(s)
        );
        assert!(ControlMessage::parse(&buf[..n - 1]).is_err());
    }

    #[test]
    fn token_lengths_round_trip() {
        for len in [1usize, 2, 63, 64, 65, 200, 70000] {
            let mut v = Vec::new();
            push_token(&mut v, TOKEN_COPY, len);
            let mut at = 0;
            assert_eq!(read_token(&v, &mut at).unwrap(), (TOKEN_COPY, len));
            assert_eq!(at, v.len());
        }
    }
}
