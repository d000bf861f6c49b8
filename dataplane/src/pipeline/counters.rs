//! Per-partner counters of the pipeline: each worker keeps plain `u64`s while it
//! processes a batch and publishes them once per loop iteration into atomics that any
//! thread can read (single writer per slot, so a relaxed store is enough).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter of a partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// LAN packets encoded toward the partner.
    EncodedPackets,
    /// Transport payload bytes given to the codec (before compression).
    BytesBefore,
    /// Codec frame bytes produced (after compression, before encryption).
    BytesAfter,
    /// Tunnel packets sent on the WAN (data and control).
    WanPacketsOut,
    /// Bytes sent on the WAN (outer IP packets).
    WanBytesOut,
    /// Tunnel packets received and opened.
    WanPacketsIn,
    /// Bytes received on the WAN (outer IP packets that opened).
    WanBytesIn,
    /// Payload bytes restored by the decoder.
    BytesRestored,
    /// Packets restored and sent on the LAN.
    DecodedPackets,
    /// Control messages sent (forget ranges, history summaries).
    ControlSent,
    /// Control messages received.
    ControlReceived,
    /// Forget messages applied to a local encoder.
    ForgetsApplied,
    /// Dropped: replayed (duplicate or too old).
    DropReplay,
    /// Dropped: failed authentication.
    DropAuthFailed,
    /// Dropped: references history this side does not hold.
    DropHistoryMiss,
    /// Dropped: no next hop (route or neighbour) for the packet.
    DropNoNextHop,
    /// Dropped: too big for the WAN after encapsulation (ICMP sent when allowed).
    DropTooBig,
    /// Dropped: sealed under an epoch with no receive key.
    DropStaleEpoch,
    /// Dropped: malformed (inner, outer, tunnel header or codec frame).
    DropMalformed,
    /// Dropped: no buffer on the egress port.
    DropNoBuffer,
    /// Dropped: the session refused to seal (no key yet, key exhausted).
    DropSealRefused,
    /// Dropped: TTL / hop limit expired.
    DropTtlExpired,
    /// Dropped: the partner is in pass-through mode (the kernel should carry it).
    DropPassThrough,
    /// Dropped: the owning worker's handoff queue was full (forget messages).
    DropQueueFull,
    /// Send key epochs started (rekeys), summed over workers.
    SendEpochs,
    /// History summaries sent (encoder and decoder side, after a start or restart).
    SummariesSent,
    /// History summaries received and applied.
    SummariesReceived,
}

/// Number of [`Counter`] values.
pub const COUNTERS: usize = Counter::SummariesReceived as usize + 1;

/// Names as they appear in the JSON statistics.
pub const NAMES: [&str; COUNTERS] = [
    "encoded_packets",
    "bytes_before",
    "bytes_after",
    "wan_packets_out",
    "wan_bytes_out",
    "wan_packets_in",
    "wan_bytes_in",
    "bytes_restored",
    "decoded_packets",
    "control_sent",
    "control_received",
    "forgets_applied",
    "drop_replay",
    "drop_auth_failed",
    "drop_history_miss",
    "drop_no_next_hop",
    "drop_too_big",
    "drop_stale_epoch",
    "drop_malformed",
    "drop_no_buffer",
    "drop_seal_refused",
    "drop_ttl_expired",
    "drop_pass_through",
    "drop_queue_full",
    "send_epochs",
    "summaries_sent",
    "summaries_received",
];

/// A worker's local counts for one partner.
pub type Counts = [u64; COUNTERS];

/// Published counters of one worker: one row per partner plus a last row for packets
/// that belong to no partner.
#[derive(Debug)]
pub struct Published {
    rows: Box<[[AtomicU64; COUNTERS]]>,
}

impl Published {
    /// Rows for `partners` partners plus the "no partner" row.
    pub fn new(partners: usize) -> Self {
        Self {
            rows: (0..=partners)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Stores a worker's counts (its only writer).
    pub fn store(&self, counts: &[Counts]) {
        for (row, local) in self.rows.iter().zip(counts) {
            for (c, &v) in row.iter().zip(local) {
                // Relaxed: statistics only, single writer.
                c.store(v, Ordering::Relaxed);
            }
        }
    }

    /// Adds this worker's row `row` into `into`.
    pub fn add_row(&self, row: usize, into: &mut Counts) {
        if let Some(r) = self.rows.get(row) {
            for (acc, c) in into.iter_mut().zip(r) {
                *acc += c.load(Ordering::Relaxed);
            }
        }
    }
}

/// Counts as a name → value map, for JSON.
pub fn to_map(counts: &Counts) -> BTreeMap<&'static str, u64> {
    NAMES.iter().copied().zip(counts.iter().copied()).collect()
}
