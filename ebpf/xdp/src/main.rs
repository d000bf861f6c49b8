//! Shunt's XDP steering program: one object with an entry point for LAN ports
//! (`shunt_lan`) and one for WAN ports (`shunt_wan`).
//!
//! LAN: packets whose destination matches an acceleration rule go to the AF_XDP
//! socket of their receive queue when the rule's partner is ready; otherwise they
//! pass (fail open), or are dropped when the rule is must-protect. WAN: tunnel
//! packets (UDP to the tunnel port, from a known partner, first byte with the top
//! two bits clear) go to AF_XDP; QUIC and everything else pass. Both sides clamp
//! the MSS of SYNs of accelerated flows. Every packet is counted in exactly one
//! verdict counter.
#![no_std]
#![no_main]

mod parse;
mod rewrite;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, XskMap, lpm_trie::Key},
    programs::XdpContext,
};
use shunt_common::{
    Config, MAX_PARTNERS, MAX_PORTS, MAX_QUEUES, MAX_RULES, MAX_WAN_ADDRS, PORTS, PartnerAddr,
    PartnerCounters, PartnerState, Port, RuleAction, RuleValue, VerdictCounters,
    is_tunnel_first_byte,
};

use crate::parse::{
    Addrs, Frame, IPPROTO_ICMP, IPPROTO_ICMPV6, Packet, TCP_FIN, TCP_RST, TCP_SYN, Transport,
    Unparsed,
};

#[map(name = "SHUNT_RULES_V4")]
static RULES_V4: LpmTrie<[u8; 4], RuleValue> = LpmTrie::with_max_entries(MAX_RULES, 0);

#[map(name = "SHUNT_RULES_V6")]
static RULES_V6: LpmTrie<[u8; 16], RuleValue> = LpmTrie::with_max_entries(MAX_RULES, 0);

#[map(name = "SHUNT_PARTNERS")]
static PARTNERS: Array<PartnerState> = Array::with_max_entries(MAX_PARTNERS, 0);

#[map(name = "SHUNT_WAN_PARTNERS")]
static WAN_PARTNERS: HashMap<PartnerAddr, u32> = HashMap::with_max_entries(MAX_WAN_ADDRS, 0);

#[map(name = "SHUNT_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "SHUNT_XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_PORTS * MAX_QUEUES, 0);

#[map(name = "SHUNT_PORT_SLOTS")]
static PORT_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PORTS, 0);

#[map(name = "SHUNT_VERDICTS")]
static VERDICTS: PerCpuArray<VerdictCounters> = PerCpuArray::with_max_entries(PORTS, 0);

#[map(name = "SHUNT_PARTNER_COUNTERS")]
static PARTNER_COUNTERS: PerCpuArray<PartnerCounters> =
    PerCpuArray::with_max_entries(MAX_PARTNERS, 0);

/// What happens to a packet; each is one verdict counter.
#[derive(Clone, Copy)]
enum Verdict {
    Pass,
    /// Selected, but the partner or the socket was not there.
    FailOpen {
        partner: u32,
    },
    Redirect {
        partner: u32,
    },
    Drop {
        partner: u32,
    },
    Malformed,
    /// Malformed, toward a must-protect destination: counted malformed, dropped.
    MalformedDrop,
}

#[xdp]
pub fn shunt_lan(ctx: XdpContext) -> u32 {
    let frame = Frame::new(&ctx);
    let config = config();
    let (verdict, clamped) = match parse::parse(&frame) {
        Ok(packet) => lan(&ctx, &packet, &config),
        Err(Unparsed::NotUnderstood) => (Verdict::Pass, false),
        Err(Unparsed::Malformed) => (Verdict::Malformed, false),
    };
    account(Port::Lan, verdict, clamped, frame.len())
}

#[xdp]
pub fn shunt_wan(ctx: XdpContext) -> u32 {
    let frame = Frame::new(&ctx);
    let config = config();
    let (verdict, clamped) = match parse::parse(&frame) {
        Ok(packet) => wan(&ctx, &frame, &packet, &config),
        Err(Unparsed::NotUnderstood) => (Verdict::Pass, false),
        Err(Unparsed::Malformed) => (Verdict::Malformed, false),
    };
    account(Port::Wan, verdict, clamped, frame.len())
}

/// Reference entry point: returns XDP_PASS and touches nothing. Never attached by
/// the appliance; the verdict-rate measurement (`shunt-xdp-rate`) compares the real
/// entry points against it on the same veth.
#[xdp]
pub fn shunt_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// LAN side: steer by destination rule.
#[inline(always)]
fn lan(ctx: &XdpContext, packet: &Packet, config: &Config) -> (Verdict, bool) {
    if let Transport::Malformed = packet.transport {
        // Broken transport headers must not leak toward a must-protect prefix.
        let protected = lookup_rule(&packet.addrs, Direction::Destination).is_some_and(|r| {
            r.must_protect() && RuleAction::from_u8(r.action) == Some(RuleAction::Accelerate)
        });
        let verdict = if protected {
            Verdict::MalformedDrop
        } else {
            Verdict::Malformed
        };
        return (verdict, false);
    }
    // ICMP (ping, PMTU errors, ND) always stays with the kernel.
    if packet.proto == IPPROTO_ICMP || packet.proto == IPPROTO_ICMPV6 {
        return (Verdict::Pass, false);
    }
    if !parse::unicast_destination(&packet.addrs) {
        return (Verdict::Pass, false);
    }
    let Some(rule) = lookup_rule(&packet.addrs, Direction::Destination) else {
        return (Verdict::Pass, false);
    };
    // Rules whose action this program does not implement select nothing yet.
    if RuleAction::from_u8(rule.action) != Some(RuleAction::Accelerate) {
        return (Verdict::Pass, false);
    }
    let clamped = clamp(ctx, packet, config);
    let partner = rule.partner;
    if partner_ready(partner) && redirect_to_socket(ctx) {
        return (Verdict::Redirect { partner }, clamped);
    }
    if rule.must_protect() {
        (Verdict::Drop { partner }, clamped)
    } else {
        (Verdict::FailOpen { partner }, clamped)
    }
}

/// WAN side: tunnel packets from known partners go to AF_XDP; SYNs from selected
/// prefixes arriving in the clear (a partner failing open) are clamped.
#[inline(always)]
fn wan(ctx: &XdpContext, frame: &Frame, packet: &Packet, config: &Config) -> (Verdict, bool) {
    match packet.transport {
        Transport::Malformed => (Verdict::Malformed, false),
        Transport::Udp { offset, dst_port }
            if config.tunnel_port != 0 && dst_port == config.tunnel_port =>
        {
            let Some(partner) = wan_partner(&packet.addrs) else {
                return (Verdict::Pass, false);
            };
            // Tunnel packets carry at least a two-byte header.
            let Some(first) = frame.at::<2>(offset + 8) else {
                return (Verdict::Pass, false);
            };
            // SAFETY: `at` checked the bytes against the frame.
            let first = unsafe { (*first)[0] };
            if !is_tunnel_first_byte(first) {
                // QUIC signaling shares the port.
                return (Verdict::Pass, false);
            }
            if redirect_to_socket(ctx) {
                (Verdict::Redirect { partner }, false)
            } else {
                (Verdict::FailOpen { partner }, false)
            }
        }
        Transport::Tcp { .. } => {
            let selected = lookup_rule(&packet.addrs, Direction::Source)
                .is_some_and(|r| RuleAction::from_u8(r.action) == Some(RuleAction::Accelerate));
            let clamped = selected && clamp(ctx, packet, config);
            (Verdict::Pass, clamped)
        }
        _ => (Verdict::Pass, false),
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Source,
    Destination,
}

#[inline(always)]
fn lookup_rule(addrs: &Addrs, direction: Direction) -> Option<RuleValue> {
    match (addrs, direction) {
        (Addrs::V4 { dst: a, .. }, Direction::Destination)
        | (Addrs::V4 { src: a, .. }, Direction::Source) => RULES_V4.get(Key::new(32, *a)).copied(),
        (Addrs::V6 { dst: a, .. }, Direction::Destination)
        | (Addrs::V6 { src: a, .. }, Direction::Source) => RULES_V6.get(Key::new(128, *a)).copied(),
    }
}

#[inline(always)]
fn wan_partner(addrs: &Addrs) -> Option<u32> {
    let key = match addrs {
        Addrs::V4 { src, .. } => PartnerAddr::from_v4(*src),
        Addrs::V6 { src, .. } => PartnerAddr::from_v6(*src),
    };
    // SAFETY: the value is copied out at once; userspace updates replace whole
    // entries, and a u32 cannot be observed torn.
    unsafe { WAN_PARTNERS.get(key) }.copied()
}

/// Redirects into the AF_XDP socket registered for this port's receive queue;
/// false when there is none (the packet is then still ours to pass or drop).
#[inline(always)]
fn redirect_to_socket(ctx: &XdpContext) -> bool {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the value is copied out at once; userspace replaces whole entries.
    let Some(slot) = (unsafe { PORT_SLOTS.get(ifindex) }).copied() else {
        return false;
    };
    let queue = ctx.rx_queue_index();
    if slot >= MAX_PORTS || queue >= MAX_QUEUES {
        return false;
    }
    XSKS.redirect(slot * MAX_QUEUES + queue, 0).is_ok()
}

#[inline(always)]
fn partner_ready(partner: u32) -> bool {
    PARTNERS.get(partner).is_some_and(PartnerState::is_ready)
}

#[inline(always)]
fn config() -> Config {
    CONFIG.get(0).copied().unwrap_or_default()
}

/// Clamps the MSS of a SYN or SYN-ACK (ACK may be set; FIN/RST may not) when an MSS
/// is configured.
#[inline(always)]
fn clamp(ctx: &XdpContext, packet: &Packet, config: &Config) -> bool {
    let Transport::Tcp { offset, len, flags } = packet.transport else {
        return false;
    };
    let syn = flags & (TCP_SYN | TCP_FIN | TCP_RST) == TCP_SYN;
    syn && config.mss != 0 && rewrite::clamp_mss(ctx, offset, len, config.mss)
}

/// Counts the verdict (and the clamp) and turns it into an XDP action.
#[inline(always)]
fn account(port: Port, verdict: Verdict, clamped: bool, bytes: usize) -> u32 {
    if let Some(c) = VERDICTS.get_ptr_mut(port as u32) {
        // SAFETY: per-CPU slot of this CPU; XDP programs do not preempt each other
        // on one CPU, so nothing else writes it meanwhile.
        let c = unsafe { &mut *c };
        match verdict {
            Verdict::Pass => c.passed += 1,
            Verdict::FailOpen { .. } => {
                c.passed += 1;
                c.fail_open += 1;
            }
            Verdict::Redirect { .. } => c.redirected += 1,
            Verdict::Drop { .. } => c.dropped += 1,
            Verdict::Malformed | Verdict::MalformedDrop => c.malformed += 1,
        }
        if clamped {
            c.clamped += 1;
        }
    }
    let partner = match verdict {
        Verdict::FailOpen { partner }
        | Verdict::Redirect { partner }
        | Verdict::Drop { partner } => Some(partner),
        Verdict::Pass | Verdict::Malformed | Verdict::MalformedDrop => None,
    };
    if let Some(p) = partner.and_then(|p| PARTNER_COUNTERS.get_ptr_mut(p)) {
        // SAFETY: as above, this CPU's slot.
        let p = unsafe { &mut *p };
        match (verdict, port) {
            (Verdict::Redirect { .. }, Port::Lan) => {
                p.lan_redirected += 1;
                p.lan_redirected_bytes += bytes as u64;
            }
            (Verdict::Redirect { .. }, Port::Wan) => {
                p.wan_redirected += 1;
                p.wan_redirected_bytes += bytes as u64;
            }
            (Verdict::FailOpen { .. }, Port::Lan) => p.lan_fail_open += 1,
            (Verdict::Drop { .. }, _) => p.lan_dropped += 1,
            _ => {}
        }
    }
    match verdict {
        Verdict::Redirect { .. } => xdp_action::XDP_REDIRECT,
        Verdict::Drop { .. } | Verdict::MalformedDrop => xdp_action::XDP_DROP,
        Verdict::Pass | Verdict::FailOpen { .. } | Verdict::Malformed => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
