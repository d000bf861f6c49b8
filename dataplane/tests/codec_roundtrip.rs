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

/// Payloads shorter than a tokens frame's header fit an output of exactly the
/// documented bound (payload + MAX_FRAME_OVERHEAD), also once they repeat history
/// (a few-byte TCP segment, e.g. a keystroke, used to panic the encoder).
#[test]
fn tiny_payloads_fit_the_documented_bound() {
    let mut enc = Encoder::new(0, config()).unwrap();
    let mut dec = Decoder::new(0, config()).unwrap();
    let mut out = vec![0u8; 64];
    for round in 0..3 {
        for len in 0..=40 {
            let p = noise(len as u64, len);
            let mut frame = vec![0u8; len + MAX_FRAME_OVERHEAD];
            let m = enc.encode(&p, &mut frame).unwrap();
            let d = dec.decode(&frame[..m.len], &mut out).unwrap();
            assert_eq!(&out[..d.len], &p[..], "round {round}, {len} bytes");
        }
    }
}

/// Internet checksum of `parts` (concatenated, each of even length but the last).
fn inet_sum(parts: &[&[u8]]) -> u16 {
    let mut acc = 0u64;
    for p in parts {
        for c in p.chunks(2) {
            acc += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A TCP packet with the timestamp option; `bad_csum` leaves a wrong TCP checksum.
#[allow(clippy::too_many_arguments)]
fn tcp_packet(
    v6: bool,
    port: u16,
    seq: u32,
    ack: u32,
    id: u16,
    win: u16,
    ts: u32,
    payload: &[u8],
    bad_csum: bool,
) -> Vec<u8> {
    let t = if v6 { 40 } else { 20 };
    let mut p = vec![0u8; t + 32];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((32 + payload.len()) as u16).to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((t + 32 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 1, 0, 2]);
        p[16..20].copy_from_slice(&[10, 2, 0, 2]);
        let c = inet_sum(&[&p[..20]]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p[t..t + 2].copy_from_slice(&port.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&80u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&ack.to_be_bytes());
    p[t + 12] = 8 << 4;
    p[t + 13] = 0x18;
    p[t + 14..t + 16].copy_from_slice(&win.to_be_bytes());
    p[t + 20..t + 24].copy_from_slice(&[1, 1, 8, 10]);
    p[t + 24..t + 28].copy_from_slice(&ts.to_be_bytes());
    p[t + 28..t + 32].copy_from_slice(&7u32.to_be_bytes());
    let len = ((32 + payload.len()) as u32).to_be_bytes();
    let pseudo: Vec<u8> = if v6 {
        [&p[8..40], &len[..], &[0, 0, 0, 6]].concat()
    } else {
        [&p[12..20], &[0, 6], &len[2..]].concat()
    };
    let c = inet_sum(&[&pseudo, &p[t..], payload]) ^ if bad_csum { 0x0101 } else { 0 };
    p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Bundles of TCP packets (two flows, IPv4 and IPv6, header fields changing at
    /// random, some wrong checksums) under loss, reordering and duplication of whole
    /// bundles: every member comes out byte-exact or is a detected miss.
    #[test]
    fn impaired_bundles_never_yield_wrong_packets(seed in any::<u64>(), loss in 0u8..40, reorder in 0u8..40, dup in 0u8..20) {
        use shunt_dataplane::pipeline::bundle::{BundleReader, BundleWriter, Member, MemberError};
        use shunt_dataplane::pipeline::inner::header_len;
        let cfg = CodecConfig { reorder_guard_bytes: 2000, ..config() };
        let mut enc = Encoder::new(1, cfg).unwrap();
        let mut dec = Decoder::new(1, cfg).unwrap();
        let base = text(seed, 8000);
        let mut r = noise(seed ^ 0x77, 4096).into_iter().cycle();
        let mut frame = vec![0u8; 2048];
        let mut scratch = vec![0u8; 4096];
        let mut out = vec![0u8; 4096];
        let mut ctl = vec![0u8; 2048];
        let mut seqs = [1u32 << 31, 5u32];
        let mut ids = [0u16; 2];
        let mut delayed: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
        let (mut ok, mut missed) = (0usize, 0usize);
        for round in 0..10 {
            let mut data = base.clone();
            data[round * 53 % 8000] ^= 0x5a;
            let mut packets = Vec::new();
            let mut at = 0;
            while at < data.len() {
                let n = (200 + usize::from(r.next().unwrap()) * 5).min(data.len() - at);
                let flow = usize::from(r.next().unwrap() % 2);
                let knob = r.next().unwrap();
                // Mostly in order; now and then a jump, an ack/window/ts change.
                if knob.is_multiple_of(11) { seqs[flow] = seqs[flow].wrapping_add(9999); }
                ids[flow] = ids[flow].wrapping_add(if knob.is_multiple_of(7) { 3 } else { 1 });
                let payload = if knob.is_multiple_of(13) { &data[at..at] } else { &data[at..at + n] };
                packets.push(tcp_packet(
                    flow == 1, 1000 + flow as u16, seqs[flow], 77 + u32::from(knob / 16), ids[flow],
                    500 + u16::from(knob % 3), u32::from(knob / 32), payload, knob.is_multiple_of(17),
                ));
                seqs[flow] = seqs[flow].wrapping_add(payload.len() as u32);
                at += payload.len().max(1);
            }
            for group in packets.chunks(1 + usize::from(r.next().unwrap() % 6)) {
                let mut buf = vec![0u8; 1500];
                let mut w = BundleWriter::new();
                w.start(&mut buf);
                let mut members = Vec::new();
                for p in group {
                    let hlen = header_len(p);
                    let (headers, payload) = p.split_at(hlen);
                    let n = if payload.is_empty() { 0 } else { enc.encode(payload, &mut frame).unwrap().len };
                    let m = Member { headers, payload, frame: &frame[..n], raw: false };
                    if !w.append(&mut buf, &m) {
                        // Full: this bundle goes as it is, the member is lost with it
                        // (the sender counts it; the decoder sees a hole).
                        break;
                    }
                    members.push(p.clone());
                }
                buf.truncate(w.len());
                if r.next().unwrap() % 100 < loss { continue; }
                if r.next().unwrap() % 100 < reorder { delayed.push((buf, members)); continue; }
                let mut deliver = vec![(buf.clone(), members.clone())];
                if r.next().unwrap() % 100 < dup { deliver.push((buf, members)); }
                if r.next().unwrap().is_multiple_of(3) { deliver.append(&mut delayed); }
                for (b, members) in deliver {
                    let mut reader = BundleReader::new(&b).unwrap();
                    let mut k = 0;
                    while let Some(m) = reader.next_into(&mut dec, &mut scratch, &mut out) {
                        match m {
                            Ok((n, _)) => { prop_assert_eq!(&out[..n], &members[k][..]); ok += 1; }
                            Err(MemberError::Codec(e)) => { prop_assert!(e.is_miss(), "unexpected {}", e); missed += 1; }
                            Err(e) => prop_assert!(false, "unexpected {}", e),
                        }
                        k += 1;
                    }
                    prop_assert_eq!(k, members.len());
                }
                if let Some(n) = dec.take_control(&mut ctl).unwrap()
                    && let ControlMessage::Forget(f) = ControlMessage::parse(&ctl[..n]).unwrap()
                {
                    enc.apply_forget(&f);
                }
            }
        }
        prop_assert!(ok > 0);
        prop_assert_eq!(dec.stats().misses + dec.stats().checksum_failures, missed as u64);
    }
}

/// Small JSON-like records: shared structure, varying values (what a trained
/// zstd dictionary knows and a young history does not).
fn record(seed: u64) -> Vec<u8> {
    const STATUS: &[&str] = &["shipped", "pending", "cancelled", "returned", "on hold"];
    const CITY: &[&str] = &["Lisbon", "Osaka", "Toronto", "Nairobi", "Tromsø", "Quito"];
    let r = noise(seed, 16);
    format!(
        "{{\"order_id\":{},\"customer\":\"c-{:05}\",\"status\":\"{}\",\"ship_to\":{{\"city\":\"{}\",\"postcode\":\"{:04}\"}},\"items\":{},\"total_cents\":{}}}\n",
        u64::from_le_bytes(r[..8].try_into().unwrap()) % 1_000_000,
        u16::from_le_bytes([r[8], r[9]]),
        STATUS[usize::from(r[10]) % STATUS.len()],
        CITY[usize::from(r[11]) % CITY.len()],
        u16::from_le_bytes([r[12], r[13]]) % 10_000,
        r[14] % 9 + 1,
        u32::from(u16::from_le_bytes([r[14], r[15]])) * 7,
    )
    .into_bytes()
}

#[test]
fn a_shared_zstd_dictionary_shrinks_small_packets_and_must_match() {
    use shunt_dataplane::codec::ZstdDictionary;
    let samples: Vec<Vec<u8>> = (0..4000).map(|i| record(1_000_000 + i)).collect();
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    let dict = ZstdDictionary::train(&refs, 16 << 10).unwrap();
    // A fresh lane's first packets: one or two records each.
    let packets: Vec<Vec<u8>> = (0..40)
        .map(|i| [record(i * 2), record(i * 2 + 1)].concat())
        .collect();
    let run = |with_dict: bool| {
        let mut enc = Encoder::new(0, config()).unwrap();
        let mut dec = Decoder::new(0, config()).unwrap();
        if with_dict {
            enc.use_dictionary(&dict).unwrap();
            dec.use_dictionary(&dict).unwrap();
        }
        let (mut bytes, mut dict_frames) = (0, 0);
        let mut frame = vec![0u8; 2048 + MAX_FRAME_OVERHEAD];
        let mut out = vec![0u8; 2048];
        for p in &packets {
            let meta = enc.encode(p, &mut frame).unwrap();
            bytes += meta.len;
            dict_frames += usize::from(meta.kind == FrameKind::TokensZstdDict);
            let got = dec.decode(&frame[..meta.len], &mut out).unwrap();
            assert_eq!(&out[..got.len], &p[..]);
        }
        (bytes, dict_frames)
    };
    let input: usize = packets.iter().map(Vec::len).sum();
    let (plain, none) = run(false);
    let (with, used) = run(true);
    println!("dictionary: {input} B in, {plain} B out without, {with} B out with ({used} frames)");
    assert_eq!(none, 0);
    assert!(used > 0, "the dictionary was never used");
    assert!(
        (with as f64) < 0.8 * plain as f64,
        "dictionary: {with} B against {plain} B without"
    );

    // The receiver must hold the same dictionary: without one, or with another,
    // a dictionary frame is an error, never wrong bytes.
    let mut enc = Encoder::new(0, config()).unwrap();
    enc.use_dictionary(&dict).unwrap();
    let other: Vec<Vec<u8>> = (0..4000).map(|i| text(i, 200)).collect();
    let other_refs: Vec<&[u8]> = other.iter().map(Vec::as_slice).collect();
    let other = ZstdDictionary::train(&other_refs, 16 << 10).unwrap();
    assert_ne!(other.id(), dict.id());
    let mut without = Decoder::new(0, config()).unwrap();
    let mut wrong = Decoder::new(0, config()).unwrap();
    wrong.use_dictionary(&other).unwrap();
    let mut frame = vec![0u8; 2048 + MAX_FRAME_OVERHEAD];
    let mut out = vec![0u8; 2048];
    let (mut refused, mut first_error) = (0, String::new());
    for p in &packets {
        let meta = enc.encode(p, &mut frame).unwrap();
        if meta.kind != FrameKind::TokensZstdDict {
            continue;
        }
        for dec in [&mut without, &mut wrong] {
            match dec.decode(&frame[..meta.len], &mut out) {
                Ok(got) => assert_eq!(&out[..got.len], &p[..], "wrong bytes emitted"),
                Err(e) => {
                    if first_error.is_empty() {
                        first_error = e.to_string();
                    }
                    refused += 1;
                }
            }
        }
    }
    assert!(refused > 0, "no dictionary frame was refused");
    assert!(first_error.contains("none is loaded here"), "{first_error}");
}
