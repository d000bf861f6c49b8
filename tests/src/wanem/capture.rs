//! A bounded ring of frames seen on the WAN, for tests that look for plaintext, and a
//! pcap writer for humans.

#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Direction;

/// One frame as it arrived at the emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFrame {
    /// Which way it was going.
    pub direction: Direction,
    /// When it arrived, since the emulator started.
    pub at: Duration,
    /// Its full length on the wire.
    pub orig_len: usize,
    /// Its first `capture_snaplen` bytes.
    pub data: Vec<u8>,
}

/// Fixed-size ring: `capacity` slots of `snaplen` bytes, allocated once.
#[derive(Debug)]
pub(crate) struct CaptureRing {
    snaplen: usize,
    data: Vec<u8>,
    meta: Vec<Meta>,
    /// Frames recorded since the last clear; the newest is at `(count - 1) % capacity`.
    count: usize,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    direction: Direction,
    at_ns: u64,
    orig_len: usize,
    cap_len: usize,
}

impl CaptureRing {
    pub(crate) fn new(capacity: usize, snaplen: usize) -> Self {
        let blank = Meta {
            direction: Direction::AToB,
            at_ns: 0,
            orig_len: 0,
            cap_len: 0,
        };
        CaptureRing {
            snaplen,
            data: vec![0; capacity * snaplen],
            meta: vec![blank; capacity],
            count: 0,
        }
    }

    /// Records a frame, overwriting the oldest when full. Copies at most `snaplen` bytes.
    pub(crate) fn record(&mut self, direction: Direction, at_ns: u64, frame: &[u8]) {
        let capacity = self.meta.len();
        if capacity == 0 {
            return;
        }
        let slot = self.count % capacity;
        let cap_len = frame.len().min(self.snaplen);
        let start = slot * self.snaplen;
        self.data[start..start + cap_len].copy_from_slice(&frame[..cap_len]);
        self.meta[slot] = Meta {
            direction,
            at_ns,
            orig_len: frame.len(),
            cap_len,
        };
        self.count += 1;
    }

    /// The frames held, oldest first.
    pub(crate) fn frames(&self) -> Vec<CapturedFrame> {
        let capacity = self.meta.len();
        let held = self.count.min(capacity);
        (self.count - held..self.count)
            .map(|i| {
                let slot = i % capacity;
                let m = self.meta[slot];
                let start = slot * self.snaplen;
                CapturedFrame {
                    direction: m.direction,
                    at: Duration::from_nanos(m.at_ns),
                    orig_len: m.orig_len,
                    data: self.data[start..start + m.cap_len].to_vec(),
                }
            })
            .collect()
    }

    /// True when a held frame contains `needle`.
    pub(crate) fn contains(&self, needle: &[u8]) -> bool {
        let capacity = self.meta.len();
        let held = self.count.min(capacity);
        !needle.is_empty()
            && (self.count - held..self.count).any(|i| {
                let slot = i % capacity;
                let start = slot * self.snaplen;
                self.data[start..start + self.meta[slot].cap_len]
                    .windows(needle.len())
                    .any(|w| w == needle)
            })
    }

    pub(crate) fn clear(&mut self) {
        self.count = 0;
    }
}

/// Writes `frames` as a pcap file (nanosecond timestamps, Ethernet), taking
/// `started` as the wall-clock time of offset zero.
pub fn write_pcap(
    path: &Path,
    frames: &[CapturedFrame],
    started: SystemTime,
    snaplen: usize,
) -> io::Result<()> {
    let mut out = io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&0xa1b2_3c4du32.to_le_bytes())?; // nanosecond-resolution magic
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&0i32.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&(snaplen as u32).to_le_bytes())?;
    out.write_all(&1u32.to_le_bytes())?; // LINKTYPE_ETHERNET
    let base = started.duration_since(UNIX_EPOCH).unwrap_or_default();
    for f in frames {
        let t = base + f.at;
        out.write_all(&(t.as_secs() as u32).to_le_bytes())?;
        out.write_all(&t.subsec_nanos().to_le_bytes())?;
        out.write_all(&(f.data.len() as u32).to_le_bytes())?;
        out.write_all(&(f.orig_len as u32).to_le_bytes())?;
        out.write_all(&f.data)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_frames_truncated_to_snaplen() {
        let mut ring = CaptureRing::new(2, 4);
        ring.record(Direction::AToB, 1, b"first");
        ring.record(Direction::BToA, 2, b"sec");
        ring.record(Direction::AToB, 3, b"third!");
        let frames = ring.frames();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].data, b"sec");
        assert_eq!(frames[1].data, b"thir");
        assert_eq!(frames[1].orig_len, 6);
        assert!(ring.contains(b"hir"));
        assert!(!ring.contains(b"first"));
        ring.clear();
        assert!(ring.frames().is_empty());
    }
}
