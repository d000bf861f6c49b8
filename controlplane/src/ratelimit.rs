//! Bounded rate of failures per key (a source address for logins, the
//! keystore itself for opens): after `max` failures inside `window`, further
//! attempts are refused until the oldest failure leaves the window.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Tracks at most this many keys; the oldest are dropped beyond it, so a
/// flood of sources cannot exhaust memory.
const MAX_KEYS: usize = 4096;

#[derive(Debug)]
pub struct FailureLimiter<K> {
    max: u32,
    window: Duration,
    failures: HashMap<K, VecDeque<Instant>>,
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            failures: HashMap::new(),
        }
    }

    /// `Some(wait)` when `key` has used up its failures in the window.
    pub fn refused_for(&mut self, key: &K) -> Option<Duration> {
        self.refused_at(key, Instant::now())
    }

    pub fn refused_at(&mut self, key: &K, now: Instant) -> Option<Duration> {
        let window = self.window;
        let entries = self.failures.get_mut(key)?;
        while entries
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            entries.pop_front();
        }
        if entries.is_empty() {
            self.failures.remove(key);
            return None;
        }
        if entries.len() < self.max as usize {
            return None;
        }
        entries
            .front()
            .map(|oldest| window.saturating_sub(now.duration_since(*oldest)))
    }

    pub fn record_failure(&mut self, key: K, now: Instant) {
        if self.failures.len() >= MAX_KEYS && !self.failures.contains_key(&key) {
            let window = self.window;
            self.failures
                .retain(|_, v| v.back().is_some_and(|t| now.duration_since(*t) < window));
            if self.failures.len() >= MAX_KEYS {
                return;
            }
        }
        let entries = self.failures.entry(key).or_default();
        entries.push_back(now);
        while entries.len() > self.max as usize {
            entries.pop_front();
        }
    }

    pub fn clear(&mut self, key: &K) {
        self.failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_max_and_recovers_after_window() {
        let mut limiter = FailureLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(limiter.refused_at(&"a", t0), None);
            limiter.record_failure("a", t0 + Duration::from_secs(i));
        }
        let wait = limiter
            .refused_at(&"a", t0 + Duration::from_secs(3))
            .unwrap();
        assert_eq!(wait, Duration::from_secs(7));
        assert_eq!(
            limiter.refused_at(&"b", t0),
            None,
            "other sources are unaffected"
        );
        assert_eq!(limiter.refused_at(&"a", t0 + Duration::from_secs(10)), None);
    }
}
