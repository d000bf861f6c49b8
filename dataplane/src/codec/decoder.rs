//! The receiving side of a lane: restores payloads from history, verifies
//! them, stores them at the sender's positions, and reports what to forget.

use tracing::{debug, trace};
use xxhash_rust::xxh3::xxh3_64;

use super::ranges::RangeSet;
use super::ring::Ring;
use super::wire::{self, ForgetRanges, HistorySummary};
use super::{CodecConfig, CodecError, ZstdDictionary};

/// What [`Decoder::decode`] restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedMeta {
    /// Payload bytes written to the output buffer.
    pub len: usize,
    /// History position the frame named.
    pub position: u64,
    /// False when the position was older than the ring keeps (the payload is
    /// still delivered, just not remembered).
    pub stored: bool,
}

/// Counters of a decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Encoded bytes received.
    pub bytes_in: u64,
    /// Payload bytes restored.
    pub bytes_out: u64,
    /// Frames restored.
    pub frames: u64,
    /// Frames dropped because they referenced history not held.
    pub misses: u64,
    /// Frames dropped because the restored payload failed its checksum.
    pub checksum_failures: u64,
    /// Frames dropped as malformed.
    pub malformed: u64,
    /// Forget messages produced.
    pub forgets_sent: u64,
}

/// The decoder of one lane from one partner; owns its history.
pub struct Decoder {
    lane: u16,
    config: CodecConfig,
    ring: Ring,
    scratch: Box<[u8]>,
    zstd: zstd::bulk::Decompressor<'static>,
    /// The partner's dictionary for kind-3 frames, when one is loaded.
    zstd_dict: Option<zstd::bulk::Decompressor<'static>>,
    /// Ranges to tell the encoder to forget.
    pending_forget: RangeSet,
    /// Gaps below this were already reported.
    reported_upto: u64,
    stats: DecoderStats,
}

impl Decoder {
    /// A fresh lane (history id 0 until the encoder's summary names one).
    pub fn new(lane: u16, config: CodecConfig) -> Result<Self, CodecError> {
        config.validate()?;
        Ok(Self {
            lane,
            config,
            ring: Ring::new(config.history_bytes, 0),
            scratch: vec![0u8; config.max_payload * 3 + 64].into_boxed_slice(),
            zstd: zstd::bulk::Decompressor::new().map_err(CodecError::Zstd)?,
            zstd_dict: None,
            pending_forget: RangeSet::with_capacity(wire::MAX_CONTROL_RANGES * 4),
            reported_upto: 0,
            stats: DecoderStats::default(),
        })
    }

    /// Accepts frames compressed with `dictionary` (kind 3) from now on; frames
    /// without one still decode.
    pub fn use_dictionary(&mut self, dictionary: &ZstdDictionary) -> Result<(), CodecError> {
        self.zstd_dict = Some(
            zstd::bulk::Decompressor::with_dictionary(dictionary.bytes())
                .map_err(CodecError::Zstd)?,
        );
        Ok(())
    }

    /// Lane number.
    pub fn lane(&self) -> u16 {
        self.lane
    }

    /// Identifier of the history this decoder follows (0: none yet).
    pub fn history_id(&self) -> u64 {
        self.ring.history_id
    }

    /// Counters.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }

    pub(crate) fn ring_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }

    pub(crate) fn mark_restored(&mut self) {
        self.reported_upto = self.ring.high_water;
    }

    /// Restores one encoded payload into `out`. On error nothing in `out` is
    /// meaningful and the packet must be dropped; misses queue a forget
    /// message (see [`Decoder::take_control`]).
    pub fn decode(&mut self, frame: &[u8], out: &mut [u8]) -> Result<DecodedMeta, CodecError> {
        let result = self.decode_inner(frame, out);
        match &result {
            Ok(meta) => {
                self.stats.bytes_in += frame.len() as u64;
                self.stats.bytes_out += meta.len as u64;
                self.stats.frames += 1;
            }
            Err(CodecError::Miss { .. }) => self.stats.misses += 1,
            Err(CodecError::ChecksumMismatch { .. }) => self.stats.checksum_failures += 1,
            Err(CodecError::Malformed(_)) => self.stats.malformed += 1,
            Err(_) => {}
        }
        if let Err(e) = &result {
            trace!(lane = self.lane, error = %e, "frame dropped");
        }
        result
    }

    fn decode_inner(&mut self, frame: &[u8], out: &mut [u8]) -> Result<DecodedMeta, CodecError> {
        let hdr = wire::parse_frame_header(frame)?;
        let (pos, n) = (hdr.position, hdr.payload_len);
        if n > self.config.max_payload {
            return Err(CodecError::Malformed("payload longer than max_payload"));
        }
        if out.len() < n {
            return Err(CodecError::OutputTooSmall {
                need: n,
                have: out.len(),
            });
        }
        if pos.checked_add(n as u64).is_none() || !self.ring.fits(pos, n) {
            return Err(CodecError::Malformed("payload crosses the ring end"));
        }
        let body = &frame[hdr.body_at..];
        match hdr.kind {
            wire::KIND_RAW => out[..n].copy_from_slice(body),
            kind => {
                let tokens_len = match kind {
                    wire::KIND_TOKENS_ZSTD => self
                        .zstd
                        .decompress_to_buffer(body, &mut self.scratch[..])
                        .map_err(|_| CodecError::Malformed("zstd body does not decompress"))?,
                    wire::KIND_TOKENS_ZSTD_DICT => self
                        .zstd_dict
                        .as_mut()
                        .ok_or(CodecError::Malformed(
                            "frame compressed with a zstd dictionary, but none is loaded here: \
                             configure the partner's dictionary on both sides",
                        ))?
                        .decompress_to_buffer(body, &mut self.scratch[..])
                        .map_err(|_| {
                            CodecError::Malformed(
                                "zstd body does not decompress with this dictionary: \
                                 both partners must load the same one",
                            )
                        })?,
                    _ => 0,
                };
                let tokens: &[u8] = if kind != wire::KIND_TOKENS {
                    &self.scratch[..tokens_len]
                } else {
                    body
                };
                let referenced = run_tokens(&self.ring, tokens, pos, &mut out[..n]);
                let referenced = match referenced {
                    Ok(r) => r,
                    Err(e) => {
                        if let CodecError::Miss { start, end, .. } = e {
                            self.pending_forget.insert(start, end);
                            self.pending_forget.insert(pos, pos + n as u64);
                        }
                        return Err(e);
                    }
                };
                if xxh3_64(&out[..n]) != hdr.checksum {
                    // Our history differs from the sender's: forget what was used.
                    if let Some((s, e)) = referenced {
                        self.pending_forget.insert(s, e);
                        self.ring.held.remove(s, e);
                    }
                    self.pending_forget.insert(pos, pos + n as u64);
                    return Err(CodecError::ChecksumMismatch { position: pos });
                }
            }
        }
        let stored = self.ring.store(pos, &out[..n]);
        Ok(DecodedMeta {
            len: n,
            position: pos,
            stored,
        })
    }

    /// Writes a pending forget message into `out` (at least
    /// [`ForgetRanges::MAX_LEN`] bytes) and returns its length, or `None` when
    /// there is nothing to report. Besides misses, it reports holes (positions
    /// never received) once they are older than the reorder allowance.
    pub fn take_control(&mut self, out: &mut [u8]) -> Result<Option<usize>, CodecError> {
        self.collect_holes();
        if self.pending_forget.is_empty() {
            return Ok(None);
        }
        let mut msg = ForgetRanges {
            lane: self.lane,
            ranges: Vec::with_capacity(wire::MAX_CONTROL_RANGES),
        };
        let n = self.pending_forget.len();
        msg.ranges.extend(
            self.pending_forget
                .iter()
                .skip(n.saturating_sub(wire::MAX_CONTROL_RANGES)),
        );
        let len = msg.write(out)?;
        self.pending_forget.clear();
        self.stats.forgets_sent += 1;
        debug!(
            lane = self.lane,
            ranges = msg.ranges.len(),
            "forget message queued"
        );
        Ok(Some(len))
    }

    /// Adds gaps in the held ranges between the last report and the reorder
    /// allowance to the pending forget set.
    fn collect_holes(&mut self) {
        let upto = self
            .ring
            .high_water
            .saturating_sub(self.config.reorder_guard_bytes);
        let from = self
            .reported_upto
            .max(self.ring.high_water.saturating_sub(self.ring.capacity()));
        if upto <= from {
            return;
        }
        let mut cursor = from;
        for (s, e) in self.ring.held.iter() {
            if e <= cursor {
                continue;
            }
            if s >= upto {
                break;
            }
            if s > cursor {
                self.pending_forget.insert(cursor, s);
            }
            cursor = e;
        }
        if cursor < upto {
            self.pending_forget.insert(cursor, upto);
        }
        self.reported_upto = upto;
    }

    /// Bytes of history held (for logs and statistics; walks the held ranges).
    pub fn held_bytes(&self) -> u64 {
        self.ring.held.iter().map(|(s, e)| e - s).sum()
    }

    /// What this side holds, for the partner's encoder.
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

    /// Applies the partner encoder's summary: a different history id discards
    /// everything held; the same id keeps only what both hold.
    pub fn apply_peer_summary(&mut self, peer: &HistorySummary) {
        if peer.lane != self.lane {
            return;
        }
        if peer.history_id != self.ring.history_id {
            self.ring.forget_all();
            self.ring.history_id = peer.history_id;
        } else {
            let mut both = RangeSet::with_capacity(wire::MAX_CONTROL_RANGES + 1);
            for &(s, e) in &peer.ranges {
                both.insert(s, e);
            }
            both.insert(peer.high_water, u64::MAX);
            self.ring.held.intersect_with(&both);
        }
        self.reported_upto = self.reported_upto.max(peer.high_water);
        debug!(lane = self.lane, "peer history summary applied");
    }
}

/// Executes a token stream into `out`; returns the history range the copies
/// referenced (for forgetting after a checksum failure).
fn run_tokens(
    ring: &Ring,
    tokens: &[u8],
    pos: u64,
    out: &mut [u8],
) -> Result<Option<(u64, u64)>, CodecError> {
    let n = out.len();
    let mut at = 0usize;
    let mut cur = 0usize;
    let mut last_dist: Option<u64> = None;
    let mut referenced: Option<(u64, u64)> = None;
    while at < tokens.len() {
        let (kind, len) = wire::read_token(tokens, &mut at)?;
        if len > n - cur {
            return Err(CodecError::Malformed("token runs past the payload end"));
        }
        match kind {
            wire::TOKEN_LITERAL => {
                let lit = tokens
                    .get(at..at + len)
                    .ok_or(CodecError::Malformed("truncated literal"))?;
                out[cur..cur + len].copy_from_slice(lit);
                at += len;
            }
            wire::TOKEN_COPY | wire::TOKEN_REPEAT => {
                let dist = if kind == wire::TOKEN_COPY {
                    wire::read_varint(tokens, &mut at)?
                } else {
                    last_dist.ok_or(CodecError::Malformed("repeat before any copy"))?
                };
                let here = pos + cur as u64;
                if dist == 0 || dist > here {
                    return Err(CodecError::Malformed("copy distance out of range"));
                }
                last_dist = Some(dist);
                let src = here - dist;
                if src >= pos {
                    // Earlier in this payload; may overlap the output.
                    let j = (src - pos) as usize;
                    if j + len <= cur {
                        out.copy_within(j..j + len, cur);
                    } else {
                        for k in 0..len {
                            out[cur + k] = out[j + k];
                        }
                    }
                } else {
                    let end = src + len as u64;
                    if end > pos {
                        return Err(CodecError::Malformed("copy spans history and payload"));
                    }
                    if !ring.held.contains(src, end) {
                        return Err(CodecError::Miss {
                            position: pos,
                            start: src,
                            end,
                        });
                    }
                    ring.copy_out(src, &mut out[cur..cur + len]);
                    referenced = Some(match referenced {
                        None => (src, end),
                        Some((a, b)) => (a.min(src), b.max(end)),
                    });
                }
            }
            _ => return Err(CodecError::Malformed("unknown token type")),
        }
        cur += len;
    }
    if cur != n {
        return Err(CodecError::Malformed("tokens do not fill the payload"));
    }
    Ok(referenced)
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("lane", &self.lane)
            .field("history_id", &self.ring.history_id)
            .field("high_water", &self.ring.high_water)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}
