//! Loader and typed map API of the XDP steering program.
//!
//! [`Steering::load`] loads the object embedded in the binary ([`crate::XDP_OBJECT`]),
//! [`Steering::attach`] puts its LAN or WAN entry point on a named interface (driver
//! mode first, generic mode when asked or when the driver refuses), and the other
//! methods read and write the program's maps with the types of `shunt_common`.
//! Dropping the `Steering` detaches every program it attached.
#![forbid(unsafe_code)]

mod error;
mod prefix;

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use aya::Ebpf;
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{Xdp, XdpMode};
use shunt_common::{
    Config, MAX_PARTNERS, MAX_PORTS, MAX_QUEUES, PartnerAddr, PartnerCounters, PartnerState, Port,
    RuleAction, RuleValue, VerdictCounters, map, program,
};
use tracing::{debug, info, warn};

pub use error::XdpError;
pub use prefix::Prefix;

/// Which side of the appliance an interface is on; selects the entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A LAN port: steering by acceleration rules.
    Lan,
    /// A WAN port: tunnel packets from partners.
    Wan,
}

impl Role {
    fn program(self) -> &'static str {
        match self {
            Self::Lan => program::LAN,
            Self::Wan => program::WAN,
        }
    }

    fn port(self) -> Port {
        match self {
            Self::Lan => Port::Lan,
            Self::Wan => Port::Wan,
        }
    }
}

/// The attach mode an operator asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ModeRequest {
    /// Driver (native) mode; generic mode only if the driver refuses.
    #[default]
    Auto,
    /// Driver mode or fail.
    Driver,
    /// Generic (SKB) mode, slower, works on every interface.
    Generic,
}

/// The mode a program was attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachedMode {
    /// Driver (native) XDP.
    Driver,
    /// Generic (SKB) XDP.
    Generic,
}

impl AttachedMode {
    /// The name used in logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Generic => "generic",
        }
    }
}

/// One program attached to one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The interface name.
    pub interface: String,
    /// LAN or WAN entry point.
    pub role: Role,
    /// The mode the kernel accepted.
    pub mode: AttachedMode,
}

/// What an acceleration rule selects traffic for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Partner index, `< MAX_PARTNERS`.
    pub partner: u32,
    /// What to do with the selected traffic.
    pub action: RuleAction,
    /// Drop instead of passing when the traffic cannot be steered.
    pub must_protect: bool,
}

/// The loaded steering program, its maps and its attachments.
pub struct Steering {
    ebpf: Ebpf,
    rules_v4: LpmTrie<MapData, [u8; 4], RuleValue>,
    rules_v6: LpmTrie<MapData, [u8; 16], RuleValue>,
    partners: Array<MapData, PartnerState>,
    wan_partners: HashMap<MapData, PartnerAddr, u32>,
    config: Array<MapData, Config>,
    xsks: XskMap<MapData>,
    port_slots: HashMap<MapData, u32, u32>,
    verdicts: PerCpuArray<MapData, VerdictCounters>,
    partner_counters: PerCpuArray<MapData, PartnerCounters>,
    links: Vec<(Attachment, XdpLinkId)>,
    /// Slot of each attached port in the socket map: (interface, ifindex, slot).
    slots: Vec<(String, u32, u32)>,
}

impl Steering {
    /// Checks privileges, loads the embedded object and both entry points into the
    /// kernel (the verifier runs here). Nothing is attached yet.
    pub fn load() -> Result<Self, XdpError> {
        check_capabilities()?;
        let mut ebpf = Ebpf::load(crate::XDP_OBJECT).map_err(XdpError::from_load)?;
        for name in [program::LAN, program::WAN] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(XdpError::Program {
                    program: name,
                    source: Box::new(aya::programs::ProgramError::NotLoaded),
                })?
                .try_into()
                .map_err(|source| XdpError::Program {
                    program: name,
                    source: Box::new(source),
                })?;
            prog.load()
                .map_err(|source| XdpError::from_program(name, source))?;
        }
        let steering = Self {
            rules_v4: take(&mut ebpf, map::RULES_V4, LpmTrie::try_from)?,
            rules_v6: take(&mut ebpf, map::RULES_V6, LpmTrie::try_from)?,
            partners: take(&mut ebpf, map::PARTNERS, Array::try_from)?,
            wan_partners: take(&mut ebpf, map::WAN_PARTNERS, HashMap::try_from)?,
            config: take(&mut ebpf, map::CONFIG, Array::try_from)?,
            xsks: take(&mut ebpf, map::XSKS, XskMap::try_from)?,
            port_slots: take(&mut ebpf, map::PORT_SLOTS, HashMap::try_from)?,
            verdicts: take(&mut ebpf, map::VERDICTS, PerCpuArray::try_from)?,
            partner_counters: take(&mut ebpf, map::PARTNER_COUNTERS, PerCpuArray::try_from)?,
            ebpf,
            links: Vec::new(),
            slots: Vec::new(),
        };
        debug!("XDP steering program loaded");
        Ok(steering)
    }

    /// Attaches the entry point for `role` to `interface` and reports the mode used.
    pub fn attach(
        &mut self,
        role: Role,
        interface: &str,
        mode: ModeRequest,
    ) -> Result<AttachedMode, XdpError> {
        let Ok(ifindex) = nix::net::if_::if_nametoindex(interface) else {
            return Err(XdpError::NoSuchInterface {
                interface: interface.to_owned(),
            });
        };
        let name = role.program();
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .expect("loaded in Steering::load")
            .try_into()
            .expect("checked in Steering::load");
        let first = match mode {
            ModeRequest::Auto | ModeRequest::Driver => AttachedMode::Driver,
            ModeRequest::Generic => AttachedMode::Generic,
        };
        let attempt = |prog: &mut Xdp, mode: AttachedMode| {
            let flags = match mode {
                AttachedMode::Driver => XdpMode::Driver,
                AttachedMode::Generic => XdpMode::Skb,
            };
            prog.attach(interface, flags)
        };
        let (link, used) = match attempt(prog, first) {
            Ok(link) => (link, first),
            Err(error) if mode == ModeRequest::Auto && !is_busy(&error) => {
                warn!(%interface, %error, "driver mode refused; falling back to generic mode");
                let link = attempt(prog, AttachedMode::Generic)
                    .map_err(|e| attach_error(name, interface, AttachedMode::Generic, e))?;
                (link, AttachedMode::Generic)
            }
            Err(error) => return Err(attach_error(name, interface, first, error)),
        };
        info!(%interface, program = name, mode = used.as_str(), "XDP program attached");
        self.assign_slot(interface, ifindex)?;
        let attachment = Attachment {
            interface: interface.to_owned(),
            role,
            mode: used,
        };
        self.links.push((attachment, link));
        Ok(used)
    }

    /// The current attachments.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.links.iter().map(|(a, _)| a)
    }

    /// Detaches every attached program (also done on drop).
    pub fn detach_all(&mut self) {
        for (attachment, link) in self.links.drain(..) {
            let prog: Result<&mut Xdp, _> = self
                .ebpf
                .program_mut(attachment.role.program())
                .expect("loaded in Steering::load")
                .try_into();
            match prog.map(|p| p.detach(link)) {
                Ok(Ok(())) => info!(interface = %attachment.interface, "XDP program detached"),
                Ok(Err(error)) | Err(error) => {
                    warn!(interface = %attachment.interface, %error, "cannot detach XDP program")
                }
            }
        }
    }

    /// Adds or replaces the rule for `prefix`.
    pub fn add_rule(&mut self, prefix: Prefix, rule: Rule) -> Result<(), XdpError> {
        check_partner(rule.partner)?;
        if rule.action != RuleAction::Accelerate {
            return Err(XdpError::UnsupportedAction {
                action: "flow mode",
            });
        }
        let value = RuleValue::new(rule.partner, rule.action, rule.must_protect);
        let len = u32::from(prefix.bits());
        match prefix.addr() {
            IpAddr::V4(a) => self.rules_v4.insert(&Key::new(len, a.octets()), value, 0),
            IpAddr::V6(a) => self.rules_v6.insert(&Key::new(len, a.octets()), value, 0),
        }
        .map_err(map_error("insert a rule", rules_map(&prefix)))?;
        debug!(%prefix, partner = rule.partner, must_protect = rule.must_protect, "rule added");
        Ok(())
    }

    /// Removes the rule for exactly `prefix`.
    pub fn remove_rule(&mut self, prefix: Prefix) -> Result<(), XdpError> {
        let len = u32::from(prefix.bits());
        match prefix.addr() {
            IpAddr::V4(a) => self.rules_v4.remove(&Key::new(len, a.octets())),
            IpAddr::V6(a) => self.rules_v6.remove(&Key::new(len, a.octets())),
        }
        .map_err(map_error("remove a rule", rules_map(&prefix)))
    }

    /// Marks a partner ready (its traffic is steered) or not (it fails open or drops).
    pub fn set_partner_ready(&mut self, partner: u32, ready: bool) -> Result<(), XdpError> {
        check_partner(partner)?;
        self.partners
            .set(partner, PartnerState::new(ready), 0)
            .map_err(map_error("set partner state", map::PARTNERS))
    }

    /// Sets the MSS that SYNs of accelerated flows are clamped to (0 turns it off).
    pub fn set_mss(&mut self, mss: u16) -> Result<(), XdpError> {
        self.update_config(|c| c.mss = mss)
    }

    /// Sets the tunnel's UDP port on the WAN side (0 turns WAN steering off).
    pub fn set_tunnel_port(&mut self, port: u16) -> Result<(), XdpError> {
        self.update_config(|c| c.tunnel_port = port)
    }

    /// The current run-time settings.
    pub fn config(&self) -> Result<Config, XdpError> {
        self.config
            .get(&0, 0)
            .map_err(map_error("read the settings", map::CONFIG))
    }

    /// Accepts tunnel packets from `addr` as coming from `partner`.
    pub fn add_wan_partner(&mut self, addr: IpAddr, partner: u32) -> Result<(), XdpError> {
        check_partner(partner)?;
        self.wan_partners
            .insert(partner_addr(addr), partner, 0)
            .map_err(map_error("add a partner address", map::WAN_PARTNERS))
    }

    /// Stops accepting tunnel packets from `addr`.
    pub fn remove_wan_partner(&mut self, addr: IpAddr) -> Result<(), XdpError> {
        self.wan_partners
            .remove(&partner_addr(addr))
            .map_err(map_error("remove a partner address", map::WAN_PARTNERS))
    }

    /// Registers the AF_XDP socket bound to receive queue `queue` of the attached
    /// port `interface`.
    pub fn register_socket(
        &mut self,
        interface: &str,
        queue: u32,
        socket: impl AsRawFd,
    ) -> Result<(), XdpError> {
        let index = self.socket_index(interface, queue)?;
        self.xsks
            .set(index, socket, 0)
            .map_err(map_error("register an AF_XDP socket", map::XSKS))
    }

    /// Unregisters the AF_XDP socket of `queue` on `interface`; its packets then
    /// fail open (or are dropped under a must-protect rule).
    pub fn unregister_socket(&mut self, interface: &str, queue: u32) -> Result<(), XdpError> {
        let index = self.socket_index(interface, queue)?;
        self.xsks
            .unset(index)
            .map_err(map_error("unregister an AF_XDP socket", map::XSKS))
    }

    /// Verdict counters of all `role` ports, summed over CPUs.
    pub fn verdicts(&self, role: Role) -> Result<VerdictCounters, XdpError> {
        let per_cpu = self
            .verdicts
            .get(&(role.port() as u32), 0)
            .map_err(map_error("read counters", map::VERDICTS))?;
        let mut sum = VerdictCounters::default();
        per_cpu.iter().for_each(|c| sum.add(c));
        Ok(sum)
    }

    /// Counters of one partner, summed over CPUs.
    pub fn partner_counters(&self, partner: u32) -> Result<PartnerCounters, XdpError> {
        check_partner(partner)?;
        let per_cpu = self
            .partner_counters
            .get(&partner, 0)
            .map_err(map_error("read counters", map::PARTNER_COUNTERS))?;
        let mut sum = PartnerCounters::default();
        per_cpu.iter().for_each(|c| sum.add(c));
        Ok(sum)
    }

    /// Time spent in and runs of the `role` entry point since it was loaded. The
    /// kernel only counts while BPF run-time statistics are enabled
    /// (`kernel.bpf_stats_enabled=1`, or a `BPF_ENABLE_STATS` descriptor held open).
    pub fn program_stats(&self, role: Role) -> Result<(std::time::Duration, u64), XdpError> {
        let name = role.program();
        let info = self
            .ebpf
            .program(name)
            .expect("loaded in Steering::load")
            .info()
            .map_err(|source| XdpError::Program {
                program: name,
                source: Box::new(source),
            })?;
        Ok((info.run_time(), info.run_count()))
    }

    fn socket_index(&self, interface: &str, queue: u32) -> Result<u32, XdpError> {
        check_queue(queue)?;
        let (_, _, slot) = self
            .slots
            .iter()
            .find(|(name, _, _)| name == interface)
            .ok_or_else(|| XdpError::NotAttached {
                interface: interface.to_owned(),
            })?;
        Ok(slot * MAX_QUEUES + queue)
    }

    /// Gives a newly attached port a slot in the socket map (ports keep their slot
    /// until the `Steering` is dropped).
    fn assign_slot(&mut self, interface: &str, ifindex: u32) -> Result<(), XdpError> {
        if self.slots.iter().any(|(_, i, _)| *i == ifindex) {
            return Ok(());
        }
        let slot = self.slots.len() as u32;
        if slot >= MAX_PORTS {
            return Err(XdpError::OutOfRange {
                what: "attached port count",
                value: slot + 1,
                limit: MAX_PORTS + 1,
            });
        }
        self.port_slots
            .insert(ifindex, slot, 0)
            .map_err(map_error("assign a port slot", map::PORT_SLOTS))?;
        self.slots.push((interface.to_owned(), ifindex, slot));
        Ok(())
    }

    fn update_config(&mut self, change: impl FnOnce(&mut Config)) -> Result<(), XdpError> {
        let mut config = self.config()?;
        change(&mut config);
        self.config
            .set(0, config, 0)
            .map_err(map_error("write the settings", map::CONFIG))
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn take<M>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<M, MapError>,
) -> Result<M, XdpError> {
    let missing = MapError::InvalidName {
        name: name.to_owned(),
    };
    let map = ebpf.take_map(name).ok_or(XdpError::MapShape {
        map: name,
        source: Box::new(missing),
    })?;
    convert(map).map_err(|source| XdpError::MapShape {
        map: name,
        source: Box::new(source),
    })
}

fn map_error(operation: &'static str, map: &'static str) -> impl FnOnce(MapError) -> XdpError {
    move |source| XdpError::Map {
        operation,
        map,
        source: Box::new(source),
    }
}

fn rules_map(prefix: &Prefix) -> &'static str {
    if prefix.addr().is_ipv4() {
        map::RULES_V4
    } else {
        map::RULES_V6
    }
}

fn partner_addr(addr: IpAddr) -> PartnerAddr {
    match addr {
        IpAddr::V4(a) => PartnerAddr::from_v4(a.octets()),
        IpAddr::V6(a) => PartnerAddr::from_v6(a.octets()),
    }
}

fn check_partner(partner: u32) -> Result<(), XdpError> {
    if partner >= MAX_PARTNERS {
        return Err(XdpError::OutOfRange {
            what: "partner index",
            value: partner,
            limit: MAX_PARTNERS,
        });
    }
    Ok(())
}

fn check_queue(queue: u32) -> Result<(), XdpError> {
    if queue >= MAX_QUEUES {
        return Err(XdpError::OutOfRange {
            what: "receive queue",
            value: queue,
            limit: MAX_QUEUES,
        });
    }
    Ok(())
}

fn is_busy(error: &aya::programs::ProgramError) -> bool {
    error::os_error(error) == Some(libc::EBUSY) || error::os_error(error) == Some(libc::EEXIST)
}

fn attach_error(
    program: &'static str,
    interface: &str,
    mode: AttachedMode,
    source: aya::programs::ProgramError,
) -> XdpError {
    if is_busy(&source) {
        return XdpError::Busy {
            interface: interface.to_owned(),
        };
    }
    if matches!(error::os_error(&source), Some(libc::EPERM)) {
        return XdpError::Refused {
            operation: "attaching an XDP program",
        };
    }
    XdpError::Attach {
        program,
        interface: interface.to_owned(),
        mode: mode.as_str(),
        source: Box::new(source),
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Fails with [`XdpError::NotPermitted`] unless the effective capability set holds
/// CAP_NET_ADMIN and CAP_BPF (or CAP_SYS_ADMIN, which implies it). [`Steering::load`]
/// calls it; callers that open AF_XDP sockets before loading call it first, so a
/// missing privilege is reported as such rather than as a socket error.
pub fn check_capabilities() -> Result<(), XdpError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| XdpError::BpfUnavailable {
            reason: format!("cannot read /proc/self/status: {e}"),
        })?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(XdpError::NotPermitted {
            missing: missing.join(", "),
        })
    }
}
