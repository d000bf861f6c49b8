//! `shunt-wanem`: the WAN emulator as a process, for the demo and the benchmark driver.
//!
//! Bridges two interfaces of the current namespace (run it with `ip netns exec`),
//! applying the given impairments. Prints its counters as JSON on stdout when it gets
//! SIGINT or SIGTERM, and optionally writes them to a file periodically.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use shunt_tests::signal::{block_termination_signals, wait_termination};
use shunt_tests::wanem::{LinkProfile, Wanem, WanemConfig, WanemStats};

/// Userspace WAN emulator: an L2 bridge between two ports with delay, loss,
/// reordering, duplication and a rate limit.
#[derive(Debug, Parser)]
#[command(name = "shunt-wanem", version)]
struct Args {
    /// Port A (faces site A).
    #[arg(long)]
    port_a: String,
    /// Port B (faces site B).
    #[arg(long)]
    port_b: String,
    /// Impairments of both directions, e.g. `delay=25ms,loss=0.01,rate=12.5M`.
    /// Keys: delay, loss, reorder, gap, dup, rate (bytes/s), burst (bytes), queue.
    #[arg(long, default_value = "")]
    profile: LinkProfile,
    /// Impairments of A to B only (replaces --profile for that direction).
    #[arg(long)]
    ab: Option<LinkProfile>,
    /// Impairments of B to A only (replaces --profile for that direction).
    #[arg(long)]
    ba: Option<LinkProfile>,
    /// Seed of the random decisions.
    #[arg(long, default_value_t = WanemConfig::default().seed)]
    seed: u64,
    /// Frame buffers per direction.
    #[arg(long, default_value_t = WanemConfig::default().pool_frames)]
    pool_frames: usize,
    /// Largest frame forwarded, in bytes (MTU + 18).
    #[arg(long, default_value_t = WanemConfig::default().max_frame)]
    max_frame: usize,
    /// Write the counters as JSON to this file every --stats-interval (atomically).
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Period of --stats-file updates.
    #[arg(long, default_value = "1000", value_name = "MS")]
    stats_interval_ms: u64,
    /// Keep the last N frames and write them as pcap to --pcap on exit.
    #[arg(long, default_value_t = 0)]
    capture_frames: usize,
    /// Where to write the captured frames on exit.
    #[arg(long, requires = "capture_frames")]
    pcap: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // Before any thread exists, so the forwarding threads inherit the mask.
    block_termination_signals().context("blocking SIGINT/SIGTERM")?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = WanemConfig {
        a_to_b: args.ab.unwrap_or(args.profile),
        b_to_a: args.ba.unwrap_or(args.profile),
        seed: args.seed,
        pool_frames: args.pool_frames,
        max_frame: args.max_frame,
        capture_frames: args.capture_frames,
        ..WanemConfig::default()
    };
    let wanem = Wanem::start(&args.port_a, &args.port_b, config).with_context(|| {
        format!(
            "starting the emulator between {} and {}",
            args.port_a, args.port_b
        )
    })?;
    eprintln!(
        "shunt-wanem: bridging {} <-> {}; SIGINT or SIGTERM prints counters",
        args.port_a, args.port_b
    );

    let interval = Duration::from_millis(args.stats_interval_ms.max(10));
    let mut next_write = Instant::now();
    loop {
        if let Some(path) = &args.stats_file
            && Instant::now() >= next_write
        {
            write_stats(path, &wanem.stats())?;
            next_write += interval;
        }
        if !wanem.is_running() {
            // A thread ended on its own: report why.
            wanem.stop().context("the emulator stopped")?;
            anyhow::bail!("the emulator stopped unexpectedly");
        }
        let wait = if args.stats_file.is_some() {
            next_write.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(200)
        };
        if wait_termination(wait.min(Duration::from_millis(200)))
            .context("waiting for signals")?
            .is_some()
        {
            break;
        }
    }

    if let Some(path) = &args.pcap {
        wanem
            .write_pcap(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let stats = wanem.stop().context("stopping the emulator")?;
    if let Some(path) = &args.stats_file {
        write_stats(path, &stats)?;
    }
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

fn write_stats(path: &std::path::Path, stats: &WanemStats) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(stats)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
