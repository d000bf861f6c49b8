//! The WAN entry point on the testbed (root): tunnel packets from a known partner
//! reach the AF_XDP socket on site A's WAN port; QUIC on the same port, unknown
//! senders and other ports pass to the kernel.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use shunt_common::RuleAction;
use shunt_dataplane::xdp::{ModeRequest, Prefix, Role, Rule};
use shunt_tests::testbed::Testbed;
use shunt_tests::xdp_site::attach_appliance;
use shunt_tests::xsk_probe::XskProbe;

const TUNNEL_PORT: u16 = 7000;

#[test]
fn tunnel_packets_from_partners_reach_af_xdp_and_quic_passes() {
    let tb = Testbed::new().expect("testbed");
    let (mut steering, _) = attach_appliance(&tb.site_a, ModeRequest::Driver).unwrap();
    // A LAN socket on the same queue number: each port has its own socket slot.
    let lan_probe = XskProbe::bind(&tb.site_a.netns, &tb.site_a.lan_if, 0).unwrap();
    steering
        .register_socket(&tb.site_a.lan_if, 0, lan_probe.fd())
        .unwrap();
    let probe = XskProbe::bind(&tb.site_a.netns, &tb.site_a.wan_if, 0).unwrap();
    steering
        .register_socket(&tb.site_a.wan_if, 0, probe.fd())
        .unwrap();
    steering.set_tunnel_port(TUNNEL_PORT).unwrap();
    let to = |port| SocketAddr::new(IpAddr::V4(tb.site_a.wan_ipv4), port);
    // Site B sends from its WAN address; bound so the source is fixed.
    let sock = tb
        .site_b
        .netns
        .enter(|| UdpSocket::bind(SocketAddr::new(IpAddr::V4(tb.site_b.wan_ipv4), 0)))
        .unwrap()
        .unwrap();
    let send = |first: u8, port: u16, count: u32| {
        for i in 0..count {
            sock.send_to(&[first, 0, 0, i as u8], to(port)).unwrap();
        }
    };

    // Not yet a known partner: a tunnel-looking packet passes.
    send(0x01, TUNNEL_PORT, 4);
    std::thread::sleep(Duration::from_millis(300));
    let v = steering.verdicts(Role::Wan).unwrap();
    assert_eq!(v.redirected, 0, "{v:?}");
    assert!(v.passed >= 4, "{v:?}");

    steering
        .add_wan_partner(IpAddr::V4(tb.site_b.wan_ipv4), 5)
        .unwrap();
    let before = steering.verdicts(Role::Wan).unwrap();
    send(0x00, TUNNEL_PORT, 10);
    send(0x3f, TUNNEL_PORT, 10);
    assert_eq!(probe.wait_for(20, Duration::from_secs(5)), 20);
    // QUIC long (0xc0) and short (0x40) headers, and another port, pass.
    send(0xc3, TUNNEL_PORT, 5);
    send(0x41, TUNNEL_PORT, 5);
    send(0x01, TUNNEL_PORT + 1, 5);
    std::thread::sleep(Duration::from_millis(300));
    let after = steering.verdicts(Role::Wan).unwrap();
    assert_eq!(after.redirected - before.redirected, 20, "{after:?}");
    assert!(after.passed - before.passed >= 15, "{after:?}");
    assert_eq!(after.malformed, 0, "{after:?}");
    assert_eq!(probe.received(), 20);
    assert_eq!(
        lan_probe.received(),
        0,
        "WAN traffic went to the LAN socket"
    );
    let p = steering.partner_counters(5).unwrap();
    assert_eq!(p.wan_redirected, 20, "{p:?}");
    assert_eq!(p.lan_redirected, 0, "{p:?}");

    // The LAN socket on the same queue number still serves selected LAN traffic.
    steering
        .add_rule(
            Prefix::new(IpAddr::V4(tb.server.ipv4), 32).unwrap(),
            Rule {
                partner: 5,
                action: RuleAction::Accelerate,
                must_protect: false,
            },
        )
        .unwrap();
    steering.set_partner_ready(5, true).unwrap();
    tb.client
        .netns
        .enter(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for i in 0..5u8 {
                s.send_to(&[i], SocketAddr::new(IpAddr::V4(tb.server.ipv4), 9000))
                    .unwrap();
            }
        })
        .unwrap();
    assert_eq!(lan_probe.wait_for(5, Duration::from_secs(5)), 5);
    assert_eq!(probe.received(), 20);

    // Removing the partner stops the steering again.
    steering
        .remove_wan_partner(IpAddr::V4(tb.site_b.wan_ipv4))
        .unwrap();
    send(0x01, TUNNEL_PORT, 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(steering.verdicts(Role::Wan).unwrap().redirected, 20);
}
