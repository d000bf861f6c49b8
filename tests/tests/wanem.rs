//! The WAN emulator on real namespaces (run as root): it applies the configured loss,
//! delay, duplication, reordering and rate, counts bytes and packets each way, never
//! forwards more than it received, captures frames, and runs as a separate process.
//! Tolerances are wide enough for a loaded 2-core machine but still fail when an
//! impairment is not applied.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use shunt_tests::testbed::{Testbed, TestbedConfig, WanLink};
use shunt_tests::traffic::{UdpSink, ping, send_udp_sequence, tcp_transfer};
use shunt_tests::wanem::{DirectionStats, LinkProfile, WanemConfig, WanemStats};

const PORT: u16 = 6000;

/// A testbed whose emulator starts clean; ARP/ND are warmed up with a ping so later
/// impairments only meet the test's own traffic (plus rare stray frames).
fn warm_testbed(config: WanemConfig) -> Testbed {
    let tb = Testbed::with_config(TestbedConfig {
        wan: WanLink::Emulator(config),
        ..TestbedConfig::default()
    })
    .expect("testbed (needs root)");
    for to in [IpAddr::V4(tb.server.ipv4), IpAddr::V6(tb.server.ipv6)] {
        let r = ping(
            &tb.client.netns,
            to,
            1,
            Duration::from_millis(10),
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(r.received, 1, "warm-up ping to {to}");
    }
    tb
}

fn delta(after: DirectionStats, before: DirectionStats) -> DirectionStats {
    DirectionStats {
        rx_packets: after.rx_packets - before.rx_packets,
        rx_bytes: after.rx_bytes - before.rx_bytes,
        tx_packets: after.tx_packets - before.tx_packets,
        tx_bytes: after.tx_bytes - before.tx_bytes,
        dropped_loss: after.dropped_loss - before.dropped_loss,
        dropped_queue: after.dropped_queue - before.dropped_queue,
        dropped_error: after.dropped_error - before.dropped_error,
        duplicated: after.duplicated - before.duplicated,
        reordered: after.reordered - before.reordered,
        kernel_drops: after.kernel_drops - before.kernel_drops,
    }
}

fn stats(tb: &Testbed) -> WanemStats {
    tb.wanem().expect("emulator running").stats()
}

/// Sends `count` numbered datagrams client -> server and returns what arrived plus
/// the emulator's A->B counters for the run.
fn udp_run(tb: &Testbed, count: u32, len: usize) -> (Vec<u32>, DirectionStats) {
    let to = SocketAddr::new(IpAddr::V4(tb.server.ipv4), PORT);
    let sink = UdpSink::start(&tb.server.netns, to, Duration::from_millis(1000)).unwrap();
    let before = stats(tb).a_to_b;
    send_udp_sequence(&tb.client.netns, to, count, len, b"seq", 20).unwrap();
    let seqs = sink.finish().unwrap();
    (seqs, delta(stats(tb).a_to_b, before))
}

#[test]
fn configured_loss_is_applied_and_counted() {
    let tb = warm_testbed(WanemConfig::default());
    let lossy = LinkProfile::CLEAN.with_loss(0.10);
    tb.wanem()
        .unwrap()
        .set_profiles(lossy, LinkProfile::CLEAN)
        .unwrap();
    let (seqs, d) = udp_run(&tb, 2000, 200);

    // 10% of ~2000 frames: mean 200, sd ~13; 140..260 is > 4 sd either way.
    assert!((140..=260).contains(&d.dropped_loss), "{d:?}");
    assert!(d.rx_packets >= 2000 && d.rx_packets <= 2010, "{d:?}");
    // Every datagram lost on the WAN is one the server did not get, and vice versa
    // (a few stray frames, ARP or ND, may share the counters).
    let missing = 2000 - seqs.len() as u64;
    assert!(
        missing.abs_diff(d.dropped_loss) <= 10,
        "server missed {missing}, emulator lost {d:?}"
    );
    assert_eq!(d.tx_packets, d.rx_packets - d.dropped_loss, "{d:?}");
    assert_eq!(d.kernel_drops, 0, "emulator fell behind: {d:?}");
}

#[test]
fn byte_counts_match_what_was_sent() {
    let tb = warm_testbed(WanemConfig::default());
    let (seqs, d) = udp_run(&tb, 1000, 300);
    assert_eq!(seqs.len(), 1000);
    // Ethernet 14 + IPv4 20 + UDP 8 + payload 300.
    let frame = 14 + 20 + 8 + 300;
    assert!(
        d.rx_bytes >= 1000 * frame && d.rx_bytes <= 1000 * frame + 2_000,
        "{d:?}"
    );
    assert_eq!(d.tx_bytes, d.rx_bytes, "{d:?}");
    assert_eq!(d.tx_packets, d.rx_packets, "{d:?}");
}

#[test]
fn delay_is_applied_per_direction() {
    let tb = warm_testbed(WanemConfig::default());
    let server = IpAddr::V4(tb.server.ipv4);
    let rtt = |n| {
        let r = ping(
            &tb.client.netns,
            server,
            n,
            Duration::from_millis(100),
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(r.received, n, "{r:?}");
        r.rtt_avg.unwrap()
    };
    let base = rtt(5);
    let w = tb.wanem().unwrap();
    let d50 = LinkProfile::CLEAN.with_delay(Duration::from_millis(50));

    w.set_profiles(d50, d50).unwrap();
    let both = rtt(8);
    // Frames never leave early, so the RTT grows by at least 100 ms; scheduling on a
    // loaded machine may add some, but not another 60 ms on average.
    assert!(both >= Duration::from_millis(100), "RTT {both:?}");
    assert!(
        both <= base + Duration::from_millis(160),
        "RTT {both:?}, base {base:?}"
    );

    w.set_profiles(d50, LinkProfile::CLEAN).unwrap();
    let one = rtt(8);
    assert!(one >= Duration::from_millis(50), "RTT {one:?}");
    assert!(
        one <= base + Duration::from_millis(100),
        "RTT {one:?}, base {base:?}"
    );
}

#[test]
fn duplication_is_applied_and_counted() {
    let tb = warm_testbed(WanemConfig::default());
    tb.wanem()
        .unwrap()
        .set_profiles(LinkProfile::CLEAN.with_duplicate(0.2), LinkProfile::CLEAN)
        .unwrap();
    let (seqs, d) = udp_run(&tb, 1000, 100);
    // 20% of ~1000: mean 200, sd ~13.
    assert!((140..=260).contains(&d.duplicated), "{d:?}");
    assert_eq!(d.tx_packets, d.rx_packets + d.duplicated, "{d:?}");
    let extra = seqs.len() as u64 - 1000;
    assert!(
        extra.abs_diff(d.duplicated) <= 5,
        "server got {extra} extra, {d:?}"
    );
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 1000, "every datagram arrives at least once");
}

#[test]
fn reordering_holds_frames_behind_later_ones() {
    let tb = warm_testbed(WanemConfig::default());
    let profile = LinkProfile {
        reorder_gap: 3,
        ..LinkProfile::CLEAN.with_reorder(0.1)
    };
    tb.wanem()
        .unwrap()
        .set_profiles(profile, LinkProfile::CLEAN)
        .unwrap();
    let (seqs, d) = udp_run(&tb, 1000, 100);
    assert_eq!(seqs.len(), 1000, "reordering loses nothing: {d:?}");
    assert!((60..=140).contains(&d.reordered), "{d:?}");
    // A datagram arriving after a higher-numbered one was overtaken.
    let mut highest = 0;
    let mut late = 0;
    for &s in &seqs {
        if s < highest {
            late += 1;
        }
        highest = highest.max(s);
    }
    assert!(
        late >= d.reordered / 2 && late <= d.reordered + 5,
        "{late} late, {d:?}"
    );
    assert_eq!(d.tx_packets, d.rx_packets, "{d:?}");
}

#[test]
fn never_forwards_more_than_received_under_loss_and_reordering() {
    let tb = warm_testbed(WanemConfig::default());
    let p = LinkProfile::CLEAN
        .with_loss(0.01)
        .with_reorder(0.01)
        .with_delay(Duration::from_millis(2));
    tb.wanem().unwrap().set_profiles(p, p).unwrap();
    let before = stats(&tb);
    let addr = SocketAddr::new(IpAddr::V6(tb.server.ipv6), 5002);
    let r = tcp_transfer(
        &tb.client.netns,
        &tb.server.netns,
        addr,
        4 << 20,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!((r.bytes, r.sent_hash), (4 << 20, r.received_hash));
    // Let everything in flight (delay, held frames) drain.
    std::thread::sleep(Duration::from_millis(200));
    let after = stats(&tb);
    for (a, b) in [(after.a_to_b, before.a_to_b), (after.b_to_a, before.b_to_a)] {
        let d = delta(a, b);
        assert!(
            d.tx_packets <= d.rx_packets && d.tx_bytes <= d.rx_bytes,
            "{d:?}"
        );
        assert_eq!(
            d.tx_packets,
            d.rx_packets - d.dropped_loss - d.dropped_queue - d.dropped_error,
            "{d:?}"
        );
        assert!(
            d.dropped_loss > 0,
            "1% loss over thousands of frames: {d:?}"
        );
    }
    assert!(delta(after.a_to_b, before.a_to_b).rx_bytes > 4 << 20);
}

#[test]
fn rate_limit_caps_throughput() {
    let tb = warm_testbed(WanemConfig::default());
    let rate = 2_500_000; // bytes/s (20 Mbit/s)
    tb.wanem()
        .unwrap()
        .set_profiles(LinkProfile::CLEAN.with_rate(rate), LinkProfile::CLEAN)
        .unwrap();
    let before = stats(&tb).a_to_b;
    let started = Instant::now();
    let addr = SocketAddr::new(IpAddr::V4(tb.server.ipv4), 5003);
    let r = tcp_transfer(
        &tb.client.netns,
        &tb.server.netns,
        addr,
        4 << 20,
        Duration::from_secs(60),
    )
    .unwrap();
    let elapsed = started.elapsed();
    assert_eq!((r.bytes, r.sent_hash), (4 << 20, r.received_hash));
    let d = delta(stats(&tb).a_to_b, before);
    // The shaper cannot let bytes through faster than the rate (plus one burst).
    let allowed = rate as f64 * elapsed.as_secs_f64() + 16_384.0;
    assert!(
        (d.tx_bytes as f64) <= allowed * 1.02,
        "{} bytes in {elapsed:?}, {d:?}",
        d.tx_bytes
    );
    assert!(
        elapsed >= Duration::from_secs_f64((4 << 20) as f64 / rate as f64 * 0.95),
        "{elapsed:?}"
    );
}

#[test]
fn capture_finds_plaintext_markers_and_writes_pcap() {
    let tb = warm_testbed(WanemConfig {
        capture_frames: 256,
        ..WanemConfig::default()
    });
    let w = tb.wanem().unwrap();
    assert!(!w.capture_contains(b"SHUNT-MARKER-7"));
    let to = SocketAddr::new(IpAddr::V4(tb.server.ipv4), PORT);
    let sink = UdpSink::start(&tb.server.netns, to, Duration::from_millis(300)).unwrap();
    send_udp_sequence(&tb.client.netns, to, 5, 200, b"SHUNT-MARKER-7", 0).unwrap();
    assert_eq!(sink.finish().unwrap().len(), 5);
    assert!(w.capture_contains(b"SHUNT-MARKER-7"));
    assert!(!w.capture_contains(b"SHUNT-MARKER-8"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wan.pcap");
    w.write_pcap(&path).unwrap();
    let pcap = std::fs::read(&path).unwrap();
    assert_eq!(pcap[..4], 0xa1b2_3c4du32.to_le_bytes());
    assert!(pcap.windows(14).any(|x| x == b"SHUNT-MARKER-7"));
    w.clear_capture();
    assert!(w.captured().is_empty());
}

#[test]
fn standalone_binary_bridges_and_reports_json_on_sigterm() {
    let mut tb = Testbed::with_config(TestbedConfig {
        wan: WanLink::KernelBridge,
        ..TestbedConfig::default()
    })
    .unwrap();
    // Replace the kernel bridge by the binary.
    tb.wan.netns.run("ip", &["link", "del", "br0"]).unwrap();
    assert!(tb.stop_wanem().is_none());
    let dir = tempfile::tempdir().unwrap();
    let stats_file = dir.path().join("stats.json");
    let proc = tb
        .wan
        .netns
        .spawn(
            env!("CARGO_BIN_EXE_shunt-wanem"),
            &[
                "--port-a",
                &tb.wan.a_if,
                "--port-b",
                &tb.wan.b_if,
                "--profile",
                "delay=10ms",
                "--stats-file",
                stats_file.to_str().unwrap(),
                "--stats-interval-ms",
                "100",
            ],
        )
        .unwrap();
    let r = ping(
        &tb.client.netns,
        IpAddr::V4(tb.server.ipv4),
        4,
        Duration::from_millis(50),
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(r.received, 4, "{r:?}");
    assert!(r.rtt_avg.unwrap() >= Duration::from_millis(20), "{r:?}");
    std::thread::sleep(Duration::from_millis(250));
    let periodic: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats_file).unwrap()).unwrap();
    assert!(
        periodic["a_to_b"]["rx_packets"].as_u64().unwrap() >= 4,
        "{periodic}"
    );

    let ok = Command::new("kill")
        .args(["-TERM", &proc.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = proc
        .wait(Duration::from_secs(5))
        .expect("exits cleanly on SIGTERM");
    let last: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for dir in ["a_to_b", "b_to_a"] {
        let d = &last[dir];
        assert!(d["tx_packets"].as_u64().unwrap() >= 4, "{last}");
        assert!(
            d["tx_packets"].as_u64() <= d["rx_packets"].as_u64(),
            "{last}"
        );
    }
}
