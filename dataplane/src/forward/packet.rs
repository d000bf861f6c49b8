//! Reading and editing the IP header of a packet being forwarded: addresses, length,
//! TTL / hop-limit decrement (with the IPv4 checksum updated incrementally) and the check
//! against the WAN MTU after encapsulation.
#![deny(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum;

/// Ethernet header length without a VLAN tag.
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;

/// Offset of the IP header in an Ethernet frame (skipping one 802.1Q tag), or `None` when
/// the frame carries neither IPv4 nor IPv6.
pub fn ip_offset(frame: &[u8]) -> Option<usize> {
    let ethertype = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    match ethertype(12)? {
        ETH_P_IP | ETH_P_IPV6 => Some(ETH_HLEN),
        ETH_P_8021Q => matches!(ethertype(16)?, ETH_P_IP | ETH_P_IPV6).then_some(ETH_HLEN + 4),
        _ => None,
    }
}

/// Rewrites the Ethernet addresses of a frame.
pub fn set_macs(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
}

/// The IP version of a packet starting at its IP header (4 or 6), if well-formed enough.
pub fn version(ip: &[u8]) -> Option<u8> {
    let v = ip.first()? >> 4;
    match v {
        4 if ip.len() >= 20 && usize::from(ip[0] & 0x0f) * 4 >= 20 => Some(4),
        6 if ip.len() >= 40 => Some(6),
        _ => None,
    }
}

/// Source and destination addresses.
pub fn addresses(ip: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match version(ip)? {
        4 => {
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[12..16]).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[16..20]).ok()?);
            Some((src.into(), dst.into()))
        }
        _ => {
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
            Some((src.into(), dst.into()))
        }
    }
}

/// Length of the IP packet as its header states it.
pub fn total_len(ip: &[u8]) -> Option<usize> {
    match version(ip)? {
        4 => Some(usize::from(u16::from_be_bytes([ip[2], ip[3]]))),
        _ => Some(40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]))),
    }
}

/// Outcome of [`decrement_ttl`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// The TTL/hop limit was decremented; forward the packet.
    Forward,
    /// The TTL/hop limit reached zero; the packet must not be forwarded.
    Expired,
    /// Not an IP packet this code understands.
    Malformed,
}

/// Decrements the IPv4 TTL (updating the header checksum incrementally) or the IPv6 hop
/// limit of a packet starting at its IP header.
pub fn decrement_ttl(ip: &mut [u8]) -> Hop {
    match version(ip) {
        Some(4) => {
            if ip[8] <= 1 {
                return Hop::Expired;
            }
            let old = u16::from_be_bytes([ip[8], ip[9]]);
            ip[8] -= 1;
            let new = u16::from_be_bytes([ip[8], ip[9]]);
            let check = checksum::update16(u16::from_be_bytes([ip[10], ip[11]]), old, new);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            Hop::Forward
        }
        Some(6) => {
            if ip[7] <= 1 {
                return Hop::Expired;
            }
            ip[7] -= 1;
            Hop::Forward
        }
        _ => Hop::Malformed,
    }
}

/// Outcome of [`check_mtu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtuCheck {
    /// The packet fits once encapsulated.
    Fits,
    /// It does not fit and may not be fragmented (IPv4 with DF, or IPv6): answer with
    /// "fragmentation needed" / "packet too big" carrying `mtu`.
    TooBig {
        /// The largest inner packet that fits, as the sender should use it.
        mtu: u32,
    },
    /// It does not fit, but IPv4 without DF allows fragmenting it.
    TooBigFragmentable,
}

/// Whether a packet of `ip.len()`-stated length plus `overhead` bytes of encapsulation
/// fits a WAN link of `wan_mtu` (an L3 MTU, Ethernet header excluded).
pub fn check_mtu(ip: &[u8], overhead: usize, wan_mtu: usize) -> MtuCheck {
    let Some(len) = total_len(ip) else {
        return MtuCheck::Fits;
    };
    if len + overhead <= wan_mtu {
        return MtuCheck::Fits;
    }
    let room = wan_mtu.saturating_sub(overhead) as u32;
    match version(ip) {
        Some(4) if ip[6] & 0x40 == 0 => MtuCheck::TooBigFragmentable,
        Some(4) => MtuCheck::TooBig { mtu: room.max(68) },
        // IPv6 hosts never go below 1280; the tunnel must carry that much (RFC 8200 §5).
        _ => MtuCheck::TooBig {
            mtu: room.max(1280),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(ttl: u8, len: u16, df: bool) -> Vec<u8> {
        let mut h = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, ttl, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        h[2..4].copy_from_slice(&len.to_be_bytes());
        if df {
            h[6] = 0x40;
        }
        let c = checksum::checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.resize(usize::from(len), 0);
        h
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut p = ipv4(64, 20, true);
        assert_eq!(decrement_ttl(&mut p), Hop::Forward);
        assert_eq!(p[8], 63);
        assert_eq!(checksum::checksum(&p[..20]), 0);
        let mut p = ipv4(1, 20, true);
        assert_eq!(decrement_ttl(&mut p), Hop::Expired);
        assert_eq!(decrement_ttl(&mut [0x12, 0, 0]), Hop::Malformed);
    }

    #[test]
    fn hop_limit_decrements() {
        let mut p = vec![0x60; 40];
        p[7] = 2;
        assert_eq!(decrement_ttl(&mut p), Hop::Forward);
        assert_eq!(p[7], 1);
        assert_eq!(decrement_ttl(&mut p), Hop::Expired);
    }

    #[test]
    fn mtu_check_respects_df_and_overhead() {
        let p = ipv4(64, 1500, true);
        assert_eq!(check_mtu(&p, 0, 1500), MtuCheck::Fits);
        assert_eq!(check_mtu(&p, 60, 1500), MtuCheck::TooBig { mtu: 1440 });
        let p = ipv4(64, 1500, false);
        assert_eq!(check_mtu(&p, 60, 1500), MtuCheck::TooBigFragmentable);
        let mut v6 = vec![0u8; 1500];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&1460u16.to_be_bytes());
        assert_eq!(check_mtu(&v6, 80, 1500), MtuCheck::TooBig { mtu: 1420 });
        assert_eq!(check_mtu(&v6, 400, 1500), MtuCheck::TooBig { mtu: 1280 });
    }

    #[test]
    fn ethernet_offsets() {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        assert_eq!(ip_offset(&f), Some(14));
        f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        f[16..18].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        assert_eq!(ip_offset(&f), Some(18));
        f[16..18].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(ip_offset(&f), None);
    }
}
