//! `shunt-demo` (what `cargo xtask demo` runs): the two-site demonstration.
//!
//! On the namespace testbed (`client — site A — WAN emulator — site B — server`) it
//! starts, per site, `shunt-dataplane` in agent mode and `shunt-control` as separate
//! processes, bootstraps the admins, installs a licence signed with a test vendor key,
//! initializes the keystores, creates a private CA on site A and enrolls site B
//! through the management API (`ConnectAppliance`), shows the partner table
//! (`secure: true`, `Connected Available`), moves a file from the client to the
//! server twice and prints bytes sent, bytes on the WAN, reduction and goodput for
//! both transfers. Everything it created goes away on every path out, Ctrl-C
//! included.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use shunt_tests::sites::{random_bytes, transfer};
use shunt_tests::testbed::Testbed;
use shunt_tests::two_sites::{TwoSites, Which};

#[derive(Parser, Debug)]
#[command(
    about = "Two Shunt appliances, secure peering through the API, a file across the WAN twice"
)]
struct Cli {
    /// Size of the file in MiB.
    #[arg(long, default_value_t = 64)]
    mib: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Signals are taken synchronously by this thread; the demo runs on another one
    // and stops at its next step, so everything is dropped (processes killed,
    // namespaces removed) in order.
    shunt_tests::signal::block_termination_signals().context("cannot block SIGINT")?;
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || demo(&cli, &stop))
    };
    let mut signalled_at: Option<Instant> = None;
    while !worker.is_finished() {
        if let Some(sig) = shunt_tests::signal::wait_termination(Duration::from_millis(200))? {
            eprintln!(
                "\nsignal {sig}: stopping and cleaning up (a transfer in flight finishes first)..."
            );
            stop.store(true, Ordering::SeqCst);
            signalled_at.get_or_insert_with(Instant::now);
        }
        if signalled_at.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
            bail!("cleanup did not finish within 60 s; the next run removes the leftovers");
        }
    }
    match worker.join() {
        Ok(result) => result,
        Err(_) => bail!("the demo panicked (everything it created was removed)"),
    }
}

fn check(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted; everything the demo created was removed");
    }
    Ok(())
}

fn step(text: &str) {
    println!("==> {text}");
}

struct Row {
    sent: u64,
    wan: u64,
    seconds: f64,
}

fn demo(cli: &Cli, stop: &AtomicBool) -> anyhow::Result<()> {
    let removed = shunt_tests::netns::remove_leftovers().context("cannot remove leftovers")?;
    if removed.namespaces + removed.links > 0 {
        println!("removed leftovers of an earlier run: {removed:?}");
    }
    step("building the testbed: client — site A — WAN emulator — site B — server");
    let tb = Testbed::new().context("cannot build the namespace testbed (run as root)")?;
    check(stop)?;
    let history_mib = (cli.mib * 2).next_power_of_two().max(16);
    let sites = TwoSites::start(tb, history_mib, &|s| {
        step(s);
        let _ = std::io::stdout().flush();
    })?;
    check(stop)?;

    for which in [Which::A, Which::B] {
        let site = sites.site(which);
        println!(
            "\npartner table of {} (management API {}):",
            site.name, site.management
        );
        println!(
            "  {:<8} {:<16} {:<7} {:<20} traffic",
            "name", "address", "secure", "status"
        );
        for p in sites.partners(which)? {
            println!(
                "  {:<8} {:<16} {:<7} {:<20} {}",
                p.name, p.address, p.secure, p.connection_status, p.traffic
            );
            ensure!(
                p.secure && p.connection_status == "Connected Available",
                "partner {} is not secure: {}",
                p.name,
                p.reason
            );
        }
    }

    let len = cli.mib << 20;
    let file = Arc::new(random_bytes(len, 2026));
    let mut rows = Vec::new();
    for (i, port) in [(1, 7001u16), (2, 7002)] {
        check(stop)?;
        println!();
        step(&format!(
            "transfer {i}: {} MiB client {} -> server {} across the WAN",
            cli.mib, sites.tb.client.ipv4, sites.tb.server.ipv4
        ));
        rows.push(send(&sites, port, file.clone())?);
    }

    println!("\n| transfer | bytes sent by the client | bytes on the WAN | reduction | goodput |");
    println!("|---|---:|---:|---:|---:|");
    for (i, r) in rows.iter().enumerate() {
        println!(
            "| {} | {} | {} | {:.1}% | {:.0} Mbit/s |",
            if i == 0 {
                "first"
            } else {
                "second (same file)"
            },
            r.sent,
            r.wan,
            100.0 * (1.0 - r.wan as f64 / r.sent as f64),
            r.sent as f64 * 8.0 / 1e6 / r.seconds
        );
    }
    let p = sites.partners(Which::A)?;
    if let Some(c) = p.first().and_then(|p| p.counters) {
        println!(
            "\nsite A's partner counters (read from its data plane by shunt-control): \
             {} bytes before compression, {} after, {} packets, {} errors",
            c.bytes_before_compression, c.bytes_after_compression, c.packets, c.errors
        );
    }
    println!(
        "\nWAN bytes are counted by the emulator between the sites (outer IP packets, site A to B).\n\
         The demo removes everything now. To try next:\n\
         \n  cargo test -p shunt-tests --test two_sites_e2e     # the same, plus a shunt-control restart\n\
         \x20 cargo test -p shunt-tests --test agent_api         # the agent API on its own\n\
         \x20 shunt-dataplane --agent-socket /run/shunt/agent.sock --lan LAN --wan WAN --copy\n\
         \x20 shunt-control --state-dir /var/lib/shunt --dataplane-socket /run/shunt/agent.sock --name site-a ...\n\
         \x20 shuntctl login; shuntctl partners watch          # docs/control-plane.md\n\
         \x20 docs/pipeline.md (agent mode), docs/peering.md, docs/credentials.md"
    );
    Ok(())
}

/// One transfer with a progress line every second; WAN bytes from the emulator.
fn send(sites: &TwoSites, port: u16, file: Arc<Vec<u8>>) -> anyhow::Result<Row> {
    let wanem = sites
        .tb
        .wanem()
        .context("the testbed has no WAN emulator")?;
    let before = wanem.stats().a_to_b.tx_bytes;
    let len = file.len();
    let done = AtomicBool::new(false);
    let t = std::thread::scope(|scope| {
        scope.spawn(|| {
            let start = Instant::now();
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(500));
                let wan = wanem.stats().a_to_b.tx_bytes - before;
                print!(
                    "\r    {:>5.1} s, {:>6.1} MB on the WAN so far",
                    start.elapsed().as_secs_f64(),
                    wan as f64 / 1e6
                );
                let _ = std::io::stdout().flush();
            }
            println!();
        });
        let addr = SocketAddr::new(IpAddr::V4(sites.tb.server.ipv4), port);
        let t = transfer(
            &sites.tb.client.netns,
            &sites.tb.server.netns,
            addr,
            file,
            Duration::from_secs(120),
        );
        done.store(true, Ordering::SeqCst);
        t
    });
    ensure!(
        t.bytes == len && t.sent == t.received,
        "transfer corrupted or short ({} of {len} bytes)",
        t.bytes
    );
    println!("    arrived intact: SHA-256 {}", hex::encode(t.received));
    Ok(Row {
        sent: len as u64,
        wan: wanem.stats().a_to_b.tx_bytes - before,
        seconds: t.elapsed.as_secs_f64(),
    })
}
