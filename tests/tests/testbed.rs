//! The namespace testbed on real kernel objects (run as root): reachability through
//! both appliances, TCP transfers over IPv4 and IPv6, removal on drop, on panic and of
//! leftovers from dead runs.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shunt_tests::netns::{self, Netns};
use shunt_tests::testbed::{Testbed, TestbedConfig, WanLink};
use shunt_tests::traffic::{ping, tcp_transfer};

fn exists(netns_name: &str) -> bool {
    Path::new("/run/netns").join(netns_name).exists()
}

#[test]
fn ping_crosses_both_appliances_v4_and_v6() {
    let tb = Testbed::new().expect("testbed (needs root and iproute2)");
    for to in [IpAddr::V4(tb.server.ipv4), IpAddr::V6(tb.server.ipv6)] {
        let r = ping(
            &tb.client.netns,
            to,
            3,
            Duration::from_millis(50),
            Duration::from_secs(2),
        )
        .expect("ping runs");
        assert_eq!(r.received, 3, "ping client -> {to}: {r:?}");
    }
    // The pings crossed the WAN emulator both ways.
    let stats = tb.wanem().expect("emulator is the default WAN").stats();
    assert!(
        stats.a_to_b.tx_packets >= 6 && stats.b_to_a.tx_packets >= 6,
        "{stats:?}"
    );
    // And the appliance really routes: with forwarding off, the ping fails.
    tb.site_a.netns.sysctl("net.ipv4.ip_forward", "0").unwrap();
    let r = ping(
        &tb.client.netns,
        IpAddr::V4(tb.server.ipv4),
        2,
        Duration::from_millis(50),
        Duration::from_millis(300),
    )
    .unwrap();
    assert_eq!(r.received, 0, "site_a must be on the path: {r:?}");
}

#[test]
fn tcp_transfer_v4_and_v6_arrives_intact() {
    let tb = Testbed::new().expect("testbed");
    for ip in [IpAddr::V4(tb.server.ipv4), IpAddr::V6(tb.server.ipv6)] {
        let addr = SocketAddr::new(ip, 5001);
        let r = tcp_transfer(
            &tb.client.netns,
            &tb.server.netns,
            addr,
            8 << 20,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("transfer to {addr}: {e}"));
        assert_eq!(r.bytes, 8 << 20);
        assert_eq!(r.sent_hash, r.received_hash);
    }
}

#[test]
fn kernel_bridge_wan_carries_tcp_too() {
    let config = TestbedConfig {
        wan: WanLink::KernelBridge,
        ..TestbedConfig::default()
    };
    let tb = Testbed::with_config(config).expect("testbed");
    assert!(tb.wanem().is_none());
    let addr = SocketAddr::new(IpAddr::V4(tb.server.ipv4), 5001);
    let r = tcp_transfer(
        &tb.client.netns,
        &tb.server.netns,
        addr,
        4 << 20,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!((r.bytes, r.sent_hash), (4 << 20, r.received_hash));
}

#[test]
fn cutting_the_wan_stops_traffic() {
    let mut tb = Testbed::new().unwrap();
    let final_stats = tb
        .stop_wanem()
        .expect("emulator running")
        .stop()
        .expect("clean stop");
    let r = ping(
        &tb.client.netns,
        IpAddr::V4(tb.server.ipv4),
        2,
        Duration::from_millis(50),
        Duration::from_millis(300),
    )
    .unwrap();
    assert_eq!(r.received, 0, "nothing bridges the WAN any more: {r:?}");
    assert_eq!(final_stats.a_to_b.dropped_error, 0);
}

#[test]
fn custom_mtu_is_applied_everywhere() {
    let tb = Testbed::with_config(TestbedConfig {
        mtu: 1400,
        ..TestbedConfig::default()
    })
    .unwrap();
    let out = tb
        .wan
        .netns
        .run("ip", &["-o", "link", "show", "dev", &tb.wan.a_if])
        .unwrap();
    assert!(out.contains("mtu 1400"), "{out}");
    let out = tb
        .client
        .netns
        .run("ip", &["-o", "link", "show", "dev", &tb.client.if_name])
        .unwrap();
    assert!(out.contains("mtu 1400"), "{out}");
}

#[test]
fn drop_and_panic_remove_every_namespace() {
    let tb = Testbed::new().unwrap();
    let names: Vec<String> = tb
        .namespaces()
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    assert!(names.iter().all(|n| exists(n)));
    drop(tb);
    assert!(
        names.iter().all(|n| !exists(n)),
        "still present after drop: {names:?}"
    );

    let result = std::thread::spawn(|| {
        let tb = Testbed::new().unwrap();
        let names: Vec<String> = tb
            .namespaces()
            .iter()
            .map(|n| n.name().to_owned())
            .collect();
        // A panicking closure inside a namespace unwinds through the guard.
        let _ = tb
            .client
            .netns
            .enter(|| -> () { panic!("{}", names.join(",")) });
    })
    .join();
    let panic = result.expect_err("closure panicked");
    let names: Vec<String> = panic
        .downcast_ref::<String>()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(names.len(), 5);
    assert!(
        names.iter().all(|n| !exists(n)),
        "left behind by panic: {names:?}"
    );
}

#[test]
fn spawned_processes_die_with_their_namespace() {
    let ns = Netns::new("sleeper").unwrap();
    let proc = ns.spawn("sleep", &["30"]).unwrap();
    let pid = proc.pid();
    std::mem::forget(proc); // only the namespace guard is left to kill it
    // `ip netns exec` enters the namespace after it starts; give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !ns.pids().unwrap().contains(&pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(ns.pids().unwrap().contains(&pid));
    drop(ns);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Gone, or a zombie waiting for us to reap it.
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "sleep {pid} survived: {stat}"
    );
}

#[test]
fn leftovers_of_dead_runs_are_removed_and_live_ones_kept() {
    // A pid that surely is dead: a child that already exited and was reaped.
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let dead = child.id();
    let stale_ns = format!("{}{dead}-0-stale", netns::NETNS_PREFIX);
    let stale_link = format!("{}{dead}-9", netns::LINK_PREFIX);
    assert!(
        Command::new("ip")
            .args(["netns", "add", &stale_ns])
            .status()
            .unwrap()
            .success()
    );
    let ok = Command::new("ip")
        .args([
            "link",
            "add",
            &stale_link,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{stale_link}p"),
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let live = Netns::new("live").unwrap();

    // Another test process may clean up concurrently, so check what is left rather
    // than what this call counted.
    netns::remove_leftovers().unwrap();
    assert!(!exists(&stale_ns));
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&stale_link));
    assert!(exists(live.name()), "a live run's namespace must be kept");
}
