//! Codec properties: round trips, loss/reorder/duplication safety, partner
//! isolation and compression ratios on synthetic data.

use proptest::prelude::*;
use shunt_dataplane::codec::{
    CodecConfig, CodecError, ControlMessage, Decoder, Encoder, FrameKind, MAX_FRAME_OVERHEAD,
};

fn config() -> CodecConfig {
    CodecConfig {
        history_bytes: 1 << 20,
        max_payload: 2048,
        reorder_guard_bytes: 4096,
        index_bits: 16,
        zstd_level: 1,
    }
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Text-like data: words from a small vocabulary, deterministic.
fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "packet",
        "history",
        "of",
        "a",
        "partner",
        "lane",
        "encoder",
        "and",
        "decoder",
        "stores",
        "position",
        "window",
        "gateway",
        "tunnel",
        "is",
        "to",
        "when",
        "reference",
        "in",
        "compress",
    ];
    let r = noise(seed, len);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[usize::from(r[i % r.len()]) % WORDS.len()].as_bytes());
        out.push(if r[(i + 7) % r.len()].is_multiple_of(11) {
            b'\n'
        } else {
            b' '
        });
        i += 1;
    }
    out.truncate(len);
    out
}

/// Encodes `data` in packets of `mtu` through `enc` and checks each decodes
/// exactly; returns the encoded bytes.
fn pass(enc: &mut Encoder, dec: &mut Decoder, data: &[u8], mtu: usize) -> usize {
    let mut frame = vec![0u8; mtu + MAX_FRAME_OVERHEAD];
    let mut out = vec![0u8; mtu];
    let mut total = 0;
    for chunk in data.chunks(mtu) {
        let meta = enc.encode(chunk, &mut frame).unwrap();
        total += meta.len;
        let got = dec.decode(&frame[..meta.len], &mut out).unwrap();
        assert_eq!(&out[..got.len], chunk);
    }
    total
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_bytes_round_trip(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1500), 1..20),
                            repeat in any::<bool>()) {
        let mut enc = Encoder::new(0, config()).unwrap();
        let mut dec = Decoder::new(0, config()).unwrap();
        let mut frame = vec![0u8; 1500 + MAX_FRAME_OVERHEAD];
        let mut out = vec![0u8; 1500];
        let rounds = if repeat { 2 } else { 1 };
        for _ in 0..rounds {
            for p in &packets {
                let meta = enc.encode(p, &mut frame).unwrap();
                prop_assert!(meta.len <= p.len() + MAX_FRAME_OVERHEAD);
                let got = dec.decode(&frame[..meta.len], &mut out).unwrap();
                prop_assert_eq!(&out[..got.len], &p[..]);
            }
        }
    }

    /// Under loss, reordering and duplication, every decode yields the exact
    /// payload or a detected miss; forget messages are fed back.
    #[test]
    fn impaired_wire_never_yields_wrong_bytes(seed in any::<u64>(), loss in 0u8..40, reorder in 0u8..40, dup in 0u8..20) {
        let cfg = CodecConfig { reorder_guard_bytes: 2000, ..config() };
        let mut enc = Encoder::new(1, cfg).unwrap();
        let mut dec = Decoder::new(1, cfg).unwrap();
        let base = text(seed, 6000);
        let rnd = noise(seed ^ 0x55, 400);
        let mut sent: Vec<(Vec<u8>, Vec<u8>)> = Vec::new(); // (frame, payload)
        let mut frame = vec![0u8; 1400 + MAX_FRAME_OVERHEAD];
        let mut out = vec![0u8; 1400];
        let mut ctl = vec![0u8; 2048];
        let mut r = rnd.iter().cycle().copied();
        let mut delayed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let (mut ok, mut missed) = (0, 0);
        for round in 0..12 {
            // Repeat the base text with small edits so copies are plentiful.
            let mut data = base.clone();
            data[round * 37 % 6000] ^= 0xff;
            for chunk in data.chunks(700 + round * 50) {
                let meta = enc.encode(chunk, &mut frame).unwrap();
                sent.push((frame[..meta.len].to_vec(), chunk.to_vec()));
                // Wire impairments.
                let (f, p) = sent.pop().unwrap();
                if r.next().unwrap() % 100 < loss { continue; }
                if r.next().unwrap() % 100 < reorder { delayed.push((f, p)); continue; }
                let mut deliver = vec![(f.clone(), p.clone())];
                if r.next().unwrap() % 100 < dup { deliver.push((f, p)); }
                if r.next().unwrap() % 3 == 0 { deliver.append(&mut delayed); }
                for (f, p) in deliver {
                    match dec.decode(&f, &mut out) {
                        Ok(m) => { prop_assert_eq!(&out[..m.len], &p[..]); ok += 1; }
                        Err(e) => { prop_assert!(e.is_miss(), "unexpected error {}", e); missed += 1; }
                    }
                }
                if let Some(n) = dec.take_control(&mut ctl).unwrap() {
                    match ControlMessage::parse(&ctl[..n]).unwrap() {
                        ControlMessage::Forget(f) => enc.apply_forget(&f),
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
            }
        }
        prop_assert!(ok > 0);
        prop_assert_eq!(dec.stats().misses + dec.stats().checksum_failures, missed as u64);
    }
}

#[test]
fn copies_are_used_and_zstd_pays_on_text() {
    let mut enc = Encoder::new(0, config()).unwrap();
    let mut dec = Decoder::new(0, config()).unwrap();
    let data = text(7, 200_000);
    let first = pass(&mut enc, &mut dec, &data, 1400);
    assert!(first < data.len() * 3 / 4, "zstd on text: {first}");
    let second = pass(&mut enc, &mut dec, &data, 1400);
    assert!(
        second * 100 <= data.len() * 3,
        "repeat pass {second} of {} bytes",
        data.len()
    );
}

#[test]
fn reordering_within_the_guard_causes_no_miss() {
    let cfg = config();
    let mut enc = Encoder::new(0, cfg).unwrap();
    let mut dec = Decoder::new(0, cfg).unwrap();
    let data = text(9, 50_000);
    let mut frames = Vec::new();
    let mut frame = vec![0u8; 1500];
    for _ in 0..2 {
        for c in data.chunks(1000) {
            let m = enc.encode(c, &mut frame).unwrap();
            frames.push((frame[..m.len].to_vec(), c.to_vec()));
        }
    }
    // Swap neighbours pairwise: each packet at most one position late.
    for pair in frames.chunks_mut(2) {
        pair.reverse();
    }
    let mut out = vec![0u8; 1500];
    for (f, p) in &frames {
        let m = dec.decode(f, &mut out).unwrap();
        assert_eq!(&out[..m.len], &p[..]);
    }
    assert_eq!(dec.stats().misses, 0);
}

#[test]
fn a_lost_packet_is_a_detected_miss_then_forgotten() {
    let cfg = CodecConfig {
        reorder_guard_bytes: 0,
        ..config()
    };
    let mut enc = Encoder::new(0, cfg).unwrap();
    let mut dec = Decoder::new(0, cfg).unwrap();
    let block = noise(3, 1000);
    let mut frame = vec![0u8; 1500];
    let mut out = vec![0u8; 1500];
    let m = enc.encode(&block, &mut frame).unwrap(); // lost
    assert_eq!(m.kind, FrameKind::Raw);
    let m = enc.encode(&block, &mut frame).unwrap();
    assert_ne!(m.kind, FrameKind::Raw, "second copy references the first");
    let err = dec.decode(&frame[..m.len], &mut out).unwrap_err();
    assert!(matches!(err, CodecError::Miss { start: 0, .. }), "{err}");
    let mut ctl = [0u8; 2048];
    let n = dec.take_control(&mut ctl).unwrap().expect("forget queued");
    let ControlMessage::Forget(f) = ControlMessage::parse(&ctl[..n]).unwrap() else {
        panic!("not a forget")
    };
    enc.apply_forget(&f);
    let m = enc.encode(&block, &mut frame).unwrap();
    assert_eq!(
        m.kind,
        FrameKind::Raw,
        "forgotten ranges are not referenced"
    );
    dec.decode(&frame[..m.len], &mut out).unwrap();
}

#[test]
fn bytes_learnt_from_one_partner_never_reach_another() {
    let cfg = config();
    let mut enc_a = Encoder::new(0, cfg).unwrap();
    let mut dec_a = Decoder::new(0, cfg).unwrap();
    let mut enc_b = Encoder::new(0, cfg).unwrap();
    let mut dec_b = Decoder::new(0, cfg).unwrap();
    let secret = noise(11, 100_000);
    pass(&mut enc_a, &mut dec_a, &secret, 1400);
    // The same bytes toward B: no copies, and B's decoder could not resolve A's frames.
    let mut frame = vec![0u8; 1500];
    let mut out = vec![0u8; 1500];
    for c in secret.chunks(1400) {
        let m = enc_b.encode(c, &mut frame).unwrap();
        assert_eq!(
            m.copied, 0,
            "B's encoder referenced history it never sent to B"
        );
        dec_b.decode(&frame[..m.len], &mut out).unwrap();
    }
    let m = enc_a.encode(&secret[..1400], &mut frame).unwrap();
    assert!(m.copied > 0);
    let mut fresh_b = Decoder::new(0, cfg).unwrap();
    assert!(
        fresh_b
            .decode(&frame[..m.len], &mut out)
            .unwrap_err()
            .is_miss()
    );
}

/// Ratio checks on 10 MB: a repeat costs ≤ 5 %, 1 % changed bytes ≤ 10 %,
/// random data grows ≤ 1 %.
#[test]
fn compression_ratios_on_ten_megabytes() {
    let cfg = CodecConfig {
        history_bytes: 32 << 20,
        max_payload: 1500,
        reorder_guard_bytes: 32 << 10,
        index_bits: 20,
        zstd_level: 1,
    };
    let mut enc = Encoder::new(0, cfg).unwrap();
    let mut dec = Decoder::new(0, cfg).unwrap();
    let len = 10 << 20;
    let data = noise(21, len);
    let first = pass(&mut enc, &mut dec, &data, 1400);
    assert!(
        (first as f64) <= len as f64 * 1.01,
        "random grew to {first}"
    );
    let second = pass(&mut enc, &mut dec, &data, 1400);
    assert!(
        (second as f64) <= first as f64 * 0.05,
        "repeat {second} of {first}"
    );
    let mut changed = data.clone();
    let r = noise(99, len / 100 * 8);
    for k in 0..len / 100 {
        let at = u64::from_le_bytes(r[k * 8..k * 8 + 8].try_into().unwrap()) as usize % len;
        changed[at] = changed[at].wrapping_add(1);
    }
    let third = pass(&mut enc, &mut dec, &changed, 1400);
    assert!(
        (third as f64) <= len as f64 * 0.10,
        "1% changed cost {third} of {len}"
    );
    eprintln!("first {first} second {second} changed {third} of {len}");
}

/// A decoder holding other bytes at the referenced positions (e.g. an
/// encoder restarted without its history) detects it by the checksum.
#[test]
fn stale_history_is_a_detected_checksum_failure() {
    let cfg = CodecConfig {
        reorder_guard_bytes: 0,
        ..config()
    };
    let mut old = Encoder::with_history_id(0, cfg, 5).unwrap();
    let mut dec = Decoder::new(0, cfg).unwrap();
    let x = noise(1, 1200);
    let mut frame = vec![0u8; 1500];
    let mut out = vec![0u8; 1500];
    let m = old.encode(&x, &mut frame).unwrap();
    dec.decode(&frame[..m.len], &mut out).unwrap();
    // The sender restarts from position 0 with other content; its first
    // packet is lost, the second references it.
    let mut new = Encoder::with_history_id(0, cfg, 6).unwrap();
    let y = noise(2, 1200);
    new.encode(&y, &mut frame).unwrap();
    let m = new.encode(&y, &mut frame).unwrap();
    assert!(m.copied > 0);
    let err = dec.decode(&frame[..m.len], &mut out).unwrap_err();
    assert!(matches!(err, CodecError::ChecksumMismatch { .. }), "{err}");
    assert_eq!(dec.stats().checksum_failures, 1);
}

/// Repeats inside one payload (overlapping and not) are copied within it.
#[test]
fn in_packet_repeats_round_trip() {
    let mut enc = Encoder::new(0, config()).unwrap();
    let mut dec = Decoder::new(0, config()).unwrap();
    let mut frame = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    // Period 200: the copy overlaps its own output.
    let run: Vec<u8> = noise(5, 200).into_iter().cycle().take(1400).collect();
    let mut twice = noise(4, 600);
    twice.extend_from_within(..600);
    for p in [&run, &twice] {
        let m = enc.encode(p, &mut frame).unwrap();
        assert!(m.copied >= 500, "in-packet copy used: {m:?}");
        let d = dec.decode(&frame[..m.len], &mut out).unwrap();
        assert_eq!(&out[..d.len], &p[..]);
    }
}

/// The fast path gives the encoder exactly `payload + MAX_FRAME_OVERHEAD` bytes; a
/// payload shorter than a tokens header (a few bytes of TCP data) must still encode
/// (raw) instead of writing past the buffer. Found by the end-to-end benchmark: a
/// 7-byte segment made the worker panic.
#[test]
fn tiny_payloads_fit_the_exact_buffer() {
    let (mut enc, mut dec) = (
        Encoder::new(0, config()).unwrap(),
        Decoder::new(0, config()).unwrap(),
    );
    let primer = text(7, 1500);
    let mut out = vec![0u8; primer.len() + MAX_FRAME_OVERHEAD];
    let meta = enc.encode(&primer, &mut out).unwrap();
    let mut back = vec![0u8; 2048];
    dec.decode(&out[..meta.len], &mut back).unwrap();
    for len in 0..=40 {
        // Repeats of the primer (copies found) and fresh bytes.
        for payload in [primer[100..100 + len].to_vec(), noise(len as u64, len)] {
            let mut out = vec![0u8; len + MAX_FRAME_OVERHEAD];
            let meta = enc.encode(&payload, &mut out).unwrap();
            let restored = dec.decode(&out[..meta.len], &mut back).unwrap();
            assert_eq!(&back[..restored.len], &payload[..], "length {len}");
        }
    }
}
