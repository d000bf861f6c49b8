//! Tunnel data payload format 2: a *bundle* of inner packets.
//!
//! The packets a worker receives in one batch for the same partner travel in one
//! tunnel packet (flushed at the end of the batch, so nothing waits for more
//! traffic). Inside a bundle, a TCP header is coded as a delta against the previous
//! header of the same flow in the same bundle, and a codec frame whose history
//! position follows the previous member's drops its 8-byte position. A bundle
//! depends on nothing outside itself, so loss, reordering or duplication of tunnel
//! packets never breaks header decoding; each member's payload still goes through
//! the lane's history decoder, and a member that misses is dropped alone.
//!
//! ```text
//! bundle = 0x02 | member...
//! member = flags (1) | header | [frame length (varint) | codec frame]
//! flags  bit 7     header is a delta (else full)
//!        bits 6..5 flow slot (0..3)
//!        bit 4     a codec frame follows
//!        bit 3     the frame's position is implicit (previous member's position +
//!                  its payload length); its 8 position bytes are left out
//!        bit 2     the payload follows as it is (compression off): length (varint)
//!                  | payload, instead of a codec frame (bits 4 and 3 clear)
//!        bits 1..0 zero
//! full header  = length (varint) | IP + TCP/UDP headers as they are
//! delta header = delta flags (1) | fields present per flag, in this order:
//!        bit 0  sequence number (u32 BE); absent: previous sequence + previous
//!               payload length
//!        bit 1  acknowledgement − previous (varint, mod 2^32)
//!        bit 2  window (u16 BE); absent: unchanged
//!        bit 3  IPv4 identification (u16 BE); absent: previous + 1
//!        bit 4  TSval − previous (varint, mod 2^32)
//!        bit 5  TSecr − previous (varint, mod 2^32)
//!        bit 6  TCP checksum (u16 BE); absent: computed by the receiver
//!        bit 7  zero
//! ```
//!
//! In a delta header every byte not named above equals the previous header of the
//! flow; the IP length field follows from the payload length, and the IPv4 header
//! checksum is recomputed (the sender only deltas headers whose checksum is right).

use crate::codec::{self, CodecError, Decoder, POSITION_LEN};

/// Data payload format of a bundle (first byte of a tunnel data payload).
pub const FORMAT_BUNDLE: u8 = 2;

/// Worst-case bundle framing for one TCP/UDP packet: format, member flags, header
/// length (1 byte up to 127), frame length (2 bytes up to 16383).
pub const FRAMING_LEN: usize = 5;

const SLOTS: usize = 4;
/// Longest header kept as a delta reference (IPv4 60 + TCP 60).
const MAX_REF: usize = 120;

const F_DELTA: u8 = 0x80;
const F_FRAME: u8 = 0x10;
const F_IMPLICIT: u8 = 0x08;
const F_RAW: u8 = 0x04;
const F_RESERVED: u8 = 0x03;

const D_SEQ: u8 = 0x01;
const D_ACK: u8 = 0x02;
const D_WIN: u8 = 0x04;
const D_ID: u8 = 0x08;
const D_TSVAL: u8 = 0x10;
const D_TSECR: u8 = 0x20;
const D_CSUM: u8 = 0x40;

const IPPROTO_TCP: u8 = 6;

/// Layout of a TCP header that can be delta coded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// IPv4 (else IPv6).
    v4: bool,
    /// Offset of the TCP header.
    tcp: usize,
    /// Offset of the TSval field, when the options start with NOP NOP TS.
    ts: Option<usize>,
}

fn layout(h: &[u8]) -> Option<Layout> {
    let (v4, tcp) = match h.first()? >> 4 {
        4 if h.len() >= 20 => {
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([h[6], h[7]]) & 0x3fff;
            if h[9] != IPPROTO_TCP || ihl < 20 || frag != 0 {
                return None;
            }
            (true, ihl)
        }
        6 if h.len() >= 40 => {
            if h[6] != IPPROTO_TCP {
                return None;
            }
            (false, 40)
        }
        _ => return None,
    };
    let off = usize::from(*h.get(tcp + 12)? >> 4) * 4;
    if off < 20 || tcp + off != h.len() || h.len() > MAX_REF {
        return None;
    }
    let ts = (off >= 32 && h[tcp + 20..tcp + 24] == [1, 1, 8, 10]).then_some(tcp + 24);
    Some(Layout { v4, tcp, ts })
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        // Fold early enough that the sum never overflows for jumbo frames.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IPv4 header checksum of `h[..ihl]` with its checksum field taken as zero.
fn ipv4_checksum(h: &[u8], ihl: usize) -> u16 {
    let acc = sum16(sum16(0, &h[..10]), &h[12..ihl]);
    fold(acc)
}

/// The TCP checksum of a packet (headers `h` with layout `l`, then `payload`), with
/// its checksum field taken as zero.
fn tcp_checksum(h: &[u8], l: &Layout, payload: &[u8]) -> u16 {
    let tcp_len = (h.len() - l.tcp + payload.len()) as u32;
    let mut acc = if l.v4 {
        sum16(0, &h[12..20])
    } else {
        sum16(0, &h[8..40])
    };
    acc += u32::from(IPPROTO_TCP);
    acc += tcp_len >> 16;
    acc += tcp_len & 0xffff;
    acc = sum16(acc, &h[l.tcp..l.tcp + 16]);
    acc = sum16(acc, &h[l.tcp + 18..]);
    // The header length is even (a multiple of 4), so the payload starts aligned.
    fold(sum16(acc, payload))
}

/// A delta reference: the previous header of a flow in this bundle.
#[derive(Clone, Copy)]
struct Slot {
    header: [u8; MAX_REF],
    len: usize,
    payload_len: usize,
    layout: Option<Layout>,
}

impl Slot {
    const EMPTY: Slot = Slot {
        header: [0; MAX_REF],
        len: 0,
        payload_len: 0,
        layout: None,
    };

    fn header(&self) -> &[u8] {
        &self.header[..self.len]
    }

    fn set(&mut self, h: &[u8], payload_len: usize) {
        if h.len() > MAX_REF {
            self.len = 0;
            self.layout = None;
            return;
        }
        self.header[..h.len()].copy_from_slice(h);
        self.len = h.len();
        self.payload_len = payload_len;
        self.layout = layout(h);
    }

    /// Same TCP flow, same header shape.
    fn same_flow(&self, h: &[u8], l: &Layout) -> bool {
        let Some(r) = self.layout else { return false };
        if r != *l || self.len != h.len() {
            return false;
        }
        let r = self.header();
        let ports = l.tcp..l.tcp + 4;
        let addrs = if l.v4 { 12..20 } else { 8..40 };
        r[addrs.clone()] == h[addrs] && r[ports.clone()] == h[ports]
    }
}

/// One inner packet to add to a bundle.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    /// Its IP + transport headers (the whole packet for protocols not split off).
    pub headers: &'a [u8],
    /// Its transport payload, as it is (used to check the TCP checksum).
    pub payload: &'a [u8],
    /// The codec frame of the payload (empty when the payload is empty or `raw`).
    pub frame: &'a [u8],
    /// The payload is carried as it is, not through the codec.
    pub raw: bool,
}

/// Writes members into a bundle; holds the bundle's delta references.
pub struct BundleWriter {
    len: usize,
    slots: [Slot; SLOTS],
    next_slot: usize,
    /// Position the next frame would have if it follows the previous one.
    next_pos: Option<u64>,
    members: usize,
}

impl Default for BundleWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BundleWriter {
    /// A writer with no open bundle.
    pub fn new() -> Self {
        Self {
            len: 0,
            slots: [Slot::EMPTY; SLOTS],
            next_slot: 0,
            next_pos: None,
            members: 0,
        }
    }

    /// Starts a bundle at the beginning of `buf`.
    pub fn start(&mut self, buf: &mut [u8]) {
        buf[0] = FORMAT_BUNDLE;
        self.len = 1;
        for s in &mut self.slots {
            s.len = 0;
            s.layout = None;
        }
        self.next_slot = 0;
        self.next_pos = None;
        self.members = 0;
    }

    /// Bytes of the bundle so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Members in the bundle so far.
    pub fn members(&self) -> usize {
        self.members
    }

    /// True when no member was added.
    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// Appends `m` to the bundle in `buf` (the whole room a bundle may use). Returns
    /// false, leaving the bundle as it was, when the member does not fit.
    pub fn append(&mut self, buf: &mut [u8], m: &Member<'_>) -> bool {
        let mut head = [0u8; 32];
        let mut hn = 1;
        let mut flags = 0u8;
        // Header: delta against the flow's slot when possible, else full.
        let l = layout(m.headers);
        let slot = l
            .as_ref()
            .and_then(|l| (0..SLOTS).find(|&i| self.slots[i].same_flow(m.headers, l)));
        let delta = match (slot, &l) {
            (Some(i), Some(l)) => {
                delta_header(&self.slots[i], m, l, &mut head[1..]).map(|n| (i, n))
            }
            _ => None,
        };
        let slot = match delta {
            Some((i, n)) => {
                flags |= F_DELTA;
                hn += n;
                i
            }
            None => {
                let i = slot.unwrap_or(self.next_slot);
                codec_varint(&mut head, &mut hn, m.headers.len() as u64);
                i
            }
        };
        flags |= (slot as u8) << 5;
        let full = flags & F_DELTA == 0;
        // Frame, its position left out when it follows the previous frame.
        let mut frame = m.frame;
        let mut frame_extent = None;
        if m.raw {
            frame = m.payload;
            if !frame.is_empty() {
                flags |= F_RAW;
                codec_varint(&mut head, &mut hn, frame.len() as u64);
            }
        } else if !frame.is_empty() {
            flags |= F_FRAME;
            let Ok(extent) = codec::frame_extent(frame) else {
                return false;
            };
            frame_extent = Some(extent);
            let body = frame.len()
                - if self.next_pos == Some(extent.0) {
                    flags |= F_IMPLICIT;
                    POSITION_LEN
                } else {
                    0
                };
            codec_varint(&mut head, &mut hn, body as u64);
            if flags & F_IMPLICIT != 0 {
                frame = &frame[1 + POSITION_LEN..];
            }
        }
        head[0] = flags;
        let first = if flags & F_IMPLICIT != 0 {
            Some(m.frame[0])
        } else {
            None
        };
        let need =
            hn + if full { m.headers.len() } else { 0 } + first.map_or(0, |_| 1) + frame.len();
        if self.len + need > buf.len() {
            return false;
        }
        // Header part: flags + (delta fields | header length).
        let mut at = self.len;
        if full {
            // flags, header length varint, then the frame length varint follows the
            // headers: split `head` accordingly.
            let hlen_bytes = varint_len(m.headers.len() as u64);
            buf[at..at + 1 + hlen_bytes].copy_from_slice(&head[..1 + hlen_bytes]);
            at += 1 + hlen_bytes;
            buf[at..at + m.headers.len()].copy_from_slice(m.headers);
            at += m.headers.len();
            let rest = &head[1 + hlen_bytes..hn];
            buf[at..at + rest.len()].copy_from_slice(rest);
            at += rest.len();
        } else {
            buf[at..at + hn].copy_from_slice(&head[..hn]);
            at += hn;
        }
        if let Some(b) = first {
            buf[at] = b;
            at += 1;
        }
        buf[at..at + frame.len()].copy_from_slice(frame);
        at += frame.len();
        self.len = at;
        self.slots[slot].set(m.headers, m.payload.len());
        if full && slot == self.next_slot {
            self.next_slot = (self.next_slot + 1) % SLOTS;
        }
        if let Some((pos, n)) = frame_extent {
            self.next_pos = pos.checked_add(n as u64);
        }
        self.members += 1;
        true
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn codec_varint(out: &mut [u8], at: &mut usize, mut v: u64) {
    while v >= 0x80 {
        out[*at] = (v as u8) | 0x80;
        *at += 1;
        v >>= 7;
    }
    out[*at] = v as u8;
    *at += 1;
}

fn read_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Writes the delta of `m`'s headers against `r` into `out`; `None` when a byte
/// outside the coded fields differs or a derived field would not come out exact.
fn delta_header(r: &Slot, m: &Member<'_>, l: &Layout, out: &mut [u8]) -> Option<usize> {
    let h = m.headers;
    let rh = r.header();
    let t = l.tcp;
    // Fields the delta carries or derives; everything else must be equal.
    let mut coded = [false; MAX_REF];
    let mut mark = |range: std::ops::Range<usize>| coded[range].iter_mut().for_each(|c| *c = true);
    if l.v4 {
        mark(2..4);
        mark(4..6);
        mark(10..12);
    } else {
        mark(4..6);
    }
    mark(t + 4..t + 12);
    mark(t + 14..t + 18);
    if let Some(ts) = l.ts {
        mark(ts..ts + 8);
    }
    if h.iter()
        .zip(rh)
        .enumerate()
        .any(|(i, (a, b))| a != b && !coded[i])
    {
        return None;
    }
    // Derived fields must come out exact.
    if l.v4 {
        if usize::from(be16(h, 2)) != h.len() + m.payload.len()
            || be16(h, 10) != ipv4_checksum(h, t)
        {
            return None;
        }
    } else if usize::from(be16(h, 4)) != h.len() - 40 + m.payload.len() {
        return None;
    }
    let mut flags = 0u8;
    let mut n = 1;
    let seq = be32(h, t + 4);
    if seq != be32(rh, t + 4).wrapping_add(r.payload_len as u32) {
        flags |= D_SEQ;
        out[n..n + 4].copy_from_slice(&seq.to_be_bytes());
        n += 4;
    }
    let ack = be32(h, t + 8).wrapping_sub(be32(rh, t + 8));
    if ack != 0 {
        flags |= D_ACK;
        codec_varint(out, &mut n, u64::from(ack));
    }
    if h[t + 14..t + 16] != rh[t + 14..t + 16] {
        flags |= D_WIN;
        out[n..n + 2].copy_from_slice(&h[t + 14..t + 16]);
        n += 2;
    }
    if l.v4 && be16(h, 4) != be16(rh, 4).wrapping_add(1) {
        flags |= D_ID;
        out[n..n + 2].copy_from_slice(&h[4..6]);
        n += 2;
    }
    if let Some(ts) = l.ts {
        for (bit, at) in [(D_TSVAL, ts), (D_TSECR, ts + 4)] {
            let d = be32(h, at).wrapping_sub(be32(rh, at));
            if d != 0 {
                flags |= bit;
                codec_varint(out, &mut n, u64::from(d));
            }
        }
    }
    if be16(h, t + 16) != tcp_checksum(h, l, m.payload) {
        flags |= D_CSUM;
        out[n..n + 2].copy_from_slice(&h[t + 16..t + 18]);
        n += 2;
    }
    out[0] = flags;
    Some(n)
}

/// Why a member was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// Its payload could not be restored (a history miss or checksum failure); the
    /// other members are still delivered.
    #[error("member payload not restored: {0}")]
    Codec(#[source] CodecError),
    /// The bundle is malformed from here on; the rest of it is dropped.
    #[error("malformed bundle: {0}")]
    Malformed(&'static str),
    /// The output buffer cannot hold the packet.
    #[error("member of {0} bytes does not fit the output buffer")]
    TooLong(usize),
}

/// Reads the members of a bundle, rebuilding headers and restoring payloads.
pub struct BundleReader<'a> {
    bundle: &'a [u8],
    at: usize,
    slots: [Slot; SLOTS],
    next_pos: Option<u64>,
}

impl<'a> BundleReader<'a> {
    /// A reader over a tunnel data payload; fails when it is not a bundle.
    pub fn new(bundle: &'a [u8]) -> Result<Self, MemberError> {
        if bundle.first() != Some(&FORMAT_BUNDLE) {
            return Err(MemberError::Malformed(
                "not a bundle (format 2); the partner runs another version",
            ));
        }
        Ok(Self {
            bundle,
            at: 1,
            slots: [Slot::EMPTY; SLOTS],
            next_pos: None,
        })
    }

    fn fail(&mut self, why: &'static str) -> Option<Result<(usize, usize), MemberError>> {
        self.at = self.bundle.len();
        Some(Err(MemberError::Malformed(why)))
    }

    /// The next member: its IP packet is written to the start of `out`; returns its
    /// length and its transport payload's length. `scratch` (at least the largest frame + 8 bytes) rebuilds
    /// frames whose position was left out. `None` at the end of the bundle.
    pub fn next_into(
        &mut self,
        decoder: &mut Decoder,
        scratch: &mut [u8],
        out: &mut [u8],
    ) -> Option<Result<(usize, usize), MemberError>> {
        let b = self.bundle;
        if self.at >= b.len() {
            return None;
        }
        let flags = b[self.at];
        self.at += 1;
        if flags & F_RESERVED != 0
            || (flags & F_IMPLICIT != 0 && flags & F_FRAME == 0)
            || (flags & F_RAW != 0 && flags & F_FRAME != 0)
        {
            return self.fail("reserved member flags set");
        }
        let slot = usize::from((flags >> 5) & 3);
        // Header part: a full header, or the position and flags of delta fields
        // (parsed once the payload length is known).
        let mut full: Option<&[u8]> = None;
        let mut delta: Option<(usize, u8, Layout)> = None;
        if flags & F_DELTA == 0 {
            let Some(n) = read_varint(b, &mut self.at) else {
                return self.fail("truncated header length");
            };
            let Some(h) = usize::try_from(n)
                .ok()
                .and_then(|n| b.get(self.at..self.at.checked_add(n)?))
            else {
                return self.fail("header longer than the bundle");
            };
            if h.len() < 20 {
                return self.fail("header shorter than an IP header");
            }
            self.at += h.len();
            full = Some(h);
        } else {
            let Some(&df) = b.get(self.at) else {
                return self.fail("truncated delta header");
            };
            self.at += 1;
            let Some(l) = self.slots[slot].layout else {
                return self.fail("delta against an empty flow slot");
            };
            if df & 0x80 != 0
                || (df & D_ID != 0 && !l.v4)
                || (df & (D_TSVAL | D_TSECR) != 0 && l.ts.is_none())
            {
                return self.fail("delta flags do not fit the flow");
            }
            let start = self.at;
            match skip_delta(b, start, df) {
                Some(end) => self.at = end,
                None => return self.fail("truncated delta header"),
            }
            delta = Some((start, df, l));
        }
        // Frame (rebuilt in `scratch` when its position was left out).
        let mut frame: Option<&[u8]> = None;
        let mut raw: Option<&[u8]> = None;
        if flags & F_RAW != 0 {
            let Some(n) = read_varint(b, &mut self.at).and_then(|n| usize::try_from(n).ok()) else {
                return self.fail("truncated payload length");
            };
            let Some(f) = self.at.checked_add(n).and_then(|e| b.get(self.at..e)) else {
                return self.fail("payload longer than the bundle");
            };
            self.at += n;
            raw = Some(f);
        } else if flags & F_FRAME != 0 {
            let Some(n) = read_varint(b, &mut self.at).and_then(|n| usize::try_from(n).ok()) else {
                return self.fail("truncated frame length");
            };
            let Some(f) = self.at.checked_add(n).and_then(|e| b.get(self.at..e)) else {
                return self.fail("frame longer than the bundle");
            };
            self.at += n;
            if flags & F_IMPLICIT != 0 {
                let Some(pos) = self.next_pos else {
                    return self.fail("implicit position without a previous frame");
                };
                if f.is_empty() || f.len() + POSITION_LEN > scratch.len() {
                    return self.fail("frame does not fit the scratch buffer");
                }
                scratch[0] = f[0];
                scratch[1..1 + POSITION_LEN].copy_from_slice(&pos.to_le_bytes());
                scratch[1 + POSITION_LEN..f.len() + POSITION_LEN].copy_from_slice(&f[1..]);
                frame = Some(&scratch[..f.len() + POSITION_LEN]);
            } else {
                frame = Some(f);
            }
        }
        let (plen, next_pos) = match frame.map(codec::frame_extent) {
            Some(Ok((pos, n))) => (n, pos.checked_add(n as u64)),
            Some(Err(_)) => return self.fail("member frame header malformed"),
            None => (raw.map_or(0, <[u8]>::len), None),
        };
        if frame.is_some() {
            self.next_pos = next_pos;
        }
        // Rebuild the header into `out` and remember it for the next delta.
        let hlen = match (full, delta) {
            (Some(h), _) => h.len(),
            (None, _) => self.slots[slot].len,
        };
        let Some(total) = hlen.checked_add(plen).filter(|&t| t <= out.len()) else {
            // Keep the flow slot in step with the sender even though this one is lost.
            match (full, delta) {
                (Some(h), _) => self.slots[slot].set(h, plen),
                (None, Some((start, df, l))) => {
                    let r = self.slots[slot];
                    let mut h = r.header;
                    apply_delta(&mut h[..r.len], &r, &l, b, start, df, plen);
                    self.slots[slot].set(&h[..r.len], plen);
                }
                (None, None) => {}
            }
            return Some(Err(MemberError::TooLong(hlen.saturating_add(plen))));
        };
        match (full, delta) {
            (Some(h), _) => out[..hlen].copy_from_slice(h),
            (None, Some((start, df, l))) => {
                let r = self.slots[slot];
                out[..hlen].copy_from_slice(r.header());
                apply_delta(&mut out[..hlen], &r, &l, b, start, df, plen);
            }
            (None, None) => return self.fail("member without a header"),
        }
        let (hdr, rest) = out.split_at_mut(hlen);
        self.slots[slot].set(hdr, plen);
        if let Some(r) = raw {
            rest[..plen].copy_from_slice(r);
        } else if let Some(f) = frame {
            match decoder.decode(f, &mut rest[..plen]) {
                Ok(m) if m.len == plen => {}
                Ok(_) => return Some(Err(MemberError::Malformed("frame length mismatch"))),
                Err(e) => return Some(Err(MemberError::Codec(e))),
            }
        }
        if let Some((_, df, l)) = delta
            && df & D_CSUM == 0
        {
            let c = tcp_checksum(hdr, &l, &rest[..plen]);
            hdr[l.tcp + 16..l.tcp + 18].copy_from_slice(&c.to_be_bytes());
        }
        Some(Ok((total, plen)))
    }
}

/// End of the delta fields that start at `at` with flags `df`.
fn skip_delta(b: &[u8], mut at: usize, df: u8) -> Option<usize> {
    if df & D_SEQ != 0 {
        at += 4;
    }
    if df & D_ACK != 0 {
        read_varint(b, &mut at)?;
    }
    if df & D_WIN != 0 {
        at += 2;
    }
    if df & D_ID != 0 {
        at += 2;
    }
    if df & D_TSVAL != 0 {
        read_varint(b, &mut at)?;
    }
    if df & D_TSECR != 0 {
        read_varint(b, &mut at)?;
    }
    if df & D_CSUM != 0 {
        at += 2;
    }
    (at <= b.len()).then_some(at)
}

/// Turns `h` (a copy of the reference `r`) into the coded header.
fn apply_delta(h: &mut [u8], r: &Slot, l: &Layout, b: &[u8], mut at: usize, df: u8, plen: usize) {
    let t = l.tcp;
    let rh = r.header();
    // The fields were checked by `skip_delta`.
    let read_u32 = |at: &mut usize| read_varint(b, at).unwrap_or(0) as u32;
    let seq = if df & D_SEQ != 0 {
        let v = be32(b, at);
        at += 4;
        v
    } else {
        be32(rh, t + 4).wrapping_add(r.payload_len as u32)
    };
    h[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    if df & D_ACK != 0 {
        let ack = be32(rh, t + 8).wrapping_add(read_u32(&mut at));
        h[t + 8..t + 12].copy_from_slice(&ack.to_be_bytes());
    }
    if df & D_WIN != 0 {
        h[t + 14..t + 16].copy_from_slice(&b[at..at + 2]);
        at += 2;
    }
    if l.v4 {
        let id = if df & D_ID != 0 {
            let v = be16(b, at);
            at += 2;
            v
        } else {
            be16(rh, 4).wrapping_add(1)
        };
        h[4..6].copy_from_slice(&id.to_be_bytes());
    }
    if let Some(ts) = l.ts {
        for (bit, f) in [(D_TSVAL, ts), (D_TSECR, ts + 4)] {
            if df & bit != 0 {
                let v = be32(rh, f).wrapping_add(read_u32(&mut at));
                h[f..f + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
    }
    if df & D_CSUM != 0 {
        h[t + 16..t + 18].copy_from_slice(&b[at..at + 2]);
    }
    let len = h.len();
    if l.v4 {
        h[2..4].copy_from_slice(&((len + plen) as u16).to_be_bytes());
        let c = ipv4_checksum(h, t);
        h[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        h[4..6].copy_from_slice(&((len - 40 + plen) as u16).to_be_bytes());
    }
}

#[cfg(test)]
mod tests;
