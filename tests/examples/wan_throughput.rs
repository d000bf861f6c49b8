//! Measures TCP throughput client -> server across the testbed with the WAN emulator
//! (no impairment) and with a kernel bridge, in the same run, and prints the ratio.
//!
//! `cargo run --release -p shunt-tests --example wan_throughput [MiB]` (as root).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use shunt_tests::testbed::{Testbed, TestbedConfig, WanLink};
use shunt_tests::traffic::tcp_transfer;

fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::args().nth(1).map_or(Ok(200), |a| a.parse())?;
    let mut results = Vec::new();
    for (name, wan) in [
        ("emulator", WanLink::default()),
        ("kernel bridge", WanLink::KernelBridge),
    ] {
        let tb = Testbed::with_config(TestbedConfig {
            wan,
            ..TestbedConfig::default()
        })?;
        let addr = SocketAddr::new(IpAddr::V4(tb.server.ipv4), 5201);
        let r = tcp_transfer(
            &tb.client.netns,
            &tb.server.netns,
            addr,
            mib << 20,
            Duration::from_secs(300),
        )?;
        anyhow::ensure!(r.sent_hash == r.received_hash, "{name}: data corrupted");
        let mbit = (r.bytes * 8) as f64 / r.elapsed.as_secs_f64() / 1e6;
        println!(
            "{name:>14}: {mib} MiB in {:?} = {mbit:.0} Mbit/s",
            r.elapsed
        );
        if let Some(w) = tb.wanem() {
            println!("{:>14}  {}", "", serde_json::to_string(&w.stats())?);
        }
        results.push(mbit);
    }
    println!("emulator / kernel bridge = {:.2}", results[0] / results[1]);
    Ok(())
}
