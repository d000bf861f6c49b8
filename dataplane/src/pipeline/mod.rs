//! The appliance's fast path: joins XDP steering, AF_XDP ports, the worker pool, the
//! compression codec, the tunnel sessions and gateway forwarding.
//!
//! Each worker runs a [`Pipeline`] ([`crate::worker::Process`]): LAN frames are
//! encoded toward their partner (history codec on the transport payload, then AEAD),
//! WAN tunnel packets are opened, restored and forwarded to the LAN host.
//! [`Appliance`] starts the whole thing from a manual-keying configuration. See
//! `docs/pipeline.md`.
#![forbid(unsafe_code)]

mod appliance;
pub mod bundle;
mod control;
pub mod counters;
mod history;
pub mod inner;
pub mod tun;
mod worker;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::queue::ArrayQueue;

use crate::codec::{
    CodecConfig, CodecError, Decoder, Encoder, ForgetRanges, HistorySummary, MAX_FRAME_OVERHEAD,
    ZstdDictionary,
};
use crate::tunnel::config::PortIo;
use crate::tunnel::manual::ManualKeying;
use crate::tunnel::{EpochKeys, Mode, OVERHEAD, SessionParams};

pub use appliance::{
    AgentSettings, Appliance, ApplianceOptions, ApplianceStats, PartnerStats, PipelineError,
};
pub use control::{
    ControlError, HistoryStoreOutcome, HistoryStoreSettings, InstallOutcome, RuleSpec, SessionSpec,
    SessionState,
};
pub use counters::{COUNTERS, Counter, Counts, NAMES};
pub use history::WorkerHistory;
pub use worker::Pipeline;

/// Outer UDP header length.
const UDP_LEN: usize = 8;

/// What a worker needs to know about one partner.
#[derive(Debug, Clone)]
pub struct PartnerPlan {
    /// The partner's name.
    pub name: String,
    /// How its traffic is carried.
    pub mode: Mode,
    /// Its WAN address and tunnel port.
    pub remote: SocketAddr,
    /// Our WAN address toward it (outer source).
    pub local: IpAddr,
    /// LAN prefixes behind it (address, length).
    pub prefixes: Vec<(IpAddr, u8)>,
    /// Session parameters (none in pass-through mode).
    pub params: Option<SessionParams>,
    /// Manual keying (encrypted mode only).
    pub keying: Option<ManualKeying>,
    /// Transport payloads go through the compression history; `false` carries each
    /// inner packet whole (format "headers only"), untouched by the codec.
    pub compress: bool,
    /// Compression history per lane and direction toward this partner, bytes;
    /// `None`: the appliance's [`PipelineConfig::codec`] size.
    pub history_bytes: Option<usize>,
    /// A zstd dictionary for the residue toward (and from) this partner; both
    /// partners must load the same one.
    pub zstd_dictionary: Option<ZstdDictionary>,
}

impl PartnerPlan {
    /// A free partner slot (agent mode): no name, no prefixes, never tunnelled.
    pub fn vacant() -> Self {
        Self {
            name: String::new(),
            mode: Mode::PassThrough,
            remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            local: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            prefixes: Vec::new(),
            params: None,
            keying: None,
            compress: true,
            history_bytes: None,
            zstd_dictionary: None,
        }
    }

    /// Whether this slot holds no partner.
    pub fn is_vacant(&self) -> bool {
        self.name.is_empty()
    }

    /// Bytes encapsulation adds to an inner IP packet toward this partner, worst case:
    /// outer IP + UDP + tunnel header (+ tag) + bundle framing of one packet + codec
    /// frame header.
    pub fn overhead(&self) -> usize {
        let ip = if self.remote.is_ipv4() { 20 } else { 40 };
        let tunnel = if self.mode == Mode::Encrypted {
            OVERHEAD
        } else {
            crate::tunnel::HEADER_LEN
        };
        ip + UDP_LEN + tunnel + bundle::FRAMING_LEN + MAX_FRAME_OVERHEAD
    }
}

/// Settings shared by every worker of an appliance.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The ports' backend. With [`PortIo::Tun`] the kernel routes on both sides: the
    /// pipeline looks up no next hop and leaves TTLs to the kernel's forwarding.
    pub io: PortIo,
    /// Partners, indexed by their number (also their number in the XDP maps).
    pub partners: Vec<PartnerPlan>,
    /// Our tunnel UDP port (outer source port).
    pub tunnel_port: u16,
    /// Workers in the pool (lane `i` is worker `i`'s encoder stream).
    pub workers: usize,
    /// Interface index of the LAN port.
    pub lan_ifindex: u32,
    /// Interface index of the WAN port.
    pub wan_ifindex: u32,
    /// L3 MTU of the WAN port.
    pub wan_mtu: usize,
    /// Source of ICMPv4 errors toward LAN hosts.
    pub router_v4: Option<Ipv4Addr>,
    /// Source of ICMPv6 errors toward LAN hosts.
    pub router_v6: Option<Ipv6Addr>,
    /// Codec settings (both sides must use the same history size).
    pub codec: CodecConfig,
    /// Overhead reserved whatever the partners are (agent mode: partners come and go,
    /// the MSS should not).
    pub reserved_overhead: usize,
    /// Payloads go through the codec (else they are carried as they are). Folded
    /// into every [`PartnerPlan::compress`] when a plan is made; the fast path reads
    /// only the plan.
    pub compression: bool,
}

impl PipelineConfig {
    /// Worst-case encapsulation overhead over all tunnelled partners.
    pub fn overhead(&self) -> usize {
        self.partners
            .iter()
            .filter(|p| p.mode != Mode::PassThrough)
            .map(PartnerPlan::overhead)
            .max()
            .unwrap_or(0)
            .max(self.reserved_overhead)
    }

    /// The codec settings toward partner `p` (its own history size, if it has one).
    pub fn codec_for(&self, p: usize) -> CodecConfig {
        let history_bytes = self
            .partners
            .get(p)
            .and_then(|plan| plan.history_bytes)
            .unwrap_or(self.codec.history_bytes);
        CodecConfig {
            history_bytes,
            ..self.codec
        }
    }

    /// A fresh encoder of `lane` toward partner `p`, with its dictionary if it has one.
    pub fn encoder_for(&self, p: usize, lane: u16) -> Result<Encoder, CodecError> {
        let mut enc = Encoder::new(lane, self.codec_for(p))?;
        self.apply_dictionary(p, Some(&mut enc), None)?;
        Ok(enc)
    }

    /// A fresh decoder of `lane` from partner `p`, with its dictionary if it has one.
    pub fn decoder_for(&self, p: usize, lane: u16) -> Result<Decoder, CodecError> {
        let mut dec = Decoder::new(lane, self.codec_for(p))?;
        self.apply_dictionary(p, None, Some(&mut dec))?;
        Ok(dec)
    }

    /// Loads partner `p`'s zstd dictionary, if any, into a (restored) encoder and
    /// decoder.
    pub fn apply_dictionary(
        &self,
        p: usize,
        enc: Option<&mut Encoder>,
        dec: Option<&mut Decoder>,
    ) -> Result<(), CodecError> {
        let Some(dict) = self
            .partners
            .get(p)
            .and_then(|plan| plan.zstd_dictionary.as_ref())
        else {
            return Ok(());
        };
        if let Some(enc) = enc {
            enc.use_dictionary(dict)?;
        }
        if let Some(dec) = dec {
            dec.use_dictionary(dict)?;
        }
        Ok(())
    }

    /// Largest inner IP packet that fits the WAN MTU once encapsulated.
    pub fn inner_mtu(&self) -> usize {
        self.wan_mtu.saturating_sub(self.overhead())
    }

    /// The MSS SYNs are clamped to: the inner MTU less an IPv6 and a TCP header (the
    /// XDP program has one value for both families).
    pub fn mss(&self) -> u16 {
        u16::try_from(self.inner_mtu().saturating_sub(60)).unwrap_or(u16::MAX)
    }

    /// The partner whose prefixes hold `dst` (longest prefix wins).
    pub fn partner_for(&self, dst: IpAddr) -> Option<usize> {
        let mut best: Option<(usize, u8)> = None;
        for (i, p) in self.partners.iter().enumerate() {
            for &(net, len) in &p.prefixes {
                if covers(net, len, dst) && best.is_none_or(|(_, l)| len > l) {
                    best = Some((i, len));
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

fn covers(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// A change of partner state sent to every worker (agent mode). Workers apply
/// commands between batches, in order, never while a packet is in flight.
pub enum Command {
    /// Puts `plan` into `slot` with a fresh session (history erased), plus the keys
    /// of one epoch for encrypted sessions.
    SetPartner {
        /// The slot (partner number).
        slot: usize,
        /// What to install (a vacant plan clears the slot).
        plan: Box<PartnerPlan>,
        /// Epoch keys (encrypted mode).
        keys: Option<(u32, EpochKeys)>,
    },
    /// Adds the keys of a newer epoch to the slot's session and sends with them.
    AddEpoch {
        /// The slot.
        slot: usize,
        /// The epoch.
        epoch: u32,
        /// Its keys (wiped when the command drops).
        keys: EpochKeys,
    },
    /// Agent mode: drops the slot's history in memory and its write-behind, then
    /// installs `history` (restored from the partner's store, with its spools) when
    /// given. Sent to each worker with its own share.
    AttachHistory {
        /// The slot.
        slot: usize,
        /// This worker's share of the partner's store.
        history: Option<Box<WorkerHistory>>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SetPartner { slot, plan, .. } => f
                .debug_struct("SetPartner")
                .field("slot", slot)
                .field("partner", &plan.name)
                .finish_non_exhaustive(),
            Self::AddEpoch { slot, epoch, .. } => f
                .debug_struct("AddEpoch")
                .field("slot", slot)
                .field("epoch", epoch)
                .finish_non_exhaustive(),
            Self::AttachHistory { slot, history } => f
                .debug_struct("AttachHistory")
                .field("slot", slot)
                .field("store", &history.is_some())
                .finish(),
        }
    }
}

/// A control message for the worker owning the codec lane it names.
#[derive(Debug)]
pub enum LaneMessage {
    /// Ranges the partner's decoder asks our encoder of the lane to forget.
    Forget(ForgetRanges),
    /// The partner encoder's summary, for our decoder of the lane.
    EncoderSummary(HistorySummary),
    /// The partner decoder's summary, for our encoder of the lane; `request`: sent
    /// unasked (the partner started), so our encoder's summary is owed in return.
    DecoderSummary {
        /// The summary.
        summary: HistorySummary,
        /// Whether our encoder summary is asked for.
        request: bool,
    },
}

/// State the workers share: published counters, the queues that carry control
/// messages (forget ranges, history summaries) to the worker owning the codec lane
/// they name, and the command queues
/// of agent mode.
#[derive(Debug)]
pub struct Shared {
    /// One per worker.
    pub counters: Vec<counters::Published>,
    /// One per worker: (partner, message) for the codec lane that worker owns.
    pub lane_messages: Vec<ArrayQueue<(usize, LaneMessage)>>,
    /// One per worker: (sequence number, command).
    pub commands: Vec<ArrayQueue<(u64, Command)>>,
    /// One per worker: sequence number of the last command applied.
    pub applied: Vec<AtomicU64>,
}

impl Shared {
    /// State for `workers` workers and `partners` partners.
    pub fn new(workers: usize, partners: usize) -> Arc<Self> {
        Arc::new(Self {
            counters: (0..workers)
                .map(|_| counters::Published::new(partners))
                .collect(),
            lane_messages: (0..workers).map(|_| ArrayQueue::new(256)).collect(),
            commands: (0..workers).map(|_| ArrayQueue::new(1024)).collect(),
            applied: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Whether every worker applied the command numbered `sequence`.
    pub fn all_applied(&self, sequence: u64) -> bool {
        // Acquire pairs with the worker's Release store after applying, so the
        // caller sees the command's effects (counter rows reset, sessions gone).
        self.applied
            .iter()
            .all(|a| a.load(Ordering::Acquire) >= sequence)
    }

    /// Row `row` (a partner, or `partners` for "none") summed over workers.
    pub fn sum(&self, row: usize) -> Counts {
        let mut c = [0; COUNTERS];
        for w in &self.counters {
            w.add_row(row, &mut c);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_families_do_not_mix() {
        let plan = |name: &str, prefixes: Vec<(IpAddr, u8)>| PartnerPlan {
            name: name.into(),
            mode: Mode::CompressOnly,
            remote: "192.0.2.1:4790".parse().unwrap(),
            local: "192.0.2.2".parse().unwrap(),
            prefixes,
            params: None,
            keying: None,
            compress: true,
            history_bytes: None,
            zstd_dictionary: None,
        };
        let config = PipelineConfig {
            io: PortIo::AfXdp,
            partners: vec![
                plan("wide", vec![("10.0.0.0".parse().unwrap(), 8)]),
                plan("narrow", vec![("10.2.0.0".parse().unwrap(), 16)]),
                plan("v6", vec![("fd00:2::".parse().unwrap(), 32)]),
            ],
            tunnel_port: 4790,
            workers: 1,
            lan_ifindex: 1,
            wan_ifindex: 2,
            wan_mtu: 1500,
            router_v4: None,
            router_v6: None,
            codec: CodecConfig::default(),
            reserved_overhead: 0,
            compression: true,
        };
        assert_eq!(config.partner_for("10.2.3.4".parse().unwrap()), Some(1));
        assert_eq!(config.partner_for("10.3.3.4".parse().unwrap()), Some(0));
        assert_eq!(config.partner_for("fd00:2::1".parse().unwrap()), Some(2));
        assert_eq!(config.partner_for("11.0.0.1".parse().unwrap()), None);
        // 20 outer IP + 8 UDP + 20 header + 5 bundle framing + 9 codec, compress-only.
        assert_eq!(config.overhead(), 62);
        assert_eq!(config.mss(), 1500 - 62 - 60);
    }
}
