//! Helpers shared by the tunnel tests.

use std::time::Duration;

use shunt_dataplane::tunnel::{EpochKeys, KeyLimits, Mode, SecretKey, Session, SessionParams};

pub const T0: Duration = Duration::from_secs(1_000);

pub fn keys(epoch: u32, a_to_b: bool) -> EpochKeys {
    let k = |dir: u8| SecretKey::from_bytes([dir.wrapping_mul(31).wrapping_add(epoch as u8); 32]);
    if a_to_b {
        EpochKeys {
            send: k(1),
            receive: k(2),
        }
    } else {
        EpochKeys {
            send: k(2),
            receive: k(1),
        }
    }
}

pub fn params(name: &str, local: u32, remote: u32, mode: Mode) -> SessionParams {
    SessionParams {
        partner: name.to_owned(),
        remote: "192.0.2.1:4790".parse().unwrap(),
        local_index: local,
        remote_index: remote,
        mode,
        lanes: 4,
        initial_counter: 0,
        limits: KeyLimits::default(),
    }
}

/// Two sessions facing each other (A's remote index is B's local index), with
/// epoch 1 installed on both when encrypted.
pub fn pair(mode: Mode, limits: KeyLimits) -> (Session, Session) {
    let mut pa = params("b", 10, 20, mode);
    let mut pb = params("a", 20, 10, mode);
    pa.limits = limits;
    pb.limits = limits;
    let mut a = Session::new(pa, T0);
    let mut b = Session::new(pb, T0);
    if mode == Mode::Encrypted {
        a.install_epoch(1, &keys(1, true), T0).unwrap();
        b.install_epoch(1, &keys(1, false), T0).unwrap();
    }
    (a, b)
}

/// Seals `payload` on `lane` into a fresh packet buffer.
pub fn packet(s: &mut Session, lane: u16, payload: &[u8], now: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; payload.len() + 64];
    buf[20..20 + payload.len()].copy_from_slice(payload);
    let n = s
        .seal_into(
            shunt_dataplane::tunnel::PacketType::Data,
            lane,
            &mut buf,
            payload.len(),
            now,
        )
        .unwrap();
    buf.truncate(n);
    buf
}

/// Opens and returns the payload.
pub fn open(
    s: &mut Session,
    mut packet: Vec<u8>,
    now: Duration,
) -> Result<Vec<u8>, shunt_dataplane::tunnel::OpenError> {
    let o = s.open(&mut packet, now)?;
    Ok(packet[o.payload].to_vec())
}
