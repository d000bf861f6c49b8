//! Gear rolling hash, content-defined anchors and the fingerprint index.
//!
//! The hash is `h = (h << 1) + GEAR[byte]`: bit `i` of `h` depends only on the
//! last `i + 1` bytes. Anchors are where bits 26..31 are zero (one position in
//! 32 on average, decided by the last 31 bytes), and the index key is the low
//! 32 bits (the last 32 bytes), so identical content yields identical anchors
//! and keys wherever it sits.

/// Gear table: 256 pseudo-random 64-bit values (splitmix64 of the byte).
pub(crate) static GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut z = (i as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

/// Anchor test mask: one position in 32.
pub(crate) const ANCHOR_MASK: u64 = 0x1f << 26;

/// Rolls one byte into the hash.
#[inline(always)]
pub(crate) fn roll(h: u64, byte: u8) -> u64 {
    (h << 1).wrapping_add(GEAR[usize::from(byte)])
}

/// Fixed-size table from anchor key to the history position just after the
/// anchor's window. Entries are never removed; a stale entry is caught when
/// the encoder verifies the candidate against the bytes it holds.
///
/// A slot holds the position modulo 2^48 in its low bits and 16 bits of the
/// key above them: a lookup whose key merely shares the slot (most lookups on
/// new data) is refused here, without the cache miss of reading history to
/// verify it.
pub(crate) struct FingerprintIndex {
    slots: Box<[u64]>,
    shift: u32,
}

impl FingerprintIndex {
    pub(crate) fn new(bits: u32) -> Self {
        Self {
            slots: vec![0u64; 1usize << bits].into_boxed_slice(),
            shift: 64 - bits,
        }
    }

    #[inline(always)]
    fn slot(&self, h: u64) -> usize {
        ((h & 0xffff_ffff).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Stores `position` (≥ 1) under the anchor hash `h`; returns the previous
    /// position stored under the same key (0 when none, or when the slot held
    /// another key). It is at most 2^48 bytes behind `position`; an older entry
    /// comes back as a wrong, recent position, which verification refuses.
    #[inline(always)]
    pub(crate) fn swap(&mut self, h: u64, position: u64) -> u64 {
        let slot = self.slot(h);
        let tag = key_tag(h);
        let old = std::mem::replace(&mut self.slots[slot], tag | (position & POSITION_MASK));
        if old == 0 || old & !POSITION_MASK != tag {
            return 0;
        }
        let behind = (position & POSITION_MASK).wrapping_sub(old & POSITION_MASK) & POSITION_MASK;
        position.saturating_sub(behind)
    }

    /// Inserts without looking up.
    #[inline(always)]
    pub(crate) fn insert(&mut self, h: u64, position: u64) {
        let slot = self.slot(h);
        self.slots[slot] = key_tag(h) | (position & POSITION_MASK);
    }

    pub(crate) fn clear(&mut self) {
        self.slots.fill(0);
    }
}

/// Bits of a slot that hold the position.
const POSITION_BITS: u32 = 48;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;

/// The key's low 16 bits, placed above the position.
#[inline(always)]
fn key_tag(h: u64) -> u64 {
    (h & 0xffff) << POSITION_BITS
}

/// Length of the common prefix of `a` and `b`.
#[inline]
pub(crate) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().expect("8"));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        if x != y {
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Length of the common suffix of `a` and `b`.
#[inline]
pub(crate) fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[a.len() - n..], &b[b.len() - n..]);
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[n - i - 8..n - i].try_into().expect("8"));
        let y = u64::from_le_bytes(b[n - i - 8..n - i].try_into().expect("8"));
        if x != y {
            return i + ((x ^ y).leading_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[n - 1 - i] == b[n - 1 - i] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_returns_positions_of_the_same_key_only() {
        let mut index = FingerprintIndex::new(4);
        assert_eq!(index.swap(0x1234_0001, 100), 0, "empty");
        assert_eq!(index.swap(0x1234_0001, 200), 100);
        // A key that shares the slot but not the tag: refused, and it takes the slot.
        let other = (0x1234_0002u64..)
            .find(|&k| {
                index.slot(k) == index.slot(0x1234_0001) && key_tag(k) != key_tag(0x1234_0001)
            })
            .unwrap();
        assert_eq!(index.swap(other, 300), 0);
        assert_eq!(index.swap(0x1234_0001, 400), 0, "overwritten");
        // Positions beyond 2^48 come back whole.
        let far = (5 << POSITION_BITS) + 7;
        index.insert(0x1234_0001, far);
        assert_eq!(index.swap(0x1234_0001, far + 1000), far);
        let wrap = (6 << POSITION_BITS) - 3;
        index.insert(0x1234_0001, wrap);
        assert_eq!(
            index.swap(0x1234_0001, wrap + 10),
            wrap,
            "across a 2^48 boundary"
        );
    }

    #[test]
    fn prefix_and_suffix() {
        let a = b"0123456789abcdefXYZ";
        let b = b"0123456789abcdefXYQ";
        assert_eq!(common_prefix(a, b), 18);
        assert_eq!(
            common_suffix(b"zz0123456789abcdef", b"y0123456789abcdef"),
            16
        );
        assert_eq!(common_suffix(b"abc", b"abc"), 3);
        assert_eq!(common_prefix(b"", b"abc"), 0);
    }

    #[test]
    fn anchors_depend_on_content_only() {
        let data: Vec<u8> = (0..4000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let anchors = |d: &[u8]| {
            let mut h = 0;
            let mut v = Vec::new();
            for (i, &b) in d.iter().enumerate() {
                h = roll(h, b);
                if h & ANCHOR_MASK == 0 {
                    v.push((i, h & 0xffff_ffff));
                }
            }
            v
        };
        let whole = anchors(&data);
        let shifted = anchors(&data[1000..]);
        // Past the first 32 bytes, anchors in the shifted copy coincide.
        let expect: Vec<_> = whole
            .iter()
            .filter(|a| a.0 >= 1040)
            .map(|&(i, k)| (i - 1000, k))
            .collect();
        let got: Vec<_> = shifted.into_iter().filter(|a| a.0 >= 40).collect();
        assert_eq!(got, expect);
        assert!(got.len() > 50, "about one anchor in 32 bytes");
    }
}
