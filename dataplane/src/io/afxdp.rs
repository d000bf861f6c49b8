//! AF_XDP ports: one socket per (interface, queue), each with its own UMEM and its own
//! fill, completion, RX and TX rings.
//!
//! Each socket owns its UMEM rather than sharing one between a worker's LAN and WAN
//! sockets: encoding and decoding write their output into a fresh frame of the egress
//! port anyway (compression and encryption do not work in place), so a shared UMEM would
//! save no copy on the tunnel path, and separate pools keep one port's traffic from
//! starving the other's fill ring. Plain forwarding pays one copy per packet for it.
//!
//! The kernel is only woken (`sendto` for TX, `poll` for the fill ring) when it sets the
//! `need_wakeup` flag; busy polling (`SO_PREFER_BUSY_POLL`) is optional.
#![deny(unsafe_code)]

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::RawFd;

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, UmemConfig, User};

use super::pool::FreeList;
use super::sys::{UmemArea, set_int_sockopt};
use super::{Batch, DEFAULT_HEADROOM, Frame, IoError, Link, PacketIo, PortStats, next_pool_id};

/// Wakeups per transmit call at most (copy mode sends 32 frames per wakeup).
const MAX_KICKS: usize = 16;

const SO_BUSY_POLL: i32 = 46;
const SO_PREFER_BUSY_POLL: i32 = 69;
const SO_BUSY_POLL_BUDGET: i32 = 70;

/// How the socket binds to the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindMode {
    /// Let the kernel choose (zero-copy where the driver supports it).
    #[default]
    Auto,
    /// Force copy mode (veth and generic drivers have no zero-copy).
    Copy,
    /// Force zero-copy; binding fails where the driver lacks it.
    ZeroCopy,
}

/// Busy-polling settings (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL`, `SO_BUSY_POLL_BUDGET`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// Microseconds the kernel may busy-poll the device per call.
    pub usecs: u32,
    /// Packets per busy-poll round.
    pub budget: u32,
}

/// Where and how to open an AF_XDP socket.
#[derive(Clone, Debug)]
pub struct XskConfig {
    /// Interface name.
    pub interface: String,
    /// Device queue.
    pub queue: u32,
    /// Chunks in the UMEM.
    pub frames: u32,
    /// Bytes per chunk: 2048 or 4096 (aligned mode).
    pub frame_size: u32,
    /// Entries in each of the four rings (a power of two).
    pub ring_size: u32,
    /// Copy or zero-copy.
    pub mode: BindMode,
    /// Busy polling, off when `None`.
    pub busy_poll: Option<BusyPoll>,
}

impl XskConfig {
    /// Defaults for `interface`/`queue`: 4096 chunks of 4096 bytes, rings of 2048.
    pub fn new(interface: impl Into<String>, queue: u32) -> Self {
        XskConfig {
            interface: interface.into(),
            queue,
            frames: 4096,
            frame_size: 4096,
            ring_size: 2048,
            mode: BindMode::Auto,
            busy_poll: None,
        }
    }

    fn validate(&self) -> Result<(), IoError> {
        if !matches!(self.frame_size, 2048 | 4096) {
            return Err(IoError::Config(format!(
                "frame size {} is not 2048 or 4096",
                self.frame_size
            )));
        }
        if !self.ring_size.is_power_of_two() || self.ring_size < 64 {
            return Err(IoError::Config(format!(
                "ring size {} is not a power of two >= 64",
                self.ring_size
            )));
        }
        if self.frames < 2 * self.ring_size {
            return Err(IoError::Config(format!(
                "{} frames cannot fill a ring of {} and still transmit; use at least {}",
                self.frames,
                self.ring_size,
                2 * self.ring_size
            )));
        }
        Ok(())
    }
}

/// Counters the kernel keeps for an AF_XDP socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Dropped for reasons other than a full ring (e.g. invalid descriptors).
    pub rx_dropped: u64,
    /// Dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was found empty.
    pub rx_fill_ring_empty: u64,
    /// Invalid TX descriptors.
    pub tx_invalid: u64,
}

/// One AF_XDP socket bound to an interface queue, with its own UMEM.
pub struct AfXdpPort {
    // Field order is drop order: rings and sockets close before the UMEM is unmapped.
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    user: User,
    pool_id: u32,
    frame_size: u32,
    ring_size: u32,
    free: FreeList,
    /// Chunks kept out of the fill ring for transmit allocations.
    tx_reserve: usize,
    busy_poll: bool,
    stats: PortStats,
    area: UmemArea,
}

impl std::fmt::Debug for AfXdpPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpPort")
            .field("fd", &self.fd())
            .field("free", &self.free.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AfXdpPort {
    /// Creates the UMEM and socket, maps the rings, binds to the queue and fills the fill
    /// ring. Frames arrive only once an XDP program redirects them into this socket (see
    /// [`AfXdpPort::fd`] for registering it in an XSK map); transmit works right away.
    pub fn open(config: &XskConfig) -> Result<Self, IoError> {
        config.validate()?;
        let len = config.frames as usize * config.frame_size as usize;
        let area = UmemArea::map(len).map_err(|e| IoError::setup("mapping the UMEM", e))?;
        let umem = area
            .register(UmemConfig {
                fill_size: config.ring_size,
                complete_size: config.ring_size,
                frame_size: config.frame_size,
                headroom: 0,
                flags: 0,
            })
            .map_err(|e| IoError::setup("registering the UMEM (needs CAP_NET_RAW)", e))?;

        let name = CString::new(config.interface.clone())
            .map_err(|_| IoError::Config("interface name contains NUL".into()))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name).map_err(|_| IoError::NoInterface {
            name: config.interface.clone(),
        })?;
        info.set_queue(config.queue);

        let socket = Socket::with_shared(&info, &umem).map_err(|e| sys_err("AF_XDP socket", e))?;
        let device = umem
            .fq_cq(&socket)
            .map_err(|e| sys_err("fill/completion rings", e))?;
        let ring = NonZeroU32::new(config.ring_size);
        let mut bind_flags = SocketConfig::XDP_BIND_NEED_WAKEUP;
        bind_flags |= match config.mode {
            BindMode::Auto => 0,
            BindMode::Copy => SocketConfig::XDP_BIND_COPY,
            BindMode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
        };
        let user = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: ring,
                    tx_size: ring,
                    bind_flags,
                },
            )
            .map_err(|e| sys_err("RX/TX rings", e))?;
        let rx = user
            .map_rx()
            .map_err(|e| sys_err("mapping the RX ring", e))?;
        let tx = user
            .map_tx()
            .map_err(|e| sys_err("mapping the TX ring", e))?;
        umem.bind(&user).map_err(|e| {
            sys_err(
                "binding to the interface queue (does the queue exist? is the mode supported?)",
                e,
            )
        })?;
        // The sockets hold the UMEM registration from here on; `area` keeps the memory.
        drop(umem);

        if let Some(bp) = config.busy_poll {
            let fd = rx.as_raw_fd();
            for (name, value) in [
                (SO_PREFER_BUSY_POLL, 1),
                (SO_BUSY_POLL, bp.usecs as i32),
                (SO_BUSY_POLL_BUDGET, bp.budget as i32),
            ] {
                set_int_sockopt(fd, libc::SOL_SOCKET, name, value)
                    .map_err(|e| IoError::setup("enabling busy polling", e))?;
            }
        }

        let mut port = AfXdpPort {
            rx,
            tx,
            device,
            user,
            pool_id: next_pool_id(),
            frame_size: config.frame_size,
            ring_size: config.ring_size,
            free: FreeList::full(config.frames),
            tx_reserve: (config.frames - config.ring_size) as usize / 2,
            busy_poll: config.busy_poll.is_some(),
            stats: PortStats::default(),
            area,
        };
        port.refill();
        tracing::debug!(
            interface = %config.interface,
            queue = config.queue,
            fd = port.fd(),
            "AF_XDP socket bound"
        );
        Ok(port)
    }

    /// The socket descriptor, to register in the XDP program's XSK map for this queue.
    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// The kernel's counters for this socket.
    pub fn kernel_stats(&self) -> Result<KernelStats, IoError> {
        let s = self.user.statistics_v2().map_err(|e| IoError::Runtime {
            what: "reading XDP_STATISTICS",
            source: std::io::Error::from_raw_os_error(e.get_raw()),
        })?;
        Ok(KernelStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
            tx_invalid: s.tx_invalid_descs,
        })
    }

    /// Returns transmitted chunks from the completion ring to the free list.
    fn reap(&mut self) {
        // Served from the cached producer head first, refreshed once that is used up.
        loop {
            let mut done = self.device.complete(self.ring_size);
            if done.capacity() == 0 {
                break;
            }
            while let Some(addr) = done.read() {
                self.free.push((addr / u64::from(self.frame_size)) as u32);
            }
            done.release();
        }
    }

    /// Keeps the fill ring topped up, or receiving stalls.
    fn refill(&mut self) {
        loop {
            let spare = self.free.len().saturating_sub(self.tx_reserve);
            if spare == 0 {
                break;
            }
            let mut fill = self.device.fill(spare as u32);
            let room = fill.capacity();
            if room == 0 {
                break;
            }
            for _ in 0..room {
                let Some(chunk) = self.free.pop() else { break };
                // Cannot fail: at most `capacity()` inserts are made.
                let _ = fill.insert_once(u64::from(chunk) * u64::from(self.frame_size));
            }
            fill.commit();
        }
        if self.device.needs_wakeup() {
            self.device.wake();
            self.stats.wakeups += 1;
        }
    }

    /// Wakes the kernel to transmit, only when it asks to be woken. In copy mode one
    /// wakeup sends at most 32 descriptors, so kick again (boundedly) while the kernel
    /// keeps consuming, or the ring fills up behind it.
    fn kick_tx(&mut self) {
        for _ in 0..MAX_KICKS {
            let before = self.tx.pending();
            if before == 0 || !self.tx.needs_wakeup() {
                break;
            }
            self.tx.wake();
            self.stats.wakeups += 1;
            if self.tx.pending() == before {
                // The device is busy (EAGAIN); the next batch or idle round retries.
                break;
            }
        }
    }

    fn chunk_offset(&self, frame: &Frame) -> usize {
        assert_eq!(
            frame.pool_id(),
            self.pool_id,
            "frame used with a port that did not issue it"
        );
        frame.chunk() as usize * self.frame_size as usize + frame.head() as usize
    }
}

impl PacketIo for AfXdpPort {
    fn link(&self) -> Link {
        Link::Ethernet
    }

    fn recv(&mut self, batch: &mut Batch) -> Result<usize, IoError> {
        self.reap();
        self.refill();
        let room = batch.room() as u32;
        if room == 0 {
            return Ok(0);
        }
        let fs = u64::from(self.frame_size);
        let mut n = 0;
        let mut ring = self.rx.receive(room);
        while let Some(XdpDesc { addr, len, .. }) = ring.read() {
            let chunk = (addr / fs) as u32;
            let head = (addr % fs) as u32;
            let frame = Frame::new(self.pool_id, chunk, head, len, self.frame_size);
            // Cannot fail: at most `room` descriptors are read.
            let _ = batch.push(frame);
            n += 1;
        }
        ring.release();
        drop(ring);
        if n == 0 && self.busy_poll {
            // With preferred busy polling the application drives the device's NAPI.
            self.device.wake();
        }
        self.stats.rx_frames += n as u64;
        Ok(n)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, IoError> {
        if batch.is_empty() {
            return Ok(0);
        }
        self.reap();
        let fs = u64::from(self.frame_size);
        let total = batch.len();
        let mut left = total;
        let mut frames = batch.drain();
        let mut retried = false;
        // A reservation is served from the cached consumer head first; it is refreshed
        // only once the cached room is used up, hence the loop.
        while left > 0 {
            let mut ring = self.tx.transmit(left as u32);
            let room = ring.capacity() as usize;
            if room == 0 {
                drop(ring);
                if retried {
                    break;
                }
                retried = true;
                self.kick_tx();
                self.reap();
                continue;
            }
            for frame in frames.by_ref().take(room) {
                let desc = XdpDesc {
                    addr: u64::from(frame.chunk()) * fs + u64::from(frame.head()),
                    len: frame.len() as u32,
                    options: 0,
                };
                // Cannot fail: at most `capacity()` inserts are made.
                let _ = ring.insert_once(desc);
                left -= 1;
            }
            ring.commit();
        }
        for frame in frames {
            self.stats.tx_full += 1;
            self.free.push(frame.chunk());
        }
        let sent = total - left;
        self.kick_tx();
        self.stats.tx_frames += sent as u64;
        Ok(sent)
    }

    fn alloc(&mut self) -> Option<Frame> {
        if self.free.len() == 0 {
            self.reap();
        }
        match self.free.pop() {
            Some(chunk) => Some(Frame::new(
                self.pool_id,
                chunk,
                DEFAULT_HEADROOM,
                0,
                self.frame_size,
            )),
            None => {
                self.stats.alloc_failed += 1;
                None
            }
        }
    }

    fn release(&mut self, frame: Frame) {
        assert_eq!(
            frame.pool_id(),
            self.pool_id,
            "frame used with a port that did not issue it"
        );
        self.free.push(frame.chunk());
    }

    fn data(&self, frame: &Frame) -> &[u8] {
        let off = self.chunk_offset(frame);
        self.area
            .chunk(off, frame.len())
            .expect("frame inside the UMEM")
    }

    fn data_mut(&mut self, frame: &Frame) -> &mut [u8] {
        let off = self.chunk_offset(frame);
        self.area
            .chunk_mut(off, frame.len())
            .expect("frame inside the UMEM")
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.fd())
    }

    fn maintain(&mut self) -> Result<(), IoError> {
        self.reap();
        self.refill();
        self.kick_tx();
        Ok(())
    }
}

fn sys_err(what: &'static str, e: xdpilone::Errno) -> IoError {
    IoError::setup(what, std::io::Error::from_raw_os_error(e.get_raw()))
}
