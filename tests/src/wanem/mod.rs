//! The userspace WAN emulator: a layer-2 bridge between two ports that delays, loses,
//! reorders, duplicates and rate-limits frames, and counts everything each way.
//!
//! Each direction runs on its own thread with a fixed pool of frame buffers: frames
//! are read in batches (recvmmsg) from an AF_PACKET socket on the ingress port, given
//! a fate by [`LinkProfile`], and sent in batches (sendmmsg) out of the egress port
//! once due. Decisions come from a seeded generator, so a seed and a frame sequence
//! always give the same losses, duplicates and reorderings.
//!
//! Start it in-process with [`Wanem::start`] / [`Wanem::start_in`] (the
//! [`crate::testbed::Testbed`] does this itself) or as the `shunt-wanem` binary.

#![forbid(unsafe_code)]

mod capture;
mod config;
mod impair;
mod line;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

pub use capture::{CapturedFrame, write_pcap};
pub use config::{LinkProfile, WanemConfig};
use serde::Serialize;

use crate::netns::{Netns, NetnsError};
use crate::sys::PacketSocket;

/// Which way a frame travels through the emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// In on port A, out on port B (site A to site B in the testbed).
    AToB = 0,
    /// In on port B, out on port A.
    BToA = 1,
}

impl Direction {
    fn profile(self, config: &WanemConfig) -> LinkProfile {
        match self {
            Direction::AToB => config.a_to_b,
            Direction::BToA => config.b_to_a,
        }
    }

    fn seed_salt(self) -> u64 {
        match self {
            Direction::AToB => 0,
            Direction::BToA => 0xb0a0_b0a0_b0a0_b0a0,
        }
    }
}

/// Counters of one direction, as a snapshot.
///
/// Frames are counted once when read (`rx_*`) and once per copy sent (`tx_*`), so
/// `tx_packets = rx_packets - dropped_loss - dropped_queue - dropped_error + duplicated
/// - in flight`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    /// Frames read from the ingress port.
    pub rx_packets: u64,
    /// Bytes of those frames (Ethernet header included).
    pub rx_bytes: u64,
    /// Frames sent out of the egress port, duplicates included.
    pub tx_packets: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames dropped by the loss probability.
    pub dropped_loss: u64,
    /// Frames dropped because the rate limiter's backlog or the buffer pool was full.
    pub dropped_queue: u64,
    /// Frames dropped as too long for a buffer or refused by the egress port.
    pub dropped_error: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Frames held back behind later ones.
    pub reordered: u64,
    /// Frames the kernel dropped before the emulator could read them (socket buffer
    /// full): the emulator could not keep up.
    pub kernel_drops: u64,
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WanemStats {
    /// Port A to port B.
    pub a_to_b: DirectionStats,
    /// Port B to port A.
    pub b_to_a: DirectionStats,
}

/// Errors of the emulator.
#[derive(Debug, thiserror::Error)]
pub enum WanemError {
    /// A port's socket could not be opened.
    #[error(
        "cannot open an AF_PACKET socket on `{if_name}`: {source} (does the interface exist in this namespace, and are we root?)"
    )]
    Socket {
        /// The port.
        if_name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The settings are invalid.
    #[error("invalid emulator settings: {0}")]
    Config(String),
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A forwarding thread could not start.
    #[error("cannot start the {direction:?} forwarding thread: {source}")]
    Thread {
        /// Its direction.
        direction: Direction,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A forwarding thread stopped on a socket error (a port went away?).
    #[error("the {direction:?} forwarding thread failed: {source}")]
    Forwarding {
        /// Its direction.
        direction: Direction,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A running emulator; stops (and joins its threads) on drop.
#[derive(Debug)]
pub struct Wanem {
    shared: Arc<Shared>,
    threads: Vec<(Direction, JoinHandle<std::io::Result<()>>)>,
}

impl Wanem {
    /// Starts bridging `if_a` and `if_b` of the calling thread's namespace.
    pub fn start(if_a: &str, if_b: &str, config: WanemConfig) -> Result<Self, WanemError> {
        validate(&config)?;
        let a = open(if_a, config.socket_buffer)?;
        let b = open(if_b, config.socket_buffer)?;
        Self::run(a, b, config)
    }

    /// Starts bridging `if_a` and `if_b` inside `netns` (the sockets are made there;
    /// the threads can run anywhere).
    pub fn start_in(
        netns: &Netns,
        if_a: &str,
        if_b: &str,
        config: WanemConfig,
    ) -> Result<Self, WanemError> {
        validate(&config)?;
        let buffer = config.socket_buffer;
        let (a, b) =
            netns.enter(|| Ok::<_, WanemError>((open(if_a, buffer)?, open(if_b, buffer)?)))??;
        Self::run(a, b, config)
    }

    fn run(a: PacketSocket, b: PacketSocket, config: WanemConfig) -> Result<Self, WanemError> {
        let capture = (config.capture_frames > 0).then(|| {
            Mutex::new(capture::CaptureRing::new(
                config.capture_frames,
                config.capture_snaplen,
            ))
        });
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            counters: Default::default(),
            config: Mutex::new(config),
            generation: AtomicU64::new(0),
            capture,
            started: Instant::now(),
            started_wall: SystemTime::now(),
        });
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut wanem = Wanem {
            shared: Arc::clone(&shared),
            threads: Vec::new(),
        };
        for (direction, rx, tx) in [(Direction::AToB, &a, &b), (Direction::BToA, &b, &a)] {
            let line = line::Line::new(
                direction,
                Arc::clone(rx),
                Arc::clone(tx),
                Arc::clone(&shared),
            );
            let handle = std::thread::Builder::new()
                .name(format!("wanem-{direction:?}"))
                .spawn(move || line.run())
                .map_err(|source| WanemError::Thread { direction, source })?;
            wanem.threads.push((direction, handle));
        }
        tracing::info!("WAN emulator started");
        Ok(wanem)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WanemStats {
        WanemStats {
            a_to_b: self.shared.counters[0].snapshot(),
            b_to_a: self.shared.counters[1].snapshot(),
        }
    }

    /// The current settings.
    pub fn config(&self) -> WanemConfig {
        self.shared
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the impairments of both directions while running; frames already
    /// queued keep their release time. Pool and capture sizes cannot change.
    pub fn set_profiles(&self, a_to_b: LinkProfile, b_to_a: LinkProfile) -> Result<(), WanemError> {
        a_to_b.validate().map_err(WanemError::Config)?;
        b_to_a.validate().map_err(WanemError::Config)?;
        let mut c = self.shared.config.lock().unwrap_or_else(|p| p.into_inner());
        c.a_to_b = a_to_b;
        c.b_to_a = b_to_a;
        self.shared.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Frames in the capture ring, oldest first (empty when capture is off).
    pub fn captured(&self) -> Vec<CapturedFrame> {
        self.shared
            .capture
            .as_ref()
            .map_or_else(Vec::new, |r| lock(r).frames())
    }

    /// True when a frame in the capture ring contains `needle` (for example a
    /// plaintext marker that must never cross the WAN unencrypted).
    pub fn capture_contains(&self, needle: &[u8]) -> bool {
        self.shared
            .capture
            .as_ref()
            .is_some_and(|r| lock(r).contains(needle))
    }

    /// Empties the capture ring.
    pub fn clear_capture(&self) {
        if let Some(r) = &self.shared.capture {
            lock(r).clear();
        }
    }

    /// Writes the capture ring to a pcap file.
    pub fn write_pcap(&self, path: &Path) -> std::io::Result<()> {
        let snaplen = self
            .shared
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .capture_snaplen;
        write_pcap(path, &self.captured(), self.shared.started_wall, snaplen)
    }

    /// True while both forwarding threads run.
    pub fn is_running(&self) -> bool {
        self.threads.iter().all(|(_, t)| !t.is_finished())
    }

    /// Stops forwarding (frames still queued are discarded) and returns the final
    /// counters, or the first forwarding error.
    pub fn stop(mut self) -> Result<WanemStats, WanemError> {
        self.halt()?;
        Ok(self.stats())
    }

    fn halt(&mut self) -> Result<(), WanemError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut first_error = None;
        for (direction, handle) in self.threads.drain(..) {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("forwarding thread panicked")));
            if let Err(source) = result {
                first_error.get_or_insert(WanemError::Forwarding { direction, source });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Wanem {
    fn drop(&mut self) {
        if let Err(error) = self.halt() {
            tracing::warn!(%error, "WAN emulator stopped with an error");
        }
    }
}

/// State shared by the handle and both forwarding threads.
#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    counters: [Counters; 2],
    config: Mutex<WanemConfig>,
    /// Bumped on every settings change; threads reload when it moves.
    generation: AtomicU64,
    capture: Option<Mutex<capture::CaptureRing>>,
    started: Instant,
    started_wall: SystemTime,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }
}

/// Live counters of one direction. Relaxed atomics: each counter is independent and
/// only read for reporting.
#[derive(Debug, Default)]
struct Counters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_error: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    kernel_drops: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionStats {
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            dropped_loss: get(&self.dropped_loss),
            dropped_queue: get(&self.dropped_queue),
            dropped_error: get(&self.dropped_error),
            duplicated: get(&self.duplicated),
            reordered: get(&self.reordered),
            kernel_drops: get(&self.kernel_drops),
        }
    }
}

fn validate(config: &WanemConfig) -> Result<(), WanemError> {
    config.a_to_b.validate().map_err(WanemError::Config)?;
    config.b_to_a.validate().map_err(WanemError::Config)?;
    if config.pool_frames < 2 * crate::sys::BATCH {
        return Err(WanemError::Config(format!(
            "pool_frames must be at least {}",
            2 * crate::sys::BATCH
        )));
    }
    if config.max_frame < 64 {
        return Err(WanemError::Config(
            "max_frame must be at least 64 bytes".into(),
        ));
    }
    Ok(())
}

fn open(if_name: &str, buffer: usize) -> Result<PacketSocket, WanemError> {
    PacketSocket::open(if_name, buffer).map_err(|source| WanemError::Socket {
        if_name: if_name.to_owned(),
        source,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
