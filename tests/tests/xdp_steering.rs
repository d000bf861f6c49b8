//! The XDP steering program on the testbed (root, real kernel objects): selected
//! flows reach an AF_XDP socket on site A's LAN port while ARP, ICMP and unselected
//! traffic keep working; counters match what was sent; fail-open and must-protect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use shunt_common::{RuleAction, VerdictCounters};
use shunt_dataplane::xdp::{AttachedMode, ModeRequest, Prefix, Role, Rule, Steering};
use shunt_tests::netns::Netns;
use shunt_tests::testbed::Testbed;
use shunt_tests::traffic::{ping, tcp_transfer};
use shunt_tests::xdp_site::attach_appliance;
use shunt_tests::xsk_probe::XskProbe;

const WAIT: Duration = Duration::from_secs(5);

fn rule(partner: u32, must_protect: bool) -> Rule {
    Rule {
        partner,
        action: RuleAction::Accelerate,
        must_protect,
    }
}

fn prefix(addr: IpAddr) -> Prefix {
    Prefix::new(addr, if addr.is_ipv4() { 32 } else { 128 }).unwrap()
}

/// Sends `count` UDP datagrams from `from` to `to`, returning how many were sent.
fn send_udp(from: &Netns, to: SocketAddr, count: u32) -> u32 {
    from.enter(|| {
        let any: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sock = UdpSocket::bind(any).unwrap();
        (0..count)
            .filter(|i| sock.send_to(&i.to_be_bytes(), to).is_ok())
            .count() as u32
    })
    .unwrap()
}

/// Counts datagrams arriving at `at` inside `ns` until `quiet` passes without one.
fn receive_udp(ns: &Netns, at: SocketAddr) -> std::thread::JoinHandle<u32> {
    let sock = ns.enter(|| UdpSocket::bind(at)).unwrap().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while sock.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    })
}

fn delta(after: VerdictCounters, before: VerdictCounters) -> VerdictCounters {
    VerdictCounters {
        passed: after.passed - before.passed,
        redirected: after.redirected - before.redirected,
        dropped: after.dropped - before.dropped,
        malformed: after.malformed - before.malformed,
        clamped: after.clamped - before.clamped,
        fail_open: after.fail_open - before.fail_open,
    }
}

fn add_server_address(tb: &Testbed, addr: IpAddr) {
    let (cidr, family) = match addr {
        IpAddr::V4(a) => (format!("{a}/24"), "-4"),
        IpAddr::V6(a) => (format!("{a}/64"), "-6"),
    };
    tb.server
        .netns
        .run(
            "ip",
            &[
                family,
                "addr",
                "add",
                &cidr,
                "dev",
                &tb.server.if_name,
                "nodad",
            ],
        )
        .unwrap();
}

fn steering_with_probe(tb: &Testbed) -> (Steering, XskProbe) {
    let (mut steering, modes) =
        attach_appliance(&tb.site_a, ModeRequest::Driver).expect("attach in driver mode");
    assert_eq!(modes, [AttachedMode::Driver; 2]);
    let probe = XskProbe::bind(&tb.site_a.netns, &tb.site_a.lan_if, 0).expect("AF_XDP socket");
    steering
        .register_socket(&tb.site_a.lan_if, 0, probe.fd())
        .unwrap();
    (steering, probe)
}

#[test]
fn selected_v4_flows_reach_af_xdp_and_the_rest_keeps_working() {
    let tb = Testbed::new().expect("testbed");
    let selected = Ipv4Addr::new(10, 2, 0, 3);
    let protected = Ipv4Addr::new(10, 2, 0, 4);
    add_server_address(&tb, IpAddr::V4(selected));
    add_server_address(&tb, IpAddr::V4(protected));
    let (mut steering, probe) = steering_with_probe(&tb);
    steering
        .add_rule(prefix(IpAddr::V4(selected)), rule(1, false))
        .unwrap();
    steering
        .add_rule(prefix(IpAddr::V4(protected)), rule(2, true))
        .unwrap();
    steering.set_partner_ready(1, true).unwrap();

    // ARP (after a flush) and ICMP go through the kernel, selected or not.
    tb.client
        .netns
        .run("ip", &["neigh", "flush", "dev", &tb.client.if_name])
        .unwrap();
    for to in [tb.server.ipv4, selected] {
        let r = ping(
            &tb.client.netns,
            IpAddr::V4(to),
            3,
            Duration::from_millis(50),
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(r.received, 3, "ping {to}: {r:?}");
    }
    // Unselected TCP crosses the appliance intact.
    let t = tcp_transfer(
        &tb.client.netns,
        &tb.server.netns,
        SocketAddr::new(IpAddr::V4(tb.server.ipv4), 5001),
        1 << 20,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!((t.bytes, t.sent_hash), (1 << 20, t.received_hash));
    assert_eq!(steering.verdicts(Role::Lan).unwrap().redirected, 0);

    // Selected UDP: every datagram lands in the socket, none at the server.
    let before = steering.verdicts(Role::Lan).unwrap();
    let at_server = receive_udp(&tb.server.netns, SocketAddr::new(selected.into(), 9000));
    let sent = send_udp(&tb.client.netns, SocketAddr::new(selected.into(), 9000), 50);
    assert_eq!(sent, 50);
    assert_eq!(probe.wait_for(50, WAIT), 50);
    assert_eq!(
        at_server.join().unwrap(),
        0,
        "steered traffic must not pass"
    );
    let d = delta(steering.verdicts(Role::Lan).unwrap(), before);
    assert_eq!((d.redirected, d.dropped, d.malformed), (50, 0, 0), "{d:?}");
    let p = steering.partner_counters(1).unwrap();
    assert_eq!(p.lan_redirected, 50);
    let frame = &probe.frames()[0];
    assert_eq!(
        &frame[30..34],
        &selected.octets(),
        "destination of the steered frame"
    );

    // No socket for the queue: fail open, counted, delivered by the kernel.
    steering.unregister_socket(&tb.site_a.lan_if, 0).unwrap();
    let before = steering.verdicts(Role::Lan).unwrap();
    let at_server = receive_udp(&tb.server.netns, SocketAddr::new(selected.into(), 9001));
    send_udp(&tb.client.netns, SocketAddr::new(selected.into(), 9001), 20);
    assert_eq!(at_server.join().unwrap(), 20);
    let d = delta(steering.verdicts(Role::Lan).unwrap(), before);
    assert_eq!((d.redirected, d.fail_open, d.dropped), (0, 20, 0), "{d:?}");
    assert!(d.passed >= 20, "{d:?}");
    assert_eq!(steering.partner_counters(1).unwrap().lan_fail_open, 20);

    // Must-protect rule, partner 2 not ready: dropped and counted, nothing leaks.
    let before = steering.verdicts(Role::Lan).unwrap();
    let at_server = receive_udp(&tb.server.netns, SocketAddr::new(protected.into(), 9002));
    send_udp(&tb.client.netns, SocketAddr::new(protected.into(), 9002), 7);
    assert_eq!(at_server.join().unwrap(), 0, "must-protect traffic leaked");
    let d = delta(steering.verdicts(Role::Lan).unwrap(), before);
    assert_eq!((d.dropped, d.redirected, d.fail_open), (7, 0, 0), "{d:?}");
    assert_eq!(steering.partner_counters(2).unwrap().lan_dropped, 7);
    assert_eq!(probe.received(), 50, "nothing else reached the socket");
}

#[test]
fn ipv6_rules_select_ipv6_traffic() {
    let tb = Testbed::new().expect("testbed");
    let selected = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 3);
    add_server_address(&tb, IpAddr::V6(selected));
    let (mut steering, probe) = steering_with_probe(&tb);
    steering
        .add_rule(prefix(IpAddr::V6(selected)), rule(1, false))
        .unwrap();
    steering.set_partner_ready(1, true).unwrap();

    // Neighbour discovery and ICMPv6 still work toward the selected address.
    let r = ping(
        &tb.client.netns,
        IpAddr::V6(selected),
        3,
        Duration::from_millis(50),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(r.received, 3, "{r:?}");
    let before = steering.verdicts(Role::Lan).unwrap();
    let sent = send_udp(&tb.client.netns, SocketAddr::new(selected.into(), 9000), 30);
    assert_eq!(sent, 30);
    assert_eq!(probe.wait_for(30, WAIT), 30);
    let d = delta(steering.verdicts(Role::Lan).unwrap(), before);
    assert_eq!((d.redirected, d.dropped, d.malformed), (30, 0, 0), "{d:?}");
    let frame = &probe.frames()[0];
    assert_eq!(&frame[12..14], &[0x86, 0xdd]);
    assert_eq!(&frame[38..54], &selected.octets());
    assert_eq!(steering.partner_counters(1).unwrap().lan_redirected, 30);
}
