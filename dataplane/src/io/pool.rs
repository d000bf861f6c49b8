//! A heap-backed pool of fixed-size chunks, used by the TUN and memory backends, and the
//! free list every backend uses to recycle chunk indices.
#![deny(unsafe_code)]

use super::{DEFAULT_HEADROOM, Frame, next_pool_id};

/// Chunk indices not in flight. Its storage is sized once for every chunk of the pool, so
/// pushing never allocates.
#[derive(Debug)]
pub(crate) struct FreeList {
    free: Vec<u32>,
}

impl FreeList {
    /// A list holding every index `0 .. chunks`.
    pub(crate) fn full(chunks: u32) -> Self {
        FreeList {
            free: (0..chunks).rev().collect(),
        }
    }

    pub(crate) fn pop(&mut self) -> Option<u32> {
        self.free.pop()
    }

    pub(crate) fn push(&mut self, chunk: u32) {
        debug_assert!(self.free.len() < self.free.capacity(), "chunk freed twice");
        self.free.push(chunk);
    }

    pub(crate) fn len(&self) -> usize {
        self.free.len()
    }
}

/// Fixed-size chunks in one heap allocation made at start-up.
#[derive(Debug)]
pub struct FramePool {
    id: u32,
    chunk_size: u32,
    bytes: Vec<u8>,
    free: FreeList,
}

impl FramePool {
    /// A pool of `chunks` chunks of `chunk_size` bytes each.
    pub fn new(chunks: u32, chunk_size: u32) -> Self {
        assert!(
            chunk_size > DEFAULT_HEADROOM,
            "chunk smaller than the headroom"
        );
        FramePool {
            id: next_pool_id(),
            chunk_size,
            bytes: vec![0; chunks as usize * chunk_size as usize],
            free: FreeList::full(chunks),
        }
    }

    /// Size of each chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Chunks not in flight.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// An empty frame with `headroom` bytes in front.
    pub fn alloc(&mut self, headroom: u32) -> Option<Frame> {
        let chunk = self.free.pop()?;
        Some(Frame::new(self.id, chunk, headroom, 0, self.chunk_size))
    }

    /// Returns a frame's chunk to the pool.
    pub fn release(&mut self, frame: Frame) {
        self.check(&frame);
        self.free.push(frame.chunk());
    }

    /// The packet bytes of `frame`.
    pub fn data(&self, frame: &Frame) -> &[u8] {
        self.check(frame);
        let start = self.offset(frame);
        &self.bytes[start..start + frame.len()]
    }

    /// The packet bytes of `frame`, writable.
    pub fn data_mut(&mut self, frame: &Frame) -> &mut [u8] {
        self.check(frame);
        let start = self.offset(frame);
        &mut self.bytes[start..start + frame.len()]
    }

    /// The whole chunk behind `frame` from the packet start to the chunk end, for reading
    /// a packet of yet unknown length into it.
    pub(crate) fn tail_mut(&mut self, frame: &Frame) -> &mut [u8] {
        self.check(frame);
        let start = self.offset(frame);
        let end = (frame.chunk() as usize + 1) * self.chunk_size as usize;
        &mut self.bytes[start..end]
    }

    fn offset(&self, frame: &Frame) -> usize {
        frame.chunk() as usize * self.chunk_size as usize + frame.head() as usize
    }

    fn check(&self, frame: &Frame) {
        assert_eq!(
            frame.pool_id(),
            self.id,
            "frame used with a port that did not issue it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_recycle_and_stay_apart() {
        let mut pool = FramePool::new(2, 512);
        let mut a = pool.alloc(DEFAULT_HEADROOM).unwrap();
        let mut b = pool.alloc(DEFAULT_HEADROOM).unwrap();
        assert!(pool.alloc(0).is_none());
        assert!(a.set_len(4) && b.set_len(4));
        pool.data_mut(&a).copy_from_slice(b"aaaa");
        pool.data_mut(&b).copy_from_slice(b"bbbb");
        assert_eq!(pool.data(&a), b"aaaa");
        assert_eq!(pool.tail_mut(&b).len(), 512 - 256);
        pool.release(a);
        assert_eq!(pool.available(), 1);
        pool.release(b);
        assert_eq!(pool.available(), 2);
    }

    #[test]
    #[should_panic(expected = "did not issue it")]
    fn foreign_frame_is_refused() {
        let mut one = FramePool::new(1, 512);
        let mut other = FramePool::new(1, 512);
        let f = one.alloc(0).unwrap();
        other.release(f);
    }
}
