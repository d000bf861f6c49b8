//! Bounds-checked header parsing: Ethernet, 802.1Q/802.1ad, IPv4, IPv6 with its
//! extension headers, TCP and UDP.
//!
//! Every read goes through [`Frame::at`], which checks the access against
//! `data_end` so that the verifier accepts it and no read leaves the frame.

use aya_ebpf::programs::XdpContext;

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up ("not understood", so passed).
const IPV6_MAX_EXT: usize = 6;
/// No header that matters to us starts further into the frame than this.
const MAX_L4_OFFSET: usize = 512;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// The frame of the packet being processed.
#[derive(Clone, Copy)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Length of the frame in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Pointer to `N` bytes at `offset`, or `None` when they are not all in the frame.
    ///
    /// Reads are at least two bytes wide: LLVM turns a one-byte check `p + 1 > end`
    /// into `p >= end`, from which the verifier learns no readable range.
    #[inline(always)]
    pub fn at<const N: usize>(&self, offset: usize) -> Option<*mut [u8; N]> {
        let ptr = self.start + offset;
        if ptr + N > self.end {
            return None;
        }
        Some(ptr as *mut [u8; N])
    }

    #[inline(always)]
    pub fn be16_at(&self, offset: usize) -> Option<u16> {
        // SAFETY: `at` checked that both bytes lie inside the frame.
        self.at::<2>(offset)
            .map(|p| u16::from_be_bytes(unsafe { *p }))
    }
}

/// Why a frame could not be parsed.
pub enum Unparsed {
    /// Not something we steer (ARP, other EtherTypes, too many IPv6 extension
    /// headers, an L2 multicast destination): passed untouched.
    NotUnderstood,
    /// Headers claim more than the frame holds or contradict themselves.
    Malformed,
}

/// Network-layer addresses of a parsed packet.
#[derive(Clone, Copy)]
pub enum Addrs {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// The transport header, when the packet carries one we read.
#[derive(Clone, Copy)]
pub enum Transport {
    /// TCP header at `offset`, `len` bytes long (options included), with its flags.
    Tcp {
        offset: usize,
        len: usize,
        flags: u8,
    },
    /// UDP header at `offset`; the payload starts 8 bytes later.
    Udp { offset: usize, dst_port: u16 },
    /// Another protocol, or a non-first fragment: no transport header to read.
    Other,
    /// A TCP or UDP header that is cut short or contradicts itself. The network
    /// header is sound, so the addresses can still decide about must-protect rules.
    Malformed,
}

/// A parsed packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub addrs: Addrs,
    /// Transport protocol number (IPv4 protocol, or IPv6's last next-header).
    pub proto: u8,
    pub transport: Transport,
}

/// Parses the frame down to the transport header.
#[inline(always)]
pub fn parse(frame: &Frame) -> Result<Packet, Unparsed> {
    let eth = frame.at::<ETH_HLEN>(0).ok_or(Unparsed::Malformed)?;
    // SAFETY: checked by `at`.
    let eth = unsafe { &*eth };
    if eth[0] & 1 != 0 {
        // Broadcast and multicast frames (ARP requests, ND, ...) are never steered.
        return Err(Unparsed::NotUnderstood);
    }
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut offset = ETH_HLEN;
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner).
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = frame.be16_at(offset + 2).ok_or(Unparsed::Malformed)?;
        offset += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(frame, offset),
        ETH_P_IPV6 => parse_ipv6(frame, offset),
        _ => Err(Unparsed::NotUnderstood),
    }
}

#[inline(always)]
fn parse_ipv4(frame: &Frame, l3: usize) -> Result<Packet, Unparsed> {
    let hdr = frame.at::<20>(l3).ok_or(Unparsed::Malformed)?;
    // SAFETY: checked by `at`.
    let hdr = unsafe { &*hdr };
    if hdr[0] >> 4 != 4 {
        return Err(Unparsed::Malformed);
    }
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    if ihl < 20 || total < ihl || l3 + total > frame.len() {
        return Err(Unparsed::Malformed);
    }
    // Options (if any) must be in the frame too.
    if l3 + ihl > frame.len() {
        return Err(Unparsed::Malformed);
    }
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    let proto = hdr[9];
    let addrs = Addrs::V4 {
        src: [hdr[12], hdr[13], hdr[14], hdr[15]],
        dst: [hdr[16], hdr[17], hdr[18], hdr[19]],
    };
    let transport = if frag & 0x1fff != 0 {
        Transport::Other
    } else {
        parse_transport(frame, l3 + ihl, proto)
    };
    Ok(Packet {
        addrs,
        proto,
        transport,
    })
}

#[inline(always)]
fn parse_ipv6(frame: &Frame, l3: usize) -> Result<Packet, Unparsed> {
    let hdr = frame.at::<40>(l3).ok_or(Unparsed::Malformed)?;
    // SAFETY: checked by `at`.
    let hdr = unsafe { &*hdr };
    if hdr[0] >> 4 != 6 {
        return Err(Unparsed::Malformed);
    }
    let payload = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
    // A zero payload length means a jumbogram; anything else must fit the frame.
    if payload != 0 && l3 + 40 + payload > frame.len() {
        return Err(Unparsed::Malformed);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&hdr[8..24]);
    dst.copy_from_slice(&hdr[24..40]);
    let addrs = Addrs::V6 { src, dst };

    let mut next = hdr[6];
    let mut offset = l3 + 40;
    let mut first_fragment = true;
    let mut done = false;
    for _ in 0..IPV6_MAX_EXT {
        let len = match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext = frame.at::<2>(offset).ok_or(Unparsed::Malformed)?;
                // SAFETY: checked by `at`.
                let ext = unsafe { *ext };
                next = ext[0];
                (ext[1] as usize + 1) * 8
            }
            IPV6_FRAGMENT => {
                let ext = frame.at::<4>(offset).ok_or(Unparsed::Malformed)?;
                // SAFETY: checked by `at`.
                let ext = unsafe { *ext };
                next = ext[0];
                if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                    first_fragment = false;
                }
                8
            }
            IPV6_AH => {
                let ext = frame.at::<2>(offset).ok_or(Unparsed::Malformed)?;
                // SAFETY: checked by `at`.
                let ext = unsafe { *ext };
                next = ext[0];
                (ext[1] as usize + 2) * 4
            }
            _ => {
                done = true;
                0
            }
        };
        if done {
            break;
        }
        offset += len;
        if offset > frame.len() {
            // The chain runs past the frame.
            return Err(Unparsed::Malformed);
        }
        if offset > MAX_L4_OFFSET {
            return Err(Unparsed::NotUnderstood);
        }
    }
    if !done {
        // Longer chain than we walk: leave it to the kernel.
        return Err(Unparsed::NotUnderstood);
    }
    let transport = if first_fragment {
        parse_transport(frame, offset, next)
    } else {
        Transport::Other
    };
    Ok(Packet {
        addrs,
        proto: next,
        transport,
    })
}

#[inline(always)]
fn parse_transport(frame: &Frame, offset: usize, proto: u8) -> Transport {
    if offset > MAX_L4_OFFSET {
        return Transport::Other;
    }
    match proto {
        IPPROTO_TCP => {
            let Some(hdr) = frame.at::<20>(offset) else {
                return Transport::Malformed;
            };
            // SAFETY: checked by `at`.
            let hdr = unsafe { &*hdr };
            let len = ((hdr[12] >> 4) as usize) * 4;
            if len < 20 || offset + len > frame.len() {
                return Transport::Malformed;
            }
            Transport::Tcp {
                offset,
                len,
                flags: hdr[13],
            }
        }
        IPPROTO_UDP => {
            let Some(hdr) = frame.at::<8>(offset) else {
                return Transport::Malformed;
            };
            // SAFETY: checked by `at`.
            let hdr = unsafe { &*hdr };
            let len = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
            if len < 8 || offset + len > frame.len() {
                return Transport::Malformed;
            }
            Transport::Udp {
                offset,
                dst_port: u16::from_be_bytes([hdr[2], hdr[3]]),
            }
        }
        _ => Transport::Other,
    }
}

/// Whether the destination can be a steered unicast destination.
#[inline(always)]
pub fn unicast_destination(addrs: &Addrs) -> bool {
    match addrs {
        // Multicast (224/4) and limited broadcast.
        Addrs::V4 { dst, .. } => dst[0] & 0xf0 != 0xe0 && *dst != [255; 4],
        // Multicast (ff00::/8) and link-local (fe80::/10).
        Addrs::V6 { dst, .. } => dst[0] != 0xff && !(dst[0] == 0xfe && dst[1] & 0xc0 == 0x80),
    }
}
