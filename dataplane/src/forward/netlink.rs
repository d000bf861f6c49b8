//! A small NETLINK_ROUTE client: dumps of links, routes and neighbours, and a socket
//! subscribed to their change notifications. Parsing is plain byte reading; no `unsafe`.
#![deny(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

/// Message types (rtnetlink.h).
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_GETNEIGH: u16 = 30;

/// Multicast groups for [`Netlink::open`]: link, neighbour and route changes.
pub const GROUPS_ALL: u32 = 0x1 /* LINK */ | 0x4 /* NEIGH */ | 0x40 /* IPV4_ROUTE */ | 0x400 /* IPV6_ROUTE */;

/// A NETLINK_ROUTE socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace, subscribed to `groups`
    /// (0 for none). Notification sockets are non-blocking.
    pub fn open(groups: u32) -> io::Result<Self> {
        let mut flags = SockFlag::SOCK_CLOEXEC;
        if groups != 0 {
            flags |= SockFlag::SOCK_NONBLOCK;
        }
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            flags,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
        Ok(Netlink {
            fd,
            seq: 1,
            buf: vec![0; 64 * 1024],
        })
    }

    /// The descriptor, to poll for notifications.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Dumps every object of `kind` (`RTM_GETLINK`, `RTM_GETROUTE`, `RTM_GETNEIGH`) and
    /// calls `each` with every message's type and body.
    pub fn dump(&mut self, kind: u16, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let body_len = if kind == RTM_GETLINK { 16 } else { 12 };
        let mut req = [0u8; NLMSG_HDRLEN + 16];
        let len = NLMSG_HDRLEN + body_len;
        self.seq = self.seq.wrapping_add(1);
        req[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&kind.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // Family byte 0 (AF_UNSPEC): every family.
        send(self.fd.as_raw_fd(), &req[..len], MsgFlags::empty())?;
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
            let mut done = false;
            for (ty, seq, body) in messages(&self.buf[..n]) {
                if seq != self.seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let code = body
                            .get(0..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        done = true;
                    }
                    _ => each(ty, body),
                }
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Reads pending notifications without blocking; returns how many arrived.
    pub fn drain_events(&mut self) -> io::Result<usize> {
        let mut count = 0;
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => count += messages(&self.buf[..n]).count(),
                Err(nix::errno::Errno::EAGAIN) => return Ok(count),
                // The kernel dropped notifications: the caller reloads everything anyway.
                Err(nix::errno::Errno::ENOBUFS) => count += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Iterates (type, sequence, body) over the messages in one datagram.
fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        let body = &data[NLMSG_HDRLEN..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, seq, body))
    })
}

/// Iterates (type, value) over route attributes.
pub fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        if len < 4 || len > data.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        let value = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, value))
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// An IPv4 or IPv6 address from an attribute value.
pub fn ip_from(value: &[u8]) -> Option<IpAddr> {
    match value.len() {
        4 => Some(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?).into()),
        16 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?).into()),
        _ => None,
    }
}

/// A native-endian u32 from an attribute value or header field.
pub fn u32_from(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(0..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_and_attributes() {
        // Two messages; the first has a 3-byte body padded to 4.
        let mut d = Vec::new();
        for (ty, body) in [(24u16, &b"abc"[..]), (3, &b""[..])] {
            d.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
            d.extend_from_slice(&ty.to_ne_bytes());
            d.extend_from_slice(&[0, 0]);
            d.extend_from_slice(&9u32.to_ne_bytes());
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(body);
            while d.len() % 4 != 0 {
                d.push(0);
            }
        }
        let got: Vec<_> = messages(&d).collect();
        assert_eq!(got, vec![(24, 9, &b"abc"[..]), (3, 9, &b""[..])]);

        let mut a = Vec::new();
        a.extend_from_slice(&8u16.to_ne_bytes());
        a.extend_from_slice(&5u16.to_ne_bytes());
        a.extend_from_slice(&[10, 0, 0, 1]);
        a.extend_from_slice(&5u16.to_ne_bytes());
        a.extend_from_slice(&4u16.to_ne_bytes());
        a.extend_from_slice(&[7, 0, 0, 0]);
        let got: Vec<_> = attributes(&a).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(ip_from(got[0].1), Some(Ipv4Addr::new(10, 0, 0, 1).into()));
        assert_eq!(got[1], (4, &[7u8][..]));
        assert!(messages(&d[..10]).next().is_none(), "truncated header");
    }

    #[test]
    fn dumps_loopback_from_the_kernel() {
        let mut nl = Netlink::open(0).unwrap();
        let mut names = Vec::new();
        nl.dump(RTM_GETLINK, |ty, body| {
            assert_eq!(ty, RTM_NEWLINK);
            for (a, v) in attributes(&body[16..]) {
                if a == 3 {
                    names.push(
                        String::from_utf8_lossy(v)
                            .trim_end_matches('\0')
                            .to_string(),
                    );
                }
            }
        })
        .unwrap();
        assert!(names.iter().any(|n| n == "lo"), "links: {names:?}");
    }
}
