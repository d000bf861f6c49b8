//! A worker processor that forwards IP packets between the LAN and WAN ports the way the
//! kernel would, but on the fast path: TTL decremented, next hop from the kernel's tables,
//! "fragmentation needed" / "packet too big" when the packet would not fit the WAN after
//! the configured encapsulation overhead, and "time exceeded" on TTL expiry.
#![deny(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::icmp::{self, IcmpError};
use super::nexthop::{Miss, NextHopView};
use super::packet::{self, ETH_HLEN, Hop, MtuCheck};
use crate::io::{Frame, Port};
use crate::worker::{Action, Ports, Process};

/// Settings of a [`Gateway`].
#[derive(Clone, Copy, Debug)]
pub struct GatewayConfig {
    /// Interface index of the LAN port (routes must point out of it for WAN→LAN).
    pub lan_ifindex: u32,
    /// Interface index of the WAN port (routes must point out of it for LAN→WAN).
    pub wan_ifindex: u32,
    /// L3 MTU of the WAN link.
    pub wan_mtu: usize,
    /// Bytes encapsulation adds on the WAN (outer IP + UDP + tunnel header + tag); 0 for
    /// plain forwarding.
    pub overhead: usize,
    /// Source of ICMPv4 errors (the appliance's LAN address); none sent when `None`.
    pub router_v4: Option<Ipv4Addr>,
    /// Source of ICMPv6 errors; none sent when `None`.
    pub router_v6: Option<Ipv6Addr>,
}

/// What a gateway did, published once per worker loop iteration.
#[derive(Debug, Default)]
pub struct GatewayCounters {
    /// Packets forwarded.
    pub forwarded: AtomicU64,
    /// Dropped: no route out of the expected port.
    pub no_route: AtomicU64,
    /// Dropped while the next hop's MAC is being resolved.
    pub no_neighbour: AtomicU64,
    /// Dropped: TTL / hop limit expired.
    pub ttl_expired: AtomicU64,
    /// Dropped: too big for the WAN.
    pub too_big: AtomicU64,
    /// ICMP errors sent back.
    pub icmp_sent: AtomicU64,
    /// Dropped: not IPv4/IPv6 or truncated.
    pub malformed: AtomicU64,
    /// Dropped: no buffer on the egress port.
    pub no_buffer: AtomicU64,
}

#[derive(Default)]
struct Pending {
    forwarded: u64,
    no_route: u64,
    no_neighbour: u64,
    ttl_expired: u64,
    too_big: u64,
    icmp_sent: u64,
    malformed: u64,
    no_buffer: u64,
}

/// Plain IP forwarding between a worker's ports.
pub struct Gateway {
    config: GatewayConfig,
    hops: NextHopView,
    counters: Arc<GatewayCounters>,
    pending: Pending,
    /// An ICMP error is built here, then copied into a frame (allocated once).
    scratch: Box<[u8]>,
}

impl Gateway {
    /// A gateway reading next hops through `hops`.
    pub fn new(config: GatewayConfig, hops: NextHopView) -> Self {
        Gateway {
            config,
            hops,
            counters: Arc::new(GatewayCounters::default()),
            pending: Pending::default(),
            scratch: vec![0; 1280].into_boxed_slice(),
        }
    }

    /// Its counters.
    pub fn counters(&self) -> Arc<GatewayCounters> {
        self.counters.clone()
    }

    fn publish(&mut self) {
        let p = std::mem::take(&mut self.pending);
        let c = &self.counters;
        for (counter, v) in [
            (&c.forwarded, p.forwarded),
            (&c.no_route, p.no_route),
            (&c.no_neighbour, p.no_neighbour),
            (&c.ttl_expired, p.ttl_expired),
            (&c.too_big, p.too_big),
            (&c.icmp_sent, p.icmp_sent),
            (&c.malformed, p.malformed),
            (&c.no_buffer, p.no_buffer),
        ] {
            if v != 0 {
                // Relaxed: statistics only.
                counter.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    /// Sends an ICMP error about the packet in `frame` back out of `from`, to the Ethernet
    /// address it came from. Returns whether one was queued.
    fn reply_error(
        &mut self,
        ports: &mut Ports,
        from: Port,
        frame: &Frame,
        ip_at: usize,
        kind: IcmpError,
    ) -> Option<Frame> {
        let port = ports.get(from);
        let original = port.data(frame);
        let (src, _) = packet::addresses(&original[ip_at..])?;
        let router: IpAddr = match src {
            IpAddr::V4(_) => self.config.router_v4?.into(),
            IpAddr::V6(_) => self.config.router_v6?.into(),
        };
        let n = icmp::write_error(&original[ip_at..], kind, router, &mut self.scratch)?;
        let mut eth = [0u8; ETH_HLEN];
        eth[0..6].copy_from_slice(&original[6..12]);
        eth[6..12].copy_from_slice(&original[0..6]);
        let ethertype = if router.is_ipv4() {
            packet::ETH_P_IP
        } else {
            packet::ETH_P_IPV6
        };
        eth[12..14].copy_from_slice(&ethertype.to_be_bytes());

        let mut reply = port.alloc()?;
        if !reply.set_len(ETH_HLEN + n) {
            port.release(reply);
            return None;
        }
        let out = port.data_mut(&reply);
        out[..ETH_HLEN].copy_from_slice(&eth);
        out[ETH_HLEN..].copy_from_slice(&self.scratch[..n]);
        Some(reply)
    }

    /// Drops `frame`, answering with `kind` when an ICMP error may be sent.
    fn refuse(
        &mut self,
        ports: &mut Ports,
        from: Port,
        frame: Frame,
        ip_at: usize,
        kind: IcmpError,
    ) -> Action {
        match self.reply_error(ports, from, &frame, ip_at, kind) {
            Some(reply) => {
                self.pending.icmp_sent += 1;
                ports.get(from).release(frame);
                Action::Transmit(from, reply)
            }
            None => Action::Drop(from, frame),
        }
    }
}

impl Process for Gateway {
    fn begin(&mut self, _worker: usize) {
        self.hops.refresh();
    }

    fn end(&mut self, _worker: usize) {
        self.publish();
    }

    fn process(&mut self, ports: &mut Ports, from: Port, frame: Frame) -> Action {
        let (out, out_ifindex) = match from {
            Port::Lan => (Port::Wan, self.config.wan_ifindex),
            Port::Wan => (Port::Lan, self.config.lan_ifindex),
        };
        let data = ports.get(from).data_mut(&frame);
        let Some(ip_at) = packet::ip_offset(data) else {
            self.pending.malformed += 1;
            return Action::Drop(from, frame);
        };
        let ip = &mut data[ip_at..];
        let Some((_, dst)) = packet::addresses(ip) else {
            self.pending.malformed += 1;
            return Action::Drop(from, frame);
        };
        if out == Port::Wan {
            match packet::check_mtu(ip, self.config.overhead, self.config.wan_mtu) {
                MtuCheck::Fits => {}
                MtuCheck::TooBig { mtu } => {
                    self.pending.too_big += 1;
                    return self.refuse(ports, from, frame, ip_at, IcmpError::PacketTooBig { mtu });
                }
                // TODO: fragment IPv4 packets without DF instead of dropping them; every
                // mainstream TCP stack sets DF, so this only hits old UDP senders.
                MtuCheck::TooBigFragmentable => {
                    self.pending.too_big += 1;
                    return Action::Drop(from, frame);
                }
            }
        }
        match packet::decrement_ttl(ip) {
            Hop::Forward => {}
            Hop::Expired => {
                self.pending.ttl_expired += 1;
                return self.refuse(ports, from, frame, ip_at, IcmpError::TimeExceeded);
            }
            Hop::Malformed => {
                self.pending.malformed += 1;
                return Action::Drop(from, frame);
            }
        }
        let hop = match self.hops.lookup(dst) {
            Ok(hop) if hop.ifindex == out_ifindex => hop,
            Ok(_) | Err(Miss::NoRoute) => {
                self.pending.no_route += 1;
                return Action::Drop(from, frame);
            }
            Err(Miss::NoNeighbour { .. }) => {
                self.pending.no_neighbour += 1;
                return Action::Drop(from, frame);
            }
        };
        packet::set_macs(data, hop.dst_mac, hop.src_mac);
        match ports.copy_across(from, &frame) {
            Some(copy) => {
                self.pending.forwarded += 1;
                ports.get(from).release(frame);
                Action::Transmit(out, copy)
            }
            None => {
                self.pending.no_buffer += 1;
                Action::Drop(from, frame)
            }
        }
    }
}

#[cfg(test)]
mod tests;
