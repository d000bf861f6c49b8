//! A bounded set of half-open `u64` ranges: which history positions a side holds.

use std::collections::VecDeque;

/// Sorted, merged, non-adjacent half-open ranges `[start, end)`.
///
/// The number of ranges is bounded: when an insertion would exceed the bound,
/// the oldest (lowest) ranges are dropped. Dropping is always safe for the
/// codec — it only means less history is referenced.
#[derive(Debug, Clone)]
pub struct RangeSet {
    ranges: VecDeque<(u64, u64)>,
    max_ranges: usize,
}

impl RangeSet {
    /// An empty set holding at most `max_ranges` ranges (preallocated).
    pub fn with_capacity(max_ranges: usize) -> Self {
        let max_ranges = max_ranges.max(2);
        Self {
            ranges: VecDeque::with_capacity(max_ranges + 2),
            max_ranges,
        }
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Iterates over the ranges in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    /// Removes every range.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// True when all of `[start, end)` is held (an empty range is held).
    pub fn contains(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        // Fast path: most lookups hit the newest range.
        if let Some(&(s, e)) = self.ranges.back()
            && s <= start
        {
            return end <= e;
        }
        let idx = self.ranges.partition_point(|&(s, _)| s <= start);
        idx > 0 && self.ranges[idx - 1].1 >= end
    }

    /// The range containing `pos`, if any.
    #[inline]
    pub fn range_at(&self, pos: u64) -> Option<(u64, u64)> {
        if let Some(&(s, e)) = self.ranges.back()
            && s <= pos
        {
            return (pos < e).then_some((s, e));
        }
        let idx = self.ranges.partition_point(|&(s, _)| s <= pos);
        (idx > 0 && self.ranges[idx - 1].1 > pos).then(|| self.ranges[idx - 1])
    }

    /// The highest held range end, or 0.
    pub fn high(&self) -> u64 {
        self.ranges.back().map_or(0, |r| r.1)
    }

    /// Adds `[start, end)`, merging with neighbours.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Fast path: appending at or after the newest range.
        if let Some(last) = self.ranges.back_mut()
            && start >= last.0
            && start <= last.1
        {
            last.1 = last.1.max(end);
            return;
        }
        let first = self.ranges.partition_point(|&(_, e)| e < start);
        let mut last = first;
        let (mut s, mut e) = (start, end);
        while last < self.ranges.len() && self.ranges[last].0 <= end {
            s = s.min(self.ranges[last].0);
            e = e.max(self.ranges[last].1);
            last += 1;
        }
        self.ranges.drain(first..last);
        self.ranges.insert(first, (s, e));
        while self.ranges.len() > self.max_ranges {
            self.ranges.pop_front();
        }
    }

    /// Removes `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let first = self.ranges.partition_point(|&(_, e)| e <= start);
        let mut idx = first;
        while idx < self.ranges.len() && self.ranges[idx].0 < end {
            let (s, e) = self.ranges[idx];
            if s < start && e > end {
                // Split in two.
                self.ranges[idx] = (s, start);
                self.ranges.insert(idx + 1, (end, e));
                if self.ranges.len() > self.max_ranges {
                    self.ranges.pop_front();
                }
                return;
            } else if s < start {
                self.ranges[idx].1 = start;
                idx += 1;
            } else if e > end {
                self.ranges[idx].0 = end;
                idx += 1;
            } else {
                self.ranges.remove(idx);
            }
        }
    }

    /// Removes everything below `pos`.
    pub fn trim_below(&mut self, pos: u64) {
        while let Some(front) = self.ranges.front_mut() {
            if front.1 <= pos {
                self.ranges.pop_front();
            } else {
                front.0 = front.0.max(pos);
                break;
            }
        }
    }

    /// Keeps only what is also in `other` (intersection).
    pub fn intersect_with(&mut self, other: &RangeSet) {
        let mine: Vec<(u64, u64)> = self.ranges.drain(..).collect();
        for (s, e) in mine {
            for (os, oe) in other.iter() {
                let (a, b) = (s.max(os), e.min(oe));
                if a < b {
                    self.ranges.push_back((a, b));
                }
            }
        }
        while self.ranges.len() > self.max_ranges {
            self.ranges.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_a_bitmap(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 0u64..40), 0..60)) {
            let mut set = RangeSet::with_capacity(1000);
            let mut bits = [false; 256];
            for (add, s, l) in ops {
                let e = s + l;
                if add { set.insert(s, e) } else { set.remove(s, e) }
                for b in &mut bits[s as usize..e as usize] { *b = add; }
            }
            for s in 0..250u64 {
                for e in s..(s + 10).min(250) {
                    let want = bits[s as usize..e as usize].iter().all(|&b| b);
                    prop_assert_eq!(set.contains(s, e), want, "[{}, {})", s, e);
                }
            }
            let v: Vec<_> = set.iter().collect();
            for w in v.windows(2) { prop_assert!(w[0].1 < w[1].0); }
        }
    }

    #[test]
    fn bound_drops_oldest() {
        let mut set = RangeSet::with_capacity(3);
        for i in 0..5 {
            set.insert(i * 10, i * 10 + 5);
        }
        assert_eq!(set.len(), 3);
        assert!(!set.contains(0, 5));
        assert!(set.contains(40, 45));
    }

    #[test]
    fn trim_and_intersect() {
        let mut a = RangeSet::with_capacity(8);
        a.insert(0, 100);
        a.insert(200, 300);
        a.trim_below(50);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![(50, 100), (200, 300)]);
        let mut b = RangeSet::with_capacity(8);
        b.insert(90, 250);
        a.intersect_with(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![(90, 100), (200, 250)]);
    }
}
