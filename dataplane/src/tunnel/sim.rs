//! A deterministic two-appliance simulator: two sessions joined by in-memory wires on
//! virtual time, with seeded loss, reordering, duplication, replay injection and bit
//! flips. The payload transform is pluggable so the codec can run in the same
//! simulator; [`Identity`] sends payloads unchanged.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use super::header::{ControlKind, HEADER_LEN, PacketType};
use super::session::{OpenError, SealError, Session};

/// What an appliance does to payloads around the tunnel (the codec, later).
pub trait PayloadTransform {
    /// Encodes a LAN payload of `lane` for the wire into `out` (cleared first).
    fn encode(&mut self, lane: u16, plain: &[u8], out: &mut Vec<u8>);
    /// Restores a payload received on `lane`; an error drops the packet.
    fn decode(&mut self, lane: u16, wire: &[u8], out: &mut Vec<u8>) -> Result<(), String>;
    /// A control message to send to the partner, if any (e.g. forget-ranges).
    fn poll_control(&mut self) -> Option<(ControlKind, Vec<u8>)> {
        None
    }
    /// A control message from the partner.
    fn on_control(&mut self, _lane: u16, _kind: ControlKind, _payload: &[u8]) {}
}

/// Sends payloads unchanged.
#[derive(Debug, Default, Clone, Copy)]
pub struct Identity;

impl PayloadTransform for Identity {
    fn encode(&mut self, _lane: u16, plain: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(plain);
    }

    fn decode(&mut self, _lane: u16, wire: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        out.clear();
        out.extend_from_slice(wire);
        Ok(())
    }
}

/// Fault rates of a wire, in packets per million.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Dropped.
    pub loss: u32,
    /// Delayed by a random extra up to `reorder_spread`.
    pub reorder: u32,
    /// Delivered twice.
    pub duplicate: u32,
    /// One bit flipped after the header (in payload or tag).
    pub bit_flip: u32,
    /// One bit flipped inside the header.
    pub header_flip: u32,
    /// A copy of an earlier packet re-injected (an attacker's replay).
    pub replay: u32,
    /// Largest extra delay of a reordered packet.
    pub reorder_spread: Duration,
}

/// What a wire did, per original packet and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Packets handed to the wire.
    pub sent: u64,
    /// Dropped.
    pub lost: u64,
    /// Extra copies from duplication.
    pub duplicated: u64,
    /// Reordered.
    pub reordered: u64,
    /// Copies with a flipped payload or tag bit.
    pub flipped: u64,
    /// Copies with a flipped header bit.
    pub header_flipped: u64,
    /// Replayed copies injected.
    pub replayed: u64,
    /// Ids of the packets dropped.
    pub lost_ids: Vec<u64>,
}

/// A packet in flight.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Duration,
    seq: u64,
    id: u64,
    intact: bool,
    bytes: Vec<u8>,
}

/// A packet the wire delivers.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Index of the original packet in send order.
    pub id: u64,
    /// Whether the bytes are unmodified.
    pub intact: bool,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// SplitMix64: small, seeded, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `per_million` / 1e6.
    pub fn chance(&mut self, per_million: u32) -> bool {
        self.next_u64() % 1_000_000 < u64::from(per_million)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// One direction of the WAN.
#[derive(Debug)]
pub struct Wire {
    faults: Faults,
    delay: Duration,
    rng: Rng,
    queue: BinaryHeap<Reverse<InFlight>>,
    history: Vec<(u64, Vec<u8>)>,
    seq: u64,
    stats: WireStats,
}

impl Wire {
    /// A wire with a base delay and faults, seeded.
    pub fn new(delay: Duration, faults: Faults, seed: u64) -> Self {
        Self {
            faults,
            delay,
            rng: Rng::new(seed),
            queue: BinaryHeap::new(),
            history: Vec::new(),
            seq: 0,
            stats: WireStats::default(),
        }
    }

    /// What the wire did so far.
    pub fn stats(&self) -> &WireStats {
        &self.stats
    }

    /// Packets still in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Puts a packet on the wire at `now`; returns its id.
    pub fn send(&mut self, now: Duration, bytes: Vec<u8>) -> u64 {
        let id = self.stats.sent;
        self.stats.sent += 1;
        let f = self.faults;
        if self.rng.chance(f.replay) && !self.history.is_empty() {
            let pick = self.rng.below(self.history.len() as u64) as usize;
            let (old_id, old) = self.history[pick].clone();
            self.stats.replayed += 1;
            self.enqueue(now + self.delay, old_id, true, old);
        }
        if self.history.len() == 1024 {
            self.history.swap_remove(self.rng.below(1024) as usize);
        }
        self.history.push((id, bytes.clone()));
        if self.rng.chance(f.loss) {
            self.stats.lost += 1;
            self.stats.lost_ids.push(id);
            return id;
        }
        let copies = if self.rng.chance(f.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = now + self.delay;
            if self.rng.chance(f.reorder) && !f.reorder_spread.is_zero() {
                self.stats.reordered += 1;
                let spread = f.reorder_spread.as_nanos() as u64;
                at += Duration::from_nanos(1 + self.rng.below(spread));
            }
            let mut copy = bytes.clone();
            let mut intact = true;
            if self.rng.chance(f.bit_flip) && copy.len() > HEADER_LEN {
                let i = HEADER_LEN + self.rng.below((copy.len() - HEADER_LEN) as u64) as usize;
                copy[i] ^= 1 << self.rng.below(8);
                self.stats.flipped += 1;
                intact = false;
            } else if self.rng.chance(f.header_flip) {
                let i = self.rng.below(HEADER_LEN.min(copy.len()) as u64) as usize;
                copy[i] ^= 1 << self.rng.below(8);
                self.stats.header_flipped += 1;
                intact = false;
            }
            self.enqueue(at, id, intact, copy);
        }
        id
    }

    /// Injects exact bytes (a captured packet) to arrive at `at`.
    pub fn inject(&mut self, at: Duration, id: u64, bytes: Vec<u8>) {
        self.enqueue(at, id, true, bytes);
    }

    /// The next packet due at or before `now`.
    pub fn pop_due(&mut self, now: Duration) -> Option<Arrival> {
        if self.queue.peek().is_some_and(|Reverse(p)| p.at <= now) {
            self.queue.pop().map(|Reverse(p)| Arrival {
                id: p.id,
                intact: p.intact,
                bytes: p.bytes,
            })
        } else {
            None
        }
    }

    fn enqueue(&mut self, at: Duration, id: u64, intact: bool, bytes: Vec<u8>) {
        self.seq += 1;
        self.queue.push(Reverse(InFlight {
            at,
            seq: self.seq,
            id,
            intact,
            bytes,
        }));
    }
}

/// A payload an appliance delivered to its LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Id of the original packet on the wire.
    pub id: u64,
    /// Whether the wire left the bytes intact.
    pub intact: bool,
    /// The lane.
    pub lane: u16,
    /// The epoch it was sealed under.
    pub epoch: u32,
    /// The restored payload.
    pub payload: Vec<u8>,
}

/// One simulated appliance.
#[derive(Debug)]
pub struct Appliance<T> {
    /// Its session with the other appliance.
    pub session: Session,
    /// Its payload transform.
    pub transform: T,
    /// Payloads delivered to its LAN, in order.
    pub delivered: Vec<Delivery>,
    /// Packets dropped, with the reason.
    pub dropped: Vec<(u64, OpenError)>,
    /// Payloads the transform could not restore.
    pub decode_failures: u64,
}

impl<T: PayloadTransform> Appliance<T> {
    /// An appliance around a session.
    pub fn new(session: Session, transform: T) -> Self {
        Self {
            session,
            transform,
            delivered: Vec::new(),
            dropped: Vec::new(),
            decode_failures: 0,
        }
    }

    fn seal(
        &mut self,
        ty: PacketType,
        lane: u16,
        plain: &[u8],
        now: Duration,
    ) -> Result<Vec<u8>, SealError> {
        let mut body = Vec::new();
        match ty {
            PacketType::Data => self.transform.encode(lane, plain, &mut body),
            PacketType::Control(_) => body.extend_from_slice(plain),
        }
        let sealed = self.session.seal(ty, lane, &mut body, now)?;
        let mut packet = Vec::with_capacity(HEADER_LEN + body.len() + 16);
        packet.extend_from_slice(&sealed.header);
        packet.extend_from_slice(&body);
        packet.extend_from_slice(sealed.trailer());
        Ok(packet)
    }

    fn receive(&mut self, mut arrival: Arrival, now: Duration) {
        let opened = match self.session.open(&mut arrival.bytes, now) {
            Ok(o) => o,
            Err(e) => {
                self.dropped.push((arrival.id, e));
                return;
            }
        };
        let lane = opened.header.lane;
        let body = &arrival.bytes[opened.payload.clone()];
        match opened.header.packet_type {
            PacketType::Control(kind) => self.transform.on_control(lane, kind, body),
            PacketType::Data => {
                let mut payload = Vec::new();
                match self.transform.decode(lane, body, &mut payload) {
                    Ok(()) => self.delivered.push(Delivery {
                        id: arrival.id,
                        intact: arrival.intact,
                        lane,
                        epoch: opened.epoch,
                        payload,
                    }),
                    Err(_) => self.decode_failures += 1,
                }
            }
        }
    }
}

/// Two appliances, A and B, and the wires between them, on virtual time.
#[derive(Debug)]
pub struct Simulation<T> {
    /// Appliance A.
    pub a: Appliance<T>,
    /// Appliance B.
    pub b: Appliance<T>,
    /// Wire from A to B.
    pub a_to_b: Wire,
    /// Wire from B to A.
    pub b_to_a: Wire,
    /// Virtual time now.
    pub now: Duration,
}

impl<T: PayloadTransform> Simulation<T> {
    /// A simulation starting at `now`.
    pub fn new(
        a: Appliance<T>,
        b: Appliance<T>,
        a_to_b: Wire,
        b_to_a: Wire,
        now: Duration,
    ) -> Self {
        Self {
            a,
            b,
            a_to_b,
            b_to_a,
            now,
        }
    }

    /// A sends a data payload to B on `lane`; returns the wire id.
    pub fn send_a_to_b(&mut self, lane: u16, plain: &[u8]) -> Result<u64, SealError> {
        let packet = self.a.seal(PacketType::Data, lane, plain, self.now)?;
        Ok(self.a_to_b.send(self.now, packet))
    }

    /// B sends a data payload to A on `lane`; returns the wire id.
    pub fn send_b_to_a(&mut self, lane: u16, plain: &[u8]) -> Result<u64, SealError> {
        let packet = self.b.seal(PacketType::Data, lane, plain, self.now)?;
        Ok(self.b_to_a.send(self.now, packet))
    }

    /// Advances virtual time by `dt`, delivering every packet due by then and sending
    /// the control messages the transforms ask for.
    pub fn advance(&mut self, dt: Duration) {
        self.now += dt;
        let now = self.now;
        while let Some(p) = self.a_to_b.pop_due(now) {
            self.b.receive(p, now);
        }
        while let Some(p) = self.b_to_a.pop_due(now) {
            self.a.receive(p, now);
        }
        while let Some((kind, msg)) = self.b.transform.poll_control() {
            if let Ok(packet) = self.b.seal(PacketType::Control(kind), 0, &msg, now) {
                self.b_to_a.send(now, packet);
            }
        }
        while let Some((kind, msg)) = self.a.transform.poll_control() {
            if let Ok(packet) = self.a.seal(PacketType::Control(kind), 0, &msg, now) {
                self.a_to_b.send(now, packet);
            }
        }
    }

    /// Advances until both wires are empty (bounded by `limit` steps of `dt`).
    pub fn drain(&mut self, dt: Duration, limit: usize) {
        for _ in 0..limit {
            if self.a_to_b.in_flight() == 0 && self.b_to_a.in_flight() == 0 {
                return;
            }
            self.advance(dt);
        }
    }
}
