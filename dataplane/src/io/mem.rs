//! In-memory ports for tests and benchmarks: two [`MemPort`]s joined by a wire of two
//! bounded lock-free queues, one per direction. Like a real link the wire copies bytes,
//! so each side keeps its own pool; the wire's slots are allocated once and recycled.
#![deny(unsafe_code)]

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use super::{Batch, DEFAULT_HEADROOM, Frame, FramePool, IoError, Link, PacketIo, PortStats};

/// Sizes of a memory port and its wire.
#[derive(Clone, Copy, Debug)]
pub struct MemConfig {
    /// Chunks in each port's pool.
    pub chunks: u32,
    /// Bytes per chunk.
    pub chunk_size: u32,
    /// Frames in flight on the wire per direction before the sender sees "full".
    pub wire_slots: usize,
}

impl Default for MemConfig {
    fn default() -> Self {
        MemConfig {
            chunks: 1024,
            chunk_size: 2048,
            wire_slots: 512,
        }
    }
}

/// One direction of a wire: slots carrying bytes, and the empty slots going back.
#[derive(Debug)]
struct Lane {
    full: ArrayQueue<Slot>,
    empty: ArrayQueue<Slot>,
}

#[derive(Debug)]
struct Slot {
    len: usize,
    bytes: Box<[u8]>,
}

impl Lane {
    fn new(slots: usize, slot_size: usize) -> Arc<Self> {
        let lane = Lane {
            full: ArrayQueue::new(slots),
            empty: ArrayQueue::new(slots),
        };
        for _ in 0..slots {
            let slot = Slot {
                len: 0,
                bytes: vec![0; slot_size].into_boxed_slice(),
            };
            lane.empty.push(slot).expect("queue sized for every slot");
        }
        Arc::new(lane)
    }
}

/// One end of an in-memory wire.
#[derive(Debug)]
pub struct MemPort {
    pool: FramePool,
    tx: Arc<Lane>,
    rx: Arc<Lane>,
    stats: PortStats,
}

impl MemPort {
    /// Two ports joined by a wire: what one sends, the other receives.
    pub fn pair(config: MemConfig) -> (MemPort, MemPort) {
        let slot_size = config.chunk_size as usize;
        let a_to_b = Lane::new(config.wire_slots, slot_size);
        let b_to_a = Lane::new(config.wire_slots, slot_size);
        let a = MemPort {
            pool: FramePool::new(config.chunks, config.chunk_size),
            tx: a_to_b.clone(),
            rx: b_to_a.clone(),
            stats: PortStats::default(),
        };
        let b = MemPort {
            pool: FramePool::new(config.chunks, config.chunk_size),
            tx: b_to_a,
            rx: a_to_b,
            stats: PortStats::default(),
        };
        (a, b)
    }

    /// Sends one packet made of `bytes` (a convenience for tests). Returns false when the
    /// pool or the wire is full, or the packet does not fit a chunk.
    pub fn inject(&mut self, bytes: &[u8]) -> bool {
        let Some(mut frame) = self.alloc() else {
            return false;
        };
        if !frame.set_len(bytes.len()) {
            self.release(frame);
            return false;
        }
        self.pool.data_mut(&frame).copy_from_slice(bytes);
        self.send_one(frame)
    }

    /// Receives one packet and hands its bytes to `f` (a convenience for tests).
    pub fn collect<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let slot = self.rx.full.pop()?;
        self.stats.rx_frames += 1;
        let out = f(&slot.bytes[..slot.len]);
        let _ = self.rx.empty.push(slot);
        Some(out)
    }

    /// Frames waiting on the wire towards this port.
    pub fn pending(&self) -> usize {
        self.rx.full.len()
    }

    fn send_one(&mut self, frame: Frame) -> bool {
        let sent = match self.tx.empty.pop() {
            Some(mut slot) => {
                let data = self.pool.data(&frame);
                slot.bytes[..data.len()].copy_from_slice(data);
                slot.len = data.len();
                // Cannot fail: there are exactly as many slots as places in `full`.
                let _ = self.tx.full.push(slot);
                self.stats.tx_frames += 1;
                true
            }
            None => {
                self.stats.tx_full += 1;
                false
            }
        };
        self.pool.release(frame);
        sent
    }
}

impl PacketIo for MemPort {
    fn link(&self) -> Link {
        Link::Ethernet
    }

    fn recv(&mut self, batch: &mut Batch) -> Result<usize, IoError> {
        let mut n = 0;
        while batch.room() > 0 {
            if self.pool.available() == 0 {
                self.stats.alloc_failed += 1;
                break;
            }
            let Some(slot) = self.rx.full.pop() else {
                break;
            };
            // A sender may have used its headroom; keep as much of ours as still fits.
            let spare = self.pool.chunk_size().saturating_sub(slot.len as u32);
            let mut frame = self
                .pool
                .alloc(DEFAULT_HEADROOM.min(spare))
                .expect("pool checked non-empty");
            let fits = frame.set_len(slot.len);
            if fits {
                self.pool
                    .data_mut(&frame)
                    .copy_from_slice(&slot.bytes[..slot.len]);
            }
            let _ = self.rx.empty.push(slot);
            if !fits {
                self.pool.release(frame);
                continue;
            }
            let _ = batch.push(frame);
            n += 1;
        }
        self.stats.rx_frames += n as u64;
        Ok(n)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, IoError> {
        let mut sent = 0;
        for frame in batch.drain() {
            sent += usize::from(self.send_one(frame));
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_carries_frames_both_ways_and_recycles() {
        let config = MemConfig {
            chunks: 8,
            chunk_size: 512,
            wire_slots: 4,
        };
        let (mut a, mut b) = MemPort::pair(config);
        let mut batch = Batch::with_capacity(8);
        for round in 0..100u8 {
            assert!(a.inject(&[round; 60]));
            assert!(b.inject(&[round ^ 0xff; 70]));
            assert_eq!(b.recv(&mut batch).unwrap(), 1);
            let f = batch.drain().next().unwrap();
            assert_eq!(b.data(&f), &[round; 60][..]);
            b.release(f);
            assert_eq!(a.collect(|d| d.to_vec()).unwrap(), vec![round ^ 0xff; 70]);
        }
        assert_eq!(a.stats().tx_frames, 100);
        assert_eq!(b.stats().rx_frames, 100);
    }

    #[test]
    fn full_wire_is_counted() {
        let config = MemConfig {
            chunks: 8,
            chunk_size: 512,
            wire_slots: 2,
        };
        let (mut a, b) = MemPort::pair(config);
        assert!(a.inject(b"1"));
        assert!(a.inject(b"2"));
        assert!(!a.inject(b"3"));
        assert_eq!(a.stats().tx_full, 1);
        assert_eq!(b.pending(), 2);
        // Frames refused by the wire went back to the pool.
        assert_eq!(a.pool.available(), 8);
    }

    #[test]
    fn oversized_packet_is_refused() {
        let (mut a, _b) = MemPort::pair(MemConfig::default());
        assert!(!a.inject(&[0; 4096]));
    }
}
