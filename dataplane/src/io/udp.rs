//! A kernel UDP socket on the tunnel port: the WAN side of the TUN backend, where the
//! kernel writes and checks the outer IP and UDP headers and routes toward the partners.
//!
//! The tunnel pipeline works on whole frames (outer Ethernet + IP + UDP + tunnel
//! packet, as on AF_XDP), so the port presents every datagram in that form: on receive
//! it puts an Ethernet header (zero addresses), an IPv4/IPv6 header (source: the sender;
//! destination: the socket's local address, unspecified for a wildcard bind; no
//! checksums — the kernel verified them) and a UDP header in front of the payload; on
//! transmit it reads the destination from the outer headers the pipeline wrote and
//! sends the UDP payload with `sendto`. One system call per datagram.
//!
//! Datagrams from an address that is no partner are refused and counted in
//! [`PortStats::rx_refused`] (the XDP program's source check on the AF_XDP backend).
#![deny(unsafe_code)]

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, setsockopt, sockopt};

use super::{Batch, DEFAULT_HEADROOM, Frame, FramePool, IoError, Link, PacketIo, PortStats};

const ETH_HLEN: usize = 14;
/// Outer headers in front of a payload from an IPv6 sender (Ethernet + IPv6 + UDP).
const V6_HEADERS: usize = ETH_HLEN + 40 + 8;
/// Outer headers in front of a payload from an IPv4 sender (Ethernet + IPv4 + UDP).
const V4_HEADERS: usize = ETH_HLEN + 20 + 8;
/// Socket buffers asked for (the kernel may grant less without CAP_NET_ADMIN).
const SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket bound to the tunnel port on every local address, and a pool of buffers.
#[derive(Debug)]
pub struct UdpPort {
    socket: UdpSocket,
    /// Whether the socket is IPv6 (dual stack: IPv4 peers appear as mapped addresses).
    v6: bool,
    local: SocketAddr,
    peers: Vec<IpAddr>,
    pool: FramePool,
    stats: PortStats,
}

impl UdpPort {
    /// Binds `port` on every local address: IPv4 only when every peer is IPv4, dual
    /// stack otherwise. Only datagrams from `peers` are received.
    pub fn open(port: u16, peers: Vec<IpAddr>, chunks: u32) -> Result<Self, IoError> {
        let v6 = peers.iter().any(IpAddr::is_ipv6);
        let family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let fd = socket::socket(
            family,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| IoError::setup("creating the tunnel's UDP socket", e))?;
        if v6 {
            setsockopt(&fd, sockopt::Ipv6V6Only, &false)
                .map_err(|e| IoError::setup("making the tunnel's UDP socket dual stack", e))?;
        }
        // Without CAP_NET_ADMIN the forced sizes are refused; the capped ones still help.
        if setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &SOCKET_BUFFER);
        }
        if setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &SOCKET_BUFFER);
        }
        let bind: SocketAddr = if v6 {
            (Ipv6Addr::UNSPECIFIED, port).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, port).into()
        };
        let socket = UdpSocket::from(fd);
        // std's bind is not reachable on an existing socket; bind through nix.
        let bound = match bind {
            SocketAddr::V4(a) => socket::bind(socket.as_raw_fd(), &socket::SockaddrIn::from(a)),
            SocketAddr::V6(a) => socket::bind(socket.as_raw_fd(), &socket::SockaddrIn6::from(a)),
        };
        bound.map_err(|e| IoError::Setup {
            what: "binding the tunnel port (is another process using it?)",
            source: e.into(),
        })?;
        let local = socket
            .local_addr()
            .map_err(|e| IoError::setup("reading the tunnel socket's address", e))?;
        tracing::debug!(%local, "tunnel UDP port open");
        Ok(UdpPort {
            socket,
            v6,
            local,
            peers: peers.into_iter().map(|p| p.to_canonical()).collect(),
            pool: FramePool::new(chunks, 2048 + DEFAULT_HEADROOM),
            stats: PortStats::default(),
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn receive_one(&mut self, batch: &mut Batch) -> Result<bool, IoError> {
        let Some(mut frame) = self.pool.alloc(DEFAULT_HEADROOM) else {
            self.stats.alloc_failed += 1;
            return Ok(false);
        };
        let got = self
            .socket
            .recv_from(&mut self.pool.tail_mut(&frame)[V6_HEADERS..]);
        let (len, from) = match got {
            Ok(got) => got,
            Err(e) => {
                self.pool.release(frame);
                if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted {
                    return Ok(false);
                }
                return Err(IoError::Runtime {
                    what: "receiving from the tunnel's UDP socket",
                    source: e,
                });
            }
        };
        let source = from.ip().to_canonical();
        if !self.peers.contains(&source) {
            self.stats.rx_refused += 1;
            self.pool.release(frame);
            return Ok(true);
        }
        let headers = if source.is_ipv4() {
            V4_HEADERS
        } else {
            V6_HEADERS
        };
        let _ = frame.set_len(V6_HEADERS + len);
        let _ = frame.pull_head(V6_HEADERS - headers);
        let local = SocketAddr::new(self.local.ip().to_canonical(), self.local.port());
        write_headers(
            self.pool.data_mut(&frame),
            SocketAddr::new(source, from.port()),
            local,
            len,
        );
        self.stats.rx_frames += 1;
        let _ = batch.push(frame);
        Ok(true)
    }

    fn transmit_one(&mut self, frame: &Frame) {
        let Some((to, payload)) = destination(self.pool.data(frame)) else {
            self.stats.tx_errors += 1;
            return;
        };
        let to = match (to, self.v6) {
            (SocketAddr::V4(a), true) => {
                SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
            }
            (to, _) => to,
        };
        match self.socket.send_to(&self.pool.data(frame)[payload..], to) {
            Ok(_) => self.stats.tx_frames += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => self.stats.tx_full += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.stats.tx_full += 1,
            // No route, unreachable (an ICMP error from an earlier datagram), …: count it
            // and go on; the tunnel's own counters and TCP take care of the rest.
            Err(_) => self.stats.tx_errors += 1,
        }
    }
}

/// Writes Ethernet, IP and UDP headers for a `len`-byte payload from `from` to `to` into
/// the front of `frame` (whose length is the headers' plus `len`).
fn write_headers(frame: &mut [u8], from: SocketAddr, to: SocketAddr, len: usize) {
    let udp_len = (8 + len) as u16;
    frame[..12].fill(0);
    let udp_at = match (from.ip(), to.ip()) {
        (IpAddr::V4(src), dst) => {
            frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let dst = match dst {
                IpAddr::V4(d) => d,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            };
            let ip = &mut frame[ETH_HLEN..ETH_HLEN + 20];
            ip.copy_from_slice(&[
                0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
            ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            ETH_HLEN + 20
        }
        (IpAddr::V6(src), dst) => {
            frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let dst = match dst {
                IpAddr::V6(d) => d,
                IpAddr::V4(d) => d.to_ipv6_mapped(),
            };
            let ip = &mut frame[ETH_HLEN..ETH_HLEN + 40];
            ip[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, 17, 64]);
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            ETH_HLEN + 40
        }
    };
    let udp = &mut frame[udp_at..udp_at + 8];
    udp[0..2].copy_from_slice(&from.port().to_be_bytes());
    udp[2..4].copy_from_slice(&to.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].fill(0);
}

/// The UDP destination of an outer Ethernet + IPv4/IPv6 + UDP frame and the offset of
/// its payload, or `None` when the frame is not one.
fn destination(frame: &[u8]) -> Option<(SocketAddr, usize)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (ip, udp_at) = match ethertype {
        0x0800 => {
            let ip = frame.get(ETH_HLEN..ETH_HLEN + 20)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ip[9] != 17 || ihl < 20 {
                return None;
            }
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[16..20]).ok()?);
            (IpAddr::V4(dst), ETH_HLEN + ihl)
        }
        0x86dd => {
            let ip = frame.get(ETH_HLEN..ETH_HLEN + 40)?;
            if ip[0] >> 4 != 6 || ip[6] != 17 {
                return None;
            }
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
            (IpAddr::V6(dst), ETH_HLEN + 40)
        }
        _ => return None,
    };
    let udp = frame.get(udp_at..udp_at + 8)?;
    let port = u16::from_be_bytes([udp[2], udp[3]]);
    let to = match ip {
        IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, port)),
        IpAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(a, port, 0, 0)),
    };
    Some((to, udp_at + 8))
}

impl PacketIo for UdpPort {
    fn link(&self) -> Link {
        Link::Ethernet
    }

    fn recv(&mut self, batch: &mut Batch) -> Result<usize, IoError> {
        let before = batch.len();
        while batch.room() > 0 && self.receive_one(batch)? {}
        Ok(batch.len() - before)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, IoError> {
        let before = self.stats.tx_frames;
        for frame in batch.drain() {
            self.transmit_one(&frame);
            self.pool.release(frame);
        }
        Ok((self.stats.tx_frames - before) as usize)
    }

    fn alloc(&mut self) -> Option<Frame> {
        let frame = self.pool.alloc(DEFAULT_HEADROOM);
        if frame.is_none() {
            self.stats.alloc_failed += 1;
        }
        frame
    }

    fn release(&mut self, frame: Frame) {
        self.pool.release(frame);
    }

    fn data(&self, frame: &Frame) -> &[u8] {
        self.pool.data(frame)
    }

    fn data_mut(&mut self, frame: &Frame) -> &mut [u8] {
        self.pool.data_mut(frame)
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.socket.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpPort, UdpSocket) {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = UdpPort::open(0, vec!["127.0.0.1".parse().unwrap()], 16).unwrap();
        (port, peer)
    }

    fn recv_one(port: &mut UdpPort) -> Frame {
        let mut batch = Batch::with_capacity(4);
        for _ in 0..200 {
            if port.recv(&mut batch).unwrap() > 0 {
                return batch.drain().next().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("nothing received");
    }

    #[test]
    fn datagrams_become_frames_and_frames_become_datagrams() {
        let (mut port, peer) = pair();
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port.local_addr().port()));
        peer.send_to(b"tunnel packet", to).unwrap();
        let frame = recv_one(&mut port);
        let data = port.data(&frame).to_vec();
        assert_eq!(data.len(), V4_HEADERS + 13);
        assert_eq!(&data[12..14], &[0x08, 0x00]);
        assert_eq!(data[ETH_HLEN + 9], 17);
        assert_eq!(&data[ETH_HLEN + 12..ETH_HLEN + 16], &[127, 0, 0, 1]);
        let peer_port = peer.local_addr().unwrap().port();
        assert_eq!(&data[34..36], &peer_port.to_be_bytes());
        assert_eq!(&data[38..40], &21u16.to_be_bytes(), "UDP length");
        assert_eq!(&data[V4_HEADERS..], b"tunnel packet");

        // Reply: the pipeline writes outer headers toward the sender.
        let mut reply = frame;
        let mut bytes = data.clone();
        write_headers(
            &mut bytes,
            port.local_addr(),
            peer.local_addr().unwrap(),
            13,
        );
        bytes[V4_HEADERS..].copy_from_slice(b"sealed answer");
        assert!(reply.set_len(bytes.len()));
        port.data_mut(&reply).copy_from_slice(&bytes);
        let mut batch = Batch::with_capacity(1);
        batch.push(reply).unwrap();
        assert_eq!(port.send(&mut batch).unwrap(), 1);
        let mut buf = [0u8; 64];
        peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"sealed answer");
    }

    #[test]
    fn strangers_are_refused_and_counted() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut port = UdpPort::open(0, vec!["192.0.2.1".parse().unwrap()], 16).unwrap();
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port.local_addr().port()));
        peer.send_to(b"not from a partner", to).unwrap();
        let mut batch = Batch::with_capacity(4);
        for _ in 0..200 {
            port.recv(&mut batch).unwrap();
            if port.stats().rx_refused > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(port.stats().rx_refused, 1);
        assert!(batch.is_empty());
    }

    #[test]
    fn frames_that_are_not_udp_are_counted_as_errors() {
        let (mut port, _peer) = pair();
        let mut f = port.alloc().unwrap();
        assert!(f.set_len(60));
        port.data_mut(&f).fill(0);
        let mut batch = Batch::with_capacity(1);
        batch.push(f).unwrap();
        assert_eq!(port.send(&mut batch).unwrap(), 0);
        assert_eq!(port.stats().tx_errors, 1);
    }
}
