//! Hand-built Ethernet frames for XDP tests (well-formed and deliberately broken),
//! and an AF_PACKET injector that puts them on a wire.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

/// A UDP/IPv4 frame `src_mac → dst_mac` with `payload`.
pub fn udp_v4(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    let sum = l4_checksum_v4(src.0, dst.0, 17, &l4);
    l4[6..8].copy_from_slice(&sum.to_be_bytes());
    ipv4_frame(dst_mac, src_mac, src.0, dst.0, 17, &[], &l4)
}

/// A TCP/IPv4 segment with `flags` and `options` (padded to 4 bytes by the caller).
pub fn tcp_v4(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: u8,
    options: &[u8],
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40);
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&1u32.to_be_bytes());
    l4.extend_from_slice(&0u32.to_be_bytes());
    l4.push((((20 + options.len()) / 4) as u8) << 4);
    l4.push(flags);
    l4.extend_from_slice(&65535u16.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 0]);
    l4.extend_from_slice(options);
    let sum = l4_checksum_v4(src.0, dst.0, 6, &l4);
    l4[16..18].copy_from_slice(&sum.to_be_bytes());
    ipv4_frame(dst_mac, src_mac, src.0, dst.0, 6, &[], &l4)
}

/// An IPv4 frame carrying `l4` (already with its checksum) and IP `options`.
pub fn ipv4_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    l4: &[u8],
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4));
    let ihl = 20 + options.len();
    let mut ip = Vec::with_capacity(ihl + l4.len());
    ip.push(0x40 | (ihl / 4) as u8);
    ip.push(0);
    ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(options);
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(l4);
    ethernet(dst_mac, src_mac, 0x0800, &ip)
}

/// A UDP/IPv6 frame, with raw extension headers `ext` (first next-header `ext_first`,
/// each header's own next-header bytes are the caller's) before the UDP header.
pub fn udp_v6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    ext: Option<(u8, &[u8])>,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    let sum = l4_checksum_v6(src.0, dst.0, 17, &l4);
    l4[6..8].copy_from_slice(&sum.to_be_bytes());
    let (next, ext_bytes) = ext.unwrap_or((17, &[]));
    let mut ip = Vec::new();
    ip.extend_from_slice(&[0x60, 0, 0, 0]);
    ip.extend_from_slice(&((ext_bytes.len() + l4.len()) as u16).to_be_bytes());
    ip.push(next);
    ip.push(64);
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    ip.extend_from_slice(ext_bytes);
    ip.extend_from_slice(&l4);
    ethernet(dst_mac, src_mac, 0x86dd, &ip)
}

/// An Ethernet frame.
pub fn ethernet(dst_mac: [u8; 6], src_mac: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Inserts an 802.1Q tag with `vid` after the MAC addresses.
pub fn vlan_tag(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// The value of the MSS option of the TCP segment in an untagged IPv4 or IPv6 frame.
pub fn tcp_mss(frame: &[u8]) -> Option<u16> {
    let tcp = tcp_offset(frame)?;
    let len = usize::from(frame.get(tcp + 12)? >> 4) * 4;
    let mut off = tcp + 20;
    while off + 1 < tcp + len {
        match frame[off] {
            0 => return None,
            1 => off += 1,
            2 => return Some(u16::from_be_bytes([frame[off + 2], frame[off + 3]])),
            _ => off += usize::from(frame[off + 1].max(2)),
        }
    }
    None
}

/// Whether the TCP checksum of the segment in an untagged IPv4 or IPv6 frame is right.
pub fn tcp_checksum_ok(frame: &[u8]) -> bool {
    let Some(tcp) = tcp_offset(frame) else {
        return false;
    };
    let seg = &frame[tcp..];
    let pseudo = if frame[12..14] == [0x08, 0x00] {
        let tot = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        let seg_len = tot - (tcp - 14);
        let mut p = frame[26..34].to_vec();
        p.extend_from_slice(&[0, 6]);
        p.extend_from_slice(&(seg_len as u16).to_be_bytes());
        return checksum(&seg[..seg_len], sum_words(&p)) == 0;
    } else {
        let mut p = frame[22..54].to_vec();
        p.extend_from_slice(&(seg.len() as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 6]);
        p
    };
    checksum(seg, sum_words(&pseudo)) == 0
}

fn tcp_offset(frame: &[u8]) -> Option<usize> {
    match frame.get(12..14)? {
        [0x08, 0x00] if frame.get(23) == Some(&6) => Some(14 + usize::from(frame[14] & 0xf) * 4),
        [0x86, 0xdd] if frame.get(20) == Some(&6) => Some(54),
        _ => None,
    }
}

fn l4_checksum_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    checksum(l4, sum_words(&p))
}

fn l4_checksum_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    checksum(l4, sum_words(&p))
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// Internet checksum of `bytes` with `initial` (an unfolded sum) added.
pub fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial) + u64::from(sum_words(bytes));
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_segments_have_valid_checksums_and_mss() {
        let f = tcp_v4(
            [2; 6],
            [4; 6],
            (Ipv4Addr::new(10, 1, 0, 2), 1000),
            (Ipv4Addr::new(10, 2, 0, 2), 80),
            0x02,
            &[2, 4, 0x05, 0xb4],
        );
        assert!(tcp_checksum_ok(&f));
        assert_eq!(tcp_mss(&f), Some(1460));
        let mut bad = f.clone();
        bad[40] ^= 1;
        assert!(!tcp_checksum_ok(&bad));
    }
}
