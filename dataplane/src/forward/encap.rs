//! Outer Ethernet + IPv4/IPv6 + UDP headers written in place, in front of a payload that
//! already sits in the frame (the headers go into the frame's headroom).
#![deny(unsafe_code)]

use std::net::IpAddr;

use super::checksum;
use super::packet::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6};

/// The outer headers of a packet towards a partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterHeaders {
    /// Ethernet source (the WAN port's address).
    pub src_mac: [u8; 6],
    /// Ethernet destination (the WAN next hop's address).
    pub dst_mac: [u8; 6],
    /// Outer IP source (this appliance).
    pub src: IpAddr,
    /// Outer IP destination (the partner).
    pub dst: IpAddr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port (the tunnel port).
    pub dst_port: u16,
    /// Outer TTL / hop limit.
    pub ttl: u8,
}

/// Why headers could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// Source and destination are of different families.
    #[error("outer source and destination are of different IP families")]
    MixedFamilies,
    /// The buffer is shorter than the headers or the payload exceeds what UDP can carry.
    #[error("buffer of {0} bytes cannot hold the outer headers and a UDP payload")]
    BadLength(usize),
}

impl OuterHeaders {
    /// Bytes of outer headers (Ethernet + IP + UDP).
    pub fn len(&self) -> usize {
        ETH_HLEN + self.ip_len() + 8
    }

    /// Never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes the outer IP and UDP headers add to a payload (what counts against an MTU).
    pub fn ip_overhead(&self) -> usize {
        self.ip_len() + 8
    }

    fn ip_len(&self) -> usize {
        if self.dst.is_ipv4() { 20 } else { 40 }
    }

    /// Writes the headers into the first [`OuterHeaders::len`] bytes of `packet`; the rest
    /// of `packet` is the UDP payload. `ip_id` is the IPv4 identification (ignored for
    /// IPv6). The IPv4 header checksum and the UDP checksum are computed.
    pub fn write(&self, packet: &mut [u8], ip_id: u16) -> Result<(), EncapError> {
        let hdr = self.len();
        let udp_len = packet
            .len()
            .checked_sub(hdr)
            .ok_or(EncapError::BadLength(packet.len()))?
            + 8;
        if udp_len > usize::from(u16::MAX) - self.ip_len() {
            return Err(EncapError::BadLength(packet.len()));
        }
        let (eth, rest) = packet.split_at_mut(ETH_HLEN);
        eth[0..6].copy_from_slice(&self.dst_mac);
        eth[6..12].copy_from_slice(&self.src_mac);
        let (ip, udp) = rest.split_at_mut(self.ip_len());
        udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                eth[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
                let total = (20 + udp_len) as u16;
                ip.copy_from_slice(&[
                    0x45, 0, 0, 0, 0, 0, 0x40, 0, self.ttl, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ]);
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                let c = checksum::checksum(ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                let c = checksum::udp_v4(src, dst, udp);
                udp[6..8].copy_from_slice(&c.to_be_bytes());
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                eth[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
                ip[0..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, 17, self.ttl]);
                ip[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                let c = checksum::udp_v6(&src, &dst, udp);
                udp[6..8].copy_from_slice(&c.to_be_bytes());
            }
            _ => return Err(EncapError::MixedFamilies),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn outer(src: IpAddr, dst: IpAddr) -> OuterHeaders {
        OuterHeaders {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src,
            dst,
            src_port: 40000,
            dst_port: 4789,
            ttl: 64,
        }
    }

    #[test]
    fn ipv4_udp_headers_verify() {
        let o = outer(
            Ipv4Addr::new(203, 0, 113, 1).into(),
            Ipv4Addr::new(198, 51, 100, 2).into(),
        );
        assert_eq!(o.len(), 42);
        let mut buf = vec![0u8; 42 + 5];
        buf[42..].copy_from_slice(b"hello");
        o.write(&mut buf, 7).unwrap();
        assert_eq!(&buf[12..14], &[0x08, 0x00]);
        assert_eq!(checksum::checksum(&buf[14..34]), 0);
        assert_eq!(u16::from_be_bytes([buf[16], buf[17]]), 33);
        let s = checksum::pseudo_v4(
            Ipv4Addr::new(203, 0, 113, 1),
            Ipv4Addr::new(198, 51, 100, 2),
            17,
            13,
        );
        assert_eq!(checksum::finish(checksum::sum(s, &buf[34..])), 0);
        assert_eq!(&buf[42..], b"hello", "payload untouched");
    }

    #[test]
    fn ipv6_udp_headers_verify() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let o = outer(src.into(), dst.into());
        let mut buf = vec![0u8; o.len() + 3];
        buf[o.len()..].copy_from_slice(b"abc");
        o.write(&mut buf, 0).unwrap();
        assert_eq!(&buf[12..14], &[0x86, 0xdd]);
        assert_eq!(u16::from_be_bytes([buf[18], buf[19]]), 11);
        let s = checksum::pseudo_v6(&src, &dst, 17, 11);
        assert_eq!(checksum::finish(checksum::sum(s, &buf[54..])), 0);
    }

    #[test]
    fn bad_inputs_refused() {
        let v4: IpAddr = Ipv4Addr::LOCALHOST.into();
        let v6: IpAddr = Ipv6Addr::LOCALHOST.into();
        assert_eq!(
            outer(v4, v6).write(&mut [0; 80], 0),
            Err(EncapError::MixedFamilies)
        );
        assert_eq!(
            outer(v4, v4).write(&mut [0; 10], 0),
            Err(EncapError::BadLength(10))
        );
    }
}
