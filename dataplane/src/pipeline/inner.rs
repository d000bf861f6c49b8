//! The inner packet inside a tunnel data payload: its IP and transport headers are
//! carried compactly (whole, or as a delta against the previous header of the same
//! flow in the bundle), the transport payload goes through the compression history.
//! [`header_len`] decides where the headers end; the bundle format is in
//! [`super::bundle`].

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Length of the IP and transport headers of `ip` (exactly the IP packet, trimmed to
/// its stated length). Protocols other than TCP and UDP, and anything that does not
/// parse, count as all header.
pub fn header_len(ip: &[u8]) -> usize {
    let Some(&first) = ip.first() else { return 0 };
    let (proto, l4) = match first >> 4 {
        4 if ip.len() >= 20 => {
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
            if frag != 0 {
                // Fragments carry no whole transport header; send them as they are.
                return ip.len();
            }
            (ip[9], usize::from(ip[0] & 0x0f) * 4)
        }
        6 if ip.len() >= 40 => (ip[6], 40),
        _ => return ip.len(),
    };
    let transport = match proto {
        IPPROTO_TCP => ip
            .get(l4 + 12)
            .map(|&off| usize::from(off >> 4) * 4)
            .filter(|&n| n >= 20),
        IPPROTO_UDP => Some(8),
        _ => None,
    };
    match transport {
        Some(t) if l4 + t <= ip.len() => l4 + t,
        _ => ip.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_udp_and_other_headers() {
        let mut tcp = vec![0u8; 60];
        tcp[0] = 0x45;
        tcp[9] = IPPROTO_TCP;
        tcp[20 + 12] = 8 << 4; // 32-byte TCP header
        assert_eq!(header_len(&tcp), 52);
        let mut udp = tcp.clone();
        udp[9] = IPPROTO_UDP;
        assert_eq!(header_len(&udp), 28);
        let mut icmp = tcp.clone();
        icmp[9] = 1;
        assert_eq!(header_len(&icmp), 60);
        let mut v6 = vec![0u8; 70];
        v6[0] = 0x60;
        v6[6] = IPPROTO_TCP;
        v6[40 + 12] = 5 << 4;
        assert_eq!(header_len(&v6), 60);
        let mut frag = tcp.clone();
        frag[7] = 1;
        assert_eq!(header_len(&frag), 60);
        // A TCP header claiming more than the packet holds is all header.
        tcp[20 + 12] = 15 << 4;
        assert_eq!(header_len(&tcp), 60);
    }
}
