//! Packet I/O: one interface ([`PacketIo`]) for batch receive and transmit of frames with
//! buffer recycling, and three backends behind it: AF_XDP ([`afxdp`]) for production,
//! TUN ([`tun`], with a kernel UDP socket, [`udp`], as the WAN side) for hosts without
//! XDP, and an in-memory wire ([`mem`]) for tests and benchmarks.
//!
//! A port owns a pool of fixed-size buffers ("chunks"). A [`Frame`] is a handle to one
//! chunk plus the bounds of the packet inside it; frames move by value, never by copy,
//! and go back to the pool that issued them through [`PacketIo::send`] or
//! [`PacketIo::release`]. Nothing on the receive or transmit path allocates.
#![deny(unsafe_code)]

pub mod afxdp;
pub mod mem;
mod pool;
pub(crate) mod sys;
pub mod tun;
pub mod udp;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

pub use pool::FramePool;

/// Headroom left in front of packet data in a freshly allocated transmit frame, enough
/// for outer Ethernet + IPv6 + UDP + tunnel headers.
pub const DEFAULT_HEADROOM: u32 = 256;

/// What a port's frames start with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Frames are whole Ethernet frames (AF_XDP, memory).
    Ethernet,
    /// Frames are bare IPv4/IPv6 packets (TUN).
    Ip,
}

/// The side of the appliance a port faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// Towards the site's hosts.
    Lan,
    /// Towards the partner appliances.
    Wan,
}

/// Errors of the packet I/O layer.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A system call failed while setting a port up.
    #[error("{what} failed: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// An interface named in the configuration does not exist.
    #[error("interface {name:?} not found; check the port names in the configuration")]
    NoInterface { name: String },
    /// A configuration value is out of range.
    #[error("invalid port configuration: {0}")]
    Config(String),
    /// Receiving or transmitting failed at run time.
    #[error("{what} on port failed: {source}")]
    Runtime {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl IoError {
    pub(crate) fn setup(what: &'static str, source: impl Into<std::io::Error>) -> Self {
        IoError::Setup {
            what,
            source: source.into(),
        }
    }
}

/// A packet held in one chunk of a port's buffer pool.
///
/// The packet occupies `head .. head + len` of the chunk; the bytes in front of `head`
/// are headroom that encapsulation can claim with [`Frame::push_head`].
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pool: u32,
    chunk: u32,
    head: u32,
    len: u32,
    cap: u32,
}

impl Frame {
    pub(crate) fn new(pool: u32, chunk: u32, head: u32, len: u32, cap: u32) -> Self {
        debug_assert!(head + len <= cap);
        Frame {
            pool,
            chunk,
            head,
            len,
            cap,
        }
    }

    /// Length of the packet in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the frame holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes free in front of the packet.
    pub fn headroom(&self) -> usize {
        self.head as usize
    }

    /// Bytes free behind the packet.
    pub fn tailroom(&self) -> usize {
        (self.cap - self.head - self.len) as usize
    }

    /// Extends the packet by `n` bytes at the front (for new headers). Returns false, and
    /// changes nothing, when the headroom is smaller than `n`.
    #[must_use]
    pub fn push_head(&mut self, n: usize) -> bool {
        match u32::try_from(n) {
            Ok(n) if n <= self.head => {
                self.head -= n;
                self.len += n;
                true
            }
            _ => false,
        }
    }

    /// Removes `n` bytes from the front of the packet (stripping headers). Returns false,
    /// and changes nothing, when the packet is shorter than `n`.
    #[must_use]
    pub fn pull_head(&mut self, n: usize) -> bool {
        match u32::try_from(n) {
            Ok(n) if n <= self.len => {
                self.head += n;
                self.len -= n;
                true
            }
            _ => false,
        }
    }

    /// Sets the packet length, keeping its start. Returns false, and changes nothing, when
    /// the chunk cannot hold `len` bytes from the current start.
    #[must_use]
    pub fn set_len(&mut self, len: usize) -> bool {
        match u32::try_from(len) {
            Ok(len)
                if self
                    .head
                    .checked_add(len)
                    .is_some_and(|end| end <= self.cap) =>
            {
                self.len = len;
                true
            }
            _ => false,
        }
    }

    /// Moves the packet start to `headroom` bytes into the chunk with length zero.
    #[must_use]
    pub fn reset(&mut self, headroom: usize) -> bool {
        match u32::try_from(headroom) {
            Ok(h) if h <= self.cap => {
                self.head = h;
                self.len = 0;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn pool_id(&self) -> u32 {
        self.pool
    }

    pub(crate) fn chunk(&self) -> u32 {
        self.chunk
    }

    pub(crate) fn head(&self) -> u32 {
        self.head
    }
}

/// A fixed-capacity batch of frames; its storage is allocated once, at creation.
#[derive(Debug)]
pub struct Batch {
    frames: Vec<Frame>,
    cap: usize,
}

impl Batch {
    /// An empty batch that holds up to `cap` frames.
    pub fn with_capacity(cap: usize) -> Self {
        Batch {
            frames: Vec::with_capacity(cap),
            cap,
        }
    }

    /// Adds a frame; hands it back when the batch is full.
    pub fn push(&mut self, frame: Frame) -> Result<(), Frame> {
        if self.frames.len() >= self.cap {
            return Err(frame);
        }
        self.frames.push(frame);
        Ok(())
    }

    /// Number of frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the batch holds no frames.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Free places left.
    pub fn room(&self) -> usize {
        self.cap - self.frames.len()
    }

    /// Takes every frame out, in order, leaving the batch empty (its storage is kept).
    pub fn drain(&mut self) -> std::vec::Drain<'_, Frame> {
        self.frames.drain(..)
    }

    /// The frames held.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// The frames held, for in-place edits of their bounds.
    pub fn frames_mut(&mut self) -> &mut [Frame] {
        &mut self.frames
    }
}

/// Per-port counters, kept by the port (single owner) and read through [`PacketIo::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Frames dropped because the transmit ring or device was full.
    pub tx_full: u64,
    /// Frames dropped because transmission failed otherwise.
    pub tx_errors: u64,
    /// Times the kernel was woken (sendto/poll) because it asked to be.
    pub wakeups: u64,
    /// Allocations refused because the pool was empty.
    pub alloc_failed: u64,
    /// Received packets refused by the port itself (a datagram on the UDP port from an
    /// address that is no partner).
    pub rx_refused: u64,
}

/// Batch receive and transmit of frames on one port, with buffer recycling.
///
/// A port is owned by one worker thread; none of its methods lock.
pub trait PacketIo: Send {
    /// What the port's frames start with.
    fn link(&self) -> Link;

    /// Moves up to `batch.room()` received frames into `batch`; returns how many.
    fn recv(&mut self, batch: &mut Batch) -> Result<usize, IoError>;

    /// Queues every frame in `batch` for transmission and empties the batch. Frames that
    /// could not be queued (ring full) are recycled and counted in [`PortStats::tx_full`].
    /// Returns how many were queued.
    fn send(&mut self, batch: &mut Batch) -> Result<usize, IoError>;

    /// An empty frame from this port's pool with [`DEFAULT_HEADROOM`] in front, or `None`
    /// when every buffer is in flight (counted in [`PortStats::alloc_failed`]).
    fn alloc(&mut self) -> Option<Frame>;

    /// Gives a frame back to the pool without sending it.
    fn release(&mut self, frame: Frame);

    /// The packet bytes of a frame issued by this port.
    fn data(&self, frame: &Frame) -> &[u8];

    /// The packet bytes of a frame issued by this port, writable.
    fn data_mut(&mut self, frame: &Frame) -> &mut [u8];

    /// Counters so far.
    fn stats(&self) -> PortStats;

    /// A descriptor that becomes readable when frames arrive, for an idle worker to wait
    /// on; `None` when the port cannot be waited on (memory).
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }

    /// Reaps transmit completions and refills receive buffers without receiving; called by
    /// an idle worker so rings keep moving.
    fn maintain(&mut self) -> Result<(), IoError> {
        Ok(())
    }
}

/// Hands out a process-wide unique id for each buffer pool, so a frame given to the wrong
/// port is caught instead of corrupting another pool.
pub(crate) fn next_pool_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    // Relaxed: the id only has to be unique; no other memory is published with it.
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_bounds_are_checked() {
        let mut f = Frame::new(1, 0, 10, 5, 32);
        assert!(!f.push_head(11));
        assert!(f.push_head(10));
        assert_eq!((f.headroom(), f.len()), (0, 15));
        assert!(!f.pull_head(16));
        assert!(f.pull_head(15));
        assert!(f.is_empty());
        assert!(f.set_len(17));
        assert!(!f.set_len(18));
        assert_eq!(f.tailroom(), 0);
        assert!(f.reset(8));
        assert_eq!((f.headroom(), f.len(), f.tailroom()), (8, 0, 24));
        assert!(!f.reset(33));
    }

    #[test]
    fn batch_refuses_beyond_capacity() {
        let mut b = Batch::with_capacity(2);
        assert!(b.push(Frame::new(1, 0, 0, 0, 8)).is_ok());
        assert!(b.push(Frame::new(1, 1, 0, 0, 8)).is_ok());
        let back = b.push(Frame::new(1, 2, 0, 0, 8)).unwrap_err();
        assert_eq!(back.chunk(), 2);
        assert_eq!(b.room(), 0);
        assert_eq!(b.drain().count(), 2);
        assert!(b.is_empty());
    }
}
