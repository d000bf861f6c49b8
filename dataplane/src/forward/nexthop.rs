//! Next-hop resolution from the kernel's tables: a [`Snapshot`] of links, routes and
//! neighbours read over netlink, kept fresh by a [`Resolver`] thread (change notifications
//! plus a periodic reload) and read by workers through a [`NextHopView`] without locks on
//! the per-packet path. A missing neighbour is queued (boundedly) for the resolver, which
//! makes the kernel resolve it by sending a UDP datagram towards it; the packets meanwhile
//! are dropped and counted by the caller, so a miss costs one probe per second, not a storm.
#![deny(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

use super::netlink::{
    GROUPS_ALL, Netlink, RTM_GETLINK, RTM_GETNEIGH, RTM_GETROUTE, RTM_NEWLINK, RTM_NEWNEIGH,
    RTM_NEWROUTE, attributes, ip_from, u32_from,
};

/// An interface as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address (zero for links without one).
    pub mac: [u8; 6],
    /// L3 MTU.
    pub mtu: u32,
}

/// A unicast route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Gateway, `None` for a directly connected prefix.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface.
    pub oif: u32,
    /// Metric (lower wins).
    pub metric: u32,
}

/// Where to send a packet: the interface and both Ethernet addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Outgoing interface index.
    pub ifindex: u32,
    /// The address whose MAC was looked up (gateway or the destination itself).
    pub via: IpAddr,
    /// Source MAC (the outgoing interface's).
    pub src_mac: [u8; 6],
    /// Destination MAC (the neighbour's).
    pub dst_mac: [u8; 6],
}

/// Why no next hop could be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// No route covers the destination.
    NoRoute,
    /// The route is known but the neighbour `via` on `ifindex` is not resolved yet.
    NoNeighbour {
        /// Address to resolve.
        via: IpAddr,
        /// Interface it sits on.
        ifindex: u32,
    },
}

/// A consistent copy of the kernel's tables.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    links: HashMap<u32, LinkInfo>,
    routes: Vec<Route>,
    neighbours: HashMap<(u32, IpAddr), [u8; 6]>,
}

const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;
/// NUD states whose link-layer address can be used.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

impl Snapshot {
    /// A snapshot built from known tables (tests, the simulator, static configurations).
    pub fn from_parts(
        links: Vec<LinkInfo>,
        routes: Vec<Route>,
        neighbours: Vec<(u32, IpAddr, [u8; 6])>,
    ) -> Self {
        Snapshot {
            links: links.into_iter().map(|l| (l.index, l)).collect(),
            routes,
            neighbours: neighbours
                .into_iter()
                .map(|(i, a, m)| ((i, a), m))
                .collect(),
        }
    }

    /// Reads links, main-table unicast routes and usable neighbours from the kernel.
    pub fn load(nl: &mut Netlink) -> io::Result<Self> {
        let mut snap = Snapshot::default();
        nl.dump(RTM_GETLINK, |ty, body| {
            if ty != RTM_NEWLINK || body.len() < 16 {
                return;
            }
            let Some(index) = u32_from(&body[4..8]) else {
                return;
            };
            let mut link = LinkInfo {
                index,
                name: String::new(),
                mac: [0; 6],
                mtu: 0,
            };
            for (a, v) in attributes(&body[16..]) {
                match a {
                    1 if v.len() == 6 => link.mac.copy_from_slice(v),
                    3 => {
                        link.name = String::from_utf8_lossy(v)
                            .trim_end_matches('\0')
                            .to_string()
                    }
                    4 => link.mtu = u32_from(v).unwrap_or(0),
                    _ => {}
                }
            }
            snap.links.insert(index, link);
        })?;
        nl.dump(RTM_GETROUTE, |ty, body| {
            if ty != RTM_NEWROUTE || body.len() < 12 || body[7] != RTN_UNICAST {
                return;
            }
            let family = body[0];
            let mut table = u32::from(body[4]);
            let mut route = Route {
                dst: if family == libc::AF_INET6 as u8 {
                    Ipv6Addr::UNSPECIFIED.into()
                } else {
                    Ipv4Addr::UNSPECIFIED.into()
                },
                prefix_len: body[1],
                gateway: None,
                oif: 0,
                metric: 0,
            };
            for (a, v) in attributes(&body[12..]) {
                match a {
                    1 => route.dst = ip_from(v).unwrap_or(route.dst),
                    4 => route.oif = u32_from(v).unwrap_or(0),
                    5 => route.gateway = ip_from(v),
                    6 => route.metric = u32_from(v).unwrap_or(0),
                    15 => table = u32_from(v).unwrap_or(table),
                    _ => {}
                }
            }
            // TODO: multipath routes (RTA_MULTIPATH) carry no RTA_OIF and are skipped; an
            // appliance with ECMP towards the WAN needs them.
            if table == RT_TABLE_MAIN && route.oif != 0 {
                snap.routes.push(route);
            }
        })?;
        nl.dump(RTM_GETNEIGH, |ty, body| {
            if ty != RTM_NEWNEIGH || body.len() < 12 {
                return;
            }
            let ifindex = u32_from(&body[4..8]).unwrap_or(0);
            let state = u16::from_ne_bytes([body[8], body[9]]);
            if state & NUD_USABLE == 0 {
                return;
            }
            let (mut dst, mut mac) = (None, None);
            for (a, v) in attributes(&body[12..]) {
                match a {
                    1 => dst = ip_from(v),
                    2 if v.len() == 6 => mac = <[u8; 6]>::try_from(v).ok(),
                    _ => {}
                }
            }
            if let (Some(dst), Some(mac)) = (dst, mac) {
                snap.neighbours.insert((ifindex, dst), mac);
            }
        })?;
        Ok(snap)
    }

    /// The interface called `name`.
    pub fn link_by_name(&self, name: &str) -> Option<&LinkInfo> {
        self.links.values().find(|l| l.name == name)
    }

    /// The interface with index `index`.
    pub fn link(&self, index: u32) -> Option<&LinkInfo> {
        self.links.get(&index)
    }

    /// The longest-prefix route for `dst` (lowest metric among equals).
    pub fn route(&self, dst: IpAddr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| covers(r, dst))
            .min_by_key(|r| (std::cmp::Reverse(r.prefix_len), r.metric))
    }

    /// The next hop for `dst`.
    pub fn next_hop(&self, dst: IpAddr) -> Result<NextHop, Miss> {
        let route = self.route(dst).ok_or(Miss::NoRoute)?;
        let via = route.gateway.unwrap_or(dst);
        let miss = Miss::NoNeighbour {
            via,
            ifindex: route.oif,
        };
        let dst_mac = *self.neighbours.get(&(route.oif, via)).ok_or(miss)?;
        let src_mac = self.links.get(&route.oif).ok_or(miss)?.mac;
        Ok(NextHop {
            ifindex: route.oif,
            via,
            src_mac,
            dst_mac,
        })
    }
}

fn covers(route: &Route, dst: IpAddr) -> bool {
    match (route.dst, dst) {
        (IpAddr::V4(net), IpAddr::V4(a)) => {
            let bits = u32::from(route.prefix_len.min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(net) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(a)) => {
            let bits = u32::from(route.prefix_len.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(net) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// The published snapshot plus the queue of neighbours wanted by workers.
#[derive(Debug)]
pub struct NextHops {
    current: Mutex<Arc<Snapshot>>,
    generation: AtomicU64,
    wanted: ArrayQueue<IpAddr>,
    /// Resolution requests dropped because the queue was full.
    pub wanted_full: AtomicU64,
    /// Probes sent to make the kernel resolve a neighbour.
    pub probes: AtomicU64,
    /// Snapshots loaded.
    pub reloads: AtomicU64,
}

impl NextHops {
    /// Shared state starting from `snapshot`.
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Arc::new(NextHops {
            current: Mutex::new(Arc::new(snapshot)),
            generation: AtomicU64::new(1),
            wanted: ArrayQueue::new(256),
            wanted_full: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        })
    }

    /// Neighbour resolutions requested and not yet handled.
    pub fn wanted_len(&self) -> usize {
        self.wanted.len()
    }

    /// Replaces the snapshot; workers pick it up at their next batch.
    pub fn publish(&self, snapshot: Snapshot) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        // Release pairs with the Acquire in `NextHopView::refresh`: a worker that sees the
        // new generation finds the new snapshot behind the mutex.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A worker's view.
    pub fn view(self: &Arc<Self>) -> NextHopView {
        NextHopView {
            shared: self.clone(),
            snapshot: self
                .current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            generation: self.generation.load(Ordering::Acquire),
            last: None,
        }
    }
}

/// A worker's copy of the tables; [`NextHopView::refresh`] once per batch costs one atomic
/// load unless the tables changed.
#[derive(Debug)]
pub struct NextHopView {
    shared: Arc<NextHops>,
    snapshot: Arc<Snapshot>,
    generation: u64,
    /// The last successful lookup: consecutive packets mostly belong to one flow.
    last: Option<(IpAddr, NextHop)>,
}

impl NextHopView {
    /// Picks up a newer snapshot if one was published.
    pub fn refresh(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.snapshot = self
                .shared
                .current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.generation = generation;
            self.last = None;
        }
    }

    /// The current tables.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The next hop for `dst`; on a missing neighbour, asks the resolver for it.
    pub fn lookup(&mut self, dst: IpAddr) -> Result<NextHop, Miss> {
        if let Some((last, hop)) = self.last
            && last == dst
        {
            return Ok(hop);
        }
        let hop = self.snapshot.next_hop(dst);
        if let Ok(found) = hop {
            self.last = Some((dst, found));
        }
        if let Err(Miss::NoNeighbour { via, .. }) = hop
            && self.shared.wanted.push(via).is_err()
        {
            self.shared.wanted_full.fetch_add(1, Ordering::Relaxed);
        }
        hop
    }
}

/// The thread that keeps [`NextHops`] fresh and resolves wanted neighbours.
#[derive(Debug)]
pub struct Resolver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    /// Loads the tables and starts the resolver. Its sockets are opened here, so they
    /// belong to the calling thread's network namespace.
    pub fn start(reload_every: Duration) -> io::Result<(Arc<NextHops>, Resolver)> {
        let mut dump = Netlink::open(0)?;
        let mut events = Netlink::open(GROUPS_ALL)?;
        let probe_v4 = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
        let probe_v6 = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))).ok();
        let hops = NextHops::new(Snapshot::load(&mut dump)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (hops, stop) = (hops.clone(), stop.clone());
            std::thread::Builder::new()
                .name("shunt-nexthop".into())
                .spawn(move || {
                    let mut last_probe: HashMap<IpAddr, Instant> = HashMap::new();
                    let mut last_load = Instant::now();
                    // Acquire pairs with the Release in `drop`.
                    while !stop.load(Ordering::Acquire) {
                        let _ = crate::io::sys::wait_readable(&[events.fd()], 50);
                        let mut reload = matches!(events.drain_events(), Ok(n) if n > 0)
                            || last_load.elapsed() >= reload_every;
                        while let Some(ip) = hops.wanted.pop() {
                            let due = last_probe
                                .get(&ip)
                                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                            if !due {
                                continue;
                            }
                            last_probe.insert(ip, Instant::now());
                            // Any datagram makes the kernel resolve the next hop (ARP/ND);
                            // port 9 is "discard".
                            let sock = if ip.is_ipv4() {
                                Some(&probe_v4)
                            } else {
                                probe_v6.as_ref()
                            };
                            if let Some(sock) = sock {
                                let _ =
                                    sock.send_to(b"shunt-nexthop-probe", SocketAddr::new(ip, 9));
                                hops.probes.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%ip, "resolving next hop");
                            }
                            reload = true;
                        }
                        if reload {
                            match Snapshot::load(&mut dump) {
                                Ok(snap) => {
                                    hops.publish(snap);
                                    hops.reloads.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "reading kernel tables failed")
                                }
                            }
                            last_load = Instant::now();
                        }
                    }
                })?
        };
        Ok((
            hops,
            Resolver {
                stop,
                thread: Some(thread),
            },
        ))
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.links.insert(
            2,
            LinkInfo {
                index: 2,
                name: "wan0".into(),
                mac: [2, 0, 0, 0, 0, 2],
                mtu: 1500,
            },
        );
        let route = |dst: &str, len, gw: Option<&str>, metric| Route {
            dst: dst.parse().unwrap(),
            prefix_len: len,
            gateway: gw.map(|g| g.parse().unwrap()),
            oif: 2,
            metric,
        };
        s.routes.push(route("0.0.0.0", 0, Some("192.0.2.1"), 0));
        s.routes
            .push(route("198.51.100.0", 24, Some("192.0.2.9"), 10));
        s.routes
            .push(route("198.51.100.0", 24, Some("192.0.2.8"), 5));
        s.routes.push(route("192.0.2.0", 24, None, 0));
        s.neighbours
            .insert((2, "192.0.2.8".parse().unwrap()), [2, 0, 0, 0, 0, 8]);
        s
    }

    #[test]
    fn longest_prefix_then_lowest_metric() {
        let s = snapshot();
        let hop = s.next_hop("198.51.100.7".parse().unwrap()).unwrap();
        assert_eq!(hop.via, "192.0.2.8".parse::<IpAddr>().unwrap());
        assert_eq!(
            (hop.src_mac, hop.dst_mac),
            ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 8])
        );
        assert_eq!(
            s.next_hop("192.0.2.77".parse().unwrap()),
            Err(Miss::NoNeighbour {
                via: "192.0.2.77".parse().unwrap(),
                ifindex: 2
            }),
            "directly connected: the destination itself is the neighbour"
        );
        assert_eq!(s.next_hop("fd00::1".parse().unwrap()), Err(Miss::NoRoute));
    }

    #[test]
    fn view_follows_published_snapshots_and_queues_misses() {
        let hops = NextHops::new(Snapshot::default());
        let mut view = hops.view();
        let dst: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(view.lookup(dst), Err(Miss::NoRoute));
        hops.publish(snapshot());
        view.refresh();
        assert!(view.lookup(dst).is_ok());
        // A new snapshot replaces the cached next hop.
        hops.publish(Snapshot::default());
        view.refresh();
        assert_eq!(view.lookup(dst), Err(Miss::NoRoute));
        hops.publish(snapshot());
        view.refresh();
        for _ in 0..300 {
            let _ = view.lookup("192.0.2.77".parse().unwrap());
        }
        assert_eq!(hops.wanted.len(), 256);
        assert_eq!(hops.wanted_full.load(Ordering::Relaxed), 44);
    }
}
