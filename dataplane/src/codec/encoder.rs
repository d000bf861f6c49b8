//! The sending side of a lane: appends each payload to the history and encodes
//! it as copies of history plus literals.

use tracing::debug;
use xxhash_rust::xxh3::xxh3_64;

use super::gear::{ANCHOR_MASK, FingerprintIndex, common_prefix, common_suffix, roll};
use super::ring::Ring;
use super::wire::{self, ForgetRanges, HistorySummary, RAW_HEADER};
use super::{CodecConfig, CodecError, ZstdDictionary};

/// Shortest copy found from an anchor.
const MIN_MATCH: usize = 24;
/// Shortest continuation at the previous copy's distance.
const MIN_REPEAT: usize = 8;
/// Shortest match at the previous payload's distance worth a copy token.
const MIN_HINT: usize = 16;
/// How many mismatching bytes a repeat continuation may skip.
const MAX_REPEAT_SKIP: usize = 16;

/// How a payload was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Sent as is (nothing helped).
    Raw,
    /// Token stream of copies and literals.
    Tokens,
    /// Token stream compressed with zstd.
    TokensZstd,
    /// Token stream compressed with zstd and the partner's dictionary.
    TokensZstdDict,
}

/// What [`Encoder::encode`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedMeta {
    /// Bytes written to the output buffer (the encoded payload).
    pub len: usize,
    /// History position assigned to the payload.
    pub position: u64,
    /// Frame kind chosen.
    pub kind: FrameKind,
    /// Payload bytes restored from history copies.
    pub copied: usize,
}

/// Byte counters of an encoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncoderStats {
    /// Payload bytes given to the encoder.
    pub bytes_in: u64,
    /// Encoded bytes produced.
    pub bytes_out: u64,
    /// Payloads encoded.
    pub frames: u64,
    /// Payloads sent as is.
    pub raw_frames: u64,
    /// Forget messages applied.
    pub forgets: u64,
}

/// The encoder of one lane toward one partner. It owns its history: there is
/// no way to make it reference bytes learnt from (or sent to) another partner.
pub struct Encoder {
    lane: u16,
    config: CodecConfig,
    ring: Ring,
    index: FingerprintIndex,
    tokens: Vec<u8>,
    zbuf: Box<[u8]>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// Frame kind of zstd output: with or without a dictionary.
    zstd_kind: (u8, FrameKind),
    /// Positions below this were restored from disk and may be referenced only
    /// after the partner's summary confirmed them.
    restored_below: u64,
    agreed: bool,
    /// Distance of the last copy of the previous payload: a repeated stream keeps
    /// it, so the next payload tries it first (its first bytes need no anchor).
    last_dist: u64,
    stats: EncoderStats,
}

/// A match candidate under construction.
struct Match {
    /// Payload offset of the first matched byte.
    cur: usize,
    /// History position of the first matched byte.
    src: u64,
    len: usize,
    /// Exclusive upper bound for extending the source forward.
    src_limit: u64,
}

impl Encoder {
    /// A fresh lane with a random history id.
    pub fn new(lane: u16, config: CodecConfig) -> Result<Self, CodecError> {
        Self::with_history_id(lane, config, rand::random::<u64>() | 1)
    }

    /// A fresh lane with the given history id (non-zero).
    pub fn with_history_id(
        lane: u16,
        config: CodecConfig,
        history_id: u64,
    ) -> Result<Self, CodecError> {
        config.validate()?;
        if history_id == 0 {
            return Err(CodecError::Config(
                "history id 0 means \"none\"; use a random non-zero id",
            ));
        }
        let zstd = if config.zstd_level > 0 {
            Some(compressor(config.zstd_level, None)?)
        } else {
            None
        };
        Ok(Self {
            lane,
            config,
            ring: Ring::new(config.history_bytes, history_id),
            index: FingerprintIndex::new(config.index_bits),
            tokens: Vec::with_capacity(config.max_payload * 2 + 64),
            zbuf: vec![0u8; zstd::zstd_safe::compress_bound(config.max_payload * 2 + 64)]
                .into_boxed_slice(),
            zstd,
            zstd_kind: (wire::KIND_TOKENS_ZSTD, FrameKind::TokensZstd),
            restored_below: 0,
            agreed: true,
            last_dist: 0,
            stats: EncoderStats::default(),
        })
    }

    /// Lane number.
    pub fn lane(&self) -> u16 {
        self.lane
    }

    /// Random identifier of this lane's history.
    pub fn history_id(&self) -> u64 {
        self.ring.history_id
    }

    /// Next position the encoder assigns.
    pub fn high_water(&self) -> u64 {
        self.ring.high_water
    }

    /// Byte counters.
    pub fn stats(&self) -> EncoderStats {
        self.stats
    }

    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }

    pub(crate) fn ring_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }

    /// Encodes `payload` into `out` (which must hold `payload.len() +
    /// MAX_FRAME_OVERHEAD` bytes) and appends it to the history.
    pub fn encode(&mut self, payload: &[u8], out: &mut [u8]) -> Result<EncodedMeta, CodecError> {
        let len = payload.len();
        if len > self.config.max_payload {
            return Err(CodecError::PayloadTooLarge {
                len,
                max: self.config.max_payload,
            });
        }
        if out.len() < len + RAW_HEADER {
            return Err(CodecError::OutputTooSmall {
                need: len + RAW_HEADER,
                have: out.len(),
            });
        }
        let pos = self.append(payload);
        let copied = self.find_matches(payload, pos);

        // Pick the smallest of: as is, tokens, zstd(tokens).
        let raw_len = RAW_HEADER + len;
        let mut best = (raw_len, FrameKind::Raw);
        // A tokens frame's header alone (raw header, varint length, checksum): when it
        // is not shorter than the raw frame nothing beats raw, and `out`, which only
        // has to hold the raw frame, may be too short for it.
        let tokens_header = RAW_HEADER + wire::varint_len(len as u64) + 8;
        if (copied > 0 || self.zstd.is_some()) && tokens_header < raw_len {
            let checksum = xxh3_64(payload);
            let hdr = wire::write_frame_header(out, wire::KIND_TOKENS, pos, len, checksum);
            let token_len = hdr + self.tokens.len();
            if copied > 0 && token_len < best.0 {
                best = (token_len, FrameKind::Tokens);
            }
            if let Some(z) = self.zstd.as_mut().filter(|_| self.tokens.len() >= 32) {
                // Compress into a buffer of at least zstd's bound (a smaller
                // destination sends zstd down its slow buffered path), then
                // keep the result only if it pays.
                if let Ok(n) = z.compress_to_buffer(&self.tokens, &mut self.zbuf[..])
                    && hdr + n < best.0
                {
                    out[hdr..hdr + n].copy_from_slice(&self.zbuf[..n]);
                    best = (hdr + n, self.zstd_kind.1);
                    out[0] = (wire::FRAME_VERSION << 4) | self.zstd_kind.0;
                }
            }
            if best.1 == FrameKind::Tokens {
                out[0] = (wire::FRAME_VERSION << 4) | wire::KIND_TOKENS;
                out[hdr..best.0].copy_from_slice(&self.tokens);
            }
        }
        if best.1 == FrameKind::Raw {
            wire::write_frame_header(out, wire::KIND_RAW, pos, len, 0);
            out[RAW_HEADER..raw_len].copy_from_slice(payload);
            self.stats.raw_frames += 1;
        }
        self.stats.bytes_in += len as u64;
        self.stats.bytes_out += best.0 as u64;
        self.stats.frames += 1;
        Ok(EncodedMeta {
            len: best.0,
            position: pos,
            kind: best.1,
            copied,
        })
    }

    /// Compresses the residue with `dictionary` from now on (the partner's decoder
    /// must load the same one). Without zstd (`zstd_level` 0) there is nothing to do.
    pub fn use_dictionary(&mut self, dictionary: &ZstdDictionary) -> Result<(), CodecError> {
        if self.zstd.is_some() {
            self.zstd = Some(compressor(self.config.zstd_level, Some(dictionary))?);
            self.zstd_kind = (wire::KIND_TOKENS_ZSTD_DICT, FrameKind::TokensZstdDict);
        }
        Ok(())
    }

    /// Stops referencing the ranges a partner's decoder asked to forget.
    pub fn apply_forget(&mut self, forget: &ForgetRanges) {
        if forget.lane != self.lane {
            return;
        }
        for &(s, e) in &forget.ranges {
            self.ring.held.remove(s, e);
        }
        self.stats.forgets += 1;
        debug!(
            lane = self.lane,
            ranges = forget.ranges.len(),
            "history ranges forgotten"
        );
    }

    /// Bytes of history held (for logs and statistics; walks the held ranges).
    pub fn held_bytes(&self) -> u64 {
        self.ring.held.iter().map(|(s, e)| e - s).sum()
    }

    /// What this side holds, for the partner's decoder.
    pub fn summary(&self) -> HistorySummary {
        let n = self.ring.held.len();
        HistorySummary {
            lane: self.lane,
            history_id: self.ring.history_id,
            high_water: self.ring.high_water,
            ranges: self
                .ring
                .held
                .iter()
                .skip(n.saturating_sub(wire::MAX_CONTROL_RANGES))
                .collect(),
        }
    }

    /// Applies the partner decoder's summary: history is referenced only where
    /// the decoder holds it too (below its high-water mark, or below what was
    /// restored from disk, only its listed ranges count), a decoder with another
    /// history id holds nothing of ours, and new positions start above anything
    /// the decoder has seen.
    pub fn apply_peer_summary(&mut self, peer: &HistorySummary) {
        if peer.lane != self.lane {
            return;
        }
        let same = peer.history_id == self.ring.history_id;
        if same {
            let floor = self.restored_below.max(peer.high_water);
            let mut both = super::RangeSet::with_capacity(wire::MAX_CONTROL_RANGES + 1);
            for &(s, e) in &peer.ranges {
                both.insert(s.min(floor), e.min(floor));
            }
            both.insert(floor, u64::MAX);
            self.ring.held.intersect_with(&both);
        } else {
            self.ring.held.clear();
        }
        if peer.high_water > self.ring.high_water {
            // Skip past positions the decoder may hold with other content.
            self.ring.high_water = peer.high_water;
        }
        self.agreed = true;
        debug!(lane = self.lane, same, "peer history summary applied");
    }

    /// Marks the ring as restored from disk up to its high-water mark; nothing
    /// restored is referenced before [`Encoder::apply_peer_summary`].
    pub(crate) fn mark_restored(&mut self) {
        self.restored_below = self.ring.high_water;
        self.agreed = false;
        self.reindex();
    }

    /// Rebuilds the fingerprint index from the held history (after restore).
    fn reindex(&mut self) {
        self.index.clear();
        let ranges: Vec<(u64, u64)> = self.ring.held.iter().collect();
        for (s, e) in ranges {
            let mut at = s;
            while at < e {
                let lap_end = self.ring.lap_start(at) + self.ring.capacity();
                let end = e.min(lap_end);
                let mut h = 0u64;
                for (k, &b) in self.ring.bytes(at, end).iter().enumerate() {
                    h = roll(h, b);
                    if h & ANCHOR_MASK == 0 {
                        self.index.insert(h, at + k as u64 + 1);
                    }
                }
                at = end;
            }
        }
    }

    /// Copies the payload into the ring at the next position and returns it.
    fn append(&mut self, payload: &[u8]) -> u64 {
        let mut pos = self.ring.high_water;
        if !self.ring.fits(pos, payload.len()) {
            pos = self.ring.lap_start(pos) + self.ring.capacity();
        }
        self.ring.store(pos, payload);
        pos
    }

    /// Fills `self.tokens`; returns the number of payload bytes covered by copies.
    fn find_matches(&mut self, payload: &[u8], pos: u64) -> usize {
        self.tokens.clear();
        let len = payload.len();
        let safe_end = pos.saturating_sub(self.config.reorder_guard_bytes);
        let usable_from = if self.agreed { 0 } else { self.restored_below };
        let mut lit_start = 0usize;
        let mut copied = 0usize;
        // The previous payload's distance, from the first byte on.
        if let Some((skip, n, limit)) = self.hint_at(payload, pos, safe_end, usable_from) {
            let dist = self.last_dist;
            self.emit_literals(payload, 0, skip);
            wire::push_token(&mut self.tokens, wire::TOKEN_COPY, n);
            wire::push_varint(&mut self.tokens, dist);
            copied += n;
            lit_start = self.continue_copy(payload, pos, skip + n, dist, limit, &mut copied);
        }
        let mut h = 0u64;
        let mut i = lit_start;
        while i < len {
            h = roll(h, payload[i]);
            i += 1;
            if h & ANCHOR_MASK != 0 {
                continue;
            }
            let cand = self.index.swap(h, pos + i as u64);
            if i <= lit_start {
                continue;
            }
            let indexed = (cand != 0)
                .then(|| self.extend(payload, pos, i, cand, lit_start, safe_end, usable_from))
                .flatten();
            // The index forgets old anchors as it fills; the last copy's distance
            // often still holds (a changed byte ended the copy and the repeat probe).
            let m = indexed.or_else(|| {
                let at = (pos + i as u64).checked_sub(self.last_dist)?;
                (self.last_dist != 0 && at > 0 && at < pos)
                    .then(|| self.extend(payload, pos, i, at, lit_start, safe_end, usable_from))
                    .flatten()
            });
            let Some(m) = m else {
                continue;
            };
            self.emit_literals(payload, lit_start, m.cur);
            wire::push_token(&mut self.tokens, wire::TOKEN_COPY, m.len);
            let dist = pos + m.cur as u64 - m.src;
            wire::push_varint(&mut self.tokens, dist);
            copied += m.len;
            lit_start =
                self.continue_copy(payload, pos, m.cur + m.len, dist, m.src_limit, &mut copied);
            if m.src < pos {
                self.last_dist = dist;
            }
        }
        self.emit_literals(payload, lit_start, len);
        copied
    }

    /// Continues a copy at distance `dist` past small differences from `cur` on
    /// (literal + repeat tokens); returns where literals start again.
    fn continue_copy(
        &mut self,
        payload: &[u8],
        pos: u64,
        mut cur: usize,
        dist: u64,
        src_limit: u64,
        copied: &mut usize,
    ) -> usize {
        while cur < payload.len() {
            let Some((skip, n)) = self.repeat_at(payload, pos, cur, dist, src_limit) else {
                break;
            };
            self.emit_literals(payload, cur, cur + skip);
            wire::push_token(&mut self.tokens, wire::TOKEN_REPEAT, n);
            *copied += n;
            cur += skip + n;
        }
        cur
    }

    /// Where, within the first few bytes, the payload matches the history at the
    /// previous payload's copy distance (when that is a usable source): (bytes
    /// skipped, bytes matched, source limit).
    fn hint_at(
        &self,
        payload: &[u8],
        pos: u64,
        safe_end: u64,
        usable_from: u64,
    ) -> Option<(usize, usize, u64)> {
        let src = pos
            .checked_sub(self.last_dist)
            .filter(|_| self.last_dist != 0)?;
        let (hs, he) = self.ring.held_range_at(src)?;
        let lap = self.ring.lap_start(src);
        let lo = hs.max(lap).max(usable_from);
        let hi = he.min(safe_end).min(lap + self.ring.capacity());
        if src < lo || src >= hi {
            return None;
        }
        let history = self.ring.bytes(src, hi);
        (0..=MAX_REPEAT_SKIP.min(history.len()).min(payload.len())).find_map(|skip| {
            let n = common_prefix(&payload[skip..], &history[skip..]);
            (n >= MIN_HINT).then_some((skip, n, hi))
        })
    }

    fn emit_literals(&mut self, payload: &[u8], from: usize, to: usize) {
        if to > from {
            wire::push_token(&mut self.tokens, wire::TOKEN_LITERAL, to - from);
            self.tokens.extend_from_slice(&payload[from..to]);
        }
    }

    /// Verifies and extends a candidate whose anchor window ends at history
    /// position `cand` against the payload window ending at offset `i`.
    #[expect(
        clippy::too_many_arguments,
        reason = "hot-path helper; a struct would only rename them"
    )]
    fn extend(
        &self,
        payload: &[u8],
        pos: u64,
        i: usize,
        cand: u64,
        lit_start: usize,
        safe_end: u64,
        usable_from: u64,
    ) -> Option<Match> {
        let (lo, hi, src_bytes_end);
        if cand > pos {
            // Inside the current payload (already in the ring).
            let j = (cand - pos) as usize;
            if j >= i {
                return None;
            }
            let back = common_suffix(&payload[lit_start..i], &payload[..j]);
            let fwd = common_prefix(&payload[i..], &payload[j..]);
            let total = back + fwd;
            return (total >= MIN_MATCH).then(|| Match {
                cur: i - back,
                src: cand - back as u64,
                len: total,
                src_limit: u64::MAX,
            });
        } else {
            // Earlier payloads: the source must be held, outside the reorder
            // guard, usable, and within one lap of the ring.
            let (hs, he) = self.ring.held_range_at(cand - 1)?;
            let lap = self.ring.lap_start(cand - 1);
            lo = hs.max(lap).max(usable_from);
            hi = he.min(safe_end).min(lap + self.ring.capacity());
            if cand > hi || cand <= lo {
                return None;
            }
            src_bytes_end = cand;
        }
        let back = common_suffix(&payload[lit_start..i], self.ring.bytes(lo, src_bytes_end));
        let fwd = common_prefix(&payload[i..], self.ring.bytes(src_bytes_end, hi));
        let total = back + fwd;
        (total >= MIN_MATCH).then(|| Match {
            cur: i - back,
            src: cand - back as u64,
            len: total,
            src_limit: hi,
        })
    }

    /// Looks for a continuation of the last copy (same distance) within a few
    /// bytes after `cur`; returns (bytes skipped, bytes matched).
    fn repeat_at(
        &self,
        payload: &[u8],
        pos: u64,
        cur: usize,
        dist: u64,
        src_limit: u64,
    ) -> Option<(usize, usize)> {
        for skip in 1..=MAX_REPEAT_SKIP {
            let at = cur + skip;
            if at + MIN_REPEAT > payload.len() {
                return None;
            }
            let src = pos + at as u64 - dist;
            let n = if src >= pos {
                let j = (src - pos) as usize;
                common_prefix(&payload[at..], &payload[j..])
            } else {
                if src >= src_limit {
                    return None;
                }
                common_prefix(&payload[at..], self.ring.bytes(src, src_limit))
            };
            if n >= MIN_REPEAT {
                return Some((skip, n));
            }
        }
        None
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("lane", &self.lane)
            .field("history_id", &self.ring.history_id)
            .field("high_water", &self.ring.high_water)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A zstd context for the residue; the frame header carries the length, so zstd's
/// own per-frame fields (content size, dictionary id) are left out.
fn compressor(
    level: i32,
    dictionary: Option<&ZstdDictionary>,
) -> Result<zstd::bulk::Compressor<'static>, CodecError> {
    let mut c = match dictionary {
        Some(d) => zstd::bulk::Compressor::with_dictionary(level, d.bytes()),
        None => zstd::bulk::Compressor::new(level),
    }
    .map_err(CodecError::Zstd)?;
    use zstd::zstd_safe::CParameter;
    c.set_parameter(CParameter::ContentSizeFlag(false))
        .map_err(CodecError::Zstd)?;
    c.set_parameter(CParameter::DictIdFlag(false))
        .map_err(CodecError::Zstd)?;
    Ok(c)
}
