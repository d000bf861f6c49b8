//! `shunt-dataplane`: loads the XDP steering program onto the appliance's LAN and
//! WAN ports, configures it from the command line, prints its counters
//! periodically and detaches it on exit, SIGINT or SIGTERM.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use shunt_common::RuleAction;
use shunt_dataplane::xdp::{ModeRequest, Prefix, Role, Rule, Steering};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(about = "Shunt data plane: XDP steering on the appliance's LAN and WAN ports")]
struct Cli {
    /// LAN port (repeatable).
    #[arg(long = "lan", value_name = "IFACE")]
    lan: Vec<String>,
    /// WAN port (repeatable).
    #[arg(long = "wan", value_name = "IFACE")]
    wan: Vec<String>,
    /// Attach in generic (SKB) mode instead of driver mode.
    #[arg(long, conflicts_with = "driver_only")]
    generic: bool,
    /// Fail instead of falling back to generic mode when the driver refuses.
    #[arg(long)]
    driver_only: bool,
    /// Acceleration rule PREFIX=PARTNER[,must-protect], e.g. 10.2.0.0/16=1.
    #[arg(long = "rule", value_name = "RULE")]
    rules: Vec<RuleArg>,
    /// Mark partner N ready, so its traffic is steered (repeatable).
    #[arg(long = "partner-ready", value_name = "N")]
    ready: Vec<u32>,
    /// A partner's WAN address ADDRESS=PARTNER, e.g. 192.0.2.2=1.
    #[arg(long = "wan-partner", value_name = "ADDR=N")]
    wan_partners: Vec<WanPartnerArg>,
    /// MSS that SYNs of accelerated flows are clamped to (0: off).
    #[arg(long, default_value_t = 1360)]
    mss: u16,
    /// UDP port of the tunnel on the WAN side (0: WAN steering off).
    #[arg(long, default_value_t = 0)]
    tunnel_port: u16,
    /// Seconds between counter reports.
    #[arg(long, default_value_t = 5)]
    interval: u64,
    /// Exit after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    duration: Option<u64>,
}

#[derive(Clone, Debug)]
struct RuleArg {
    prefix: Prefix,
    rule: Rule,
}

impl FromStr for RuleArg {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (prefix, rest) = s
            .split_once('=')
            .context("write a rule as PREFIX=PARTNER[,must-protect]")?;
        let (partner, flag) = match rest.split_once(',') {
            Some((p, f)) => (p, Some(f)),
            None => (rest, None),
        };
        let must_protect = match flag {
            None => false,
            Some("must-protect") => true,
            Some(other) => bail!("unknown rule flag `{other}` (known: must-protect)"),
        };
        Ok(Self {
            prefix: prefix.parse()?,
            rule: Rule {
                partner: partner.parse().context("the partner is not a number")?,
                action: RuleAction::Accelerate,
                must_protect,
            },
        })
    }
}

#[derive(Clone, Debug)]
struct WanPartnerArg {
    addr: IpAddr,
    partner: u32,
}

impl FromStr for WanPartnerArg {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (addr, partner) = s
            .split_once('=')
            .context("write a WAN partner as ADDRESS=PARTNER")?;
        Ok(Self {
            addr: addr.parse().context("not an IP address")?,
            partner: partner.parse().context("the partner is not a number")?,
        })
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.lan.is_empty() && cli.wan.is_empty() {
        bail!("name at least one port with --lan IFACE or --wan IFACE");
    }
    let mode = match (cli.generic, cli.driver_only) {
        (true, _) => ModeRequest::Generic,
        (false, true) => ModeRequest::Driver,
        (false, false) => ModeRequest::Auto,
    };

    let mut steering = Steering::load().context("cannot load the XDP steering program")?;
    configure(&mut steering, &cli)?;
    let ports = cli
        .lan
        .iter()
        .map(|i| (Role::Lan, i))
        .chain(cli.wan.iter().map(|i| (Role::Wan, i)));
    for (role, interface) in ports {
        let used = steering
            .attach(role, interface, mode)
            .with_context(|| format!("cannot attach to {role:?} port `{interface}`"))?;
        println!(
            "attached {role:?} program to {interface} in {} mode",
            used.as_str()
        );
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(report_until_signal(&steering, &cli))?;
    steering.detach_all();
    println!("detached");
    Ok(())
}

fn configure(steering: &mut Steering, cli: &Cli) -> anyhow::Result<()> {
    steering.set_mss(cli.mss).context("cannot set the MSS")?;
    steering
        .set_tunnel_port(cli.tunnel_port)
        .context("cannot set the tunnel port")?;
    for r in &cli.rules {
        steering
            .add_rule(r.prefix, r.rule)
            .with_context(|| format!("cannot add the rule for {}", r.prefix))?;
    }
    for &partner in &cli.ready {
        steering
            .set_partner_ready(partner, true)
            .with_context(|| format!("cannot mark partner {partner} ready"))?;
    }
    for w in &cli.wan_partners {
        steering
            .add_wan_partner(w.addr, w.partner)
            .with_context(|| format!("cannot add WAN partner {}", w.addr))?;
    }
    Ok(())
}

async fn report_until_signal(steering: &Steering, cli: &Cli) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut tick = tokio::time::interval(Duration::from_secs(cli.interval.max(1)));
    let deadline = async {
        match cli.duration {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = tick.tick() => print_counters(steering)?,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            () = &mut deadline => break,
        }
    }
    print_counters(steering)
}

fn print_counters(steering: &Steering) -> anyhow::Result<()> {
    for role in [Role::Lan, Role::Wan] {
        let c = steering
            .verdicts(role)
            .context("cannot read the counters")?;
        println!(
            "{role:?}: passed={} redirected={} dropped={} malformed={} clamped={} fail_open={}",
            c.passed, c.redirected, c.dropped, c.malformed, c.clamped, c.fail_open
        );
    }
    Ok(())
}
