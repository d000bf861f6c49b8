//! Next-hop resolution against a real kernel (run as root): in a namespace this test
//! creates, the resolver reads the route table over netlink, a missing neighbour is
//! resolved by the kernel after the resolver's probe (not by a storm of packets), and the
//! MAC it reports is the peer's.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shunt_dataplane::forward::{Miss, Resolver};
use shunt_tests::netns::{Netns, VethEnd, create_veth};

const PEER_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x42];

#[test]
fn forward_nexthop_resolves_missing_neighbour_via_kernel() {
    let gw = Netns::new("nhgw").expect("namespace (run as root)");
    let peer = Netns::new("nhpeer").expect("namespace");
    create_veth(
        VethEnd {
            netns: Some(&gw),
            name: "nh0",
            mac: None,
        },
        VethEnd {
            netns: Some(&peer),
            name: "nh1",
            mac: Some(PEER_MAC),
        },
        1500,
    )
    .expect("veth");
    gw.run("ip", &["addr", "add", "192.0.2.1/24", "dev", "nh0"])
        .unwrap();
    peer.run("ip", &["addr", "add", "192.0.2.2/24", "dev", "nh1"])
        .unwrap();
    gw.run(
        "ip",
        &["route", "add", "198.51.100.0/24", "via", "192.0.2.2"],
    )
    .unwrap();
    let nh0 = gw.ifindex("nh0").unwrap();

    let (first, resolved, probes) = gw
        .enter(move || {
            let (hops, _resolver) = Resolver::start(Duration::from_secs(5)).expect("resolver");
            let mut view = hops.view();
            let dst = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
            assert_eq!(view.snapshot().route(dst).map(|r| r.oif), Some(nh0));
            let first = view.lookup(dst);
            let deadline = Instant::now() + Duration::from_secs(10);
            let resolved = loop {
                view.refresh();
                // Every lookup that misses asks again; the resolver probes at most once a
                // second per neighbour.
                match view.lookup(dst) {
                    Ok(hop) => break Some(hop),
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break None,
                }
            };
            (first, resolved, hops.probes.load(Ordering::Relaxed))
        })
        .expect("enter namespace");

    assert_eq!(
        first,
        Err(Miss::NoNeighbour {
            via: Ipv4Addr::new(192, 0, 2, 2).into(),
            ifindex: nh0
        })
    );
    let hop = resolved.expect("neighbour resolved by the kernel within 10 s");
    assert_eq!(hop.dst_mac, PEER_MAC);
    assert_eq!(hop.ifindex, nh0);
    assert!((1..=3).contains(&probes), "probes sent: {probes}");
}
