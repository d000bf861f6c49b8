//! Starting a whole appliance from a manual-keying configuration: XDP on the LAN and
//! WAN ports, one AF_XDP socket per queue and port, one [`Pipeline`] worker per queue.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shunt_common::RuleAction;

use super::counters;
use super::{PartnerPlan, Pipeline, PipelineConfig, Shared};
use crate::codec::{CodecConfig, CodecError};
use crate::forward::Resolver;
use crate::io::IoError;
use crate::io::afxdp::{AfXdpPort, BindMode, XskConfig};
use crate::tunnel::config::ManualConfig;
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
    #[error("cannot open the AF_XDP socket: {0}")]
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
}

impl Default for ApplianceOptions {
    fn default() -> Self {
        Self {
            xdp_mode: ModeRequest::Auto,
            bind: BindMode::Auto,
            history_bytes: CodecConfig::default().history_bytes,
            max_workers: None,
        }
    }
}

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
    config: Arc<PipelineConfig>,
    shared: Arc<Shared>,
    pool: Option<WorkerPool>,
    /// One program instance attached to both ports; sockets live in per-port slots.
    steering: Steering,
    _resolver: Resolver,
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
fn local_address(remote: SocketAddr) -> std::io::Result<IpAddr> {
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
                compress: p.compression,
            });
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = queues(&manual.lan_interface)
            .min(queues(&manual.wan_interface))
            .min(cpus)
            .min(usize::from(manual.lanes))
            .min(options.max_workers.unwrap_or(usize::MAX))
            .max(1);
        let (router_v4, router_v6) = interface_addresses(&manual.lan_interface);
        let codec = CodecConfig {
            history_bytes: options.history_bytes,
            ..CodecConfig::default()
        };
        codec.validate()?;
        let config = Arc::new(PipelineConfig {
            partners,
            tunnel_port: manual.tunnel_port,
            workers,
            lan_ifindex: lan_link.index,
            wan_ifindex: wan_link.index,
            wan_mtu: wan_link.mtu as usize,
            router_v4,
            router_v6,
            codec,
        });
        let shared = Shared::new(workers, config.partners.len());

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
            let process = Pipeline::new(q, config.clone(), shared.clone(), hops.view())?;
            specs.push(WorkerSpec {
                ports: Ports {
                    lan: Box::new(lan),
                    wan: Box::new(wan),
                },
                core: Some(q % cpus),
                process: Box::new(process),
            });
        }
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
            if let Ok(v) = self.steering.verdicts(role) {
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
        let stats = self.stats();
        self.steering.detach_all();
        result?;
        Ok(stats)
    }
}
