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
pub mod counters;
pub mod inner;
mod worker;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use crate::codec::{CodecConfig, ForgetRanges, MAX_FRAME_OVERHEAD};
use crate::tunnel::manual::ManualKeying;
use crate::tunnel::{Mode, OVERHEAD, SessionParams};

pub use appliance::{Appliance, ApplianceOptions, ApplianceStats, PartnerStats, PipelineError};
pub use counters::{COUNTERS, Counter, Counts, NAMES};
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
}

impl PartnerPlan {
    /// Bytes encapsulation adds to an inner IP packet toward this partner, worst case:
    /// outer IP + UDP + tunnel header (+ tag) + inner framing + codec frame header.
    pub fn overhead(&self) -> usize {
        let ip = if self.remote.is_ipv4() { 20 } else { 40 };
        let tunnel = if self.mode == Mode::Encrypted {
            OVERHEAD
        } else {
            crate::tunnel::HEADER_LEN
        };
        ip + UDP_LEN + tunnel + inner::PREFIX_LEN + MAX_FRAME_OVERHEAD
    }
}

/// Settings shared by every worker of an appliance.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
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

/// State the workers share: published counters and the queues that carry forget
/// messages to the worker owning the encoder lane they name.
#[derive(Debug)]
pub struct Shared {
    /// One per worker.
    pub counters: Vec<counters::Published>,
    /// One per worker: (partner, message) for that worker's encoder.
    pub forgets: Vec<ArrayQueue<(usize, ForgetRanges)>>,
}

impl Shared {
    /// State for `workers` workers and `partners` partners.
    pub fn new(workers: usize, partners: usize) -> Arc<Self> {
        Arc::new(Self {
            counters: (0..workers)
                .map(|_| counters::Published::new(partners))
                .collect(),
            forgets: (0..workers).map(|_| ArrayQueue::new(256)).collect(),
        })
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
        };
        let config = PipelineConfig {
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
        };
        assert_eq!(config.partner_for("10.2.3.4".parse().unwrap()), Some(1));
        assert_eq!(config.partner_for("10.3.3.4".parse().unwrap()), Some(0));
        assert_eq!(config.partner_for("fd00:2::1".parse().unwrap()), Some(2));
        assert_eq!(config.partner_for("11.0.0.1".parse().unwrap()), None);
        // 20 outer IP + 8 UDP + 20 header + 3 framing + 9 codec, compress-only.
        assert_eq!(config.overhead(), 60);
        assert_eq!(config.mss(), 1500 - 60 - 60);
    }
}
