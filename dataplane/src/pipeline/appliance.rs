//! Starting a whole appliance from a manual-keying configuration: XDP on the LAN and
//! WAN ports, one AF_XDP socket per queue and port, one [`Pipeline`] worker per queue
//! (or, with `io = "tun"`, one worker on a TUN device and a UDP socket: [`super::tun`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shunt_common::RuleAction;

use super::counters;
use super::history::{Histories, WriterThread};
use super::{PartnerPlan, Pipeline, PipelineConfig, Shared};
use crate::codec::{CodecConfig, CodecError};
use crate::forward::{NextHops, Resolver};
use crate::io::IoError;
use crate::io::afxdp::{AfXdpPort, BindMode, XskConfig};
use crate::tunnel::config::{ManualConfig, PortIo};
use crate::tunnel::manual::{ManualKeying, session_params};
use crate::tunnel::{KeyError, Mode, TableError};
use crate::worker::{PoolConfig, Ports, WorkerError, WorkerPool, WorkerSpec};
use crate::xdp::{ModeRequest, Prefix, Role, Rule, Steering, XdpError};

/// Errors starting or running an appliance.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// Loading, attaching or configuring XDP failed.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// An AF_XDP socket could not be opened.
    #[error("cannot open a port (AF_XDP socket, TUN device or UDP socket): {0}")]
    Io(#[from] IoError),
    /// The worker pool did not start or a worker failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// Reading the kernel's tables failed.
    #[error(
        "cannot read the kernel's interfaces and routes: {0}; run as root in the appliance's namespace"
    )]
    Kernel(#[source] std::io::Error),
    /// A configured interface is missing.
    #[error("interface {0} not found; check lan_interface and wan_interface")]
    NoInterface(String),
    /// No local address reaches a partner.
    #[error(
        "no route from this appliance to partner {partner} at {address}: {source}; add a route on the WAN port"
    )]
    NoRouteToPartner {
        /// Partner name.
        partner: String,
        /// Its address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// More workers than lanes (or than lane numbers fit).
    #[error("more workers than encoder lanes; raise `lanes` in the configuration")]
    TooManyWorkers,
    /// The codec settings are invalid.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// Installing a session failed.
    #[error("session: {0}")]
    Session(#[from] TableError),
    /// Installing keys failed.
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    /// The compression history store could not be opened or read.
    #[error("history store: {0}")]
    Store(#[from] crate::codec::store::StoreError),
    /// The TUN backend's interfaces or routes are not set up as it needs.
    #[error(transparent)]
    Tun(#[from] super::tun::TunSetupError),
}

/// Start-up choices not in the manual-keying file.
#[derive(Debug, Clone)]
pub struct ApplianceOptions {
    /// XDP attach mode.
    pub xdp_mode: ModeRequest,
    /// AF_XDP bind mode.
    pub bind: BindMode,
    /// Compression history per lane and direction, bytes (power of two, ≥ 1 MiB; both
    /// partners must use the same).
    pub history_bytes: usize,
    /// Upper bound on workers (default: one per queue, at most one per core).
    pub max_workers: Option<usize>,
    /// Transport payloads go through the compression history (default). Off, they
    /// travel as they are (still bundled, headers still delta coded): the reference
    /// the codec's growth on the WAN is measured against, and an operator's choice
    /// for traffic known not to repeat.
    pub compression: bool,
}

impl Default for ApplianceOptions {
    fn default() -> Self {
        Self {
            xdp_mode: ModeRequest::Auto,
            bind: BindMode::Auto,
            history_bytes: CodecConfig::default().history_bytes,
            max_workers: None,
            compression: true,
        }
    }
}

/// Start-up settings of agent mode: the ports and the tunnel, no partners (the
/// control plane installs them through the agent API).
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The LAN-facing interface.
    pub lan_interface: String,
    /// The WAN-facing interface.
    pub wan_interface: String,
    /// UDP port of the tunnel (shared with the control plane's QUIC signaling).
    pub tunnel_port: u16,
    /// Partner slots (at most this many partners at once).
    pub max_partners: usize,
    /// History directory that replaces the one the control plane sends with
    /// `SetHistoryStore` (`--history-dir`: the two run as different users, or the
    /// history has its own disk).
    pub history_dir: Option<std::path::PathBuf>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            lan_interface: String::new(),
            wan_interface: String::new(),
            tunnel_port: crate::tunnel::config::DEFAULT_TUNNEL_PORT,
            max_partners: 16,
            history_dir: None,
        }
    }
}

/// Lanes of agent-mode sessions (both partners must agree; manual keying's default).
pub(super) const AGENT_LANES: u16 = 16;

/// Counters of one partner, summed over workers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartnerStats {
    /// Partner name.
    pub name: String,
    /// Its mode.
    pub mode: Mode,
    /// Counter name → value (see `docs/pipeline.md`).
    pub counters: BTreeMap<&'static str, u64>,
}

/// Everything the appliance counts, for logs and the `--stats-file`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplianceStats {
    /// Seconds since the UNIX epoch when taken.
    pub at_unix_secs: u64,
    /// Workers running.
    pub workers: usize,
    /// MSS SYNs are clamped to.
    pub mss: u16,
    /// Per partner.
    pub partners: Vec<PartnerStats>,
    /// Packets that matched no partner.
    pub unassigned: BTreeMap<&'static str, u64>,
    /// Per worker: rx, tx, dropped, handoff_out, handoff_in, handoff_full, idle.
    pub worker_counters: Vec<BTreeMap<&'static str, u64>>,
    /// XDP verdicts on the LAN and WAN ports.
    pub xdp: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
}

/// A running appliance; [`Appliance::stop`] (or dropping it) stops the workers and
/// detaches XDP.
pub struct Appliance {
    /// The control thread's copy; in agent mode it follows every command.
    pub(super) config: Arc<PipelineConfig>,
    pub(super) shared: Arc<Shared>,
    pool: Option<WorkerPool>,
    /// One program instance attached to both ports; sockets live in per-port slots.
    /// `None` with TUN ports.
    pub(super) steering: Option<Steering>,
    _resolver: Resolver,
    /// Agent mode's view of the installed partners.
    pub(super) control: super::control::ControlState,
    /// The thread writing compression history to disk (with `history_dir`).
    history_writer: Option<WriterThread>,
}

impl std::fmt::Debug for Appliance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appliance")
            .field("workers", &self.config.workers)
            .finish_non_exhaustive()
    }
}

fn queues(interface: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{interface}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

fn interface_addresses(interface: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let (mut v4, mut v6) = (None, None);
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs.filter(|a| a.interface_name == interface) {
            let Some(addr) = a.address else { continue };
            if let Some(s) = addr.as_sockaddr_in() {
                v4.get_or_insert(s.ip());
            } else if let Some(s) = addr.as_sockaddr_in6() {
                let ip = s.ip();
                // Prefer a global/ULA address to a link-local one.
                if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    v6.get_or_insert(ip);
                }
            }
        }
    }
    (v4, v6)
}

/// Our address toward `remote`, as the kernel's routing picks it.
pub(super) fn local_address(remote: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if remote.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(any)?;
    sock.connect(remote)?;
    // Any datagram makes the kernel resolve the WAN next hop now rather than on the
    // first tunnelled packet; port 9 is "discard".
    let _ = sock.send_to(b"shunt-nexthop-probe", SocketAddr::new(remote.ip(), 9));
    Ok(sock.local_addr()?.ip())
}

impl Appliance {
    /// Starts the appliance in the calling thread's network namespace.
    pub fn start(manual: &ManualConfig, options: &ApplianceOptions) -> Result<Self, PipelineError> {
        Self::start_with(manual, options, 0, 0)
    }

    /// Starts the appliance in agent mode: ports and tunnel up, no partner yet.
    /// Partners, keys and rules come through [`Appliance::install_session`] and the
    /// other control calls (the agent API).
    pub fn start_agent(
        settings: &AgentSettings,
        options: &ApplianceOptions,
    ) -> Result<Self, PipelineError> {
        let manual = ManualConfig {
            lan_interface: settings.lan_interface.clone(),
            wan_interface: settings.wan_interface.clone(),
            io: PortIo::AfXdp,
            tunnel_port: settings.tunnel_port,
            lanes: AGENT_LANES,
            rekey_interval: Duration::from_secs(600),
            receive_grace: Duration::from_secs(30),
            partners: Vec::new(),
            history: None,
        };
        // Room for an encrypted partner behind an IPv4 WAN address; IPv6 partners
        // lower the MSS when they are installed.
        let reserved = 20
            + super::UDP_LEN
            + crate::tunnel::OVERHEAD
            + super::bundle::FRAMING_LEN
            + crate::codec::MAX_FRAME_OVERHEAD;
        let mut appliance =
            Self::start_with(&manual, options, settings.max_partners.max(1), reserved)?;
        appliance.control = super::control::ControlState::new(true, settings.history_dir.clone());
        Ok(appliance)
    }

    fn start_with(
        manual: &ManualConfig,
        options: &ApplianceOptions,
        vacant_slots: usize,
        reserved_overhead: usize,
    ) -> Result<Self, PipelineError> {
        if manual.io == PortIo::AfXdp {
            // Before any AF_XDP socket: without privileges, say which ones are missing.
            crate::xdp::check_capabilities()?;
        }
        let (hops, resolver) =
            Resolver::start(Duration::from_secs(5)).map_err(PipelineError::Kernel)?;
        let view = hops.view();
        let snap = view.snapshot();
        let link = |name: &str| {
            snap.link_by_name(name)
                .cloned()
                .ok_or_else(|| PipelineError::NoInterface(name.to_owned()))
        };
        let lan_link = link(&manual.lan_interface)?;
        let wan_link = link(&manual.wan_interface)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();

        let mut partners = Vec::new();
        for p in &manual.partners {
            if let Some(d) = &p.zstd_dictionary {
                tracing::info!(
                    partner = %p.name,
                    dictionary_id = %format_args!("{:016x}", d.id()),
                    bytes = d.bytes().len(),
                    "zstd dictionary loaded; the partner must show the same id"
                );
            }
            let local =
                local_address(p.address).map_err(|source| PipelineError::NoRouteToPartner {
                    partner: p.name.clone(),
                    address: p.address,
                    source,
                })?;
            partners.push(PartnerPlan {
                name: p.name.clone(),
                mode: p.mode,
                remote: p.address,
                local,
                prefixes: p.prefixes.iter().map(|x| (x.addr, x.len)).collect(),
                params: session_params(manual, p, now),
                keying: ManualKeying::new(manual, p),
                // `--no-compression` (a reference run) turns it off for every partner.
                compress: p.compression && options.compression,
                history_bytes: p.history_mib.map(|m| m << 20),
                zstd_dictionary: p.zstd_dictionary.clone(),
            });
        }
        partners.extend((0..vacant_slots).map(|_| PartnerPlan::vacant()));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match manual.io {
            PortIo::AfXdp => queues(&manual.lan_interface)
                .min(queues(&manual.wan_interface))
                .min(cpus)
                .min(usize::from(manual.lanes))
                .min(options.max_workers.unwrap_or(usize::MAX))
                .max(1),
            // One TUN queue and one socket.
            PortIo::Tun => 1,
        };
        let (mut router_v4, mut router_v6) = interface_addresses(&manual.lan_interface);
        if manual.io == PortIo::Tun {
            // A TUN device often has no address of its own; ICMP errors toward LAN hosts
            // then come from the WAN port's.
            let (wan_v4, wan_v6) = interface_addresses(&manual.wan_interface);
            router_v4 = router_v4.or(wan_v4);
            router_v6 = router_v6.or(wan_v6);
        }
        let codec = CodecConfig {
            history_bytes: options.history_bytes,
            ..CodecConfig::default()
        };
        codec.validate()?;
        let config = Arc::new(PipelineConfig {
            io: manual.io,
            partners,
            tunnel_port: manual.tunnel_port,
            workers,
            lan_ifindex: lan_link.index,
            wan_ifindex: wan_link.index,
            wan_mtu: wan_link.mtu as usize,
            router_v4,
            router_v6,
            codec,
            reserved_overhead,
            compression: options.compression,
        });
        let shared = Shared::new(workers, config.partners.len());
        let mut histories = Histories::open(manual, &config)?;

        let (steering, specs) = match manual.io {
            PortIo::AfXdp => {
                let (steering, specs) =
                    start_af_xdp(manual, options, &config, &shared, &hops, &mut histories)?;
                (Some(steering), specs)
            }
            PortIo::Tun => {
                let specs =
                    super::tun::start(manual, &config, &shared, &hops, snap, &mut histories)?;
                (None, specs)
            }
        };
        let history_writer = histories.start_writer()?;
        let mss = config.mss();
        let pool = WorkerPool::start(PoolConfig::default(), specs)?;
        tracing::info!(
            workers,
            mss,
            inner_mtu = config.inner_mtu(),
            partners = config.partners.len(),
            "appliance running"
        );
        Ok(Self {
            config,
            shared,
            pool: Some(pool),
            steering,
            _resolver: resolver,
            control: super::control::ControlState::new(vacant_slots > 0, None),
            history_writer,
        })
    }

    /// The settings the workers run with.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Current counters.
    pub fn stats(&self) -> ApplianceStats {
        let n = self.config.partners.len();
        let partners = self
            .config
            .partners
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_vacant())
            .map(|(i, p)| PartnerStats {
                name: p.name.clone(),
                mode: p.mode,
                counters: counters::to_map(&self.shared.sum(i)),
            })
            .collect();
        let worker_counters = self
            .pool
            .iter()
            .flat_map(|pool| pool.counters())
            .map(|c| {
                let s = c.snapshot();
                BTreeMap::from([
                    ("rx", s.rx),
                    ("tx", s.tx),
                    ("dropped", s.dropped),
                    ("handoff_out", s.handoff_out),
                    ("handoff_in", s.handoff_in),
                    ("handoff_full", s.handoff_full),
                    ("io_errors", s.io_errors),
                    ("idle", s.idle),
                ])
            })
            .collect();
        let mut xdp = BTreeMap::new();
        for (name, role) in [("lan", Role::Lan), ("wan", Role::Wan)] {
            let Some(steering) = &self.steering else {
                break;
            };
            if let Ok(v) = steering.verdicts(role) {
                xdp.insert(
                    name,
                    BTreeMap::from([
                        ("passed", v.passed),
                        ("redirected", v.redirected),
                        ("dropped", v.dropped),
                        ("malformed", v.malformed),
                        ("clamped", v.clamped),
                        ("fail_open", v.fail_open),
                    ]),
                );
            }
        }
        ApplianceStats {
            at_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            workers: self.config.workers,
            mss: self.config.mss(),
            partners,
            unassigned: counters::to_map(&self.shared.sum(n)),
            worker_counters,
            xdp,
        }
    }

    /// Stops the workers, detaches XDP and returns the final counters.
    pub fn stop(mut self) -> Result<ApplianceStats, PipelineError> {
        let pool = self.pool.take();
        let result = pool.map(WorkerPool::stop).transpose();
        self.finish_history();
        let stats = self.stats();
        if let Some(steering) = &mut self.steering {
            steering.detach_all();
        }
        result?;
        Ok(stats)
    }
}

impl Appliance {
    /// Waits for the history writer once the workers are gone: they flushed their last
    /// blocks when they stopped, and the writer ends once it has written them.
    fn finish_history(&mut self) {
        self.control.finish_stores();
        if let Some(writer) = self.history_writer.take() {
            match writer.join() {
                Ok(Ok(files)) => tracing::info!(files = files.len(), "history written"),
                Ok(Err(e)) => tracing::warn!(error = %e, "history writer failed"),
                Err(_) => tracing::warn!("history writer panicked"),
            }
        }
    }
}

impl Drop for Appliance {
    /// Dropped without [`Appliance::stop`]: the workers stop first, then the history
    /// writer finishes, so a clean exit still persists everything.
    fn drop(&mut self) {
        drop(self.pool.take());
        self.finish_history();
    }
}

/// XDP on both ports, one AF_XDP socket per queue and port in the XSK map, one worker
/// per queue.
fn start_af_xdp(
    manual: &ManualConfig,
    options: &ApplianceOptions,
    config: &Arc<PipelineConfig>,
    shared: &Arc<Shared>,
    hops: &Arc<NextHops>,
    histories: &mut Histories,
) -> Result<(Steering, Vec<WorkerSpec>), PipelineError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = config.workers;
    // AF_XDP sockets first, then XDP, then the sockets go into the XSK maps.
    let open = |interface: &str, queue: usize| {
        let mut c = XskConfig::new(interface, queue as u32);
        c.mode = options.bind;
        AfXdpPort::open(&c)
    };
    let mut sockets = Vec::new();
    for q in 0..workers {
        sockets.push((
            open(&manual.lan_interface, q)?,
            open(&manual.wan_interface, q)?,
        ));
    }
    let mut steering = Steering::load()?;
    let mss = config.mss();
    steering.set_mss(mss)?;
    steering.set_tunnel_port(manual.tunnel_port)?;
    for (i, p) in config.partners.iter().enumerate() {
        if p.mode == Mode::PassThrough {
            continue;
        }
        let id = i as u32;
        for &(addr, len) in &p.prefixes {
            let rule = Rule {
                partner: id,
                action: RuleAction::Accelerate,
                must_protect: p.mode == Mode::Encrypted,
            };
            steering.add_rule(Prefix::new(addr, len)?, rule)?;
        }
        steering.set_partner_ready(id, true)?;
        steering.add_wan_partner(p.remote.ip(), id)?;
    }
    steering.attach(Role::Lan, &manual.lan_interface, options.xdp_mode)?;
    steering.attach(Role::Wan, &manual.wan_interface, options.xdp_mode)?;
    let mut specs = Vec::new();
    for (q, (lan, wan)) in sockets.into_iter().enumerate() {
        steering.register_socket(&manual.lan_interface, q as u32, lan.fd())?;
        steering.register_socket(&manual.wan_interface, q as u32, wan.fd())?;
        let mut process = Pipeline::new(q, config.clone(), shared.clone(), hops.view())?;
        process.attach_history(histories.take_worker(q));
        specs.push(WorkerSpec {
            ports: Ports {
                lan: Box::new(lan),
                wan: Box::new(wan),
            },
            core: Some(q % cpus),
            process: Box::new(process),
        });
    }
    Ok((steering, specs))
}
