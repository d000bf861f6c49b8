//! Crafted and broken frames injected with AF_PACKET toward site A's LAN port (root):
//! each is counted as malformed or passed, nothing crashes, the program stays
//! attached and traffic keeps flowing.

use std::net::IpAddr;
use std::time::Duration;

use shunt_common::RuleAction;
use shunt_dataplane::xdp::{ModeRequest, Prefix, Role, Rule};
use shunt_tests::frames::{ethernet, ipv4_frame, tcp_v4, udp_v4, udp_v6};
use shunt_tests::inject::Injector;
use shunt_tests::testbed::Testbed;
use shunt_tests::traffic::ping;
use shunt_tests::xdp_site::attach_appliance;

const REPEAT: u64 = 3;

struct Crafted {
    name: &'static str,
    frame: Vec<u8>,
}

fn crafted(tb: &Testbed) -> (Vec<Crafted>, Vec<Crafted>) {
    let (dst, src) = (tb.site_a.lan_mac, tb.client.mac);
    let from4 = (tb.client.ipv4, 40000);
    let to4 = (tb.server.ipv4, 9000);
    let from6 = (tb.client.ipv6, 40000);
    let to6 = (tb.server.ipv6, 9000);
    let good_udp = udp_v4(dst, src, from4, to4, b"payload");
    let good_tcp = tcp_v4(dst, src, from4, to4, 0x02, &[2, 4, 5, 0xb4]);

    let mut bad_ihl = good_udp.clone();
    bad_ihl[14] = 0x43;
    let mut long_total = good_udp.clone();
    long_total[16..18].copy_from_slice(&1000u16.to_be_bytes());
    let mut zero_udp = good_udp.clone();
    zero_udp[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&[0, 0]);
    let mut tcp_doff = good_tcp.clone();
    tcp_doff[14 + 20 + 12] = 0x30;
    let short_tcp = ipv4_frame(dst, src, from4.0, to4.0, 6, &[], &[0; 10]);
    let mut hbh_past_end = Vec::from(&[17u8, 200, 0, 0, 0, 0, 0, 0][..]);
    hbh_past_end.extend_from_slice(&[0; 8]);
    let bogus_chain = udp_v6(dst, src, from6, to6, Some((0, &hbh_past_end)), b"x");
    // Seven destination-options headers: longer than the program walks.
    let mut chain = Vec::new();
    for i in 0..7 {
        chain.extend_from_slice(&[if i == 6 { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    let long_chain = udp_v6(dst, src, from6, to6, Some((60, &chain)), b"x");
    let mut qinq = good_udp[..12].to_vec();
    qinq.extend_from_slice(&[0x88, 0xa8, 0, 10, 0x81, 0x00, 0, 20]);
    qinq.extend_from_slice(&good_udp[12..]);
    let options = ipv4_frame(dst, src, from4.0, to4.0, 17, &[1, 1, 1, 0], &good_udp[34..]);

    let malformed = vec![
        Crafted {
            name: "IPv4 header cut short",
            frame: good_udp[..24].to_vec(),
        },
        Crafted {
            name: "IHL of 3",
            frame: bad_ihl,
        },
        Crafted {
            name: "IPv4 total length past the frame",
            frame: long_total,
        },
        Crafted {
            name: "zero-length UDP",
            frame: zero_udp,
        },
        Crafted {
            name: "TCP data offset of 3",
            frame: tcp_doff,
        },
        Crafted {
            name: "TCP header cut short",
            frame: short_tcp,
        },
        Crafted {
            name: "IPv6 header cut short",
            frame: ethernet(dst, src, 0x86dd, &[0x60, 0, 0, 0, 0, 8, 17, 64, 0, 0]),
        },
        Crafted {
            name: "IPv6 hop-by-hop header running past the frame",
            frame: bogus_chain,
        },
        Crafted {
            name: "802.1Q tag cut short",
            frame: ethernet(dst, src, 0x8100, &[0, 10]),
        },
    ];
    let passed = vec![
        Crafted {
            name: "seven IPv6 extension headers",
            frame: long_chain,
        },
        Crafted {
            name: "unknown EtherType",
            frame: ethernet(dst, src, 0x88b5, &[0; 46]),
        },
        Crafted {
            name: "IPv4 with options",
            frame: options,
        },
        Crafted {
            name: "QinQ-tagged UDP",
            frame: qinq,
        },
        Crafted {
            name: "well-formed TCP SYN",
            frame: good_tcp,
        },
    ];
    (malformed, passed)
}

#[test]
fn malformed_frames_are_counted_and_nothing_breaks() {
    let tb = Testbed::new().expect("testbed");
    let (mut steering, _) = attach_appliance(&tb.site_a, ModeRequest::Driver).unwrap();
    let (malformed, passed) = crafted(&tb);
    let injector = tb
        .client
        .netns
        .enter(|| Injector::open(&tb.client.if_name))
        .unwrap()
        .unwrap();

    for c in &malformed {
        let before = steering.verdicts(Role::Lan).unwrap();
        for _ in 0..REPEAT {
            injector
                .send(&c.frame)
                .unwrap_or_else(|e| panic!("sending {}: {e}", c.name));
        }
        let after = wait_for(&steering, |v| v.malformed >= before.malformed + REPEAT);
        assert_eq!(after.malformed - before.malformed, REPEAT, "{}", c.name);
    }
    for c in &passed {
        let before = steering.verdicts(Role::Lan).unwrap();
        for _ in 0..REPEAT {
            injector
                .send(&c.frame)
                .unwrap_or_else(|e| panic!("sending {}: {e}", c.name));
        }
        let after = wait_for(&steering, |v| v.passed >= before.passed + REPEAT);
        assert!(after.passed - before.passed >= REPEAT, "{}", c.name);
        assert_eq!(
            after.malformed, before.malformed,
            "{} is not malformed",
            c.name
        );
    }

    // A broken transport header is forwarded by the kernel (routers do not read
    // it), unless a must-protect rule covers the destination: then it is dropped.
    let zero_udp = &malformed
        .iter()
        .find(|c| c.name == "zero-length UDP")
        .unwrap()
        .frame;
    assert_eq!(frames_at_server(&tb, &injector, zero_udp), REPEAT);
    steering
        .add_rule(
            Prefix::new(IpAddr::V4(tb.server.ipv4), 32).unwrap(),
            Rule {
                partner: 9,
                action: RuleAction::Accelerate,
                must_protect: true,
            },
        )
        .unwrap();
    let before = steering.verdicts(Role::Lan).unwrap();
    assert_eq!(frames_at_server(&tb, &injector, zero_udp), 0, "leaked");
    let after = steering.verdicts(Role::Lan).unwrap();
    assert_eq!(after.malformed - before.malformed, REPEAT);

    // Still attached, still forwarding.
    let link = tb
        .site_a
        .netns
        .run("ip", &["-d", "link", "show", "dev", &tb.site_a.lan_if])
        .unwrap();
    assert!(link.contains("xdp"), "program detached: {link}");
    let r = ping(
        &tb.client.netns,
        IpAddr::V4(tb.server.ipv4),
        3,
        Duration::from_millis(50),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(r.received, 3, "{r:?}");
}

/// Sends `frame` REPEAT times and counts the UDP datagrams to port 9000 from the
/// client that arrive at the server.
fn frames_at_server(tb: &Testbed, injector: &Injector, frame: &[u8]) -> u64 {
    let capture = tb
        .server
        .netns
        .enter(|| Injector::open_capture(&tb.server.if_name, Duration::from_millis(100)))
        .unwrap()
        .unwrap();
    for _ in 0..REPEAT {
        injector.send(frame).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_millis(700);
    let mut buf = [0u8; 2048];
    let mut seen = 0;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(n)) = capture.recv(&mut buf)
            && n >= 38
            && buf[12..14] == [0x08, 0x00]
            && buf[23] == 17
            && buf[26..30] == tb.client.ipv4.octets()
            && buf[36..38] == 9000u16.to_be_bytes()
        {
            seen += 1;
        }
    }
    seen
}

fn wait_for(
    steering: &shunt_dataplane::xdp::Steering,
    done: impl Fn(&shunt_common::VerdictCounters) -> bool,
) -> shunt_common::VerdictCounters {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let v = steering.verdicts(Role::Lan).unwrap();
        if done(&v) || std::time::Instant::now() > deadline {
            // Let stragglers arrive so an excess would show.
            std::thread::sleep(Duration::from_millis(50));
            return steering.verdicts(Role::Lan).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
