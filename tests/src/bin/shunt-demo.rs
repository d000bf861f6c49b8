//! `shunt-demo` (what `cargo xtask demo` runs): brings up the two-site testbed and
//! shows two appliances (`shunt-dataplane --config …`, manual keying, encrypted
//! tunnel) carrying real TCP traffic between the client and the server:
//!
//! 1. the same file through plain kernel forwarding (the reference);
//! 2. the file through the appliances, first time: WAN bytes, goodput;
//! 3. the same file again: the history turns it into references.
//!
//! WAN bytes are counted by the WAN emulator between the sites.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use shunt_tests::netns::NsProcess;
use shunt_tests::sites::{SitesConfig, manual_config, random_bytes, transfer};
use shunt_tests::testbed::{Appliance, Testbed};

const FILE: usize = 64 << 20;
const HISTORY_MIB: usize = 128;

fn main() -> anyhow::Result<()> {
    let binary = dataplane_binary()?;
    let tb = Testbed::new().context("cannot build the namespace testbed (run as root)")?;
    let wanem = tb.wanem().context("the testbed has no WAN emulator")?;
    println!(
        "testbed up: client {} -> server {}",
        tb.client.ipv4, tb.server.ipv4
    );
    let file = Arc::new(random_bytes(FILE, 2026));
    let mb = FILE as f64 / 1e6;
    let send = |port: u16| -> anyhow::Result<(u64, f64)> {
        let before = wanem.stats().a_to_b.tx_bytes;
        let addr = SocketAddr::new(IpAddr::V4(tb.server.ipv4), port);
        let t = transfer(
            &tb.client.netns,
            &tb.server.netns,
            addr,
            file.clone(),
            Duration::from_secs(120),
        );
        ensure!(
            t.bytes == FILE && t.sent == t.received,
            "transfer corrupted or short"
        );
        Ok((
            wanem.stats().a_to_b.tx_bytes - before,
            mb * 8.0 / t.elapsed.as_secs_f64(),
        ))
    };

    println!("\n== 1. plain kernel forwarding (no appliance), {mb:.0} MB client -> server");
    let (plain_wan, plain_goodput) = send(6000)?;
    println!("   WAN bytes {plain_wan}, goodput {plain_goodput:.0} Mbit/s");

    let dir = std::env::temp_dir().join(format!("shunt-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("cannot create the demo directory")?;
    let config = SitesConfig {
        history_mib: HISTORY_MIB,
        ..SitesConfig::default()
    };
    let keys = (
        hex::encode(rand::random::<[u8; 32]>()),
        hex::encode(rand::random::<[u8; 32]>()),
    );
    let a = start(
        &binary,
        &dir,
        "site-a",
        &tb.site_a,
        &tb.site_b,
        &config,
        (&keys.0, &keys.1),
    )?;
    let b = start(
        &binary,
        &dir,
        "site-b",
        &tb.site_b,
        &tb.site_a,
        &config,
        (&keys.1, &keys.0),
    )?;

    println!("\n== 2. through the appliances (AES-256-GCM tunnel + history), first transfer");
    let stats_a = dir.join("site-a.json");
    std::thread::sleep(Duration::from_millis(1200));
    let rx_before = worker_rx(&stats_a)?;
    let (first_wan, first_goodput) = send(6001)?;
    std::thread::sleep(Duration::from_millis(1200));
    let rx_after = worker_rx(&stats_a)?;
    let seconds = mb * 8.0 / first_goodput;
    println!(
        "   WAN bytes {first_wan}, goodput {first_goodput:.0} Mbit/s, site A worker 0: {:.0} packets/s (data out + ACKs in)",
        (rx_after - rx_before) as f64 / seconds
    );
    println!("\n== 3. the same file again");
    let (second_wan, second_goodput) = send(6002)?;
    println!("   WAN bytes {second_wan}, goodput {second_goodput:.0} Mbit/s");

    std::thread::sleep(Duration::from_millis(1500));
    let stats = read_stats(&dir.join("site-a.json"))?;
    let verdicts_a = read_verdicts(&dir.join("site-a.json"))?;
    let verdicts_b = read_verdicts(&dir.join("site-b.json"))?;
    stop(a)?;
    stop(b)?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("\n== summary");
    println!("   bytes sent by the client per transfer : {FILE}");
    println!("   WAN bytes, kernel forwarding          : {plain_wan}");
    println!("   WAN bytes, first transfer (encrypted) : {first_wan}");
    println!(
        "   WAN bytes, repeated transfer          : {second_wan} ({:.1}% of the first, reduction {:.1}x)",
        second_wan as f64 * 100.0 / first_wan as f64,
        first_wan as f64 / second_wan.max(1) as f64
    );
    println!(
        "   goodput: kernel {plain_goodput:.0} Mbit/s, tunnel first {first_goodput:.0} Mbit/s, repeat {second_goodput:.0} Mbit/s"
    );
    println!("   site A partner counters: {}", stats);
    println!("\n== XDP verdicts (packets, summed over CPUs)");
    println!("{verdicts_a}{verdicts_b}");
    Ok(())
}

/// The per-verdict XDP counters of one site's LAN and WAN ports, as table rows.
fn read_verdicts(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).context("cannot read the stats file")?;
    let v: serde_json::Value = serde_json::from_str(&text).context("bad stats JSON")?;
    let site = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rows = String::new();
    for port in ["lan", "wan"] {
        let c = &v["xdp"][port];
        rows.push_str(&format!(
            "   {site:>6} {port}: passed {:>8}  redirected {:>8}  dropped {:>6}  malformed {:>6}  clamped {:>6}  fail_open {:>6}\n",
            c["passed"], c["redirected"], c["dropped"], c["malformed"], c["clamped"], c["fail_open"]
        ));
    }
    Ok(rows)
}

/// `shunt-dataplane`, built next to this binary (`cargo xtask demo` builds all bins).
fn dataplane_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let path = me.with_file_name("shunt-dataplane");
    if !path.exists() {
        bail!(
            "{} not found; build it first with `cargo build --bins` (cargo xtask demo does)",
            path.display()
        );
    }
    Ok(path)
}

fn start(
    binary: &Path,
    dir: &Path,
    name: &str,
    local: &Appliance,
    peer: &Appliance,
    config: &SitesConfig,
    keys: (&str, &str),
) -> anyhow::Result<NsProcess> {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, manual_config(local, peer, config, keys, (0, 0)))
        .context("cannot write the configuration")?;
    let stats = dir.join(format!("{name}.json"));
    let history = config.history_mib.to_string();
    let process = local.netns.spawn(
        &binary.to_string_lossy(),
        &[
            "--config",
            &file.to_string_lossy(),
            "--copy",
            "--driver-only",
            "--history-mib",
            &history,
            "--interval",
            "1",
            "--stats-file",
            &stats.to_string_lossy(),
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stats.exists() {
        ensure!(
            Instant::now() < deadline,
            "{name}: shunt-dataplane did not start (no stats file)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("{name}: shunt-dataplane running (pid {})", process.pid());
    Ok(process)
}

fn read_stats(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).context("cannot read the stats file")?;
    let v: serde_json::Value = serde_json::from_str(&text).context("bad stats JSON")?;
    let c = &v["partners"][0]["counters"];
    Ok(format!(
        "encoded {} packets, payload {} -> {} bytes after the codec, replay drops {}, auth failures {}",
        c["encoded_packets"],
        c["bytes_before"],
        c["bytes_after"],
        c["drop_replay"],
        c["drop_auth_failed"]
    ))
}

/// Frames site A's first worker received so far (both ports).
fn worker_rx(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).context("cannot read the stats file")?;
    let v: serde_json::Value = serde_json::from_str(&text).context("bad stats JSON")?;
    v["worker_counters"][0]["rx"]
        .as_u64()
        .context("no worker counters in the stats file")
}

/// SIGTERM, then wait for a clean exit (XDP detached).
fn stop(process: NsProcess) -> anyhow::Result<()> {
    let pid = process.pid().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .context("cannot run kill")?;
    process
        .wait(Duration::from_secs(10))
        .context("shunt-dataplane did not stop cleanly")?;
    Ok(())
}
