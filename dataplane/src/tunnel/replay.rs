//! Sliding anti-replay window (a ring of 64-bit words, RFC 6479 style): accepts each
//! counter at most once and anything newer than the newest seen, up to
//! [`WINDOW`] packets behind it.

/// Bits in the ring.
const RING_BITS: u64 = 4096;
const WORDS: usize = (RING_BITS / 64) as usize;

/// How far behind the newest counter a packet may be and still be accepted.
/// One word of the ring is the slack that lets the window slide a word at a time.
pub const WINDOW: u64 = RING_BITS - 64;
const _: () = assert!(
    WINDOW >= 2048,
    "the issue asks for a window of at least 2048 packets"
);

/// Why the window refuses a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// This counter was already accepted.
    Duplicate,
    /// This counter is older than the window.
    TooOld,
}

/// Anti-replay state of one lane under one key.
#[derive(Clone)]
pub struct ReplayWindow {
    ring: [u64; WORDS],
    newest: u64,
    empty: bool,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            ring: [0; WORDS],
            newest: 0,
            empty: true,
        }
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("newest", &self.newest)
            .field("empty", &self.empty)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// Checks a counter without changing the window (call before authenticating).
    #[inline]
    pub fn check(&self, counter: u64) -> Result<(), Replay> {
        if self.empty || counter > self.newest {
            return Ok(());
        }
        if self.newest - counter >= WINDOW {
            return Err(Replay::TooOld);
        }
        let (word, bit) = Self::slot(counter);
        if self.ring[word] & bit != 0 {
            Err(Replay::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records an authenticated counter. The caller has checked it with
    /// [`check`](Self::check); marking a refused counter is harmless.
    #[inline]
    pub fn mark(&mut self, counter: u64) {
        if self.empty || counter > self.newest {
            if !self.empty {
                // Clear the words the window slides over.
                let old_block = self.newest / 64;
                let new_block = counter / 64;
                let steps = (new_block - old_block).min(WORDS as u64);
                for i in 1..=steps {
                    self.ring[((old_block + i) % WORDS as u64) as usize] = 0;
                }
            }
            self.newest = counter;
            self.empty = false;
        } else if self.newest - counter >= WINDOW {
            return;
        }
        let (word, bit) = Self::slot(counter);
        self.ring[word] |= bit;
    }

    /// The newest counter accepted so far, if any.
    pub fn newest(&self) -> Option<u64> {
        (!self.empty).then_some(self.newest)
    }

    fn slot(counter: u64) -> (usize, u64) {
        (
            ((counter / 64) % WORDS as u64) as usize,
            1u64 << (counter % 64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn accept(w: &mut ReplayWindow, c: u64) -> Result<(), Replay> {
        w.check(c)?;
        w.mark(c);
        Ok(())
    }

    #[test]
    fn duplicates_and_old_counters_are_refused() {
        let mut w = ReplayWindow::default();
        assert_eq!(accept(&mut w, 0), Ok(()));
        assert_eq!(accept(&mut w, 0), Err(Replay::Duplicate));
        assert_eq!(accept(&mut w, 5), Ok(()));
        assert_eq!(accept(&mut w, 3), Ok(()));
        assert_eq!(accept(&mut w, 3), Err(Replay::Duplicate));
        assert_eq!(accept(&mut w, 10_000), Ok(()));
        assert_eq!(accept(&mut w, 10_000 - WINDOW), Err(Replay::TooOld));
        assert_eq!(accept(&mut w, 10_000 - WINDOW + 1), Ok(()));
        assert_eq!(accept(&mut w, 10_000 - 1), Ok(()));
        assert_eq!(accept(&mut w, 5), Err(Replay::TooOld));
    }

    #[test]
    fn check_alone_does_not_mark() {
        let mut w = ReplayWindow::default();
        w.mark(100);
        assert_eq!(w.check(50), Ok(()));
        assert_eq!(w.check(50), Ok(()));
        assert_eq!(w.check(100), Err(Replay::Duplicate));
    }

    proptest! {
        // Against a model: accept iff never seen and within WINDOW of the newest seen.
        #[test]
        fn matches_a_set_model(steps in proptest::collection::vec((0u64..6000, any::<bool>()), 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = BTreeSet::new();
            let mut newest: Option<u64> = None;
            let mut base = 0u64;
            for (delta, jump) in steps {
                let c = if jump { base + delta } else { base.saturating_sub(delta % 4500) };
                base = base.max(c);
                let expect = match newest {
                    Some(n) if c <= n && n - c >= WINDOW => Err(Replay::TooOld),
                    _ if seen.contains(&c) => Err(Replay::Duplicate),
                    _ => Ok(()),
                };
                prop_assert_eq!(accept(&mut w, c), expect, "counter {}", c);
                if expect.is_ok() {
                    seen.insert(c);
                    newest = Some(newest.map_or(c, |n| n.max(c)));
                }
            }
        }
    }
}
