//! The history ring of one lane: bytes at sender-assigned positions, and the
//! set of positions this side holds.

use super::ranges::RangeSet;

/// Most disjoint held ranges tracked per lane (holes beyond this are
/// forgotten, oldest first).
const MAX_HELD_RANGES: usize = 4096;

/// History bytes of one lane, indexed by 64-bit stream position modulo the
/// ring size. A payload never wraps around the ring end: the encoder skips to
/// the next lap instead, so every payload is contiguous in memory.
pub(crate) struct Ring {
    buf: Box<[u8]>,
    mask: u64,
    pub(crate) held: RangeSet,
    /// Highest position end stored so far.
    pub(crate) high_water: u64,
    pub(crate) history_id: u64,
}

impl Ring {
    pub(crate) fn new(bytes: usize, history_id: u64) -> Self {
        Self {
            buf: vec![0u8; bytes].into_boxed_slice(),
            mask: bytes as u64 - 1,
            held: RangeSet::with_capacity(MAX_HELD_RANGES),
            high_water: 0,
            history_id,
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    #[inline(always)]
    pub(crate) fn slot(&self, pos: u64) -> usize {
        (pos & self.mask) as usize
    }

    /// Start of the lap containing `pos`.
    #[inline(always)]
    pub(crate) fn lap_start(&self, pos: u64) -> u64 {
        pos & !self.mask
    }

    /// True when `len` bytes at `pos` fit before the ring end.
    #[inline(always)]
    pub(crate) fn fits(&self, pos: u64, len: usize) -> bool {
        self.slot(pos) + len <= self.buf.len()
    }

    /// Bytes at `[start, end)`; the range must not cross a lap boundary.
    #[inline(always)]
    pub(crate) fn bytes(&self, start: u64, end: u64) -> &[u8] {
        let s = self.slot(start);
        &self.buf[s..s + (end - start) as usize]
    }

    /// Copies `[start, start + dst.len())` into `dst`, splitting at a lap boundary.
    pub(crate) fn copy_out(&self, start: u64, dst: &mut [u8]) {
        let s = self.slot(start);
        let first = dst.len().min(self.buf.len() - s);
        dst[..first].copy_from_slice(&self.buf[s..s + first]);
        let rest = dst.len() - first;
        dst[first..].copy_from_slice(&self.buf[..rest]);
    }

    /// Stores `data` at `pos` (which must fit before the ring end) and marks it
    /// held. Returns false (storing nothing) when the position is older than
    /// the ring keeps.
    pub(crate) fn store(&mut self, pos: u64, data: &[u8]) -> bool {
        let end = pos + data.len() as u64;
        let floor = end.max(self.high_water).saturating_sub(self.capacity());
        if pos < floor {
            return false;
        }
        let s = self.slot(pos);
        self.buf[s..s + data.len()].copy_from_slice(data);
        self.high_water = self.high_water.max(end);
        self.held
            .trim_below(self.high_water.saturating_sub(self.capacity()));
        self.held.insert(pos, end);
        true
    }

    /// Forgets everything: nothing is held any more.
    pub(crate) fn forget_all(&mut self) {
        self.held.clear();
    }

    /// The held range containing `pos`, if any.
    #[inline]
    pub(crate) fn held_range_at(&self, pos: u64) -> Option<(u64, u64)> {
        self.held.range_at(pos)
    }

    /// Raw ring bytes of one block-aligned region, for the store.
    pub(crate) fn region(&self, slot_start: usize, len: usize) -> &[u8] {
        &self.buf[slot_start..slot_start + len]
    }

    /// Writes restored bytes into the ring (store read-back).
    pub(crate) fn restore_region(&mut self, pos: u64, data: &[u8]) {
        let s = self.slot(pos);
        self.buf[s..s + data.len()].copy_from_slice(data);
    }
}
