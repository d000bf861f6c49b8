//! `shunt-e2e` (what `cargo xtask bench e2e` runs): the end-to-end benchmark of Shunt
//! against plain forwarding, wireguard-go, boringtun and OpenVPN on the namespace
//! testbed. Needs root. See `docs/benchmarks.md`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use shunt_benches::e2e::{self, DataSet, Options, System, Wan};

#[derive(Debug, Parser)]
#[command(about = "End-to-end benchmark: Shunt against plain forwarding and other tunnels")]
struct Args {
    /// CI mode: plain forwarding and Shunt (encrypted + compressed) only, 2 MB per
    /// transfer, unlimited WAN, one round; fails unless every transfer arrived intact
    /// and the repeated transfer crossed the WAN in at most half of plain's bytes.
    #[arg(long)]
    smoke: bool,
    /// Rounds (every system is brought up once per round and WAN setting).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// MB per transfer on the unlimited WAN.
    #[arg(long, default_value_t = 64)]
    mb_unlimited: usize,
    /// MB per transfer on the 50 Mbit/s, 20 ms WAN.
    #[arg(long, default_value_t = 16)]
    mb_limited: usize,
    /// Only these systems (comma separated: plain, shunt, shunt-comp-only,
    /// shunt-no-comp, wireguard-go, boringtun, openvpn).
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Only the unlimited WAN.
    #[arg(long)]
    unlimited_only: bool,
    /// Results folder (default results/e2e-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not install missing tunnels; fail instead.
    #[arg(long)]
    no_install: bool,
    /// `shunt-dataplane` (default: next to this program).
    #[arg(long)]
    dataplane: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // SIGINT/SIGTERM are taken here, not by the default handler, so that a Ctrl-C
    // still takes the tunnels and the testbed down (spawned tools get the default
    // signal mask back).
    shunt_tests::signal::block_termination_signals().context("cannot block SIGINT/SIGTERM")?;
    let args = Args::parse();
    let dataplane = match args.dataplane {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .with_file_name("shunt-dataplane"),
    };
    ensure!(
        dataplane.exists(),
        "{} not found: build it first (`cargo build --release -p shunt-dataplane`; \
         `cargo xtask bench e2e` does)",
        dataplane.display()
    );
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut options = Options {
        systems: System::ALL.to_vec(),
        wans: vec![Wan::Unlimited, Wan::Mbit50Delay20],
        bytes_unlimited: args.mb_unlimited * 1_000_000,
        bytes_limited: args.mb_limited * 1_000_000,
        rounds: args.rounds,
        history_mib: 128,
        dataplane,
        out_dir: args
            .out
            .unwrap_or_else(|| PathBuf::from(format!("results/e2e-{stamp}"))),
        install: !args.no_install,
        title: "Full run".into(),
    };
    if args.smoke {
        options.systems = vec![System::Plain, System::ShuntEncryptedCompressed];
        options.wans = vec![Wan::Unlimited];
        options.bytes_unlimited = 2_000_000;
        options.rounds = 1;
        options.history_mib = 64;
        options.install = false;
        options.title = "Smoke run (CI)".into();
    }
    if !args.systems.is_empty() {
        options.systems = args
            .systems
            .iter()
            .map(|s| parse_system(s))
            .collect::<anyhow::Result<_>>()?;
    }
    if args.unlimited_only {
        options.wans = vec![Wan::Unlimited];
    }
    let worker = {
        let options = options.clone();
        std::thread::spawn(move || e2e::run(&options))
    };
    while !worker.is_finished() {
        if let Some(signal) = shunt_tests::signal::wait_termination(Duration::from_millis(500))? {
            eprintln!("signal {signal}: stopping after the current transfer, then cleaning up");
            e2e::request_stop();
            break;
        }
    }
    let report = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))??;
    println!("{}", report.markdown());
    println!("results in {}", options.out_dir.display());
    let failed = report.failures();
    if !failed.is_empty() {
        for c in &failed {
            eprintln!(
                "not reported: {} / {} / {}: {}",
                c.label,
                c.wan.label(),
                c.data.label(),
                c.failed.as_deref().unwrap_or("")
            );
        }
        bail!("{} cell(s) failed; see above", failed.len());
    }
    if args.smoke {
        let bytes = |system| {
            report
                .cell(system, Wan::Unlimited, DataSet::Repeat)
                .and_then(|c| c.wan_bytes)
                .context("repeat cell missing")
        };
        let (plain, shunt) = (
            bytes(System::Plain)?,
            bytes(System::ShuntEncryptedCompressed)?,
        );
        ensure!(
            shunt * 2 <= plain,
            "Shunt's repeated transfer used {shunt} WAN bytes, plain forwarding {plain}: \
             the compression history did not work"
        );
        println!("smoke: repeated transfer on the WAN: Shunt {shunt} B, plain {plain} B");
    }
    Ok(())
}

fn parse_system(s: &str) -> anyhow::Result<System> {
    Ok(match s {
        "plain" => System::Plain,
        "shunt" => System::ShuntEncryptedCompressed,
        "shunt-comp-only" => System::ShuntCompressOnly,
        "shunt-no-comp" => System::ShuntEncrypted,
        "wireguard-go" => System::WireguardGo,
        "boringtun" => System::Boringtun,
        "openvpn" => System::OpenVpnLz4,
        other => bail!(
            "unknown system `{other}` (known: plain, shunt, shunt-comp-only, shunt-no-comp, \
             wireguard-go, boringtun, openvpn)"
        ),
    })
}
