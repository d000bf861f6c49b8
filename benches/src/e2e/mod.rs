//! The end-to-end benchmark driver (`cargo xtask bench e2e`): on one namespace
//! testbed, with the same data and the same emulated WAN, it measures plain kernel
//! forwarding, Shunt's three modes, wireguard-go, boringtun and OpenVPN with lz4, and
//! writes the table (Markdown, JSON) and plots (SVG). See `docs/benchmarks.md`.
#![forbid(unsafe_code)]

pub mod measure;
pub mod report;
pub mod systems;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use shunt_tests::testbed::Testbed;
use shunt_tests::wanem::{LinkProfile, WanemConfig};

use crate::codec_data;
use measure::{Payload, Sample, transfer};
pub use systems::System;
use systems::UpOptions;

/// The data sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataSet {
    /// Incompressible bytes, new in every round.
    Random,
    /// A generated text-like corpus, new in every round.
    Text,
    /// The same (incompressible) file as a transfer just before: what a history finds.
    Repeat,
}

impl DataSet {
    /// Every data set.
    pub const ALL: [DataSet; 3] = [DataSet::Random, DataSet::Text, DataSet::Repeat];

    /// Label for tables.
    pub fn label(self) -> &'static str {
        match self {
            DataSet::Random => "random",
            DataSet::Text => "text",
            DataSet::Repeat => "repeat",
        }
    }
}

/// An emulated WAN setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wan {
    /// No rate limit, no delay.
    Unlimited,
    /// 50 Mbit/s each way, 20 ms one-way delay.
    Mbit50Delay20,
}

impl Wan {
    /// Label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Wan::Unlimited => "unlimited",
            Wan::Mbit50Delay20 => "50 Mbit/s, 20 ms",
        }
    }

    /// The emulator profile (both directions).
    pub fn profile(self) -> LinkProfile {
        match self {
            Wan::Unlimited => LinkProfile::CLEAN,
            Wan::Mbit50Delay20 => LinkProfile::CLEAN
                .with_rate(50_000_000 / 8)
                .with_delay(Duration::from_millis(20)),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Systems, in measuring order.
    pub systems: Vec<System>,
    /// WAN settings.
    pub wans: Vec<Wan>,
    /// Bytes per transfer on the unlimited WAN.
    pub bytes_unlimited: usize,
    /// Bytes per transfer on the rate-limited WAN.
    pub bytes_limited: usize,
    /// Rounds (each round brings every system up once and runs every data set).
    pub rounds: usize,
    /// Shunt's compression history per lane, MiB.
    pub history_mib: usize,
    /// `shunt-dataplane`.
    pub dataplane: PathBuf,
    /// Results folder (created).
    pub out_dir: PathBuf,
    /// Install missing tunnels (apt-get, cargo install).
    pub install: bool,
    /// Describes the run in the report (`--smoke`, machine).
    pub title: String,
}

impl Options {
    fn bytes(&self, wan: Wan) -> usize {
        match wan {
            Wan::Unlimited => self.bytes_unlimited,
            Wan::Mbit50Delay20 => self.bytes_limited,
        }
    }
}

/// One measured transfer, or why it failed.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// The system.
    pub system: System,
    /// The WAN setting.
    pub wan: Wan,
    /// The data set.
    pub data: DataSet,
    /// Round number.
    pub round: usize,
    /// The measurement, when the transfer arrived intact.
    #[serde(skip)]
    pub sample: Option<Sample>,
    /// Why it failed.
    pub error: Option<String>,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks a running [`run`] to stop after the transfer in progress (Ctrl-C); it then
/// takes every system down, removes the testbed and returns an error.
pub fn request_stop() {
    STOP.store(true, Ordering::Relaxed);
}

fn check_stop() -> anyhow::Result<()> {
    anyhow::ensure!(
        !STOP.load(Ordering::Relaxed),
        "interrupted; everything set up was removed"
    );
    Ok(())
}

/// Runs the benchmark and writes the report; returns the records.
pub fn run(options: &Options) -> anyhow::Result<report::Report> {
    if options.install {
        systems::install(&options.systems)?;
    }
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("cannot create {}", options.out_dir.display()))?;
    let work_dir = options.out_dir.join("work");
    std::fs::create_dir_all(&work_dir)?;
    let up_options = UpOptions {
        dataplane: options.dataplane.clone(),
        history_mib: options.history_mib,
        work_dir,
    };
    let started = Instant::now();
    let mut tb = Testbed::new().context("cannot build the namespace testbed (run as root)")?;
    let repeat_file = |len| Payload::new(codec_data::incompressible(0xfeed, len));
    let mut records = Vec::new();
    let mut port = 7000u16;
    for &wan in &options.wans {
        tb.restart_wanem(WanemConfig::symmetric(wan.profile()))?;
        let len = options.bytes(wan);
        let repeat = repeat_file(len);
        for round in 0..options.rounds {
            let seed = round as u64 + 1;
            let random = Payload::new(codec_data::incompressible(seed * 7919, len));
            let text = Payload::new(codec_data::text_like(seed * 104_729, len));
            for &system in &options.systems {
                check_stop()?;
                eprintln!(
                    "[{:>4.0} s] {} | round {}/{} | {system}",
                    started.elapsed().as_secs_f64(),
                    wan.label(),
                    round + 1,
                    options.rounds
                );
                let plan = [
                    (DataSet::Random, &random, true),
                    (DataSet::Text, &text, true),
                    // The first sending of the repeated file is not reported.
                    (DataSet::Repeat, &repeat, false),
                    (DataSet::Repeat, &repeat, true),
                ];
                let mut running = match systems::up(&tb, system, &up_options) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        eprintln!("    {system} failed to come up: {e:#}");
                        for data in DataSet::ALL {
                            records.push(Record {
                                system,
                                wan,
                                data,
                                round,
                                sample: None,
                                error: Some(format!("did not come up: {e:#}")),
                            });
                        }
                        None
                    }
                };
                let Some(r) = running.as_mut() else { continue };
                let pids = r.pids();
                for (data, payload, report) in plan {
                    check_stop()?;
                    port = port.wrapping_add(1).max(7000);
                    let timeout = transfer_timeout(wan, len);
                    let result = transfer(&tb, port, payload, &pids, timeout)
                        .and_then(|s| r.check_alive().map(|()| s));
                    match &result {
                        Ok(s) => eprintln!(
                            "    {:<7} {:>8.1} Mbit/s  WAN {:>11} B  tunnel CPU {:.2} s{}",
                            data.label(),
                            s.goodput_mbps(),
                            s.wan_bytes_fwd,
                            s.tunnel_cpu,
                            if report { "" } else { "  (first sending)" }
                        ),
                        Err(e) => eprintln!("    {:<7} FAILED: {e:#}", data.label()),
                    }
                    if report || result.is_err() {
                        records.push(Record {
                            system,
                            wan,
                            data,
                            round,
                            error: result.as_ref().err().map(|e| format!("{e:#}")),
                            sample: result.ok(),
                        });
                    }
                }
                if let Some(r) = running.take()
                    && let Err(e) = r.down()
                {
                    eprintln!("    warning: {system} did not stop cleanly: {e:#}");
                }
            }
        }
    }
    drop(tb);
    let report = report::Report::build(options, &records, started.elapsed());
    report.write(&options.out_dir)?;
    Ok(report)
}

/// Generous: the transfer at a tenth of the link's rate, at least 60 s.
fn transfer_timeout(wan: Wan, len: usize) -> Duration {
    let rate = wan.profile().rate.unwrap_or(100_000_000) as f64 / 10.0;
    Duration::from_secs_f64((len as f64 / rate).max(60.0))
}
