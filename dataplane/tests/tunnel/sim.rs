//! The deterministic two-appliance simulator: loss, reordering, duplication, replay,
//! bit flips and an epoch change, every delivered payload checked byte for byte.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use shunt_dataplane::tunnel::sim::{
    Appliance, Faults, Identity, PayloadTransform, Simulation, Wire,
};
use shunt_dataplane::tunnel::{ControlKind, KeyLimits, Mode, OpenError};

use crate::common::{T0, keys, pair};

const MS: Duration = Duration::from_millis(1);

fn sim<T: PayloadTransform>(mode: Mode, faults: Faults, seed: u64, ta: T, tb: T) -> Simulation<T> {
    let limits = KeyLimits {
        receive_grace: Duration::from_secs(2),
        ..KeyLimits::default()
    };
    let (a, b) = pair(mode, limits);
    Simulation::new(
        Appliance::new(a, ta),
        Appliance::new(b, tb),
        Wire::new(5 * MS, faults, seed),
        Wire::new(5 * MS, faults, seed ^ 0xFFFF),
        T0,
    )
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("packet {i} ").into_bytes();
    p.extend((0..(i * 37 % 1300)).map(|j| (i ^ j) as u8));
    p
}

/// Sends `n` payloads A -> B over four lanes, ten per millisecond, then drains.
fn run<T: PayloadTransform>(s: &mut Simulation<T>, n: u64) -> HashMap<u64, Vec<u8>> {
    let mut sent = HashMap::new();
    for i in 0..n {
        let p = payload(i);
        let id = s.send_a_to_b((i % 4) as u16, &p).unwrap();
        sent.insert(id, p);
        if i % 10 == 9 {
            s.advance(MS);
        }
    }
    s.drain(MS, 10_000);
    sent
}

/// Every delivery is exact and unique; returns the delivered ids.
fn check_exact<T>(s: &Simulation<T>, sent: &HashMap<u64, Vec<u8>>) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for d in &s.b.delivered {
        assert!(d.intact, "a modified packet was delivered: id {}", d.id);
        assert_eq!(&d.payload, &sent[&d.id], "payload of id {} differs", d.id);
        assert!(ids.insert(d.id), "id {} delivered twice", d.id);
    }
    ids
}

fn intact_arrivals(w: &Wire) -> u64 {
    let st = w.stats();
    st.sent - st.lost + st.duplicated + st.replayed - st.flipped - st.header_flipped
}

#[test]
fn clean_wire_delivers_everything_in_order() {
    let mut s = sim(Mode::Encrypted, Faults::default(), 1, Identity, Identity);
    let sent = run(&mut s, 2_000);
    let ids = check_exact(&s, &sent);
    assert_eq!(ids.len(), 2_000);
    let order: Vec<u64> = s.b.delivered.iter().map(|d| d.id).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(s.b.session.counters().opened, 2_000);
}

#[test]
fn loss_reorder_duplicate_and_replay() {
    for seed in [7, 8, 9] {
        let faults = Faults {
            loss: 20_000,
            reorder: 50_000,
            duplicate: 20_000,
            replay: 10_000,
            reorder_spread: 40 * MS,
            ..Faults::default()
        };
        let mut s = sim(Mode::Encrypted, faults, seed, Identity, Identity);
        let sent = run(&mut s, 5_000);
        let ids = check_exact(&s, &sent);
        let st = s.a_to_b.stats().clone();
        assert!(
            st.lost > 50 && st.duplicated > 50 && st.replayed > 20 && st.reordered > 100,
            "{st:?}"
        );

        // Exactly the lost packets are missing (a replay may resurrect a lost one).
        let expected: BTreeSet<u64> = (0..5_000).collect();
        let missing: BTreeSet<u64> = expected.difference(&ids).copied().collect();
        assert!(
            missing.iter().all(|id| st.lost_ids.contains(id)),
            "seed {seed}"
        );
        // Every extra intact copy is counted as a replay, nothing else is dropped.
        let c = s.b.session.counters();
        assert_eq!(
            c.replayed,
            intact_arrivals(&s.a_to_b) - ids.len() as u64,
            "seed {seed}"
        );
        assert_eq!(c.opened, ids.len() as u64);
        assert_eq!((c.auth_failed, c.stale_epoch, c.malformed), (0, 0, 0));
        // Reordering happened and was tolerated.
        let order: Vec<u64> = s.b.delivered.iter().map(|d| d.id).collect();
        assert!(order.windows(2).any(|w| w[0] > w[1]));
    }
}

#[test]
fn bit_flips_fail_authentication_and_are_never_delivered() {
    // No duplicates here: a flipped duplicate arriving after its intact twin is
    // dropped by the replay check before authentication, which would blur the count.
    let faults = Faults {
        bit_flip: 30_000,
        reorder: 20_000,
        reorder_spread: 10 * MS,
        ..Faults::default()
    };
    let mut s = sim(Mode::Encrypted, faults, 11, Identity, Identity);
    let sent = run(&mut s, 4_000);
    let ids = check_exact(&s, &sent);
    let st = s.a_to_b.stats();
    let c = s.b.session.counters();
    assert!(st.flipped > 50);
    assert_eq!(c.auth_failed, st.flipped);
    assert_eq!(c.replayed, 0);
    // Exactly the flipped packets are missing.
    assert_eq!(ids.len() as u64, 4_000 - st.flipped);
}

#[test]
fn header_flips_never_deliver_corrupted_data() {
    let faults = Faults {
        header_flip: 50_000,
        ..Faults::default()
    };
    let mut s = sim(Mode::Encrypted, faults, 12, Identity, Identity);
    let sent = run(&mut s, 3_000);
    let ids = check_exact(&s, &sent);
    let st = s.a_to_b.stats();
    assert!(st.header_flipped > 50);
    assert_eq!(ids.len() as u64, 3_000 - st.header_flipped);
    assert_eq!(s.b.dropped.len() as u64, st.header_flipped);
}

#[test]
fn epoch_change_mid_stream_loses_nothing() {
    let faults = Faults {
        reorder: 100_000,
        reorder_spread: 30 * MS,
        ..Faults::default()
    };
    let mut s = sim(Mode::Encrypted, faults, 21, Identity, Identity);
    let mut sent = run(&mut s, 1_000);
    // Keep one genuine old-epoch packet to replay after the grace period.
    let captured = {
        let mut body = payload(0);
        let sealed = s.a.session.seal_data(0, &mut body, s.now).unwrap();
        [&sealed.header[..], &body, sealed.trailer()].concat()
    };

    // Rekey: both install epoch 2 (receiver first), then A switches while packets of
    // epoch 1 are still in flight and being reordered.
    s.b.session
        .install_epoch(2, &keys(2, false), s.now)
        .unwrap();
    s.a.session.install_epoch(2, &keys(2, true), s.now).unwrap();
    for i in 1_000..2_000u64 {
        if i == 1_200 {
            s.a.session.switch_send_epoch(s.now).unwrap();
        }
        let id = s.send_a_to_b((i % 4) as u16, &payload(i)).unwrap();
        sent.insert(id, payload(i));
        if i % 10 == 9 {
            s.advance(MS);
        }
    }
    s.drain(MS, 10_000);
    let ids = check_exact(&s, &sent);
    assert_eq!(ids.len(), 2_000);
    let epochs: BTreeSet<u32> = s.b.delivered.iter().map(|d| d.epoch).collect();
    assert_eq!(epochs, BTreeSet::from([1, 2]));
    assert_eq!(s.a.session.counters().send_epochs, 2);

    // After the grace period epoch 1 is gone: its packets are stale, not auth failures.
    s.advance(Duration::from_secs(3));
    s.a_to_b.inject(s.now, 0, captured);
    s.advance(MS);
    assert_eq!(
        s.b.dropped.last().map(|d| d.1),
        Some(OpenError::StaleEpoch(1))
    );
    assert_eq!(s.b.session.receive_epochs(), vec![2]);
    assert_eq!(s.b.session.counters().stale_epoch, 1);
}

#[test]
fn compress_only_tolerates_the_same_faults_without_authentication() {
    let faults = Faults {
        loss: 10_000,
        reorder: 50_000,
        reorder_spread: 20 * MS,
        ..Faults::default()
    };
    let mut s = sim(Mode::CompressOnly, faults, 31, Identity, Identity);
    let sent = run(&mut s, 2_000);
    let ids = check_exact(&s, &sent);
    assert_eq!(ids.len() as u64, 2_000 - s.a_to_b.stats().lost);
}

/// A transform that XORs payloads with a lane key and answers every tenth packet
/// with a control message, standing in for the codec's recovery messages.
#[derive(Default)]
struct Scramble {
    received: u64,
    pending: Vec<(ControlKind, Vec<u8>)>,
    controls: Vec<(ControlKind, Vec<u8>)>,
}

impl PayloadTransform for Scramble {
    fn encode(&mut self, lane: u16, plain: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend(plain.iter().map(|b| b ^ (lane as u8 + 0x5A)));
    }

    fn decode(&mut self, lane: u16, wire: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.received += 1;
        if self.received.is_multiple_of(10) {
            self.pending.push((
                ControlKind::ForgetRanges,
                self.received.to_be_bytes().to_vec(),
            ));
        }
        out.clear();
        out.extend(wire.iter().map(|b| b ^ (lane as u8 + 0x5A)));
        Ok(())
    }

    fn poll_control(&mut self) -> Option<(ControlKind, Vec<u8>)> {
        self.pending.pop()
    }

    fn on_control(&mut self, _lane: u16, kind: ControlKind, payload: &[u8]) {
        self.controls.push((kind, payload.to_vec()));
    }
}

#[test]
fn a_payload_transform_and_its_control_messages_plug_in() {
    let mut s = sim(
        Mode::Encrypted,
        Faults::default(),
        41,
        Scramble::default(),
        Scramble::default(),
    );
    let sent = run(&mut s, 500);
    assert_eq!(check_exact(&s, &sent).len(), 500);
    assert_eq!(s.a.transform.controls.len(), 50);
    assert!(
        s.a.transform
            .controls
            .iter()
            .all(|(k, p)| *k == ControlKind::ForgetRanges && p.len() == 8)
    );
    assert_eq!(s.b.session.counters().sealed, 50);
}
