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
    /// entry (0 when empty).
    #[inline(always)]
    pub(crate) fn swap(&mut self, h: u64, position: u64) -> u64 {
        let slot = self.slot(h);
        std::mem::replace(&mut self.slots[slot], position)
    }

    /// Inserts without looking up.
    #[inline(always)]
    pub(crate) fn insert(&mut self, h: u64, position: u64) {
        let slot = self.slot(h);
        self.slots[slot] = position;
    }

    pub(crate) fn clear(&mut self) {
        self.slots.fill(0);
    }
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
