//! Gateway tests on memory ports with a fixed next-hop table.

use std::net::Ipv4Addr;

use super::*;
use crate::forward::checksum;
use crate::forward::nexthop::{LinkInfo, NextHops, Route, Snapshot};
use crate::io::mem::{MemConfig, MemPort};

const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 9];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 2, 9];

fn table() -> Snapshot {
    let link = |index, name: &str, mac| LinkInfo {
        index,
        name: name.into(),
        mac,
        mtu: 1500,
    };
    Snapshot::from_parts(
        vec![link(1, "lan", LAN_MAC), link(2, "wan", WAN_MAC)],
        vec![
            Route {
                dst: "10.2.0.0".parse().unwrap(),
                prefix_len: 16,
                gateway: Some("192.0.2.2".parse().unwrap()),
                oif: 2,
                metric: 0,
            },
            Route {
                dst: "10.3.0.0".parse().unwrap(),
                prefix_len: 16,
                gateway: Some("192.0.2.3".parse().unwrap()),
                oif: 2,
                metric: 0,
            },
        ],
        vec![(2, "192.0.2.2".parse().unwrap(), PEER_MAC)],
    )
}

struct Rig {
    ports: Ports,
    lan_host: MemPort,
    wan_host: MemPort,
    gw: Gateway,
    hops: Arc<NextHops>,
}

fn rig() -> Rig {
    let (lan, lan_host) = MemPort::pair(MemConfig::default());
    let (wan, wan_host) = MemPort::pair(MemConfig::default());
    let hops = NextHops::new(table());
    let config = GatewayConfig {
        lan_ifindex: 1,
        wan_ifindex: 2,
        wan_mtu: 1500,
        overhead: 60,
        router_v4: Some(Ipv4Addr::new(10, 1, 0, 1)),
        router_v6: None,
    };
    Rig {
        ports: Ports {
            lan: Box::new(lan),
            wan: Box::new(wan),
        },
        lan_host,
        wan_host,
        gw: Gateway::new(config, hops.view()),
        hops,
    }
}

/// An Ethernet frame from the client to `dst` carrying an IPv4/UDP packet of `ip_len`.
fn frame_to(dst: Ipv4Addr, ip_len: usize, ttl: u8) -> Vec<u8> {
    let mut f = vec![0u8; 14 + ip_len];
    f[0..6].copy_from_slice(&LAN_MAC);
    f[6..12].copy_from_slice(&CLIENT_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..];
    ip[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 1, 0x40, 0, ttl, 17, 0, 0, 10, 1, 0, 5, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f
}

/// Feeds one frame from the LAN host through the gateway and applies its verdict.
fn run(r: &mut Rig, bytes: &[u8]) {
    assert!(r.lan_host.inject(bytes));
    let mut batch = crate::io::Batch::with_capacity(4);
    assert_eq!(r.ports.lan.recv(&mut batch).unwrap(), 1);
    let frame = batch.drain().next().unwrap();
    r.gw.begin(0);
    let mut out = crate::io::Batch::with_capacity(4);
    match r.gw.process(&mut r.ports, Port::Lan, frame) {
        Action::Transmit(side, f) => {
            out.push(f).unwrap();
            r.ports.get(side).send(&mut out).unwrap();
        }
        Action::Drop(side, f) => r.ports.get(side).release(f),
        Action::Handoff { .. } => panic!("a gateway never hands off"),
        Action::Consumed(..) => panic!("a gateway never consumes a frame"),
    }
    r.gw.end(0);
}

#[test]
fn forwards_with_ttl_decrement_and_next_hop_macs() {
    let mut r = rig();
    run(&mut r, &frame_to(Ipv4Addr::new(10, 2, 0, 7), 100, 64));
    let got = r
        .wan_host
        .collect(|d| d.to_vec())
        .expect("forwarded to the WAN");
    assert_eq!(&got[0..6], &PEER_MAC);
    assert_eq!(&got[6..12], &WAN_MAC);
    assert_eq!(got[14 + 8], 63);
    assert_eq!(checksum::checksum(&got[14..34]), 0);
    assert_eq!(r.gw.counters().forwarded.load(Ordering::Relaxed), 1);
}

#[test]
fn too_big_for_the_tunnel_gets_frag_needed_back() {
    let mut r = rig();
    run(&mut r, &frame_to(Ipv4Addr::new(10, 2, 0, 7), 1480, 64));
    assert!(r.wan_host.collect(|_| ()).is_none());
    let icmp = r
        .lan_host
        .collect(|d| d.to_vec())
        .expect("ICMP back to the client");
    assert_eq!(&icmp[0..6], &CLIENT_MAC);
    assert_eq!(&icmp[6..12], &LAN_MAC);
    let ip = &icmp[14..];
    assert_eq!(&ip[12..16], &[10, 1, 0, 1]);
    assert_eq!(&ip[16..20], &[10, 1, 0, 5]);
    assert_eq!((ip[20], ip[21]), (3, 4));
    assert_eq!(u16::from_be_bytes([ip[26], ip[27]]), 1440);
    let c = r.gw.counters();
    assert_eq!(
        (
            c.too_big.load(Ordering::Relaxed),
            c.icmp_sent.load(Ordering::Relaxed)
        ),
        (1, 1)
    );
}

#[test]
fn expiring_ttl_gets_time_exceeded() {
    let mut r = rig();
    run(&mut r, &frame_to(Ipv4Addr::new(10, 2, 0, 7), 60, 1));
    assert!(r.wan_host.collect(|_| ()).is_none());
    let icmp = r.lan_host.collect(|d| d.to_vec()).expect("ICMP back");
    assert_eq!(icmp[14 + 20], 11);
    assert_eq!(r.gw.counters().ttl_expired.load(Ordering::Relaxed), 1);
}

#[test]
fn unresolved_neighbour_is_counted_and_requested() {
    let mut r = rig();
    run(&mut r, &frame_to(Ipv4Addr::new(10, 3, 0, 7), 60, 64));
    run(&mut r, &frame_to(Ipv4Addr::new(99, 0, 0, 1), 60, 64));
    assert!(r.wan_host.collect(|_| ()).is_none());
    let c = r.gw.counters();
    assert_eq!(c.no_neighbour.load(Ordering::Relaxed), 1);
    assert_eq!(c.no_route.load(Ordering::Relaxed), 1);
    assert_eq!(r.hops.wanted_len(), 1);
}

#[test]
fn ipv6_hop_limit_and_packet_too_big() {
    let v6_route = Route {
        dst: "fd00:2::".parse().unwrap(),
        prefix_len: 64,
        gateway: Some("fd00:99::2".parse().unwrap()),
        oif: 2,
        metric: 0,
    };
    let link = |index, mac| LinkInfo {
        index,
        name: format!("if{index}"),
        mac,
        mtu: 1500,
    };
    let snap = Snapshot::from_parts(
        vec![link(1, LAN_MAC), link(2, WAN_MAC)],
        vec![v6_route],
        vec![(2, "fd00:99::2".parse().unwrap(), PEER_MAC)],
    );
    let mut r = rig();
    r.gw = Gateway::new(
        GatewayConfig {
            router_v6: Some("fd00:1::1".parse().unwrap()),
            ..r.gw.config
        },
        NextHops::new(snap).view(),
    );
    let v6 = |payload: usize| {
        let mut f = vec![0u8; 14 + 40 + payload];
        f[0..6].copy_from_slice(&LAN_MAC);
        f[6..12].copy_from_slice(&CLIENT_MAC);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        let ip = &mut f[14..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
        ip[6] = 17;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&"fd00:1::5".parse::<std::net::Ipv6Addr>().unwrap().octets());
        ip[24..40].copy_from_slice(&"fd00:2::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        f
    };
    run(&mut r, &v6(100));
    let got = r.wan_host.collect(|d| d.to_vec()).expect("forwarded");
    assert_eq!(&got[0..6], &PEER_MAC);
    assert_eq!(got[14 + 7], 63, "hop limit decremented");

    run(&mut r, &v6(1460));
    assert!(r.wan_host.collect(|_| ()).is_none());
    let icmp = r
        .lan_host
        .collect(|d| d.to_vec())
        .expect("packet too big back");
    assert_eq!(&icmp[12..14], &[0x86, 0xdd]);
    assert_eq!(icmp[14 + 40], 2, "ICMPv6 packet too big");
    let mtu = u32::from_be_bytes([icmp[58], icmp[59], icmp[60], icmp[61]]);
    assert_eq!(mtu, 1440);
}
