//! Compression history on disk across restarts (run as root): two appliances with
//! `history_dir` and a disk key on the testbed, WAN bytes counted by the emulator.
//! History both sides kept is used again after both (or one) restart; history one side lost
//! (directory wiped, or another disk key) is not, and the transfer stays exact.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shunt_dataplane::tunnel::config::PortIo;
use shunt_tests::sites::{
    HistoryOnDisk, Sites, SitesConfig, Which, counter, random_bytes, transfer,
};
use shunt_tests::testbed::Testbed;

/// Size of the file: a few seconds per transfer in a debug build.
const FILE: usize = 24 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

fn key() -> String {
    hex::encode(rand::random::<[u8; 64]>())
}

fn on_disk(dir: &Path, key: &str) -> HistoryOnDisk {
    HistoryOnDisk {
        dir: dir.to_owned(),
        key: Some(key.to_owned()),
    }
}

/// Sends `data` from the client to the server; returns the WAN bytes a → b the
/// emulator counted.
fn send(sites: &Sites, data: &Arc<Vec<u8>>, port: u16) -> u64 {
    let wanem = sites.tb.wanem().expect("emulator");
    let server = SocketAddr::new(IpAddr::V4(sites.tb.server.ipv4), port);
    let before = wanem.stats().a_to_b.tx_bytes;
    let t = transfer(
        &sites.tb.client.netns,
        &sites.tb.server.netns,
        server,
        data.clone(),
        TIMEOUT,
    );
    assert_eq!(t.bytes, data.len());
    assert_eq!(t.sent, t.received, "SHA-256 at both ends");
    wanem.stats().a_to_b.tx_bytes - before
}

/// Waits until each running appliance has received at least `min` history summaries
/// more than `since` (A, B), then a moment for the answers.
fn await_summaries(sites: &Sites, since: (u64, u64), min: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = counter(&sites.a_stats(), "summaries_received");
        let b = counter(&sites.b_stats(), "summaries_received");
        if a >= since.0 + min && b >= since.1 + min {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history summaries not exchanged: A received {a}, B received {b}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
}

fn misses(sites: &Sites) -> u64 {
    counter(&sites.b_stats(), "drop_history_miss")
}

#[test]
fn history_both_sides_kept_is_used_again_after_restarts() {
    kept_history_is_used_again(PortIo::AfXdp);
}

#[test]
fn history_is_kept_across_restarts_with_tun_ports() {
    kept_history_is_used_again(PortIo::Tun);
}

/// Both restart, then only A restarts: each time the file crosses as references.
fn kept_history_is_used_again(io: PortIo) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let (a_key, b_key) = (key(), key());
    let config = SitesConfig {
        io,
        history_a: Some(on_disk(&a_dir, &a_key)),
        history_b: Some(on_disk(&b_dir, &b_key)),
        ..SitesConfig::default()
    };
    let mut sites = Sites::start(Testbed::new().expect("testbed (run as root)"), &config);
    await_summaries(&sites, (0, 0), 1);
    let data = Arc::new(random_bytes(FILE, 7));
    let first = send(&sites, &data, 5600);

    let b = sites.stop_site(Which::B);
    let a = sites.stop_site(Which::A);
    assert!(counter(&a, "summaries_sent") >= 1 && counter(&b, "summaries_sent") >= 1);
    sites.start_site(Which::A, config.history_a.as_ref());
    sites.start_site(Which::B, config.history_b.as_ref());
    await_summaries(&sites, (0, 0), 1);
    let second = send(&sites, &data, 5601);
    let missed = misses(&sites);

    // Only A (the sender) restarts; B keeps running with the history in memory.
    sites.stop_site(Which::A);
    let b_before = counter(&sites.b_stats(), "summaries_received");
    sites.start_site(Which::A, config.history_a.as_ref());
    await_summaries(&sites, (0, b_before), 1);
    let third = send(&sites, &data, 5602);
    let missed_third = misses(&sites) - missed;
    eprintln!(
        "{io:?}, file {} MiB | WAN bytes a->b: first {first}, after restarting both {second} ({:.2}%), after restarting A {third} ({:.2}%) | B history misses {missed} / {missed_third}",
        FILE >> 20,
        second as f64 * 100.0 / first as f64,
        third as f64 * 100.0 / first as f64
    );
    assert!(first as usize >= FILE, "the first transfer crossed in full");
    for (what, bytes) in [("both", second), ("A", third)] {
        assert!(
            bytes * 10 <= first,
            "restored history unused after restarting {what}: {bytes} WAN bytes > 10% of {first}"
        );
    }
    assert_eq!(
        missed + missed_third,
        0,
        "B never met a reference it did not hold"
    );
}

#[test]
fn history_one_side_lost_is_not_used() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let b_key = key();
    let config = SitesConfig {
        history_a: Some(on_disk(&a_dir, &key())),
        history_b: Some(on_disk(&b_dir, &b_key)),
        ..SitesConfig::default()
    };
    let mut sites = Sites::start(Testbed::new().expect("testbed (run as root)"), &config);
    await_summaries(&sites, (0, 0), 1);
    let data = Arc::new(random_bytes(FILE, 8));
    let first = send(&sites, &data, 5610);

    // B restarts with its history directory wiped; A keeps running with the file in
    // its history.
    sites.stop_site(Which::B);
    std::fs::remove_dir_all(&b_dir).expect("wipe B's history");
    let a_before = counter(&sites.a_stats(), "summaries_received");
    sites.start_site(Which::B, config.history_b.as_ref());
    await_summaries(&sites, (a_before, 0), 1);
    let wiped = send(&sites, &data, 5611);
    let missed_wiped = misses(&sites);

    // B restarts with its files intact but another disk key (a keystore reset).
    sites.stop_site(Which::B);
    let a_before = counter(&sites.a_stats(), "summaries_received");
    sites.start_site(Which::B, Some(&on_disk(&b_dir, &key())));
    await_summaries(&sites, (a_before, 0), 1);
    let rekeyed = send(&sites, &data, 5612);
    let missed_rekeyed = misses(&sites);
    eprintln!(
        "file {} MiB | WAN bytes a->b: first {first}, B wiped {wiped}, B with another key {rekeyed} | B history misses {missed_wiped} / {missed_rekeyed}",
        FILE >> 20
    );
    for (what, bytes) in [("wiped", wiped), ("another key", rekeyed)] {
        assert!(
            bytes * 10 >= first * 9,
            "B {what}: {bytes} WAN bytes, far below the first transfer's {first}: history B no longer holds was referenced"
        );
    }
    assert_eq!(
        missed_wiped + missed_rekeyed,
        0,
        "A stopped referencing what B lost before sending"
    );
}
