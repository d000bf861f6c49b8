//! MSS clamping by the XDP program on the testbed (root): the server sees the
//! clamped MSS in the SYN, the client sees it in the SYN-ACK, checksums stay valid
//! (also with the option at an odd offset) and the connection completes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shunt_common::RuleAction;
use shunt_dataplane::xdp::{ModeRequest, Prefix, Role, Rule};
use shunt_tests::frames::{self, tcp_checksum_ok, tcp_mss};
use shunt_tests::inject::Injector;
use shunt_tests::netns::Netns;
use shunt_tests::testbed::Testbed;
use shunt_tests::traffic::tcp_transfer;
use shunt_tests::xdp_site::attach_appliance;

const MSS: u16 = 1200;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Collects TCP segments with SYN set arriving on `if_name` in `ns` whose source or
/// destination port is `port`, for `window`.
fn capture_syns(
    ns: &Netns,
    if_name: &str,
    port: u16,
    window: Duration,
) -> JoinHandle<Vec<Vec<u8>>> {
    let sock = ns
        .enter(|| Injector::open_capture(if_name, Duration::from_millis(100)))
        .unwrap()
        .unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + window;
        let mut buf = vec![0u8; 2048];
        let mut syns = Vec::new();
        while Instant::now() < deadline {
            let Ok(Some(n)) = sock.recv(&mut buf) else {
                continue;
            };
            let f = &buf[..n];
            if f.len() < 54 || f[12..14] != [0x08, 0x00] || f[23] != 6 {
                continue;
            }
            let tcp = 14 + usize::from(f[14] & 0xf) * 4;
            let (sport, dport) = (
                u16::from_be_bytes([f[tcp], f[tcp + 1]]),
                u16::from_be_bytes([f[tcp + 2], f[tcp + 3]]),
            );
            if f[tcp + 13] & SYN != 0 && (sport == port || dport == port) {
                syns.push(f.to_vec());
            }
        }
        syns
    });
    ready_rx.recv().unwrap();
    handle
}

#[test]
fn syn_and_syn_ack_are_clamped_and_the_connection_completes() {
    let tb = Testbed::new().expect("testbed");
    let (mut steering, _) = attach_appliance(&tb.site_a, ModeRequest::Driver).unwrap();
    // The server is selected, but no AF_XDP socket serves the queue: the SYN fails
    // open and is still clamped (see docs/xdp.md).
    steering
        .add_rule(
            Prefix::new(IpAddr::V4(tb.server.ipv4), 32).unwrap(),
            Rule {
                partner: 1,
                action: RuleAction::Accelerate,
                must_protect: false,
            },
        )
        .unwrap();
    steering.set_partner_ready(1, true).unwrap();
    steering.set_mss(MSS).unwrap();

    let window = Duration::from_secs(4);
    let at_server = capture_syns(&tb.server.netns, &tb.server.if_name, 5002, window);
    let at_client = capture_syns(&tb.client.netns, &tb.client.if_name, 5002, window);
    let t = tcp_transfer(
        &tb.client.netns,
        &tb.server.netns,
        SocketAddr::new(IpAddr::V4(tb.server.ipv4), 5002),
        256 << 10,
        Duration::from_secs(20),
    )
    .expect("the clamped connection completes");
    assert_eq!((t.bytes, t.sent_hash), (256 << 10, t.received_hash));

    // A hand-made SYN with the MSS option at an odd offset (after one NOP).
    let client = &tb.client;
    let syn = frames::tcp_v4(
        tb.site_a.lan_mac,
        client.mac,
        (client.ipv4, 40000),
        (tb.server.ipv4, 5002),
        SYN,
        &[1, 2, 4, 0x05, 0xb4, 1, 1, 0],
    );
    assert_eq!(tcp_mss(&syn), Some(1460));
    client
        .netns
        .enter(|| Injector::open(&client.if_name)?.send(&syn))
        .unwrap()
        .unwrap();

    let server_syns = at_server.join().unwrap();
    let syns: Vec<_> = server_syns
        .iter()
        .filter(|f| f[14 + 20 + 13] & (SYN | ACK) == SYN)
        .collect();
    assert_eq!(syns.len(), 2, "the connection's SYN and the crafted one");
    for f in &syns {
        assert_eq!(tcp_mss(f), Some(MSS), "MSS seen by the server");
        assert!(tcp_checksum_ok(f), "TCP checksum after clamping");
    }
    let syn_acks: Vec<_> = at_client
        .join()
        .unwrap()
        .into_iter()
        .filter(|f| {
            f[14 + 20 + 13] & (SYN | ACK) == SYN | ACK && f[26..30] == tb.server.ipv4.octets()
        })
        .collect();
    assert!(!syn_acks.is_empty(), "the client saw a SYN-ACK");
    for f in &syn_acks {
        assert_eq!(tcp_mss(f), Some(MSS), "MSS seen by the client");
        assert!(tcp_checksum_ok(f), "TCP checksum after clamping");
    }

    let lan = steering.verdicts(Role::Lan).unwrap();
    let wan = steering.verdicts(Role::Wan).unwrap();
    assert_eq!(lan.clamped, 2, "{lan:?}");
    assert_eq!(wan.clamped, syn_acks.len() as u64, "{wan:?}");
    assert_eq!(lan.redirected, 0, "{lan:?}");
    assert!(lan.fail_open >= 2, "{lan:?}");
}

#[test]
fn small_mss_and_unselected_flows_are_left_alone() {
    let tb = Testbed::new().expect("testbed");
    let (mut steering, _) = attach_appliance(&tb.site_a, ModeRequest::Driver).unwrap();
    // Only another address is selected; the server's flows are not clamped.
    steering
        .add_rule(
            Prefix::new(IpAddr::V4(Ipv4Addr::new(10, 2, 0, 77)), 32).unwrap(),
            Rule {
                partner: 1,
                action: RuleAction::Accelerate,
                must_protect: false,
            },
        )
        .unwrap();
    steering.set_mss(MSS).unwrap();
    let at_server = capture_syns(
        &tb.server.netns,
        &tb.server.if_name,
        5003,
        Duration::from_secs(3),
    );
    tcp_transfer(
        &tb.client.netns,
        &tb.server.netns,
        SocketAddr::new(IpAddr::V4(tb.server.ipv4), 5003),
        64 << 10,
        Duration::from_secs(20),
    )
    .unwrap();
    let syns = at_server.join().unwrap();
    let syn = syns
        .iter()
        .find(|f| f[14 + 20 + 13] & (SYN | ACK) == SYN)
        .expect("the SYN reached the server");
    assert_eq!(tcp_mss(syn), Some(1460), "unselected SYN keeps its MSS");
    assert_eq!(steering.verdicts(Role::Lan).unwrap().clamped, 0);
}
