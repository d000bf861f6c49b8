//! `shunt-dataplane`: runs the appliance's data plane.
//!
//! With `--config FILE` (a manual-keying file, see `docs/pipeline.md`) it loads XDP on
//! the LAN and WAN ports, installs rules, partners and sessions and runs the fast-path
//! workers (encode, encrypt, tunnel; open, decode, forward); with `io = "tun"` in the
//! file the same workers run on a TUN device and a UDP socket instead, without XDP. Without it, it only loads
//! the XDP steering program onto the ports named with `--lan`/`--wan`, configured
//! from the command line. Either way it prints counters periodically and detaches on
//! exit, SIGINT or SIGTERM.
//!
//! With `--agent-socket PATH --lan IFACE --wan IFACE` it runs the appliance with no
//! partners and serves the agent API on PATH (mode 0600): `shunt-control` installs
//! partners, keys, modes and rules there.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use shunt_common::RuleAction;
use shunt_dataplane::agent;
use shunt_dataplane::io::afxdp::BindMode;
use shunt_dataplane::pipeline::{AgentSettings, Appliance, ApplianceOptions, ApplianceStats};
use shunt_dataplane::tunnel::config::ManualConfig;
use shunt_dataplane::xdp::{ModeRequest, Prefix, Role, Rule, Steering};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(about = "Shunt data plane: XDP steering and the fast path on the LAN and WAN ports")]
struct Cli {
    /// Manual-keying configuration: run the whole appliance (tunnel, codec, workers).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["lan", "wan"])]
    config: Option<PathBuf>,
    /// Agent mode: run the appliance on the --lan and --wan ports with no partners and
    /// serve the agent API for shunt-control on this unix socket (mode 0600).
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    agent_socket: Option<PathBuf>,
    /// Partner slots in agent mode.
    #[arg(long, default_value_t = 16, requires = "agent_socket")]
    max_partners: usize,
    /// Agent mode: keep the compression history under this directory instead of the
    /// one shunt-control sends (its <state_dir>/history). For a data plane that runs
    /// as another user than the control plane, or a history on its own disk. The
    /// control plane still decides whether history is kept, its size and its key.
    #[arg(long, value_name = "DIR", requires = "agent_socket")]
    history_dir: Option<PathBuf>,
    /// Write the counters as JSON to this file at every report (--config or
    /// --agent-socket).
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
    /// Compression history per lane and direction in MiB (power of two; both partners
    /// must use the same). A partner's `history_mib` in the configuration overrides it;
    /// `[local] history_dir` keeps it on disk across restarts.
    #[arg(long, default_value_t = 64)]
    history_mib: usize,
    /// AF_XDP copy mode (for drivers without zero-copy support, e.g. veth; no effect
    /// with `io = "tun"`).
    #[arg(long)]
    copy: bool,
    /// Carry payloads as they are instead of through the compression history.
    #[arg(long)]
    no_compression: bool,
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
    if let Some(path) = &cli.config {
        return run_appliance(path, &cli);
    }
    if let Some(socket) = &cli.agent_socket {
        return run_agent(socket, &cli);
    }
    if cli.lan.is_empty() && cli.wan.is_empty() {
        bail!("name at least one port with --lan IFACE or --wan IFACE");
    }
    let mode = mode_request(&cli);

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

fn mode_request(cli: &Cli) -> ModeRequest {
    match (cli.generic, cli.driver_only) {
        (true, _) => ModeRequest::Generic,
        (false, true) => ModeRequest::Driver,
        (false, false) => ModeRequest::Auto,
    }
}

fn appliance_options(cli: &Cli) -> anyhow::Result<ApplianceOptions> {
    Ok(ApplianceOptions {
        xdp_mode: mode_request(cli),
        bind: if cli.copy {
            BindMode::Copy
        } else {
            BindMode::Auto
        },
        history_bytes: cli
            .history_mib
            .checked_mul(1 << 20)
            .context("--history-mib is too large")?,
        max_workers: None,
        compression: !cli.no_compression,
    })
}

fn run_agent(socket: &Path, cli: &Cli) -> anyhow::Result<()> {
    let (lan, wan) = match (cli.lan.as_slice(), cli.wan.as_slice()) {
        ([lan], [wan]) => (lan.clone(), wan.clone()),
        _ => bail!("agent mode needs exactly one --lan IFACE and one --wan IFACE"),
    };
    let tunnel_port = match cli.tunnel_port {
        0 => shunt_dataplane::tunnel::config::DEFAULT_TUNNEL_PORT,
        p => p,
    };
    let settings = AgentSettings {
        lan_interface: lan,
        wan_interface: wan,
        tunnel_port,
        max_partners: cli.max_partners,
        history_dir: cli.history_dir.clone(),
    };
    let appliance = Appliance::start_agent(&settings, &appliance_options(cli)?)
        .context("cannot start the appliance")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let appliance = Arc::new(Mutex::new(appliance));
    let listener = {
        let _guard = runtime.enter();
        agent::bind_socket(socket)?
    };
    println!(
        "agent listening {} (LAN {} WAN {}, tunnel port {tunnel_port})",
        socket.display(),
        settings.lan_interface,
        settings.wan_interface
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(agent::serve(
        appliance.clone(),
        listener,
        tunnel_port,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let reported = runtime.block_on(report_loop(cli, || {
        appliance.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }));
    let _ = stop_tx.send(());
    let served = runtime.block_on(server);
    let _ = std::fs::remove_file(socket);
    let appliance = Arc::try_unwrap(appliance)
        .map_err(|_| anyhow::anyhow!("the agent server still holds the appliance"))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let stats = appliance.stop().context("stopping the workers failed")?;
    report(cli, &stats)?;
    println!("detached");
    reported?;
    served.context("agent server task")??;
    Ok(())
}

fn run_appliance(path: &Path, cli: &Cli) -> anyhow::Result<()> {
    let manual = ManualConfig::load(path)
        .with_context(|| format!("invalid configuration {}", path.display()))?;
    let options = appliance_options(cli)?;
    let appliance = Appliance::start(&manual, &options).context("cannot start the appliance")?;
    println!(
        "appliance running: LAN {} WAN {}, {} worker(s), MSS {}",
        manual.lan_interface,
        manual.wan_interface,
        appliance.config().workers,
        appliance.config().mss()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(report_loop(cli, || appliance.stats()))?;
    let stats = appliance.stop().context("stopping the workers failed")?;
    report(cli, &stats)?;
    println!("detached");
    Ok(())
}

/// Reports the counters every --interval until SIGINT, SIGTERM or --duration.
async fn report_loop(cli: &Cli, stats: impl Fn() -> ApplianceStats) -> anyhow::Result<()> {
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
            _ = tick.tick() => report(cli, &stats())?,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            () = &mut deadline => break,
        }
    }
    Ok(())
}

fn report(cli: &Cli, stats: &ApplianceStats) -> anyhow::Result<()> {
    for p in &stats.partners {
        let c = &p.counters;
        println!(
            "partner {}: encoded={} bytes_before={} bytes_after={} wan_bytes_out={} decoded={} replay={} auth_failed={} history_miss={} no_next_hop={} too_big={}",
            p.name,
            c["encoded_packets"],
            c["bytes_before"],
            c["bytes_after"],
            c["wan_bytes_out"],
            c["decoded_packets"],
            c["drop_replay"],
            c["drop_auth_failed"],
            c["drop_history_miss"],
            c["drop_no_next_hop"],
            c["drop_too_big"]
        );
    }
    if let Some(file) = &cli.stats_file {
        let json = serde_json::to_vec_pretty(stats).context("cannot encode the counters")?;
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, file))
            .with_context(|| format!("cannot write the stats file {}", file.display()))?;
    }
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
