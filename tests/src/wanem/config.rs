//! Emulator settings: one [`LinkProfile`] per direction plus pool and capture sizes.

use std::str::FromStr;
use std::time::Duration;

/// Impairments applied to one direction of the WAN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProfile {
    /// One-way delay added to every frame.
    pub delay: Duration,
    /// Probability (0..=1) that a frame is dropped.
    pub loss: f64,
    /// Probability that a frame is held back until `reorder_gap` later frames passed.
    pub reorder: f64,
    /// How many later frames overtake a held frame (default 3). A held frame leaves
    /// anyway 50 ms after its due time when no later frames come.
    pub reorder_gap: u32,
    /// Probability that a frame is sent twice.
    pub duplicate: f64,
    /// Rate limit in bytes per second (Ethernet frames, headers included); `None`:
    /// unlimited.
    pub rate: Option<u64>,
    /// Bytes the rate limiter lets through back to back before shaping (default 16 KiB).
    pub burst: u64,
    /// Longest backlog the rate limiter queues; frames that would wait longer are
    /// dropped and counted as `dropped_queue` (default 50 ms).
    pub queue_limit: Duration,
}

impl LinkProfile {
    /// No impairment at all: frames are forwarded as they come.
    pub const CLEAN: LinkProfile = LinkProfile {
        delay: Duration::ZERO,
        loss: 0.0,
        reorder: 0.0,
        reorder_gap: 3,
        duplicate: 0.0,
        rate: None,
        burst: 16 * 1024,
        queue_limit: Duration::from_millis(50),
    };

    /// This profile with a one-way delay.
    pub fn with_delay(self, delay: Duration) -> Self {
        LinkProfile { delay, ..self }
    }

    /// This profile with a loss probability.
    pub fn with_loss(self, loss: f64) -> Self {
        LinkProfile { loss, ..self }
    }

    /// This profile with a reordering probability.
    pub fn with_reorder(self, reorder: f64) -> Self {
        LinkProfile { reorder, ..self }
    }

    /// This profile with a duplication probability.
    pub fn with_duplicate(self, duplicate: f64) -> Self {
        LinkProfile { duplicate, ..self }
    }

    /// This profile with a rate limit in bytes per second.
    pub fn with_rate(self, bytes_per_sec: u64) -> Self {
        LinkProfile {
            rate: Some(bytes_per_sec),
            ..self
        }
    }

    /// Checks that probabilities are within 0..=1 and the rate is positive.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "{name} must be a probability between 0 and 1, got {p}"
                ));
            }
        }
        if self.rate == Some(0) {
            return Err("rate must be positive (omit it for no limit)".into());
        }
        Ok(())
    }
}

impl Default for LinkProfile {
    fn default() -> Self {
        LinkProfile::CLEAN
    }
}

/// Parses `delay=50ms,loss=0.01,reorder=0.02,gap=3,dup=0.001,rate=12500000,burst=16384,queue=50ms`
/// (any subset, in any order) on top of [`LinkProfile::CLEAN`]. Durations take `us`,
/// `ms` or `s`; `rate` is in bytes per second and accepts `k`, `M`, `G` suffixes.
impl FromStr for LinkProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut p = LinkProfile::CLEAN;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` is not key=value"))?;
            let prob = || value.parse::<f64>().map_err(|e| format!("{key}: {e}"));
            match key {
                "delay" => p.delay = parse_duration(value)?,
                "loss" => p.loss = prob()?,
                "reorder" => p.reorder = prob()?,
                "gap" => p.reorder_gap = value.parse().map_err(|e| format!("gap: {e}"))?,
                "dup" | "duplicate" => p.duplicate = prob()?,
                "rate" => p.rate = Some(parse_si(value)?),
                "burst" => p.burst = parse_si(value)?,
                "queue" => p.queue_limit = parse_duration(value)?,
                _ => return Err(format!("unknown link setting `{key}`")),
            }
        }
        p.validate()?;
        Ok(p)
    }
}

/// Settings of a whole emulator.
#[derive(Debug, Clone, PartialEq)]
pub struct WanemConfig {
    /// Frames arriving on port A, leaving on port B (site A to site B).
    pub a_to_b: LinkProfile,
    /// Frames arriving on port B, leaving on port A.
    pub b_to_a: LinkProfile,
    /// Seed of the random decisions; the same seed and the same frames give the same
    /// losses, duplicates and reorderings.
    pub seed: u64,
    /// Frame buffers per direction (default 8192, 16 MiB: 50 ms of 2 Gbit/s in
    /// flight); bounds the frames in flight.
    pub pool_frames: usize,
    /// Largest frame forwarded, in bytes (default 2048: MTU 1500 plus headers);
    /// longer ones are dropped and counted as `dropped_error`.
    pub max_frame: usize,
    /// Receive and send buffer of each socket in bytes (default 8 MiB).
    pub socket_buffer: usize,
    /// Frames kept in the capture ring (default 0: no capture).
    pub capture_frames: usize,
    /// Bytes kept of each captured frame (default 2048).
    pub capture_snaplen: usize,
}

impl WanemConfig {
    /// The same profile both ways.
    pub fn symmetric(profile: LinkProfile) -> Self {
        WanemConfig {
            a_to_b: profile,
            b_to_a: profile,
            ..WanemConfig::default()
        }
    }

    /// The frame size needed for `mtu`: Ethernet header, one VLAN tag, payload.
    pub fn max_frame_for_mtu(mtu: u32) -> usize {
        mtu as usize + 14 + 4
    }
}

impl Default for WanemConfig {
    fn default() -> Self {
        WanemConfig {
            a_to_b: LinkProfile::CLEAN,
            b_to_a: LinkProfile::CLEAN,
            seed: 0x5eed,
            pool_frames: 8192,
            max_frame: 2048,
            socket_buffer: 8 << 20,
            capture_frames: 0,
            capture_snaplen: 2048,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("duration `{s}` needs a unit (us, ms, s)"));
    };
    let v: f64 = num.parse().map_err(|e| format!("duration `{s}`: {e}"))?;
    if v < 0.0 || !v.is_finite() {
        return Err(format!("duration `{s}` must be non-negative"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

fn parse_si(s: &str) -> Result<u64, String> {
    let (num, scale) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1e3),
        Some(b'M') => (&s[..s.len() - 1], 1e6),
        Some(b'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if v < 0.0 || !v.is_finite() {
        return Err(format!("`{s}` must be non-negative"));
    }
    Ok((v * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_profiles() {
        let p: LinkProfile = "delay=50ms,loss=0.1,rate=1.25M,dup=0.01,gap=5,queue=20ms"
            .parse()
            .unwrap();
        assert_eq!(p.delay, Duration::from_millis(50));
        assert_eq!(p.loss, 0.1);
        assert_eq!(p.rate, Some(1_250_000));
        assert_eq!(p.duplicate, 0.01);
        assert_eq!(p.reorder_gap, 5);
        assert_eq!(p.queue_limit, Duration::from_millis(20));
        assert_eq!("".parse::<LinkProfile>().unwrap(), LinkProfile::CLEAN);
    }

    #[test]
    fn rejects_bad_profiles() {
        assert!("loss=1.5".parse::<LinkProfile>().is_err());
        assert!("delay=5".parse::<LinkProfile>().is_err());
        assert!("jitter=5ms".parse::<LinkProfile>().is_err());
        assert!("rate=0".parse::<LinkProfile>().is_err());
    }
}
