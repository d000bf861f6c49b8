//! The appliance's TUN backend end to end on the testbed (run as root): each site's
//! kernel routes the other site's prefixes into a TUN device, the appliance runs the
//! same pipeline as on AF_XDP (codec, AES-256-GCM, replay windows) and carries the
//! tunnel over a kernel UDP socket. TCP transfers both ways arrive with the same
//! SHA-256, and the WAN carries nothing but tunnel packets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shunt_dataplane::tunnel::config::PortIo;
use shunt_tests::sites::{Sites, SitesConfig, counter, random_bytes, transfer};
use shunt_tests::testbed::{Testbed, TestbedConfig, WanLink};
use shunt_tests::wanem::{CapturedFrame, LinkProfile, WanemConfig};

const BULK: usize = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);
const MARKER: &[u8] = b"SHUNT-MARKER-5e21b0d4-tun-do-not-leak";
const TUNNEL_PORT: u16 = 4790;

/// What a frame on the WAN is.
#[derive(Debug, PartialEq, Eq)]
enum WanFrame {
    /// UDP from or to the tunnel port.
    Tunnel,
    /// IPv6 neighbour discovery, MLD and other ICMPv6 of the WAN ports themselves.
    Icmpv6,
    /// ARP.
    Arp,
    /// Anything else (a TCP segment in clear would be this).
    Other { ethertype: u16, protocol: u8 },
}

fn classify(frame: &CapturedFrame) -> WanFrame {
    let d = &frame.data;
    let ethertype = u16::from_be_bytes([d[12], d[13]]);
    let (protocol, l4) = match ethertype {
        0x0806 => return WanFrame::Arp,
        0x0800 => (d[14 + 9], 14 + usize::from(d[14] & 0x0f) * 4),
        0x86dd => (d[14 + 6], 14 + 40),
        _ => (0, 0),
    };
    let port = |at: usize| u16::from_be_bytes([d[l4 + at], d[l4 + at + 1]]);
    match (ethertype, protocol) {
        (0x0800 | 0x86dd, 17) if port(0) == TUNNEL_PORT || port(2) == TUNNEL_PORT => {
            WanFrame::Tunnel
        }
        (0x86dd, 58) => WanFrame::Icmpv6,
        // MLD reports: a hop-by-hop options header, then ICMPv6.
        (0x86dd, 0) if d.get(l4) == Some(&58) => WanFrame::Icmpv6,
        _ => WanFrame::Other {
            ethertype,
            protocol,
        },
    }
}

/// Asserts that every captured frame is a tunnel packet (or link-level chatter), and
/// that at least `min` are.
fn assert_only_tunnel_packets(frames: &[CapturedFrame], min: usize) {
    let mut tunnel = 0;
    for f in frames {
        match classify(f) {
            WanFrame::Tunnel => tunnel += 1,
            WanFrame::Icmpv6 | WanFrame::Arp => {}
            other => panic!("a non-tunnel packet crossed the WAN: {other:?} {f:?}"),
        }
    }
    assert!(tunnel >= min, "only {tunnel} tunnel packets captured");
}

#[test]
fn tun_backend_tunnels_tcp_both_ways_and_the_wan_sees_only_tunnel_packets() {
    let mut wanem = WanemConfig::symmetric(LinkProfile::CLEAN);
    wanem.capture_frames = 4096;
    let tb = Testbed::with_config(TestbedConfig {
        wan: WanLink::Emulator(wanem),
        ..TestbedConfig::default()
    })
    .expect("testbed (run as root)");
    let config = SitesConfig {
        io: PortIo::Tun,
        ..SitesConfig::default()
    };
    let sites = Sites::start(tb, &config);
    let tb = &sites.tb;
    let wan = tb.wanem().expect("emulator");
    // Start-up sends one UDP datagram to the partner's discard port (to have the WAN
    // next hop resolved); let it and its ICMP answer pass before watching the WAN.
    std::thread::sleep(Duration::from_millis(300));
    wan.clear_capture();

    // The marker, a little into incompressible data, client → server.
    let mut marked = random_bytes(64 << 10, 3);
    marked[1000..1000 + MARKER.len()].copy_from_slice(MARKER);
    let server = SocketAddr::new(IpAddr::V4(tb.server.ipv4), 5500);
    let t = transfer(
        &tb.client.netns,
        &tb.server.netns,
        server,
        Arc::new(marked),
        TIMEOUT,
    );
    assert_eq!(t.sent, t.received, "marked transfer SHA-256");
    assert!(
        !wan.capture_contains(MARKER),
        "marker crossed the WAN in clear"
    );
    // 64 KiB: about 45 segments and their ACKs.
    assert_only_tunnel_packets(&wan.captured(), 40);

    let data = Arc::new(random_bytes(BULK, 5501));
    let up = transfer(
        &tb.client.netns,
        &tb.server.netns,
        SocketAddr::new(IpAddr::V4(tb.server.ipv4), 5501),
        data.clone(),
        TIMEOUT,
    );
    assert_eq!(up.bytes, BULK, "client → server byte count");
    assert_eq!(up.sent, up.received, "client → server SHA-256");
    let down = transfer(
        &tb.server.netns,
        &tb.client.netns,
        SocketAddr::new(IpAddr::V4(tb.client.ipv4), 5502),
        data,
        TIMEOUT,
    );
    assert_eq!(down.bytes, BULK, "server → client byte count");
    assert_eq!(down.sent, down.received, "server → client SHA-256");
    // The capture ring now holds the end of the server → client transfer.
    assert_only_tunnel_packets(&wan.captured(), 4000);
    let mb = BULK as f64 / 1e6;
    eprintln!(
        "TUN backend: {mb:.0} MB client→server in {:.2} s ({:.0} Mbit/s), server→client in {:.2} s ({:.0} Mbit/s)",
        up.elapsed.as_secs_f64(),
        mb * 8.0 / up.elapsed.as_secs_f64(),
        down.elapsed.as_secs_f64(),
        mb * 8.0 / down.elapsed.as_secs_f64()
    );

    // Both directions went through the pipeline: encoded on one side, authenticated
    // and decoded on the other.
    let (a, b) = (sites.a_stats(), sites.b_stats());
    let segments = (BULK / 1500) as u64;
    for (name, stats) in [("A", &a), ("B", &b)] {
        assert!(
            counter(stats, "encoded_packets") > segments,
            "{name}: {stats:#?}"
        );
        assert!(
            counter(stats, "decoded_packets") > segments,
            "{name}: {stats:#?}"
        );
        assert_eq!(counter(stats, "drop_auth_failed"), 0, "{name}: {stats:#?}");
    }
    assert!(a.xdp.is_empty(), "no XDP program in TUN mode: {a:#?}");
}
