//! Internet checksums (RFC 1071) for IPv4 headers, UDP/TCP/ICMP over IPv4 and IPv6
//! pseudo-headers, and the incremental update of RFC 1624.
#![deny(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

/// One's-complement sum of `data` as 16-bit big-endian words (odd tail padded with zero),
/// added to `sum`, not yet folded.
pub fn sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([pair[0], pair[1]])));
        // Fold early so a long buffer cannot overflow the accumulator.
        if sum & 0x8000_0000 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

/// Folds a sum to 16 bits and complements it: the value to store in a header.
pub fn finish(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of `data` alone (IPv4 header, ICMPv4 message).
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// Sum of the IPv4 pseudo-header for a transport segment of `len` bytes.
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    let s = sum(0, &src.octets());
    let s = sum(s, &dst.octets());
    s + u32::from(proto) + u32::from(len)
}

/// Sum of the IPv6 pseudo-header for an upper-layer packet of `len` bytes.
pub fn pseudo_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, len: u32) -> u32 {
    let s = sum(0, &src.octets());
    let s = sum(s, &dst.octets());
    s + (len >> 16) + (len & 0xffff) + u32::from(next_header)
}

/// Checksum of a UDP datagram (header with a zero checksum field, plus payload) over
/// IPv4. A computed zero is sent as 0xffff (RFC 768).
pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, datagram: &[u8]) -> u16 {
    nonzero(finish(sum(
        pseudo_v4(src, dst, 17, datagram.len() as u16),
        datagram,
    )))
}

/// Checksum of a UDP datagram over IPv6 (mandatory there; zero sent as 0xffff).
pub fn udp_v6(src: &Ipv6Addr, dst: &Ipv6Addr, datagram: &[u8]) -> u16 {
    nonzero(finish(sum(
        pseudo_v6(src, dst, 17, datagram.len() as u32),
        datagram,
    )))
}

/// Checksum of an ICMPv6 message.
pub fn icmp_v6(src: &Ipv6Addr, dst: &Ipv6Addr, message: &[u8]) -> u16 {
    finish(sum(pseudo_v6(src, dst, 58, message.len() as u32), message))
}

/// Updates `check` for a 16-bit header word changing from `old` to `new` (RFC 1624 eq. 3).
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!check) + u32::from(!old) + u32::from(new);
    finish(s)
}

fn nonzero(c: u16) -> u16 {
    if c == 0 { 0xffff } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 header from a real capture (Wikipedia's worked example): checksum 0xb861.
    const IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn ipv4_header_checksum_matches_known_packet() {
        let mut h = IPV4_HEADER;
        assert_eq!(checksum(&h), 0, "a correct header sums to zero");
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn incremental_update_equals_recompute() {
        let mut h = IPV4_HEADER;
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1; // TTL 64 -> 63
        let new = u16::from_be_bytes([h[8], h[9]]);
        let updated = update16(0xb861, old, new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(updated, checksum(&h));
    }

    #[test]
    fn udp_v4_matches_known_datagram() {
        // 10.0.0.1:1234 -> 10.0.0.2:5678 "hi"; 0x686e computed independently with a
        // plain Python RFC 1071 sum over pseudo-header + datagram.
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let dgram = [0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0a, 0x00, 0x00, b'h', b'i'];
        let c = udp_v4(src, dst, &dgram);
        assert_eq!(c, 0x686e);
        let mut full = dgram;
        full[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(finish(sum(pseudo_v4(src, dst, 17, 10), &full)), 0);
    }

    #[test]
    fn udp_v6_verifies_to_zero() {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut dgram = [
            0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0b, 0x00, 0x00, b'a', b'b', b'c',
        ];
        let c = udp_v6(&src, &dst, &dgram);
        dgram[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(finish(sum(pseudo_v6(&src, &dst, 17, 11), &dgram)), 0);
        assert_ne!(c, 0);
    }
}
