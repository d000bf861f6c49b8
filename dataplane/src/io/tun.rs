//! TUN ports, for hosts where XDP cannot be used: the kernel routes the remote site's
//! prefixes into a TUN interface and the same worker pipeline reads bare IP packets from
//! it. One `read`/`write` per packet (TUN has no ring), non-blocking.
//!
//! With [`TunPort::with_ethernet_framing`] the port presents its packets as Ethernet
//! frames (a header with zero addresses and the EtherType of the IP version is put in
//! front on receive and left out on transmit), so the tunnel pipeline, which works on
//! Ethernet frames, runs on it unchanged.
#![deny(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;

use super::sys::tun_set_iff;
use super::{Batch, DEFAULT_HEADROOM, Frame, FramePool, IoError, Link, PacketIo, PortStats};

/// One TUN interface (no packet-information header) and a pool of buffers.
#[derive(Debug)]
pub struct TunPort {
    fd: OwnedFd,
    name: String,
    pool: FramePool,
    stats: PortStats,
    link: Link,
}

/// Ethernet header length of the framing.
const ETH_HLEN: usize = 14;

impl TunPort {
    /// Creates the TUN interface `name` (or attaches to an existing persistent one) in the
    /// calling thread's network namespace. The interface disappears when the port is dropped
    /// unless it was made persistent. Addresses and routes are the operator's (`ip`).
    pub fn open(name: &str, chunks: u32) -> Result<Self, IoError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| IoError::setup("opening /dev/net/tun (is the tun driver there?)", e))?;
        let fd = OwnedFd::from(file);
        let name = tun_set_iff(&fd, name)
            .map_err(|e| IoError::setup("TUNSETIFF (needs CAP_NET_ADMIN)", e))?;
        tracing::debug!(interface = %name, "TUN port open");
        Ok(TunPort {
            fd,
            name,
            pool: FramePool::new(chunks, 2048 + DEFAULT_HEADROOM),
            stats: PortStats::default(),
            link: Link::Ip,
        })
    }

    /// Presents packets as Ethernet frames ([`Link::Ethernet`]): see the module docs.
    pub fn with_ethernet_framing(mut self) -> Self {
        self.link = Link::Ethernet;
        self
    }

    fn framing(&self) -> usize {
        match self.link {
            Link::Ethernet => ETH_HLEN,
            Link::Ip => 0,
        }
    }

    /// The interface name the kernel assigned.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PacketIo for TunPort {
    fn link(&self) -> Link {
        self.link
    }

    fn recv(&mut self, batch: &mut Batch) -> Result<usize, IoError> {
        let mut n = 0;
        let at = self.framing();
        while batch.room() > 0 {
            let Some(mut frame) = self.pool.alloc(DEFAULT_HEADROOM) else {
                self.stats.alloc_failed += 1;
                break;
            };
            match nix::unistd::read(&self.fd, &mut self.pool.tail_mut(&frame)[at..]) {
                Ok(len) if len > 0 => {
                    let _ = frame.set_len(at + len);
                    if at == ETH_HLEN {
                        let data = self.pool.data_mut(&frame);
                        let ethertype: u16 = if data[at] >> 4 == 6 { 0x86dd } else { 0x0800 };
                        data[..12].fill(0);
                        data[12..14].copy_from_slice(&ethertype.to_be_bytes());
                    }
                    let _ = batch.push(frame);
                    n += 1;
                }
                Ok(_) | Err(Errno::EAGAIN) => {
                    self.pool.release(frame);
                    break;
                }
                Err(e) => {
                    self.pool.release(frame);
                    return Err(IoError::Runtime {
                        what: "reading from the TUN device",
                        source: e.into(),
                    });
                }
            }
        }
        self.stats.rx_frames += n as u64;
        Ok(n)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, IoError> {
        let mut sent = 0;
        let at = self.framing();
        for frame in batch.drain() {
            let packet = self.pool.data(&frame).get(at..).unwrap_or_default();
            match nix::unistd::write(&self.fd, packet) {
                Ok(_) => sent += 1,
                Err(Errno::EAGAIN | Errno::ENOBUFS) => self.stats.tx_full += 1,
                // A malformed packet is refused by the kernel (EINVAL); count it and go on.
                Err(_) => self.stats.tx_errors += 1,
            }
            self.pool.release(frame);
        }
        self.stats.tx_frames += sent as u64;
        Ok(sent)
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
        Some(self.fd.as_raw_fd())
    }
}
