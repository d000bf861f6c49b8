//! Session behaviour: sealing, opening, anti-replay, modes, epochs and limits.

use std::time::Duration;

use shunt_dataplane::tunnel::header::FLAG_ENCRYPTED;
use shunt_dataplane::tunnel::replay::Replay;
use shunt_dataplane::tunnel::{
    ControlKind, HEADER_LEN, Header, KeyError, KeyLimits, Mode, OVERHEAD, OpenError, PacketType,
    RekeyReason, SealError, Session, SessionTable, TAG_LEN,
};

use crate::common::{T0, keys, open, packet, pair, params};

const MARKER: &[u8] = b"MARKER-7f3a9c secret payload";

#[test]
fn encrypted_round_trip_hides_the_payload() {
    let (mut a, mut b) = pair(Mode::Encrypted, KeyLimits::default());
    let p = packet(&mut a, 2, MARKER, T0);
    assert_eq!(p.len(), MARKER.len() + OVERHEAD);
    assert!(
        !p.windows(MARKER.len()).any(|w| w == MARKER),
        "payload visible in clear"
    );
    let h = Header::parse(&p).unwrap();
    assert_eq!(
        (h.lane, h.receiver_index, h.counter, h.epoch),
        (2, 20, 0, 1)
    );
    assert_eq!(h.flags, FLAG_ENCRYPTED);
    assert_eq!(open(&mut b, p, T0).unwrap(), MARKER);
    assert_eq!(a.counters().sealed, 1);
    assert_eq!(b.counters().opened, 1);
    assert_eq!(b.counters().opened_bytes, MARKER.len() as u64);
}

#[test]
fn separate_header_and_tag_api_matches_seal_into() {
    let (mut a, mut b) = pair(Mode::Encrypted, KeyLimits::default());
    let mut payload = MARKER.to_vec();
    let sealed = a
        .seal_control(ControlKind::ForgetRanges, 1, &mut payload, T0)
        .unwrap();
    assert_eq!(sealed.trailer().len(), TAG_LEN);
    let mut p = sealed.header.to_vec();
    p.extend_from_slice(&payload);
    p.extend_from_slice(sealed.trailer());
    let o = b.open(&mut p, T0).unwrap();
    assert_eq!(
        o.header.packet_type,
        PacketType::Control(ControlKind::ForgetRanges)
    );
    assert_eq!(&p[o.payload], MARKER);
}

#[test]
fn replay_is_dropped_and_counted() {
    let (mut a, mut b) = pair(Mode::Encrypted, KeyLimits::default());
    let p = packet(&mut a, 0, b"once", T0);
    assert!(open(&mut b, p.clone(), T0).is_ok());
    assert_eq!(
        open(&mut b, p, T0),
        Err(OpenError::Replayed(Replay::Duplicate))
    );
    assert_eq!(b.counters().replayed, 1);
    assert_eq!(b.counters().opened, 1);
}

#[test]
fn flipped_bit_fails_authentication_without_touching_the_window() {
    let (mut a, mut b) = pair(Mode::Encrypted, KeyLimits::default());
    let p = packet(&mut a, 0, MARKER, T0);
    for i in [3usize, 5, 13, HEADER_LEN, p.len() - 1] {
        let mut bad = p.clone();
        bad[i] ^= 0x10;
        let err = open(&mut b, bad, T0).unwrap_err();
        // Epoch and lane flips are caught before the AEAD; everything else by it.
        assert!(
            matches!(
                err,
                OpenError::AuthFailed | OpenError::StaleEpoch(_) | OpenError::UnknownLane(_)
            ),
            "byte {i}: {err:?}"
        );
    }
    assert_eq!(b.counters().auth_failed, 3);
    assert_eq!(
        open(&mut b, p, T0).unwrap(),
        MARKER,
        "genuine packet refused after forgeries"
    );
}

#[test]
fn downgrade_to_compress_only_is_refused() {
    let (mut a, mut b) = pair(Mode::Encrypted, KeyLimits::default());
    let mut p = packet(&mut a, 0, MARKER, T0);
    p[2] = 0; // clear FLAG_ENCRYPTED
    assert_eq!(open(&mut b, p, T0), Err(OpenError::ModeMismatch));
    assert_eq!(b.counters().malformed, 1);
}

#[test]
fn compress_only_carries_the_payload_in_clear() {
    let (mut a, mut b) = pair(Mode::CompressOnly, KeyLimits::default());
    let p = packet(&mut a, 1, MARKER, T0);
    assert_eq!(p.len(), HEADER_LEN + MARKER.len());
    assert!(p.windows(MARKER.len()).any(|w| w == MARKER));
    assert_eq!(open(&mut b, p.clone(), T0).unwrap(), MARKER);
    assert_eq!(
        a.install_epoch(2, &keys(2, true), T0),
        Err(KeyError::NoKeysInMode(Mode::CompressOnly))
    );
    let (mut enc, _) = pair(Mode::Encrypted, KeyLimits::default());
    let mut encrypted = packet(&mut enc, 1, MARKER, T0);
    encrypted[8..12].copy_from_slice(&20u32.to_be_bytes());
    assert_eq!(open(&mut b, encrypted, T0), Err(OpenError::ModeMismatch));
}

#[test]
fn pass_through_refuses_both_ways() {
    let (mut a, mut b) = pair(Mode::PassThrough, KeyLimits::default());
    let mut payload = MARKER.to_vec();
    assert_eq!(
        a.seal_data(0, &mut payload, T0),
        Err(SealError::PassThrough)
    );
    let (mut enc, _) = pair(Mode::CompressOnly, KeyLimits::default());
    assert_eq!(
        open(&mut b, packet(&mut enc, 0, MARKER, T0), T0),
        Err(OpenError::PassThrough)
    );
}

#[test]
fn lanes_are_checked_and_have_their_own_nonces() {
    let (mut a, mut b) = pair(Mode::Encrypted, KeyLimits::default());
    let mut payload = MARKER.to_vec();
    assert_eq!(
        a.seal_data(4, &mut payload, T0),
        Err(SealError::UnknownLane(4))
    );
    let p0 = packet(&mut a, 0, MARKER, T0);
    let p1 = packet(&mut a, 1, MARKER, T0);
    assert_eq!(
        Header::parse(&p0).unwrap().counter,
        Header::parse(&p1).unwrap().counter
    );
    assert_ne!(
        p0[HEADER_LEN..],
        p1[HEADER_LEN..],
        "same counter on two lanes reused a nonce"
    );
    // Each lane has its own replay window: both are accepted.
    assert!(open(&mut b, p1, T0).is_ok());
    assert!(open(&mut b, p0, T0).is_ok());
}

#[test]
fn epoch_switch_keeps_previous_receive_key_for_the_grace_period() {
    let limits = KeyLimits {
        receive_grace: Duration::from_secs(5),
        ..KeyLimits::default()
    };
    let (mut a, mut b) = pair(Mode::Encrypted, limits);
    let old = [
        packet(&mut a, 0, b"old-1", T0),
        packet(&mut a, 0, b"old-2", T0),
    ];

    // Install next on both, receiver first; then the sender switches.
    b.install_epoch(2, &keys(2, false), T0).unwrap();
    a.install_epoch(2, &keys(2, true), T0).unwrap();
    assert_eq!(a.send_epoch(), Some(1));
    assert_eq!(a.switch_send_epoch(T0).unwrap(), 2);
    assert_eq!(a.switch_send_epoch(T0), Err(KeyError::NoNextKey));
    let new = packet(&mut a, 0, b"new", T0);
    assert_eq!(
        Header::parse(&new).unwrap().counter,
        0,
        "counters restart under a new key"
    );
    let t1 = T0 + Duration::from_secs(1);
    assert_eq!(open(&mut b, new, t1).unwrap(), b"new");
    // A packet of the old epoch still in flight arrives within the grace period.
    assert_eq!(
        open(&mut b, old[0].clone(), t1 + Duration::from_secs(3)).unwrap(),
        b"old-1"
    );
    // After the grace period the old key is retired.
    let late = t1 + Duration::from_secs(6);
    assert_eq!(
        open(&mut b, old[1].clone(), late),
        Err(OpenError::StaleEpoch(1))
    );
    assert_eq!(b.receive_epochs(), vec![2]);
    assert_eq!(b.counters().stale_epoch, 1);
    assert_eq!(b.counters().receive_epochs_retired, 1);
    assert_eq!(
        a.install_epoch(2, &keys(2, true), T0),
        Err(KeyError::EpochNotNewer {
            new: 2,
            installed: 2
        })
    );
}

#[test]
fn usage_and_age_limits_signal_then_refuse() {
    let limits = KeyLimits {
        rekey_after_blocks: 10,
        reject_after_blocks: 20,
        rekey_interval: Duration::from_secs(60),
        reject_after: Duration::from_secs(120),
        receive_grace: Duration::from_secs(5),
    };
    let (mut a, _) = pair(Mode::Encrypted, limits);
    assert_eq!(a.rekey_due(T0), None);
    let mut payload = [0u8; 64]; // 4 blocks + 1 per packet
    for _ in 0..2 {
        a.seal_data(0, &mut payload, T0).unwrap();
    }
    assert_eq!(a.rekey_due(T0), Some(RekeyReason::Usage));
    for _ in 0..2 {
        a.seal_data(0, &mut payload, T0).unwrap();
    }
    assert_eq!(
        a.seal_data(0, &mut payload, T0),
        Err(SealError::KeyExhausted(1))
    );
    assert_eq!(a.counters().seal_refused, 1);

    let (mut a, _) = pair(Mode::Encrypted, limits);
    assert_eq!(
        a.rekey_due(T0 + Duration::from_secs(60)),
        Some(RekeyReason::Interval)
    );
    let late = T0 + Duration::from_secs(120);
    assert_eq!(
        a.seal_data(0, &mut payload, late),
        Err(SealError::KeyExhausted(1))
    );
    a.install_epoch(2, &keys(2, true), late).unwrap();
    a.switch_send_epoch(late).unwrap();
    assert!(a.seal_data(0, &mut payload, late).is_ok());
}

#[test]
fn counter_never_wraps() {
    let mut p = params("b", 10, 20, Mode::Encrypted);
    p.initial_counter = u64::MAX - 1;
    let mut a = Session::new(p, T0);
    a.install_epoch(1, &keys(1, true), T0).unwrap();
    let mut payload = [0u8; 8];
    assert!(a.seal_data(0, &mut payload, T0).is_ok());
    assert_eq!(
        a.seal_data(0, &mut payload, T0),
        Err(SealError::CounterExhausted)
    );
}

#[test]
fn no_key_no_seal_and_debug_prints_no_key() {
    let mut a = Session::new(params("b", 10, 20, Mode::Encrypted), T0);
    let mut payload = [0u8; 8];
    assert_eq!(a.seal_data(0, &mut payload, T0), Err(SealError::NoKey));
    a.install_epoch(1, &keys(1, true), T0).unwrap();
    let debug = format!("{a:?} {:?}", keys(1, true));
    let key_hex = hex_of(&[31u8.wrapping_add(1); 32]);
    assert!(
        !debug.contains(&key_hex) && !debug.contains("32, 32, 32"),
        "{debug}"
    );
    assert!(debug.contains("redacted"));
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn table_dispatches_by_receiver_index() {
    let mut table = SessionTable::new();
    table
        .install(params("a", 20, 10, Mode::Encrypted), T0)
        .unwrap();
    table
        .get_mut(20)
        .unwrap()
        .install_epoch(1, &keys(1, false), T0)
        .unwrap();
    table
        .install(params("c", 30, 11, Mode::CompressOnly), T0)
        .unwrap();
    assert!(
        table
            .install(params("x", 20, 1, Mode::Encrypted), T0)
            .is_err()
    );
    assert!(
        table
            .install(params("a", 40, 1, Mode::Encrypted), T0)
            .is_err()
    );
    assert_eq!(table.by_partner("c"), Some(30));

    let (mut a, _) = crate::common::pair(Mode::Encrypted, KeyLimits::default());
    let mut p = packet(&mut a, 0, MARKER, T0);
    let (index, o) = table.open(&mut p, T0).unwrap();
    assert_eq!((index, &p[o.payload]), (20, MARKER));

    let mut stray = packet(&mut a, 0, MARKER, T0);
    stray[8..12].copy_from_slice(&99u32.to_be_bytes());
    assert_eq!(
        table.open(&mut stray, T0).unwrap_err(),
        OpenError::UnknownSession(99)
    );
    assert_eq!(table.unknown_session_drops(), 1);
    assert!(table.remove(20).is_some());
    let mut again = packet(&mut a, 0, MARKER, T0);
    assert_eq!(
        table.open(&mut again, T0).unwrap_err(),
        OpenError::UnknownSession(20)
    );
    let mut short = [1u8; 5];
    assert!(matches!(
        table.open(&mut short, T0),
        Err(OpenError::Malformed(_))
    ));
}

#[test]
fn per_worker_limits_split_the_block_budget() {
    let l = KeyLimits::default().per_worker(4);
    assert_eq!(
        l.reject_after_blocks,
        KeyLimits::default().reject_after_blocks / 4
    );
    assert_eq!(
        l.rekey_after_blocks,
        KeyLimits::default().rekey_after_blocks / 4
    );
    assert_eq!(l.rekey_interval, KeyLimits::default().rekey_interval);
    assert_eq!(KeyLimits::default().per_worker(0), KeyLimits::default());
}
