//! Write-behind of history blocks: a cheap hand-off on the fast path
//! ([`LaneSpool`]) and a writer object for another thread ([`StoreWriter`]).

use std::os::unix::fs::FileExt;

use std::time::Duration;

use crossbeam::channel::{self, Receiver, SendTimeoutError, Sender, TryRecvError, TrySendError};
use tracing::warn;

use super::block::{self, BlockInfo, MAX_BLOCK_RANGES, SECTOR};
use super::{LaneFile, StoreError, io_err};
use crate::codec::ring::Ring;
use crate::codec::{Decoder, Encoder};

/// A completed block on its way to disk.
struct BlockJob {
    file: usize,
    base: u64,
    history_id: u64,
    n_ranges: usize,
    ranges: [(u32, u32); MAX_BLOCK_RANGES],
    data: Box<[u8]>,
}

/// Fast-path side of one lane's write-behind: call [`LaneSpool::offer_encoder`]
/// or [`LaneSpool::offer_decoder`] after each batch; it copies completed
/// blocks into pooled buffers and queues them without blocking. When no
/// buffer or queue slot is free the block is skipped (counted), never waited for.
pub struct LaneSpool {
    file: usize,
    block_bytes: usize,
    settle_bytes: u64,
    next_block: u64,
    jobs: Sender<BlockJob>,
    pool: Receiver<Box<[u8]>>,
    pool_return: Sender<Box<[u8]>>,
    /// Blocks queued for writing.
    pub queued: u64,
    /// Blocks skipped because the writer was behind.
    pub skipped: u64,
}

/// The file-writing side, run on its own thread ([`StoreWriter::run`]) or
/// polled ([`StoreWriter::write_ready`]).
pub struct StoreWriter {
    jobs: Receiver<BlockJob>,
    pool_return: Sender<Box<[u8]>>,
    files: Vec<LaneFile>,
    meta: Box<[u8; SECTOR]>,
    /// Blocks written.
    pub written: u64,
}

/// Connects lane files to the fast path. `pool_blocks` buffers of one block
/// each are preallocated; `settle_bytes` (use the codec's reorder guard) is
/// how far past a block's end the history must be before the block is
/// written, so late packets land first. Returns one spool per file, in order.
/// All files must share one block size (open them from stores with the same
/// `block_bytes`).
pub fn write_behind(
    files: Vec<LaneFile>,
    pool_blocks: usize,
    settle_bytes: u64,
) -> Result<(Vec<LaneSpool>, StoreWriter), StoreError> {
    let pool_blocks = pool_blocks.max(1);
    if files
        .windows(2)
        .any(|w| w[0].block_bytes != w[1].block_bytes)
    {
        return Err(StoreError::Config(
            "lane files given to one writer must share block_bytes",
        ));
    }
    let (job_tx, job_rx) = channel::bounded(pool_blocks);
    let (pool_tx, pool_rx) = channel::bounded(pool_blocks);
    let block_bytes = files.first().map_or(SECTOR, |f| f.block_bytes);
    for _ in 0..pool_blocks {
        pool_tx
            .send(vec![0u8; block_bytes].into_boxed_slice())
            .expect("pool has room");
    }
    let spools = files
        .iter()
        .enumerate()
        .map(|(i, f)| LaneSpool {
            file: i,
            block_bytes: f.block_bytes,
            settle_bytes,
            next_block: f.restored_high_water / f.block_bytes as u64 * f.block_bytes as u64,
            jobs: job_tx.clone(),
            pool: pool_rx.clone(),
            pool_return: pool_tx.clone(),
            queued: 0,
            skipped: 0,
        })
        .collect();
    let writer = StoreWriter {
        jobs: job_rx,
        pool_return: pool_tx,
        files,
        meta: Box::new([0; SECTOR]),
        written: 0,
    };
    Ok((spools, writer))
}

impl LaneSpool {
    /// Queues the encoder's completed blocks; returns how many were queued.
    pub fn offer_encoder(&mut self, enc: &Encoder) -> usize {
        self.offer(enc.ring())
    }

    /// Queues the decoder's completed blocks; returns how many were queued.
    pub fn offer_decoder(&mut self, dec: &Decoder) -> usize {
        self.offer(dec.ring())
    }

    /// At shutdown: queues every block up to the encoder's high-water mark,
    /// the partly filled last one included, waiting up to `wait` for each
    /// buffer. Returns how many were queued.
    pub fn flush_encoder(&mut self, enc: &Encoder, wait: Duration) -> usize {
        self.flush(enc.ring(), wait)
    }

    /// At shutdown: as [`LaneSpool::flush_encoder`] for a decoder.
    pub fn flush_decoder(&mut self, dec: &Decoder, wait: Duration) -> usize {
        self.flush(dec.ring(), wait)
    }

    fn flush(&mut self, ring: &Ring, wait: Duration) -> usize {
        let mut queued = self.offer(ring);
        let bb = self.block_bytes as u64;
        while self.next_block < ring.high_water {
            // A partial block: written now, rewritten whole once it fills after
            // a restart (the restored high-water mark points into it).
            let skipped = self.skipped;
            if self.queue_block(ring, self.next_block, Some(wait)) {
                queued += 1;
            }
            self.next_block += bb;
            if self.skipped > skipped {
                // The writer is gone or stuck: do not wait for it block after block.
                break;
            }
        }
        queued
    }

    fn offer(&mut self, ring: &Ring) -> usize {
        let bb = self.block_bytes as u64;
        let floor = ring.high_water.saturating_sub(ring.capacity()) / bb * bb;
        self.next_block = self.next_block.max(floor);
        let mut queued = 0;
        while self.next_block + bb + self.settle_bytes <= ring.high_water {
            let base = self.next_block;
            self.next_block += bb;
            if self.queue_block(ring, base, None) {
                queued += 1;
            }
        }
        queued
    }

    /// Copies the block at `base` into a pooled buffer and queues it; without
    /// `wait`, never blocks. Returns whether it was queued.
    fn queue_block(&mut self, ring: &Ring, base: u64, wait: Option<Duration>) -> bool {
        let bb = self.block_bytes as u64;
        let mut ranges = [(0u32, 0u32); MAX_BLOCK_RANGES];
        let mut n = 0;
        for (s, e) in ring.held.iter() {
            let (s, e) = (s.max(base), e.min(base + bb));
            if s < e && n < MAX_BLOCK_RANGES {
                ranges[n] = ((s - base) as u32, (e - base) as u32);
                n += 1;
            }
        }
        if n == 0 {
            return false;
        }
        let buffer = match wait {
            None => self.pool.try_recv().ok(),
            Some(w) => self.pool.recv_timeout(w).ok(),
        };
        let Some(mut data) = buffer else {
            self.skipped += 1;
            return false;
        };
        data.copy_from_slice(ring.region(ring.slot(base), self.block_bytes));
        let job = BlockJob {
            file: self.file,
            base,
            history_id: ring.history_id,
            n_ranges: n,
            ranges,
            data,
        };
        let sent = match wait {
            None => self.jobs.try_send(job),
            Some(w) => self.jobs.send_timeout(job, w).map_err(|e| match e {
                SendTimeoutError::Timeout(j) | SendTimeoutError::Disconnected(j) => {
                    TrySendError::Full(j)
                }
            }),
        };
        match sent {
            Ok(()) => {
                self.queued += 1;
                true
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.skipped += 1;
                let _ = self.pool_return.try_send(job.data);
                false
            }
        }
    }
}

impl StoreWriter {
    /// Writes blocks until every spool is dropped; returns the lane files.
    pub fn run(mut self) -> Result<Vec<LaneFile>, StoreError> {
        while let Ok(job) = self.jobs.recv() {
            self.write(job)?;
        }
        self.sync()?;
        Ok(self.files)
    }

    /// Writes the blocks queued so far without waiting; returns how many.
    pub fn write_ready(&mut self) -> Result<usize, StoreError> {
        let mut n = 0;
        loop {
            match self.jobs.try_recv() {
                Ok(job) => {
                    self.write(job)?;
                    n += 1;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(n),
            }
        }
    }

    /// Flushes written blocks to stable storage.
    pub fn sync(&self) -> Result<(), StoreError> {
        for f in &self.files {
            f.file.sync_data().map_err(io_err(&f.path))?;
        }
        Ok(())
    }

    fn write(&mut self, mut job: BlockJob) -> Result<(), StoreError> {
        let f = &mut self.files[job.file];
        let slot = job.base / f.block_bytes as u64 % f.slots;
        let offset = f.slot_offset(slot);
        let info = BlockInfo {
            slot,
            history_id: job.history_id,
            base: job.base,
            seq: f.next_seq,
            ranges: &job.ranges[..job.n_ranges],
        };
        f.next_seq += 1;
        block::seal_block(
            &f.sealer,
            &f.ident,
            &info,
            &mut job.data,
            &mut self.meta,
            offset,
        );
        let res = f.file.write_all_at(&job.data, offset).and_then(|()| {
            f.file
                .write_all_at(&self.meta[..], offset + job.data.len() as u64)
        });
        let _ = self.pool_return.try_send(job.data);
        if let Err(e) = res {
            warn!(lane = f.lane, error = %e, "history block write failed");
            return Err(io_err(&f.path)(e));
        }
        self.written += 1;
        Ok(())
    }
}
