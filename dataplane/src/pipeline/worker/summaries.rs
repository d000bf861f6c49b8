//! The history side of a worker: control messages routed to the worker owning their
//! lane, the summary exchange after a start (see `docs/codec.md`, "Restart"), and
//! the write-behind of persistent history.

use std::time::Duration;

use super::{Counter, LaneMessage, Pipeline, WorkerHistory};
use crate::codec::store::LaneSpool;
use crate::codec::{ControlMessage, Decoder, HistorySummary};
use crate::io::PacketIo;
use crate::tunnel::ControlKind;

/// Rounds (one a second) an encoder's history summary is sent until the
/// partner's decoder answers: a lost packet costs a second, a partner that stays away
/// costs 30 small packets, and its own start asks for the summary again anyway.
const SUMMARY_ROUNDS: u32 = 30;
/// Rounds a decoder's summary is sent unasked after a start, until the partner's
/// encoder summary for that lane arrives (lanes the partner does not use never answer).
const REQUEST_ROUNDS: u32 = 10;
/// How long a stopping worker waits for a buffer or a queue slot per history block.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// At most one `info` line per partner this often about summaries applied.
const INFO_EVERY: Duration = Duration::from_secs(1);

/// Per partner: the write-behind of its persistent history and the state of the
/// summary exchange (see `docs/codec.md`, "Restart").
#[derive(Default)]
pub(super) struct PartnerHistory {
    /// Write-behind of this worker's encoder lane (with a history store).
    encoder_spool: Option<LaneSpool>,
    /// Write-behind per decoder lane this worker owns, indexed by lane.
    decoder_spools: Vec<Option<LaneSpool>>,
    /// Rounds left to send our encoder's summary; zero once the partner answered.
    encoder_rounds: u32,
    /// Our encoder's summary is owed now (the partner asked for it).
    encoder_now: bool,
    /// Per lane: our decoder's summary is owed as an answer.
    answer: Vec<bool>,
    /// Per lane: rounds left to send our decoder's summary unasked.
    request_rounds: Vec<u32>,
    /// When a summary applied may be logged at `info` again (a partner could send
    /// them in a loop).
    next_info: Duration,
}

impl PartnerHistory {
    /// Nothing persisted, nothing owed, for a partner with `lanes` lanes.
    pub(super) fn with_lanes(lanes: usize) -> Self {
        Self {
            decoder_spools: (0..lanes).map(|_| None).collect(),
            answer: vec![false; lanes],
            request_rounds: vec![0; lanes],
            ..Self::default()
        }
    }
}

impl Pipeline {
    /// Installs the history restored from disk for each partner (index = partner) with
    /// its write-behind, and schedules the summary exchange that decides what of it
    /// both sides still hold.
    pub fn attach_history(&mut self, restored: Vec<Option<WorkerHistory>>) {
        for (p, restored) in restored.into_iter().enumerate() {
            if let Some(restored) = restored {
                self.attach_partner_history(p, restored);
            }
        }
    }

    /// Installs partner `p`'s restored history and write-behind (see
    /// [`Pipeline::attach_history`]); ignored when `p` has no session.
    pub(super) fn attach_partner_history(&mut self, p: usize, restored: WorkerHistory) {
        if p >= self.history.len() || self.encoders[p].is_none() {
            return;
        }
        self.encoders[p] = Some(restored.encoder);
        let h = &mut self.history[p];
        h.encoder_spool = Some(restored.encoder_spool);
        h.encoder_rounds = SUMMARY_ROUNDS;
        for (lane, decoder, spool) in restored.decoders {
            let l = usize::from(lane);
            if l >= h.decoder_spools.len() {
                continue;
            }
            h.decoder_spools[l] = Some(spool);
            h.request_rounds[l] = REQUEST_ROUNDS;
            if decoder.is_some() {
                self.decoders[p][l] = decoder;
            }
        }
        // The first round goes out at the first flush.
        self.summary_round = true;
        self.summaries_due = true;
    }

    /// Drops partner `p`'s history in memory and its write-behind (agent mode: the
    /// store is being closed, discarded or replaced).
    pub(super) fn reset_partner_history(&mut self, p: usize) {
        let fresh = self.config.encoder_for(p, self.lane);
        let Some(Some(enc)) = self.encoders.get_mut(p) else {
            return;
        };
        match fresh {
            Ok(fresh) => *enc = fresh,
            Err(e) => tracing::warn!(error = %e, "cannot recreate an encoder"),
        }
        let lanes = self.decoders[p].len();
        self.decoders[p].iter_mut().for_each(|d| *d = None);
        self.history[p] = PartnerHistory::with_lanes(lanes);
    }

    /// A control message of kind `kind` from partner `p`.
    pub(super) fn on_control(&mut self, p: usize, kind: ControlKind, message: &[u8]) {
        self.count(Some(p), Counter::ControlReceived, 1);
        if let ControlKind::Other(kind) = kind {
            // A kind of a newer version: counted, ignored.
            tracing::debug!(kind, "unknown control kind ignored");
            return;
        }
        let message = match (kind, ControlMessage::parse(message)) {
            (ControlKind::ForgetRanges, Ok(ControlMessage::Forget(forget))) => {
                LaneMessage::Forget(forget)
            }
            (ControlKind::HistorySummary, Ok(ControlMessage::Summary(summary))) => {
                LaneMessage::EncoderSummary(summary)
            }
            (ControlKind::DecoderSummary, Ok(ControlMessage::Summary(summary))) => {
                LaneMessage::DecoderSummary {
                    summary,
                    request: false,
                }
            }
            (ControlKind::DecoderSummaryRequest, Ok(ControlMessage::Summary(summary))) => {
                LaneMessage::DecoderSummary {
                    summary,
                    request: true,
                }
            }
            (kind, Ok(_)) => {
                tracing::debug!(kind = kind.to_byte(), "control message of the wrong kind");
                self.count(Some(p), Counter::DropMalformed, 1);
                return;
            }
            (_, Err(e)) => {
                tracing::debug!(error = %e, "malformed control message");
                self.count(Some(p), Counter::DropMalformed, 1);
                return;
            }
        };
        if !matches!(message, LaneMessage::Forget(_)) {
            self.count(Some(p), Counter::SummariesReceived, 1);
        }
        self.route(p, message);
    }

    /// Applies a control message here, or queues it for the worker owning its lane:
    /// encoder lane `l` is worker `l`'s, decoder lane `l` worker `l % workers`'s.
    fn route(&mut self, p: usize, message: LaneMessage) {
        let owner = match &message {
            LaneMessage::Forget(f) => usize::from(f.lane),
            LaneMessage::DecoderSummary { summary, .. } => usize::from(summary.lane),
            LaneMessage::EncoderSummary(s) => usize::from(s.lane) % self.config.workers,
        };
        if owner == self.index {
            self.apply_lane_message(p, message);
        } else if owner < self.config.workers {
            if self.shared.lane_messages[owner].push((p, message)).is_err() {
                self.count(Some(p), Counter::DropQueueFull, 1);
            }
        } else if let LaneMessage::Forget(_) = message {
            self.count(Some(p), Counter::DropMalformed, 1);
        }
        // A decoder summary for an encoder lane we do not run (the partner asks about
        // every lane it may receive on) needs no answer.
    }

    /// A control message for a codec lane this worker owns.
    pub(super) fn apply_lane_message(&mut self, p: usize, message: LaneMessage) {
        match message {
            LaneMessage::Forget(forget) => {
                if let Some(Some(enc)) = self.encoders.get_mut(p) {
                    enc.apply_forget(&forget);
                    self.count(Some(p), Counter::ForgetsApplied, 1);
                }
            }
            LaneMessage::EncoderSummary(summary) => {
                let lane = usize::from(summary.lane);
                let Some(dec) = self.decoder(p, summary.lane) else {
                    return;
                };
                dec.apply_peer_summary(&summary);
                let h = &mut self.history[p];
                h.request_rounds[lane] = 0;
                h.answer[lane] = true;
                self.summaries_due = true;
            }
            LaneMessage::DecoderSummary { summary, request } => {
                let Some(Some(enc)) = self.encoders.get_mut(p) else {
                    return;
                };
                enc.apply_peer_summary(&summary);
                let h = &mut self.history[p];
                let same_history = summary.history_id == enc.history_id();
                if self.now >= h.next_info {
                    h.next_info = self.now + INFO_EVERY;
                    tracing::info!(
                        partner = %self.config.partners[p].name,
                        lane = summary.lane,
                        same_history,
                        usable_bytes = enc.held_bytes(),
                        request,
                        "partner decoder's history summary applied"
                    );
                } else {
                    tracing::debug!(
                        lane = summary.lane,
                        same_history,
                        request,
                        "partner decoder's history summary applied"
                    );
                }
                if request {
                    // The partner (re)started: tell its decoder which history this is,
                    // until it answers.
                    h.encoder_now = true;
                    h.encoder_rounds = SUMMARY_ROUNDS;
                    self.summaries_due = true;
                } else {
                    h.encoder_rounds = 0;
                }
            }
        }
    }

    /// Partner `p`'s decoder of `lane`, created when first used; `None` when the lane
    /// does not exist or the ring cannot be allocated.
    fn decoder(&mut self, p: usize, lane: u16) -> Option<&mut Decoder> {
        let slot = self.decoders.get_mut(p)?.get_mut(usize::from(lane))?;
        if slot.is_none() {
            match self.config.decoder_for(p, lane) {
                Ok(d) => *slot = Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a history decoder");
                    return None;
                }
            }
        }
        slot.as_mut()
    }

    /// Sends the history summaries owed: answers at once, the resent ones once per
    /// round.
    pub(super) fn send_summaries(&mut self, wan: &mut dyn PacketIo) {
        if !std::mem::take(&mut self.summaries_due) {
            return;
        }
        let round = std::mem::take(&mut self.summary_round);
        for p in 0..self.history.len() {
            let h = &mut self.history[p];
            let encoder = h.encoder_now || (round && h.encoder_rounds > 0);
            if encoder {
                h.encoder_now = false;
                if round {
                    h.encoder_rounds = h.encoder_rounds.saturating_sub(1);
                }
                if let Some(Some(enc)) = self.encoders.get(p) {
                    let summary = enc.summary();
                    self.send_summary(wan, p, ControlKind::HistorySummary, &summary);
                }
            }
            for lane in 0..self.history[p].answer.len() {
                let h = &mut self.history[p];
                let kind = if std::mem::take(&mut h.answer[lane]) {
                    ControlKind::DecoderSummary
                } else if round && h.request_rounds[lane] > 0 {
                    h.request_rounds[lane] -= 1;
                    ControlKind::DecoderSummaryRequest
                } else {
                    continue;
                };
                let summary = match self.decoders[p].get(lane) {
                    Some(Some(dec)) => dec.summary(),
                    // Nothing held: history id 0 matches no encoder.
                    _ => HistorySummary {
                        lane: lane as u16,
                        history_id: 0,
                        high_water: 0,
                        ranges: Vec::new(),
                    },
                };
                self.send_summary(wan, p, kind, &summary);
            }
            let h = &self.history[p];
            if h.encoder_rounds > 0 || h.request_rounds.iter().any(|&r| r > 0) {
                // Still resending: look again at the next round.
                self.summaries_due = true;
            }
        }
    }

    fn send_summary(
        &mut self,
        wan: &mut dyn PacketIo,
        p: usize,
        kind: ControlKind,
        summary: &HistorySummary,
    ) {
        match summary.write(&mut self.scratch) {
            Ok(n) => {
                if self.send_control(wan, p, kind, n) {
                    self.count(Some(p), Counter::SummariesSent, 1);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot write a history summary"),
        }
    }

    /// Hands completed history blocks to the store's writer (a copy and a queue
    /// push; never blocks).
    pub(super) fn offer_history(&mut self) {
        for (p, h) in self.history.iter_mut().enumerate() {
            if let (Some(spool), Some(Some(enc))) = (&mut h.encoder_spool, self.encoders.get(p)) {
                spool.offer_encoder(enc);
            }
            for (spool, dec) in h.decoder_spools.iter_mut().zip(&self.decoders[p]) {
                if let (Some(spool), Some(dec)) = (spool, dec) {
                    spool.offer_decoder(dec);
                }
            }
        }
    }
}

impl Drop for Pipeline {
    /// A stopping worker hands its history's last blocks, the partly filled ones
    /// included, to the writer (waiting for it if needed).
    fn drop(&mut self) {
        for (p, h) in self.history.iter_mut().enumerate() {
            if let (Some(spool), Some(Some(enc))) = (&mut h.encoder_spool, self.encoders.get(p)) {
                spool.flush_encoder(enc, FLUSH_WAIT);
            }
            for (spool, dec) in h.decoder_spools.iter_mut().zip(&self.decoders[p]) {
                if let (Some(spool), Some(dec)) = (spool, dec) {
                    spool.flush_decoder(dec, FLUSH_WAIT);
                }
            }
        }
    }
}
