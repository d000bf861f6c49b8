//! The on-disk history: restart of both sides, damaged files, key changes.

use std::path::Path;

use shunt_dataplane::codec::store::{
    LaneFile, RestoreReport, SECTOR, Side, Store, StoreConfig, StoreKey, write_behind,
};
use shunt_dataplane::codec::{CodecConfig, Decoder, Encoder, MAX_FRAME_OVERHEAD};

const BLOCK: usize = 64 << 10;

fn codec() -> CodecConfig {
    CodecConfig {
        history_bytes: 1 << 20,
        max_payload: 1500,
        reorder_guard_bytes: 8 << 10,
        index_bits: 16,
        zstd_level: 1,
    }
}

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

fn store(dir: &Path, partner: &str, key: Option<[u8; 64]>) -> Store {
    let config = StoreConfig {
        dir: dir.to_owned(),
        block_bytes: BLOCK,
        key: key.map(StoreKey::new),
    };
    Store::open(config, partner).unwrap()
}

/// Sends `data` from `enc` to `dec`; every frame must decode exactly (no
/// misses allowed). Returns encoded bytes.
fn send(enc: &mut Encoder, dec: &mut Decoder, data: &[u8]) -> usize {
    let mut frame = vec![0u8; 1400 + MAX_FRAME_OVERHEAD];
    let mut out = vec![0u8; 1400];
    let mut total = 0;
    for chunk in data.chunks(1400) {
        let m = enc.encode(chunk, &mut frame).unwrap();
        total += m.len;
        let d = dec.decode(&frame[..m.len], &mut out).unwrap();
        assert_eq!(&out[..d.len], chunk);
    }
    total
}

/// First life: both sides persist what they send/receive through the
/// write-behind (writer on its own thread). Returns the lane files.
fn first_life(a: &Store, b: &Store, data: &[u8]) -> (LaneFile, LaneFile, usize) {
    let mut fa = a.open_lane(Side::Encoder, 0, &codec()).unwrap();
    let mut fb = b.open_lane(Side::Decoder, 0, &codec()).unwrap();
    let (mut enc, _) = fa.restore_encoder(codec()).unwrap();
    let (mut dec, _) = fb.restore_decoder(codec()).unwrap();
    // Session establishment: the decoder learns the encoder's history id.
    agree(&mut enc, &mut dec);
    let (mut spools, writer) = write_behind(vec![fa, fb], 32, codec().reorder_guard_bytes).unwrap();
    let writer = std::thread::spawn(move || writer.run());
    let mut total = 0;
    for chunk in data.chunks(64 << 10) {
        total += send(&mut enc, &mut dec, chunk);
        spools[0].offer_encoder(&enc);
        spools[1].offer_decoder(&dec);
    }
    assert!(
        spools[0].queued >= 4 && spools[1].queued >= 4,
        "blocks were handed to the writer"
    );
    drop(spools);
    let mut files = writer.join().unwrap().unwrap();
    let fb = files.pop().unwrap();
    let fa = files.pop().unwrap();
    (fa, fb, total)
}

fn restart(a: &Store, b: &Store) -> (Encoder, RestoreReport, Decoder, RestoreReport) {
    let (enc, ra) = a
        .open_lane(Side::Encoder, 0, &codec())
        .unwrap()
        .restore_encoder(codec())
        .unwrap();
    let (dec, rb) = b
        .open_lane(Side::Decoder, 0, &codec())
        .unwrap()
        .restore_decoder(codec())
        .unwrap();
    (enc, ra, dec, rb)
}

fn agree(enc: &mut Encoder, dec: &mut Decoder) {
    let (es, ds) = (enc.summary(), dec.summary());
    dec.apply_peer_summary(&es);
    enc.apply_peer_summary(&ds);
}

#[test]
fn history_both_sides_kept_is_used_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let key = [7u8; 64];
    let (a, b) = (
        store(&tmp.path().join("a"), "site-b", Some(key)),
        store(&tmp.path().join("b"), "site-a", Some(key)),
    );
    let data = noise(1, 700 << 10);
    let (_, _, first) = first_life(&a, &b, &data);
    let (mut enc, ra, mut dec, rb) = restart(&a, &b);
    assert!(ra.blocks >= 8 && rb.blocks >= 8, "{ra:?} {rb:?}");
    assert_eq!(ra.history_id, rb.history_id);
    agree(&mut enc, &mut dec);
    let second = send(&mut enc, &mut dec, &data);
    assert!(
        second * 5 < first,
        "restored history reused: {second} vs {first}"
    );
    assert_eq!(dec.stats().misses, 0);
}

#[test]
fn history_only_one_side_kept_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (
        store(&tmp.path().join("a"), "p", None),
        store(&tmp.path().join("b"), "p", None),
    );
    let data = noise(2, 700 << 10);
    let (_, fb, first) = first_life(&a, &b, &data);
    // Damage one block of the receiver's file: flip one byte in slot 3's data.
    let path = fb.path().to_owned();
    drop(fb);
    let mut bytes = std::fs::read(&path).unwrap();
    let slot3 = SECTOR + 3 * (BLOCK + SECTOR);
    bytes[slot3 + 100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();

    let (mut enc, ra, mut dec, rb) = restart(&a, &b);
    assert_eq!(rb.discarded, 1, "flipped byte detected");
    assert_eq!(rb.blocks + 1, ra.blocks);
    agree(&mut enc, &mut dec);
    // Every frame decodes exactly (send() panics on a miss), and block 3's
    // bytes, held only by the sender, are sent again rather than referenced.
    let second = send(&mut enc, &mut dec, &data);
    assert_eq!(dec.stats().misses + dec.stats().checksum_failures, 0);
    assert!(second > BLOCK, "block 3 was not referenced: {second}");
    assert!(second * 3 < first);

    // A receiver that lost everything: nothing restored is referenced.
    let mut fresh = Decoder::new(0, codec()).unwrap();
    let (mut enc, _, _, _) = restart(&a, &b);
    agree(&mut enc, &mut fresh);
    let third = send(&mut enc, &mut fresh, &data[..200 << 10]);
    assert!(third > 200 << 10, "nothing referenced: {third}");
}

#[test]
fn truncated_file_and_wrong_key_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let key = [9u8; 64];
    let (a, b) = (
        store(&tmp.path().join("a"), "p", Some(key)),
        store(&tmp.path().join("b"), "p", Some(key)),
    );
    let data = noise(3, 700 << 10);
    let (fa, _, _) = first_life(&a, &b, &data);
    let path = fa.path().to_owned();
    drop(fa);
    // Cut the file in the middle of slot 5.
    let cut = (SECTOR + 5 * (BLOCK + SECTOR) + 1000) as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let (mut enc, ra, mut dec, _) = restart(&a, &b);
    assert_eq!(ra.blocks, 5, "slots 0..5 survive: {ra:?}");
    agree(&mut enc, &mut dec);
    send(&mut enc, &mut dec, &data);
    assert_eq!(dec.stats().misses + dec.stats().checksum_failures, 0);

    // Another key (keystore reset) or turning encryption off: history discarded.
    let other = store(&tmp.path().join("b"), "p", Some([1u8; 64]));
    let (_, r) = other
        .open_lane(Side::Decoder, 0, &codec())
        .unwrap()
        .restore_decoder(codec())
        .unwrap();
    assert_eq!(r.blocks, 0);
    let plain = store(&tmp.path().join("a"), "p", None);
    let (_, r) = plain
        .open_lane(Side::Encoder, 0, &codec())
        .unwrap()
        .restore_encoder(codec())
        .unwrap();
    assert_eq!(r.blocks, 0);
    plain.discard_all().unwrap();
    assert!(!path.exists());
}

#[test]
fn encrypted_file_holds_no_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"), "p", Some([5u8; 64]));
    let b = store(&tmp.path().join("b"), "p", None);
    let data: Vec<u8> = b"confidential-marker-"
        .iter()
        .copied()
        .cycle()
        .take(700 << 10)
        .collect();
    let (fa, fb, _) = first_life(&a, &b, &data);
    let enc_file = std::fs::read(fa.path()).unwrap();
    let plain_file = std::fs::read(fb.path()).unwrap();
    let needle = b"confidential-marker-";
    let has = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(!has(&enc_file), "encrypted history leaks plaintext");
    assert!(has(&plain_file), "control: the plain file does contain it");
}

#[test]
fn live_encoder_stops_referencing_what_a_restarted_decoder_lost() {
    let data = noise(4, 300 << 10);
    let mut enc = Encoder::new(0, codec()).unwrap();
    let mut dec = Decoder::new(0, codec()).unwrap();
    agree(&mut enc, &mut dec);
    let first = send(&mut enc, &mut dec, &data);

    // The receiver restarts with nothing (history id 0): its unasked summary makes
    // the running encoder drop everything, so nothing is referenced and nothing misses.
    let mut fresh = Decoder::new(0, codec()).unwrap();
    enc.apply_peer_summary(&fresh.summary());
    let again = send(&mut enc, &mut fresh, &data);
    assert!(
        again * 10 > first * 9,
        "nothing referenced: {again} vs {first}"
    );
    assert_eq!(fresh.stats().misses + fresh.stats().checksum_failures, 0);

    // Same history id, but the decoder lost what lies above 100 KiB (restored from
    // disk without its last blocks): the encoder keeps only what the decoder lists.
    let mut enc = Encoder::new(0, codec()).unwrap();
    let mut dec = Decoder::new(0, codec()).unwrap();
    agree(&mut enc, &mut dec);
    send(&mut enc, &mut dec, &data);
    let mut summary = dec.summary();
    let cut = 100 << 10;
    summary.ranges = summary
        .ranges
        .iter()
        .filter(|r| r.0 < cut)
        .map(|r| (r.0, r.1.min(cut)))
        .collect();
    enc.apply_peer_summary(&summary);
    let mut out = vec![0u8; 1400 + MAX_FRAME_OVERHEAD];
    let lost = enc
        .encode(&data[200 << 10..(200 << 10) + 1400], &mut out)
        .unwrap();
    assert_eq!(lost.copied, 0, "a range the decoder lost was referenced");
    let kept = enc
        .encode(&data[50 << 10..(50 << 10) + 1400], &mut out)
        .unwrap();
    assert_eq!(kept.copied, 1400, "a range both hold is referenced");
}
