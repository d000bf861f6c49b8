//! Manual keying: two appliances configured from files tunnel and rekey in step.

use std::time::Duration;

use shunt_dataplane::tunnel::config::ManualConfig;
use shunt_dataplane::tunnel::manual::{self, ManualKeying};
use shunt_dataplane::tunnel::{Mode, Session};

use crate::common::{open, packet};

const KA: &str = "6c1f0b5e2a7d94c3e8f1a0b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6";
const KB: &str = "9d8c7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa998877665544";

fn file(partner: &str, address: &str, send: &str, receive: &str) -> ManualConfig {
    let text = format!(
        "[local]\nlan_interface = \"l\"\nwan_interface = \"w\"\nrekey_interval_secs = 60\nreceive_grace_secs = 10\n\
         [[partner]]\nname = \"{partner}\"\naddress = \"{address}\"\nprefixes = [\"10.0.0.0/8\"]\n\
         mode = \"encrypted\"\nsend_key = \"{send}\"\nreceive_key = \"{receive}\"\n"
    );
    ManualConfig::parse(&text, &|_: &str| true).unwrap()
}

fn appliance(c: &ManualConfig, now: Duration) -> (Session, ManualKeying) {
    let p = &c.partners[0];
    let mut s = Session::new(manual::session_params(c, p, now).unwrap(), now);
    let k = ManualKeying::new(c, p).unwrap();
    k.tick(&mut s, now).unwrap();
    (s, k)
}

#[test]
fn two_files_with_swapped_keys_tunnel_across_epochs_and_skew() {
    let a_cfg = file("b", "192.0.2.2", KA, KB);
    let b_cfg = file("a", "192.0.2.1", KB, KA);
    assert_eq!(
        manual::remote_index(&a_cfg.partners[0]),
        manual::local_index(&b_cfg.partners[0])
    );
    assert_eq!(
        manual::session_params(&a_cfg, &a_cfg.partners[0], Duration::ZERO)
            .unwrap()
            .mode,
        Mode::Encrypted
    );

    let t = Duration::from_secs(1_700_000_000 / 60 * 60 + 5); // 5 s into an epoch
    let (mut a, ka) = appliance(&a_cfg, t);
    // B's clock runs 50 s behind: it is still in the previous epoch.
    let skew = Duration::from_secs(50);
    let (mut b, kb) = appliance(&b_cfg, t - skew);
    assert_eq!(a.send_epoch().unwrap(), b.send_epoch().unwrap() + 1);

    let mut now = t;
    for i in 0..300u32 {
        // One packet each way every second for five minutes (five epochs).
        let msg = format!("packet {i}");
        let p = packet(&mut a, (i % 4) as u16, msg.as_bytes(), now);
        assert_eq!(
            open(&mut b, p, now - skew).unwrap(),
            msg.as_bytes(),
            "A->B {i}"
        );
        let p = packet(&mut b, 0, msg.as_bytes(), now - skew);
        assert_eq!(open(&mut a, p, now).unwrap(), msg.as_bytes(), "B->A {i}");
        now += Duration::from_secs(1);
        ka.tick(&mut a, now).unwrap();
        kb.tick(&mut b, now - skew).unwrap();
    }
    assert_eq!(
        a.counters().send_epochs,
        6,
        "one initial epoch and five switches"
    );
    assert_eq!(b.counters().auth_failed + b.counters().stale_epoch, 0);
    assert_eq!(a.counters().opened, 300);
}

#[test]
fn restart_never_reuses_a_nonce() {
    let a_cfg = file("b", "192.0.2.2", KA, KB);
    let b_cfg = file("a", "192.0.2.1", KB, KA);
    let t = Duration::from_secs(1_700_000_000);
    let (mut a, _) = appliance(&a_cfg, t);
    let (mut b, _) = appliance(&b_cfg, t);
    let first = packet(&mut a, 0, b"before restart", t);
    assert!(open(&mut b, first.clone(), t).is_ok());
    // A restarts a millisecond later, same epoch, same keys.
    let t2 = t + Duration::from_millis(1);
    let (mut a2, _) = appliance(&a_cfg, t2);
    let second = packet(&mut a2, 0, b"after restart!", t2);
    assert!(
        second[12..20] > first[12..20],
        "counter did not move past the old run"
    );
    assert_eq!(open(&mut b, second, t2).unwrap(), b"after restart!");
    assert!(
        open(&mut b, first, t2).is_err(),
        "old packet replayed after restart"
    );
}

#[test]
fn usage_limit_moves_to_the_next_epoch_early() {
    let c = file("b", "192.0.2.2", KA, KB);
    let t = Duration::from_secs(1_700_000_000);
    let mut params = manual::session_params(&c, &c.partners[0], t).unwrap();
    params.limits.rekey_after_blocks = 4;
    let mut s = Session::new(params, t);
    let k = ManualKeying::new(&c, &c.partners[0]).unwrap();
    let e = k.tick(&mut s, t).unwrap().unwrap();
    let mut payload = [0u8; 64];
    s.seal_data(0, &mut payload, t).unwrap();
    assert_eq!(k.tick(&mut s, t).unwrap(), Some(e + 1));
    assert_eq!(s.send_epoch(), Some(e + 1));
}
