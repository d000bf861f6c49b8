//! The emulator's decisions for one direction, free of sockets and clocks: given a
//! frame's length and the current time, lose it, drop it at the rate limiter, or say
//! when to release it and whether to duplicate or hold it back.

#![forbid(unsafe_code)]

use super::config::LinkProfile;

/// What happens to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Dropped by the configured loss probability.
    Lose,
    /// Dropped because the rate limiter's backlog is full.
    Overflow,
    /// Forwarded at `release_ns`, possibly twice, possibly held back.
    Forward {
        /// When the frame leaves, in nanoseconds on the caller's clock.
        release_ns: u64,
        /// Send a second copy.
        duplicate: bool,
        /// Hold it back behind later frames.
        hold: bool,
    },
}

/// Per-direction decision state: profile, random stream, rate limiter.
#[derive(Debug, Clone)]
pub(crate) struct Impairment {
    profile: LinkProfile,
    rng: SplitMix64,
    /// When the emulated link finishes sending everything admitted so far.
    busy_until_ns: u64,
}

impl Impairment {
    pub(crate) fn new(profile: LinkProfile, seed: u64) -> Self {
        Impairment {
            profile,
            rng: SplitMix64(seed),
            busy_until_ns: 0,
        }
    }

    pub(crate) fn set_profile(&mut self, profile: LinkProfile) {
        self.profile = profile;
    }

    /// Decides the fate of a frame of `len` bytes arriving at `now_ns`. Three random
    /// draws per frame whatever the profile, so a seed gives one sequence of decisions.
    pub(crate) fn admit(&mut self, now_ns: u64, len: usize) -> Verdict {
        let p = &self.profile;
        let lose = self.rng.chance(p.loss);
        let duplicate = self.rng.chance(p.duplicate);
        let hold = self.rng.chance(p.reorder);
        if lose {
            return Verdict::Lose;
        }
        let depart_ns = match p.rate {
            None => now_ns,
            Some(rate) => {
                let tx_ns = ns_for(len as u64, rate);
                let finish = self.busy_until_ns.max(now_ns) + tx_ns;
                let depart = finish.saturating_sub(ns_for(p.burst, rate)).max(now_ns);
                if depart - now_ns > p.queue_limit.as_nanos() as u64 {
                    return Verdict::Overflow;
                }
                self.busy_until_ns = finish;
                depart
            }
        };
        let release_ns = depart_ns + p.delay.as_nanos() as u64;
        Verdict::Forward {
            release_ns,
            duplicate,
            hold,
        }
    }

    /// How many later frames overtake a held one.
    pub(crate) fn reorder_gap(&self) -> u64 {
        u64::from(self.profile.reorder_gap.max(1))
    }
}

/// Nanoseconds needed to send `bytes` at `rate` bytes per second.
fn ns_for(bytes: u64, rate: u64) -> u64 {
    (u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1))) as u64
}

/// SplitMix64: tiny, fast, and the same stream on every platform and version.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn fates(profile: LinkProfile, seed: u64, n: usize) -> Vec<Verdict> {
        let mut imp = Impairment::new(profile, seed);
        (0..n).map(|i| imp.admit(i as u64 * 1000, 100)).collect()
    }

    #[test]
    fn same_seed_same_decisions() {
        let p = LinkProfile::CLEAN
            .with_loss(0.3)
            .with_duplicate(0.2)
            .with_reorder(0.2);
        assert_eq!(fates(p, 7, 500), fates(p, 7, 500));
        assert_ne!(fates(p, 7, 500), fates(p, 8, 500));
    }

    #[test]
    fn loss_rate_matches_probability() {
        let lost = fates(LinkProfile::CLEAN.with_loss(0.1), 1, 100_000)
            .iter()
            .filter(|v| **v == Verdict::Lose)
            .count();
        assert!((9_500..10_500).contains(&lost), "{lost}");
    }

    #[test]
    fn delay_is_added_to_release() {
        let mut imp = Impairment::new(LinkProfile::CLEAN.with_delay(Duration::from_millis(50)), 1);
        assert_eq!(
            imp.admit(1_000, 60),
            Verdict::Forward {
                release_ns: 50_001_000,
                duplicate: false,
                hold: false
            }
        );
    }

    #[test]
    fn rate_limit_shapes_then_overflows() {
        // 1 MB/s, no burst, 10 ms queue: 1000-byte frames leave 1 ms apart, and at
        // most ~10 fit in the backlog when they all arrive at once.
        let p = LinkProfile {
            burst: 0,
            queue_limit: Duration::from_millis(10),
            ..LinkProfile::CLEAN.with_rate(1_000_000)
        };
        let mut imp = Impairment::new(p, 1);
        let mut departs = Vec::new();
        let mut overflow = 0;
        for _ in 0..20 {
            match imp.admit(0, 1000) {
                Verdict::Forward { release_ns, .. } => departs.push(release_ns),
                Verdict::Overflow => overflow += 1,
                Verdict::Lose => unreachable!("no loss configured"),
            }
        }
        assert_eq!(departs[..3], [1_000_000, 2_000_000, 3_000_000]);
        assert_eq!(departs.len(), 10);
        assert_eq!(overflow, 10);
        // Once the link drained, frames pass immediately again (after their own
        // transmission time).
        assert_eq!(
            imp.admit(1_000_000_000, 1000),
            Verdict::Forward {
                release_ns: 1_001_000_000,
                duplicate: false,
                hold: false
            }
        );
    }
}
