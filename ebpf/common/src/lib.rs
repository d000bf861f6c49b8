//! Types shared by the XDP program (`ebpf/xdp`) and userspace (`dataplane`).
//!
//! Every type here is `#[repr(C)]` and plain old data so that its layout is defined
//! once for both sides of the kernel boundary. Map names are constants too, so the
//! loader and the program cannot disagree about them.
#![no_std]
#![deny(unsafe_code)]

/// Names of the maps in the XDP object.
pub mod map {
    /// LPM trie: IPv4 destination prefix → [`RuleValue`](crate::RuleValue).
    pub const RULES_V4: &str = "SHUNT_RULES_V4";
    /// LPM trie: IPv6 destination prefix → [`RuleValue`](crate::RuleValue).
    pub const RULES_V6: &str = "SHUNT_RULES_V6";
    /// Array: partner index → [`PartnerState`](crate::PartnerState).
    pub const PARTNERS: &str = "SHUNT_PARTNERS";
    /// Hash: [`PartnerAddr`](crate::PartnerAddr) of a partner's WAN address → partner index.
    pub const WAN_PARTNERS: &str = "SHUNT_WAN_PARTNERS";
    /// Array with one [`Config`](crate::Config).
    pub const CONFIG: &str = "SHUNT_CONFIG";
    /// XSKMAP: `port slot * MAX_QUEUES + receive queue` → AF_XDP socket.
    pub const XSKS: &str = "SHUNT_XSKS";
    /// Hash: ifindex of an attached port → its slot (`< MAX_PORTS`) in [`XSKS`].
    pub const PORT_SLOTS: &str = "SHUNT_PORT_SLOTS";
    /// Per-CPU array: [`Port`](crate::Port) → [`VerdictCounters`](crate::VerdictCounters).
    pub const VERDICTS: &str = "SHUNT_VERDICTS";
    /// Per-CPU array: partner index → [`PartnerCounters`](crate::PartnerCounters).
    pub const PARTNER_COUNTERS: &str = "SHUNT_PARTNER_COUNTERS";
}

/// Names of the program entry points in the XDP object.
pub mod program {
    /// Entry point for the appliance's LAN ports.
    pub const LAN: &str = "shunt_lan";
    /// Entry point for the appliance's WAN ports.
    pub const WAN: &str = "shunt_wan";
    /// Reference entry point that only returns XDP_PASS (for measurements).
    pub const PASS: &str = "shunt_pass";
}

/// Capacity of the IPv4 and IPv6 rule tries (each).
pub const MAX_RULES: u32 = 4096;
/// Number of partner slots; partner indexes are `0..MAX_PARTNERS`.
pub const MAX_PARTNERS: u32 = 256;
/// Capacity of the WAN partner address table.
pub const MAX_WAN_ADDRS: u32 = 1024;
/// Number of receive queues per port an AF_XDP socket can be registered for.
pub const MAX_QUEUES: u32 = 64;
/// Number of ports (LAN and WAN together) one loaded program can serve.
pub const MAX_PORTS: u32 = 16;

/// What a rule asks for the traffic it selects. Stored as a `u8` in [`RuleValue`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// Steer to the fast path (compress/encrypt per the partner's mode).
    Accelerate = 1,
    /// Terminate TCP locally and carry the byte stream (split connection).
    ///
    /// Reserved: the program passes traffic of a rule it does not implement yet, and
    /// the loader refuses to install such a rule.
    Flow = 2,
}

impl RuleAction {
    /// Decodes the byte stored in a [`RuleValue`].
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Accelerate),
            2 => Some(Self::Flow),
            _ => None,
        }
    }
}

/// [`RuleValue::flags`]: the traffic must never leave unprotected; when the partner is
/// not ready or no AF_XDP socket serves the queue, the packet is dropped, not passed.
pub const RULE_MUST_PROTECT: u8 = 1;

/// Value of an acceleration rule (both rule tries).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleValue {
    /// Partner index, `< MAX_PARTNERS`.
    pub partner: u32,
    /// A [`RuleAction`] as `u8`.
    pub action: u8,
    /// Bit set of `RULE_*` flags.
    pub flags: u8,
    /// Zero.
    pub _pad: [u8; 2],
}

impl RuleValue {
    /// A rule value for `partner` with `action`, protected or not.
    pub const fn new(partner: u32, action: RuleAction, must_protect: bool) -> Self {
        Self {
            partner,
            action: action as u8,
            flags: if must_protect { RULE_MUST_PROTECT } else { 0 },
            _pad: [0; 2],
        }
    }

    /// Whether the rule forbids failing open.
    pub const fn must_protect(&self) -> bool {
        self.flags & RULE_MUST_PROTECT != 0
    }
}

/// [`PartnerState::flags`]: the partner's session is up and its traffic can be steered.
pub const PARTNER_READY: u32 = 1;

/// What the data plane tells the program about a partner.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PartnerState {
    /// Bit set of `PARTNER_*` flags.
    pub flags: u32,
}

impl PartnerState {
    /// A state with [`PARTNER_READY`] set or not.
    pub const fn new(ready: bool) -> Self {
        Self {
            flags: if ready { PARTNER_READY } else { 0 },
        }
    }

    /// Whether the partner can take steered traffic.
    pub const fn is_ready(&self) -> bool {
        self.flags & PARTNER_READY != 0
    }
}

/// A partner's WAN address; IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PartnerAddr {
    /// Address bytes in network order.
    pub addr: [u8; 16],
}

impl PartnerAddr {
    /// The IPv4-mapped form of an IPv4 address given as its four bytes.
    pub const fn from_v4(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = octets[0];
        addr[13] = octets[1];
        addr[14] = octets[2];
        addr[15] = octets[3];
        Self { addr }
    }

    /// An IPv6 address given as its sixteen bytes.
    pub const fn from_v6(octets: [u8; 16]) -> Self {
        Self { addr: octets }
    }
}

/// Run-time settings of the program (the single entry of [`map::CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// MSS that SYNs of accelerated flows are clamped to; 0 turns clamping off.
    pub mss: u16,
    /// UDP port of the tunnel (host order); 0 disables WAN steering.
    pub tunnel_port: u16,
    /// Zero; room for future switches.
    pub _reserved: u32,
}

/// The port a program instance runs on; index of [`map::VERDICTS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// A LAN port (`shunt_lan`).
    Lan = 0,
    /// A WAN port (`shunt_wan`).
    Wan = 1,
}

/// Number of [`Port`] values.
pub const PORTS: u32 = 2;

/// Per-verdict packet counts of one port.
///
/// Every packet is counted in exactly one of `passed`, `redirected`, `dropped` and
/// `malformed`; `clamped` and `fail_open` count events on packets also counted there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictCounters {
    /// Left to the kernel (XDP_PASS), malformed ones excepted.
    pub passed: u64,
    /// Handed to an AF_XDP socket (XDP_REDIRECT succeeded).
    pub redirected: u64,
    /// Dropped because a must-protect rule could not be honoured.
    pub dropped: u64,
    /// Headers that claim more than the frame holds or contradict themselves.
    pub malformed: u64,
    /// TCP SYN/SYN-ACK whose MSS option was lowered.
    pub clamped: u64,
    /// Selected packets passed because the partner was not ready or no socket served
    /// the queue (a subset of `passed`).
    pub fail_open: u64,
}

impl VerdictCounters {
    /// Adds `other` field by field (used to sum per-CPU values).
    pub fn add(&mut self, other: &Self) {
        self.passed = self.passed.wrapping_add(other.passed);
        self.redirected = self.redirected.wrapping_add(other.redirected);
        self.dropped = self.dropped.wrapping_add(other.dropped);
        self.malformed = self.malformed.wrapping_add(other.malformed);
        self.clamped = self.clamped.wrapping_add(other.clamped);
        self.fail_open = self.fail_open.wrapping_add(other.fail_open);
    }
}

/// Per-partner packet counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PartnerCounters {
    /// LAN packets steered to the fast path for this partner.
    pub lan_redirected: u64,
    /// Bytes (whole frames) of `lan_redirected`.
    pub lan_redirected_bytes: u64,
    /// LAN packets for this partner passed because it could not take them.
    pub lan_fail_open: u64,
    /// LAN packets for this partner dropped by a must-protect rule.
    pub lan_dropped: u64,
    /// Tunnel packets from this partner steered to the fast path.
    pub wan_redirected: u64,
    /// Bytes (whole frames) of `wan_redirected`.
    pub wan_redirected_bytes: u64,
}

impl PartnerCounters {
    /// Adds `other` field by field (used to sum per-CPU values).
    pub fn add(&mut self, other: &Self) {
        self.lan_redirected = self.lan_redirected.wrapping_add(other.lan_redirected);
        self.lan_redirected_bytes = self
            .lan_redirected_bytes
            .wrapping_add(other.lan_redirected_bytes);
        self.lan_fail_open = self.lan_fail_open.wrapping_add(other.lan_fail_open);
        self.lan_dropped = self.lan_dropped.wrapping_add(other.lan_dropped);
        self.wan_redirected = self.wan_redirected.wrapping_add(other.wan_redirected);
        self.wan_redirected_bytes = self
            .wan_redirected_bytes
            .wrapping_add(other.wan_redirected_bytes);
    }
}

/// A tunnel packet's first byte has both top bits clear; QUIC sets one of them.
pub const fn is_tunnel_first_byte(byte: u8) -> bool {
    byte & 0xc0 == 0
}

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code)]
    use super::*;

    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte arrays,
    // with explicit padding fields, so every bit pattern is valid and none is uninit.
    unsafe impl aya::Pod for RuleValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PartnerState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PartnerAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VerdictCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PartnerCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(core::mem::size_of::<RuleValue>(), 8);
        assert_eq!(core::mem::size_of::<PartnerState>(), 4);
        assert_eq!(core::mem::size_of::<PartnerAddr>(), 16);
        assert_eq!(core::mem::size_of::<Config>(), 8);
        assert_eq!(core::mem::size_of::<VerdictCounters>(), 48);
        assert_eq!(core::mem::size_of::<PartnerCounters>(), 48);
    }

    #[test]
    fn rule_flags_and_actions_round_trip() {
        let rule = RuleValue::new(7, RuleAction::Accelerate, true);
        assert!(rule.must_protect());
        assert_eq!(
            RuleAction::from_u8(rule.action),
            Some(RuleAction::Accelerate)
        );
        assert!(!RuleValue::new(7, RuleAction::Accelerate, false).must_protect());
        assert_eq!(RuleAction::from_u8(0), None);
        assert_eq!(RuleAction::from_u8(2), Some(RuleAction::Flow));
    }

    #[test]
    fn tunnel_marker_excludes_quic() {
        assert!(is_tunnel_first_byte(0x00));
        assert!(is_tunnel_first_byte(0x3f));
        assert!(!is_tunnel_first_byte(0x40));
        assert!(!is_tunnel_first_byte(0x80));
        assert!(!is_tunnel_first_byte(0xc3));
    }

    #[test]
    fn v4_addresses_are_mapped() {
        let a = PartnerAddr::from_v4([192, 0, 2, 1]);
        assert_eq!(&a.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&a.addr[12..], &[192, 0, 2, 1]);
    }
}
