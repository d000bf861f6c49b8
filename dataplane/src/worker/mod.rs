//! The fast-path worker pool: one worker per queue, pinned to a core, run to completion
//! (receive a batch, process each frame, transmit the batch).
//!
//! Each worker owns its LAN and WAN ports and whatever per-worker state its [`Process`]
//! holds (a history lane, a replay window); nothing is locked on the hot path. A frame
//! whose state belongs to another worker is handed to it over that worker's bounded
//! lock-free inbox ([`handoff`]); a full inbox is counted in
//! [`WorkerCounters::handoff_full`], never silent. Workers stop when the pool's atomic
//! stop flag is raised.
#![deny(unsafe_code)]

pub mod handoff;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::io::{Batch, Frame, PacketIo, Port, PortStats};

pub use handoff::{Inbox, Mesh};

/// What a [`Process`] decided for one frame.
#[derive(Debug)]
pub enum Action {
    /// Transmit the frame on a port; the frame must come from that port's pool.
    Transmit(Port, Frame),
    /// Recycle the frame into the pool of the port it came from.
    Drop(Port, Frame),
    /// The processor used the frame's contents (e.g. combined it into a bundle it
    /// sends itself); recycle it without counting a drop.
    Consumed(Port, Frame),
    /// Give the frame (from `from`'s pool) to worker `worker`, which owns its state; it
    /// arrives there as if received on its own `from` port.
    Handoff {
        /// Index of the owning worker.
        worker: usize,
        /// Port whose pool holds the frame, and on which the owner sees it arrive.
        from: Port,
        /// The frame.
        frame: Frame,
    },
}

/// Per-packet processing plugged into a worker (forwarding, tunnel encode/decode).
pub trait Process: Send {
    /// Called once per loop iteration before any frame, e.g. to pick up new tables.
    fn begin(&mut self, _worker: usize) {}

    /// Decides what happens to one frame received on `from`.
    fn process(&mut self, ports: &mut Ports, from: Port, frame: Frame) -> Action;

    /// Called after each receive batch (and after the handoff inbox): the processor
    /// sends what it held back to combine within the batch (tunnel bundles). It never
    /// holds frames beyond this call, so combining adds no latency.
    fn flush(&mut self, _ports: &mut Ports) {}

    /// Called once per loop iteration after transmitting, e.g. to publish counters.
    fn end(&mut self, _worker: usize) {}
}

/// A worker's two ports.
pub struct Ports {
    /// Towards the site's hosts.
    pub lan: Box<dyn PacketIo>,
    /// Towards the partners.
    pub wan: Box<dyn PacketIo>,
}

impl Ports {
    /// The port facing `side`.
    pub fn get(&mut self, side: Port) -> &mut dyn PacketIo {
        match side {
            Port::Lan => self.lan.as_mut(),
            Port::Wan => self.wan.as_mut(),
        }
    }

    /// Copies `frame` (from `from`'s pool) into a new frame of the other port. Returns
    /// `None` when that pool is empty or the bytes do not fit; `frame` stays with the caller.
    pub fn copy_across(&mut self, from: Port, frame: &Frame) -> Option<Frame> {
        let (src, dst) = match from {
            Port::Lan => (&self.lan, &mut self.wan),
            Port::Wan => (&self.wan, &mut self.lan),
        };
        let bytes = src.data(frame);
        let mut copy = dst.alloc()?;
        if !copy.set_len(bytes.len()) {
            dst.release(copy);
            return None;
        }
        dst.data_mut(&copy).copy_from_slice(bytes);
        Some(copy)
    }

    /// The port facing `side`, read-only.
    pub fn peek(&self, side: Port) -> &dyn PacketIo {
        match side {
            Port::Lan => self.lan.as_ref(),
            Port::Wan => self.wan.as_ref(),
        }
    }
}

/// Counters of one worker, updated once per loop iteration (relaxed: they are statistics
/// and publish no other memory), readable from any thread.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Frames received on either port (including frames handed in).
    pub rx: AtomicU64,
    /// Frames queued for transmission.
    pub tx: AtomicU64,
    /// Frames the processor dropped.
    pub dropped: AtomicU64,
    /// Frames handed to another worker.
    pub handoff_out: AtomicU64,
    /// Frames received from another worker.
    pub handoff_in: AtomicU64,
    /// Frames dropped because the owner's inbox was full.
    pub handoff_full: AtomicU64,
    /// Handed-in frames dropped because the local pool was empty.
    pub handoff_no_buffer: AtomicU64,
    /// Receive or transmit calls that failed.
    pub io_errors: AtomicU64,
    /// Loop iterations that found no work.
    pub idle: AtomicU64,
}

/// A plain copy of [`WorkerCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub rx: u64,
    pub tx: u64,
    pub dropped: u64,
    pub handoff_out: u64,
    pub handoff_in: u64,
    pub handoff_full: u64,
    pub handoff_no_buffer: u64,
    pub io_errors: u64,
    pub idle: u64,
}

impl WorkerCounters {
    /// Current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            rx: get(&self.rx),
            tx: get(&self.tx),
            dropped: get(&self.dropped),
            handoff_out: get(&self.handoff_out),
            handoff_in: get(&self.handoff_in),
            handoff_full: get(&self.handoff_full),
            handoff_no_buffer: get(&self.handoff_no_buffer),
            io_errors: get(&self.io_errors),
            idle: get(&self.idle),
        }
    }

    fn add(&self, d: &CounterSnapshot) {
        let add = |c: &AtomicU64, v: u64| {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&self.rx, d.rx);
        add(&self.tx, d.tx);
        add(&self.dropped, d.dropped);
        add(&self.handoff_out, d.handoff_out);
        add(&self.handoff_in, d.handoff_in);
        add(&self.handoff_full, d.handoff_full);
        add(&self.handoff_no_buffer, d.handoff_no_buffer);
        add(&self.io_errors, d.io_errors);
        add(&self.idle, d.idle);
    }
}

/// What an idle worker does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Spin (lowest latency, burns the core; benchmarks).
    Spin,
    /// Wait on the ports' descriptors for up to this long (memory ports: sleep).
    Wait(Duration),
}

/// Settings shared by every worker of a pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Frames per receive/transmit batch.
    pub batch: usize,
    /// Places in each worker's handoff inbox.
    pub inbox_slots: usize,
    /// Largest frame a handoff carries.
    pub inbox_slot_size: usize,
    /// Idle behaviour.
    pub idle: Idle,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            batch: 64,
            inbox_slots: 1024,
            inbox_slot_size: 4096,
            idle: Idle::Wait(Duration::from_millis(1)),
        }
    }
}

/// What one worker is made of.
pub struct WorkerSpec {
    /// Its ports.
    pub ports: Ports,
    /// Core to pin to; `None` leaves it to the scheduler.
    pub core: Option<usize>,
    /// Its per-packet processing.
    pub process: Box<dyn Process>,
}

/// Errors of the worker pool.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A worker was asked for a core this machine does not have.
    #[error("core {core} does not exist (this machine has {available}); fix the core list")]
    NoSuchCore { core: usize, available: usize },
    /// The worker thread could not be started.
    #[error("starting worker thread {index} failed: {source}")]
    Spawn {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    /// A worker thread panicked.
    #[error("worker {index} panicked; see the log for its message")]
    Panicked { index: usize },
}

/// One worker: its ports, processor and inbox, driven by [`Worker::poll_once`] (its own
/// thread in a [`WorkerPool`], or a test's loop).
pub struct Worker {
    index: usize,
    ports: Ports,
    process: Box<dyn Process>,
    mesh: Arc<Mesh>,
    rx: Batch,
    lan_tx: Batch,
    wan_tx: Batch,
    pending: CounterSnapshot,
    counters: Arc<WorkerCounters>,
}

impl Worker {
    /// Worker `index` of `mesh`.
    pub fn new(
        index: usize,
        ports: Ports,
        process: Box<dyn Process>,
        mesh: Arc<Mesh>,
        batch: usize,
    ) -> Self {
        Worker {
            index,
            ports,
            process,
            mesh,
            rx: Batch::with_capacity(batch),
            lan_tx: Batch::with_capacity(batch),
            wan_tx: Batch::with_capacity(batch),
            pending: CounterSnapshot::default(),
            counters: Arc::new(WorkerCounters::default()),
        }
    }

    /// This worker's counters.
    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.counters.clone()
    }

    /// The worker's ports (for tests and statistics).
    pub fn ports(&mut self) -> &mut Ports {
        &mut self.ports
    }

    /// One run-to-completion round: a receive batch from each port, the handoff inbox,
    /// then transmit. Returns the number of frames handled.
    pub fn poll_once(&mut self) -> usize {
        self.process.begin(self.index);
        let mut work = 0;
        for side in [Port::Lan, Port::Wan] {
            match self.ports.get(side).recv(&mut self.rx) {
                Ok(n) => work += n,
                Err(e) => {
                    self.pending.io_errors += 1;
                    tracing::debug!(worker = self.index, ?side, error = %e, "receive failed");
                }
            }
            self.pending.rx += self.rx.len() as u64;
            let mut rx = std::mem::replace(&mut self.rx, Batch::with_capacity(0));
            for frame in rx.drain() {
                let action = self.process.process(&mut self.ports, side, frame);
                self.apply(action);
            }
            self.rx = rx;
            self.process.flush(&mut self.ports);
        }
        work += self.drain_inbox();
        self.process.flush(&mut self.ports);
        self.flush();
        self.process.end(self.index);
        if work == 0 {
            self.pending.idle += 1;
        }
        self.counters.add(&self.pending);
        self.pending = CounterSnapshot::default();
        work
    }

    /// Keeps rings moving while idle (completions, fill ring).
    pub fn maintain(&mut self) {
        for side in [Port::Lan, Port::Wan] {
            if self.ports.get(side).maintain().is_err() {
                self.pending.io_errors += 1;
            }
        }
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Transmit(side, frame) => {
                let batch = match side {
                    Port::Lan => &mut self.lan_tx,
                    Port::Wan => &mut self.wan_tx,
                };
                if let Err(frame) = batch.push(frame) {
                    self.flush_side(side);
                    let batch = match side {
                        Port::Lan => &mut self.lan_tx,
                        Port::Wan => &mut self.wan_tx,
                    };
                    let _ = batch.push(frame);
                }
            }
            Action::Drop(side, frame) => {
                self.pending.dropped += 1;
                self.ports.get(side).release(frame);
            }
            Action::Consumed(side, frame) => self.ports.get(side).release(frame),
            Action::Handoff {
                worker,
                from,
                frame,
            } => {
                let port = self.ports.get(from);
                if self.mesh.send(worker, from, port.data(&frame)) {
                    self.pending.handoff_out += 1;
                } else {
                    self.pending.handoff_full += 1;
                }
                port.release(frame);
            }
        }
    }

    fn drain_inbox(&mut self) -> usize {
        let mut n = 0;
        let budget = self.rx.room();
        let mesh = self.mesh.clone();
        let inbox = mesh.inbox(self.index);
        while n < budget {
            let Some(parcel) = inbox.take() else { break };
            n += 1;
            let port = self.ports.get(parcel.from());
            let Some(mut frame) = port.alloc() else {
                self.pending.handoff_no_buffer += 1;
                inbox.give_back(parcel);
                continue;
            };
            if !frame.set_len(parcel.bytes().len()) {
                port.release(frame);
                self.pending.handoff_no_buffer += 1;
                inbox.give_back(parcel);
                continue;
            }
            port.data_mut(&frame).copy_from_slice(parcel.bytes());
            let from = parcel.from();
            inbox.give_back(parcel);
            self.pending.handoff_in += 1;
            let action = self.process.process(&mut self.ports, from, frame);
            self.apply(action);
        }
        n
    }

    fn flush(&mut self) {
        self.flush_side(Port::Lan);
        self.flush_side(Port::Wan);
    }

    fn flush_side(&mut self, side: Port) {
        let batch = match side {
            Port::Lan => &mut self.lan_tx,
            Port::Wan => &mut self.wan_tx,
        };
        if batch.is_empty() {
            return;
        }
        match self.ports.get(side).send(batch) {
            Ok(n) => self.pending.tx += n as u64,
            Err(e) => {
                self.pending.io_errors += 1;
                tracing::debug!(worker = self.index, ?side, error = %e, "transmit failed");
            }
        }
    }

    fn wait(&mut self, idle: Idle) {
        match idle {
            Idle::Spin => std::hint::spin_loop(),
            Idle::Wait(d) => {
                self.maintain();
                let mut fds = [0; 2];
                let mut n = 0;
                for side in [Port::Lan, Port::Wan] {
                    if let Some(fd) = self.ports.peek(side).wait_fd() {
                        fds[n] = fd;
                        n += 1;
                    }
                }
                let fds = &fds[..n];
                if fds.is_empty() {
                    std::thread::sleep(d);
                } else {
                    let ms = d.as_millis().clamp(1, i32::MAX as u128) as i32;
                    if crate::io::sys::wait_readable(fds, ms).is_err() {
                        self.pending.io_errors += 1;
                    }
                }
            }
        }
    }
}

/// Running workers, one thread each.
pub struct WorkerPool {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(PortStats, PortStats)>>,
    counters: Vec<Arc<WorkerCounters>>,
}

/// Final statistics of a stopped worker.
#[derive(Clone, Copy, Debug)]
pub struct WorkerReport {
    /// The worker's counters.
    pub counters: CounterSnapshot,
    /// Its LAN port's counters.
    pub lan: PortStats,
    /// Its WAN port's counters.
    pub wan: PortStats,
}

impl WorkerPool {
    /// Starts one pinned thread per spec. Worker `i` owns inbox `i` of the pool's mesh.
    pub fn start(config: PoolConfig, specs: Vec<WorkerSpec>) -> Result<Self, WorkerError> {
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        for spec in &specs {
            if let Some(core) = spec.core.filter(|&c| c >= available) {
                return Err(WorkerError::NoSuchCore { core, available });
            }
        }
        let mesh = Mesh::new(specs.len(), config.inbox_slots, config.inbox_slot_size);
        let stop = Arc::new(AtomicBool::new(false));
        let mut pool = WorkerPool {
            stop: stop.clone(),
            threads: Vec::new(),
            counters: Vec::new(),
        };
        for (index, spec) in specs.into_iter().enumerate() {
            let mut worker =
                Worker::new(index, spec.ports, spec.process, mesh.clone(), config.batch);
            pool.counters.push(worker.counters());
            let stop = stop.clone();
            let core = spec.core;
            let handle = std::thread::Builder::new()
                .name(format!("shunt-worker-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        pin_to_core(index, core);
                    }
                    tracing::info!(worker = index, ?core, "worker started");
                    // Acquire pairs with the Release in `stop`: anything written before
                    // the flag is visible once the worker sees it.
                    while !stop.load(Ordering::Acquire) {
                        if worker.poll_once() == 0 {
                            worker.wait(config.idle);
                        }
                    }
                    worker.flush();
                    tracing::info!(worker = index, "worker stopped");
                    (worker.ports.lan.stats(), worker.ports.wan.stats())
                })
                .map_err(|source| WorkerError::Spawn { index, source })?;
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Live counters, one per worker.
    pub fn counters(&self) -> &[Arc<WorkerCounters>] {
        &self.counters
    }

    /// Raises the stop flag, joins every worker and returns their final statistics.
    pub fn stop(mut self) -> Result<Vec<WorkerReport>, WorkerError> {
        self.stop.store(true, Ordering::Release);
        let mut reports = Vec::new();
        for (index, handle) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            let (lan, wan) = handle.join().map_err(|_| WorkerError::Panicked { index })?;
            reports.push(WorkerReport {
                counters: self.counters[index].snapshot(),
                lan,
                wan,
            });
        }
        Ok(reports)
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

fn pin_to_core(index: usize, core: usize) {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(core)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        tracing::warn!(worker = index, core, error = %e, "could not pin worker to its core");
    }
}

#[cfg(test)]
mod tests;
