//! One direction of the emulator: read frames from the ingress port in batches, decide
//! their fate, hold them in a fixed pool until due, send them out of the egress port.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::impair::{Impairment, Verdict};
use super::{Direction, Shared};
use crate::sys::{BATCH, Frame, PacketSocket};

/// A held frame leaves at the latest this long after its due time.
const HOLD_LIMIT_NS: u64 = 50_000_000;
/// At most this many frames are held back at once.
const MAX_HELD: usize = 64;
/// Longest sleep while idle, so `stop` is noticed quickly.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How often the kernel's receive-drop counter is read.
const KERNEL_DROPS_EVERY_NS: u64 = 100_000_000;

struct Queued {
    frame: Frame,
    release_ns: u64,
}

struct Held {
    frame: Frame,
    /// Leaves once this many frames have been released in total.
    after_released: u64,
    deadline_ns: u64,
}

/// The state of one direction; all buffers are allocated in [`Line::new`].
pub(crate) struct Line {
    direction: Direction,
    rx: Arc<PacketSocket>,
    tx: Arc<PacketSocket>,
    shared: Arc<Shared>,
    impair: Impairment,
    generation: u64,
    free: Vec<Frame>,
    /// Frames read while the pool is exhausted land here and are dropped.
    overflow: Vec<Frame>,
    rx_batch: Vec<Frame>,
    tx_batch: Vec<Frame>,
    queue: VecDeque<Queued>,
    held: Vec<Held>,
    released: u64,
    next_kernel_drops_ns: u64,
}

impl Line {
    pub(crate) fn new(
        direction: Direction,
        rx: Arc<PacketSocket>,
        tx: Arc<PacketSocket>,
        shared: Arc<Shared>,
    ) -> Self {
        let (profile, seed, pool, size, generation) = {
            let c = shared.config.lock().unwrap_or_else(|p| p.into_inner());
            (
                direction.profile(&c),
                c.seed,
                c.pool_frames,
                c.max_frame,
                shared.generation.load(Ordering::Acquire),
            )
        };
        let seed = seed ^ direction.seed_salt();
        Line {
            direction,
            rx,
            tx,
            shared,
            impair: Impairment::new(profile, seed),
            generation,
            free: (0..pool).map(|_| Frame::new(size)).collect(),
            overflow: (0..BATCH).map(|_| Frame::new(size)).collect(),
            rx_batch: Vec::with_capacity(BATCH),
            tx_batch: Vec::with_capacity(BATCH),
            queue: VecDeque::with_capacity(pool),
            held: Vec::with_capacity(MAX_HELD),
            released: 0,
            next_kernel_drops_ns: 0,
        }
    }

    /// Forwards until the shared stop flag is set or a socket fails.
    pub(crate) fn run(mut self) -> io::Result<()> {
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = self.shared.now_ns();
            self.release_due(now)?;
            if now >= self.next_kernel_drops_ns {
                let drops = self.rx.take_kernel_drops()?;
                self.counters()
                    .kernel_drops
                    .fetch_add(drops, Ordering::Relaxed);
                self.next_kernel_drops_ns = now + KERNEL_DROPS_EVERY_NS;
            }
            let wait = self.next_due_ns().map_or(IDLE_WAIT, |due| {
                Duration::from_nanos(due.saturating_sub(self.shared.now_ns())).min(IDLE_WAIT)
            });
            if self.rx.wait_readable(wait)? {
                self.receive()?;
            }
        }
        Ok(())
    }

    fn counters(&self) -> &super::Counters {
        &self.shared.counters[self.direction as usize]
    }

    fn reload_profile(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            let c = self.shared.config.lock().unwrap_or_else(|p| p.into_inner());
            self.impair.set_profile(self.direction.profile(&c));
            self.generation = generation;
        }
    }

    /// Reads one batch and files every frame: lost, dropped, queued, held, duplicated.
    fn receive(&mut self) -> io::Result<()> {
        let from_pool = self.free.len() >= BATCH;
        let source = if from_pool {
            &mut self.free
        } else {
            &mut self.overflow
        };
        for _ in 0..BATCH {
            self.rx_batch
                .push(source.pop().expect("source holds at least BATCH frames"));
        }
        let got = match self.rx.recv_batch(&mut self.rx_batch) {
            Ok(got) => got,
            Err(e) => {
                self.return_rx_batch(from_pool);
                return Err(e);
            }
        };
        // After the read: a profile set before a frame was sent applies to it, even if
        // the change came while this thread slept in wait_readable.
        self.reload_profile();
        let now = self.shared.now_ns();
        let (mut rx_bytes, mut lost, mut overflowed, mut errors, mut dups, mut holds) =
            (0, 0, 0, 0, 0, 0);
        if let Some(ring) = &self.shared.capture {
            let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
            for frame in &self.rx_batch[..got] {
                ring.record(self.direction, now, frame.data());
            }
        }
        // Walk the received frames in arrival order; the unused tail goes back below.
        // `take` leaves an empty Vec behind without allocating; the batch's capacity
        // comes back with it.
        let mut batch = std::mem::take(&mut self.rx_batch);
        for frame in batch.drain(..got) {
            rx_bytes += frame.len as u64;
            if !from_pool {
                overflowed += 1;
                self.overflow.push(frame);
                continue;
            }
            if frame.len > frame.buf.len() {
                errors += 1;
                self.free.push(frame);
                continue;
            }
            match self.impair.admit(now, frame.len) {
                Verdict::Lose => {
                    lost += 1;
                    self.free.push(frame);
                }
                Verdict::Overflow => {
                    overflowed += 1;
                    self.free.push(frame);
                }
                Verdict::Forward {
                    release_ns,
                    duplicate,
                    hold,
                } => {
                    if duplicate && let Some(mut copy) = self.free.pop() {
                        copy.buf[..frame.len].copy_from_slice(frame.data());
                        copy.len = frame.len;
                        self.queue.push_back(Queued {
                            frame: copy,
                            release_ns,
                        });
                        dups += 1;
                    }
                    if hold && self.held.len() < MAX_HELD {
                        let after_released =
                            self.released + self.queue.len() as u64 + self.impair.reorder_gap();
                        let deadline_ns = release_ns + HOLD_LIMIT_NS;
                        self.held.push(Held {
                            frame,
                            after_released,
                            deadline_ns,
                        });
                        holds += 1;
                    } else {
                        self.queue.push_back(Queued { frame, release_ns });
                    }
                }
            }
        }
        self.rx_batch = batch;
        self.return_rx_batch(from_pool);

        let c = self.counters();
        c.rx_packets.fetch_add(got as u64, Ordering::Relaxed);
        c.rx_bytes.fetch_add(rx_bytes, Ordering::Relaxed);
        c.dropped_loss.fetch_add(lost, Ordering::Relaxed);
        c.dropped_queue.fetch_add(overflowed, Ordering::Relaxed);
        c.dropped_error.fetch_add(errors, Ordering::Relaxed);
        c.duplicated.fetch_add(dups, Ordering::Relaxed);
        c.reordered.fetch_add(holds, Ordering::Relaxed);
        Ok(())
    }

    fn return_rx_batch(&mut self, from_pool: bool) {
        let target = if from_pool {
            &mut self.free
        } else {
            &mut self.overflow
        };
        target.append(&mut self.rx_batch);
    }

    /// Sends every frame whose time has come, held frames right after the frames that
    /// overtook them.
    fn release_due(&mut self, now: u64) -> io::Result<()> {
        loop {
            while self.tx_batch.len() < BATCH {
                if let Some(i) = self
                    .held
                    .iter()
                    .position(|h| h.after_released <= self.released || h.deadline_ns <= now)
                {
                    self.tx_batch.push(self.held.swap_remove(i).frame);
                    continue;
                }
                match self.queue.front() {
                    Some(q) if q.release_ns <= now => {
                        let q = self.queue.pop_front().expect("front exists");
                        self.tx_batch.push(q.frame);
                        self.released += 1;
                    }
                    _ => break,
                }
            }
            if self.tx_batch.is_empty() {
                return Ok(());
            }
            let full = self.tx_batch.len() == BATCH;
            self.send_batch()?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Sends `tx_batch`, retrying the rest after a partial send; a frame the kernel
    /// refuses is dropped and counted as `dropped_error`.
    fn send_batch(&mut self) -> io::Result<()> {
        let (mut sent, mut bytes, mut errors) = (0usize, 0u64, 0u64);
        let mut start = 0;
        while start < self.tx_batch.len() {
            match self.tx.send_batch(&self.tx_batch[start..]) {
                Ok(n) => {
                    bytes += self.tx_batch[start..start + n]
                        .iter()
                        .map(|f| f.len as u64)
                        .sum::<u64>();
                    sent += n;
                    start += n;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
                    ) =>
                {
                    // Transient: the egress side is congested; give it a moment.
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::EINVAL)) => {
                    tracing::trace!(direction = ?self.direction, error = %e, "frame refused");
                    errors += 1;
                    start += 1;
                }
                Err(e) => return Err(e),
            }
        }
        self.free.append(&mut self.tx_batch);
        let c = self.counters();
        c.tx_packets.fetch_add(sent as u64, Ordering::Relaxed);
        c.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        c.dropped_error.fetch_add(errors, Ordering::Relaxed);
        Ok(())
    }

    fn next_due_ns(&self) -> Option<u64> {
        let queued = self.queue.front().map(|q| q.release_ns);
        let held = self.held.iter().map(|h| h.deadline_ns).min();
        match (queued, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
