//! `shunt-xdp-rate`: measures the packet rate through the steering program's LAN
//! entry point on a veth, against the pass-only reference entry point on the same
//! veth in the same run, and prints both with their ratio. A measurement, not a test.
//!
//! Load: one AF_PACKET socket (`PACKET_QDISC_BYPASS`, `sendmmsg` batches of 64)
//! floods 60-byte UDP frames into `va`; the program runs on the peer `vb` in driver
//! mode; the rate is `vb`'s rx_packets over the run. With BPF run-time statistics
//! enabled for the run, it also prints the kernel's own figure for the time spent
//! in the program per packet, which the load generator cannot blur.
//!
//! Usage: `shunt-xdp-rate [SECONDS]` (default 3), as root.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use shunt_common::RuleAction;
use shunt_dataplane::xdp::{ModeRequest, Prefix, Role, Rule, Steering};
use shunt_tests::frames::udp_v4;
use shunt_tests::inject::Injector;
use shunt_tests::netns::{Netns, VethEnd, create_veth};

const VA_MAC: [u8; 6] = [0x02, 0, 0, 0xaa, 0, 1];
const VB_MAC: [u8; 6] = [0x02, 0, 0, 0xaa, 0, 2];

#[derive(Clone, Copy)]
enum Program {
    /// `shunt_pass`: returns XDP_PASS.
    Reference,
    /// `shunt_lan` with a frame no rule selects (parse + LPM miss).
    LanUnselected,
    /// `shunt_lan` with a selected frame, partner not ready (parse + LPM hit +
    /// partner lookup + fail open).
    LanSelected,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Self::Reference => "shunt_pass (reference)",
            Self::LanUnselected => "shunt_lan, unselected",
            Self::LanSelected => "shunt_lan, selected, fail open",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("SECONDS must be a whole number")?
        .unwrap_or(3);
    // Held open for the whole run: the kernel counts program run time meanwhile.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("cannot enable BPF run-time statistics")?;
    let ns = Netns::new("xdprate").context("cannot create a namespace (run as root)")?;
    create_veth(
        VethEnd {
            netns: Some(&ns),
            name: "va",
            mac: Some(VA_MAC),
        },
        VethEnd {
            netns: Some(&ns),
            name: "vb",
            mac: Some(VB_MAC),
        },
        1500,
    )?;
    let src = (Ipv4Addr::new(10, 9, 0, 1), 1000);
    let unselected = udp_v4(
        VB_MAC,
        VA_MAC,
        src,
        (Ipv4Addr::new(10, 8, 0, 1), 9000),
        &[0; 18],
    );
    let selected = udp_v4(
        VB_MAC,
        VA_MAC,
        src,
        (Ipv4Addr::new(10, 7, 0, 1), 9000),
        &[0; 18],
    );

    let order = [
        Program::Reference,
        Program::LanUnselected,
        Program::LanSelected,
        Program::Reference,
    ];
    let mut results = Vec::new();
    for program in order {
        let frame = match program {
            Program::LanSelected => &selected,
            _ => &unselected,
        };
        let m = measure(&ns, program, frame, Duration::from_secs(secs))?;
        println!(
            "{:<32} {:>10.0} pkt/s through XDP ({:.0} offered), {:>6.1} ns/packet in the program",
            program.name(),
            m.rate,
            m.offered,
            m.ns_per_packet
        );
        results.push((program, m));
    }
    let references: Vec<&Measurement> = results
        .iter()
        .filter(|(p, _)| matches!(p, Program::Reference))
        .map(|(_, m)| m)
        .collect();
    let n = references.len() as f64;
    let rate = references.iter().map(|m| m.rate).sum::<f64>() / n;
    let ns = references.iter().map(|m| m.ns_per_packet).sum::<f64>() / n;
    for (program, m) in &results {
        if !matches!(program, Program::Reference) {
            println!(
                "{:<32} rate {:.3} x reference, time in program {:.2} x reference",
                program.name(),
                m.rate / rate,
                m.ns_per_packet / ns
            );
        }
    }
    Ok(())
}

struct Measurement {
    /// Packets per second through `vb`.
    rate: f64,
    /// Packets per second the generator sent.
    offered: f64,
    /// Kernel-measured time in the program per run.
    ns_per_packet: f64,
}

/// Attaches `program` to `vb` and floods `frame` into `va` for `length`.
fn measure(
    ns: &Netns,
    program: Program,
    frame: &[u8],
    length: Duration,
) -> anyhow::Result<Measurement> {
    // Keep whichever object is attached alive for the run.
    let mut reference = None;
    let mut steering = None;
    match program {
        Program::Reference => {
            let mut ebpf = aya::Ebpf::load(shunt_dataplane::XDP_OBJECT)?;
            ns.enter(|| -> anyhow::Result<()> {
                let prog: &mut aya::programs::Xdp = ebpf
                    .program_mut(shunt_common::program::PASS)
                    .ok_or_else(|| anyhow!("no reference entry point in the object"))?
                    .try_into()?;
                prog.load()?;
                prog.attach("vb", aya::programs::XdpMode::Driver)?;
                Ok(())
            })??;
            reference = Some(ebpf);
        }
        Program::LanUnselected | Program::LanSelected => {
            let mut s = Steering::load()?;
            s.add_rule(
                Prefix::new(IpAddr::V4(Ipv4Addr::new(10, 7, 0, 0)), 16)?,
                Rule {
                    partner: 1,
                    action: RuleAction::Accelerate,
                    must_protect: false,
                },
            )?;
            ns.enter(|| s.attach(Role::Lan, "vb", ModeRequest::Driver))??;
            steering = Some(s);
        }
    }
    let injector = ns.enter(|| Injector::open("va"))??;
    let before = rx_packets(ns)?;
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let sent = std::thread::scope(|scope| {
        let flood = scope.spawn(|| injector.flood(frame, || !stop.load(Ordering::Relaxed)));
        std::thread::sleep(length);
        stop.store(true, Ordering::Relaxed);
        flood.join().expect("flood thread never panics")
    });
    let elapsed = started.elapsed().as_secs_f64();
    let through = rx_packets(ns)? - before;
    let (run_time, runs) = match (&reference, &steering) {
        (Some(ebpf), _) => {
            let info = ebpf
                .program(shunt_common::program::PASS)
                .ok_or_else(|| anyhow!("reference program vanished"))?
                .info()?;
            (info.run_time(), info.run_count())
        }
        (None, Some(s)) => s.program_stats(Role::Lan)?,
        (None, None) => unreachable!("one program is always attached"),
    };
    drop(steering);
    drop(reference);
    Ok(Measurement {
        rate: through as f64 / elapsed,
        offered: sent as f64 / elapsed,
        ns_per_packet: run_time.as_nanos() as f64 / runs.max(1) as f64,
    })
}

fn rx_packets(ns: &Netns) -> anyhow::Result<u64> {
    let out = ns.run("cat", &["/sys/class/net/vb/statistics/rx_packets"])?;
    out.trim()
        .parse()
        .with_context(|| format!("unexpected rx_packets {out:?}"))
}
