//! Fuzzes the decrypt path (parse, lane and epoch checks, anti-replay, AES-256-GCM
//! open) with a fixed key. Odd first byte: seal the rest as a payload, optionally
//! flip one bit, and check that exactly the untouched packet opens, once.
//! Even first byte: open the rest as a raw packet; it must never authenticate.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shunt_dataplane::tunnel::{
    EpochKeys, KeyLimits, Mode, OpenError, PacketType, SecretKey, Session, SessionParams,
};

const NOW: Duration = Duration::from_secs(1_000);

fn session(local: u32, remote: u32, send: u8, receive: u8) -> Session {
    let params = SessionParams {
        partner: "fuzz".into(),
        remote: "192.0.2.1:4790".parse().unwrap(),
        local_index: local,
        remote_index: remote,
        mode: Mode::Encrypted,
        lanes: 4,
        initial_counter: 0,
        limits: KeyLimits::default(),
    };
    let mut s = Session::new(params, NOW);
    let keys = EpochKeys {
        send: SecretKey::from_bytes([send; 32]),
        receive: SecretKey::from_bytes([receive; 32]),
    };
    s.install_epoch(1, &keys, NOW).unwrap();
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut receiver = session(20, 10, 2, 1);
    if mode & 1 == 0 {
        let mut packet = rest.to_vec();
        assert!(receiver.open(&mut packet, NOW).is_err(), "forged packet authenticated");
        return;
    }
    let Some((&flip, payload)) = rest.split_first() else { return };
    let mut sender = session(10, 20, 1, 2);
    let lane = u16::from(mode >> 1) % 4;
    let mut buf = vec![0u8; payload.len() + 36];
    buf[20..20 + payload.len()].copy_from_slice(payload);
    let n = sender
        .seal_into(PacketType::Data, lane, &mut buf, payload.len(), NOW)
        .unwrap();
    if flip != 0 {
        let bit = usize::from(flip) * 7 % (n * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        assert!(receiver.open(&mut buf.clone(), NOW).is_err(), "tampered packet authenticated");
        return;
    }
    let mut packet = buf.clone();
    let o = receiver.open(&mut packet, NOW).unwrap();
    assert_eq!(&packet[o.payload], payload);
    let again = receiver.open(&mut buf, NOW);
    assert!(matches!(again, Err(OpenError::Replayed(_))), "{again:?}");
});
