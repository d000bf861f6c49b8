//! ICMP and ICMPv6 errors a gateway sends towards a packet's source: "fragmentation
//! needed" / "packet too big" when a packet cannot fit the WAN after encapsulation, and
//! "time exceeded" when its TTL runs out. Written into a caller's buffer as a bare IP
//! packet (the caller adds the Ethernet header), never allocated.
#![deny(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{checksum, packet};

/// Which error to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpError {
    /// IPv4 type 3 code 4 / ICMPv6 type 2, with the MTU the sender must use.
    PacketTooBig {
        /// Largest packet that fits.
        mtu: u32,
    },
    /// IPv4 type 11 code 0 / ICMPv6 type 3 code 0.
    TimeExceeded,
}

/// Largest IPv4 error (RFC 1812 §4.3.2.3) and IPv6 error (RFC 4443 §2.4) packet.
const MAX_V4: usize = 576;
const MAX_V6: usize = 1280;

/// Writes the ICMP error about `original` (a packet starting at its IP header) into
/// `out`, from `router` (the appliance's address on the sender's side) to the original
/// source. Returns the length written, or `None` when no error may be sent: the original
/// is itself an ICMP error, a non-first fragment, from an unspecified, multicast or
/// broadcast source, of the other family than `router`, or `out` is too small.
pub fn write_error(
    original: &[u8],
    kind: IcmpError,
    router: IpAddr,
    out: &mut [u8],
) -> Option<usize> {
    let (src, _) = packet::addresses(original)?;
    match (src, router) {
        (IpAddr::V4(to), IpAddr::V4(from)) => v4(original, kind, from, to, out),
        (IpAddr::V6(to), IpAddr::V6(from)) => v6(original, kind, &from, &to, out),
        _ => None,
    }
}

fn v4(
    original: &[u8],
    kind: IcmpError,
    from: Ipv4Addr,
    to: Ipv4Addr,
    out: &mut [u8],
) -> Option<usize> {
    if to.is_unspecified() || to.is_multicast() || to.is_broadcast() {
        return None;
    }
    let ihl = usize::from(original[0] & 0x0f) * 4;
    let frag_offset = u16::from_be_bytes([original[6], original[7]]) & 0x1fff;
    if frag_offset != 0 {
        return None;
    }
    // An ICMP error about an ICMP error would loop; queries (echo) are fine.
    if original[9] == 1 && matches!(original.get(ihl), Some(3 | 4 | 5 | 11 | 12)) {
        return None;
    }
    let stated = packet::total_len(original)?.min(original.len());
    let quote = stated.min(MAX_V4 - 28);
    let len = 28 + quote;
    let out = out.get_mut(..len)?;

    let (icmp_type, code, rest) = match kind {
        IcmpError::PacketTooBig { mtu } => (3, 4, mtu.min(0xffff)),
        IcmpError::TimeExceeded => (11, 0, 0),
    };
    out[..20].copy_from_slice(&[
        0x45, 0xc0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&to.octets());
    let c = checksum::checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());

    let icmp = &mut out[20..];
    icmp[..8].copy_from_slice(&[icmp_type, code, 0, 0, 0, 0, 0, 0]);
    icmp[6..8].copy_from_slice(&(rest as u16).to_be_bytes());
    icmp[8..].copy_from_slice(&original[..quote]);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

fn v6(
    original: &[u8],
    kind: IcmpError,
    from: &Ipv6Addr,
    to: &Ipv6Addr,
    out: &mut [u8],
) -> Option<usize> {
    if to.is_unspecified() || to.is_multicast() {
        return None;
    }
    // Next header 58 with a type below 128 is an ICMPv6 error. (Extension headers before
    // it are not walked: such a packet gets its error, as RFC 4443 allows either way.)
    if original[6] == 58 && original.get(40).is_some_and(|&t| t < 128) {
        return None;
    }
    let stated = packet::total_len(original)?.min(original.len());
    let quote = stated.min(MAX_V6 - 48);
    let len = 48 + quote;
    let out = out.get_mut(..len)?;

    let (icmp_type, rest) = match kind {
        IcmpError::PacketTooBig { mtu } => (2, mtu),
        IcmpError::TimeExceeded => (3, 0),
    };
    out[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, 58, 64]);
    out[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    out[8..24].copy_from_slice(&from.octets());
    out[24..40].copy_from_slice(&to.octets());

    let icmp = &mut out[40..];
    icmp[..4].copy_from_slice(&[icmp_type, 0, 0, 0]);
    icmp[4..8].copy_from_slice(&rest.to_be_bytes());
    icmp[8..].copy_from_slice(&original[..quote]);
    let c = checksum::icmp_v6(from, to, icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_v4(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[..20].copy_from_slice(&[
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 63, 6, 0, 0, 192, 168, 1, 10, 10, 9, 0, 1,
        ]);
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let c = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn frag_needed_v4_is_well_formed() {
        let orig = tcp_v4(1500);
        let mut out = [0u8; 1024];
        let router = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1));
        let n = write_error(
            &orig,
            IcmpError::PacketTooBig { mtu: 1400 },
            router,
            &mut out,
        )
        .unwrap();
        assert_eq!(n, 576);
        let p = &out[..n];
        assert_eq!(checksum::checksum(&p[..20]), 0, "IP header checksum");
        assert_eq!(checksum::checksum(&p[20..]), 0, "ICMP checksum");
        assert_eq!(&p[16..20], &[192, 168, 1, 10], "sent back to the source");
        assert_eq!((p[20], p[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([p[26], p[27]]), 1400);
        assert_eq!(&p[28..48], &orig[..20], "quotes the original header");
    }

    #[test]
    fn no_error_about_an_error_or_a_fragment() {
        let router = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1));
        let mut out = [0u8; 1024];
        let mut icmp_err = tcp_v4(100);
        icmp_err[9] = 1;
        icmp_err[20] = 3;
        assert!(write_error(&icmp_err, IcmpError::TimeExceeded, router, &mut out).is_none());
        icmp_err[20] = 8; // echo request: an error about it is fine
        assert!(write_error(&icmp_err, IcmpError::TimeExceeded, router, &mut out).is_some());
        let mut frag = tcp_v4(100);
        frag[7] = 10;
        assert!(write_error(&frag, IcmpError::TimeExceeded, router, &mut out).is_none());
    }

    #[test]
    fn packet_too_big_v6_verifies() {
        let from: Ipv6Addr = "fd00:a::1".parse().unwrap();
        let src: Ipv6Addr = "fd00:a::10".parse().unwrap();
        let mut orig = vec![0u8; 1500];
        orig[0] = 0x60;
        orig[4..6].copy_from_slice(&1460u16.to_be_bytes());
        orig[6] = 6;
        orig[7] = 64;
        orig[8..24].copy_from_slice(&src.octets());
        let mut out = [0u8; 2048];
        let n = write_error(
            &orig,
            IcmpError::PacketTooBig { mtu: 1420 },
            from.into(),
            &mut out,
        )
        .unwrap();
        assert_eq!(n, 1280);
        let p = &out[..n];
        assert_eq!(&p[24..40], &src.octets());
        assert_eq!(p[40], 2);
        assert_eq!(u32::from_be_bytes([p[44], p[45], p[46], p[47]]), 1420);
        let sum = checksum::sum(
            checksum::pseudo_v6(&from, &src, 58, (n - 40) as u32),
            &p[40..],
        );
        assert_eq!(checksum::finish(sum), 0);
    }

    #[test]
    fn family_mismatch_and_small_buffer_refused() {
        let orig = tcp_v4(100);
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert!(write_error(&orig, IcmpError::TimeExceeded, v6, &mut [0; 1024]).is_none());
        let router = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1));
        assert!(write_error(&orig, IcmpError::TimeExceeded, router, &mut [0; 64]).is_none());
    }
}
