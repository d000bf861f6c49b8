//! Fuzzes the encoded-payload decoder: arbitrary frames against a primed
//! history must never panic and must only be accepted when they verify; the
//! input used as a payload must round-trip through encoder and decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shunt_dataplane::codec::{CodecConfig, Decoder, Encoder, MAX_FRAME_OVERHEAD};

fn config() -> CodecConfig {
    CodecConfig { history_bytes: 1 << 20, max_payload: 4096, reorder_guard_bytes: 0, index_bits: 12, zstd_level: 1 }
}

fuzz_target!(|data: &[u8]| {
    let mut enc = Encoder::with_history_id(0, config(), 1).expect("valid config");
    let mut dec = Decoder::new(0, config()).expect("valid config");
    let mut frame = vec![0u8; 4096 + MAX_FRAME_OVERHEAD];
    let mut out = vec![0u8; 4096];
    // Prime both sides with some history so copies can resolve.
    let prime: Vec<u8> = (0..3000u32).map(|i| (i * 31 / 7) as u8).collect();
    let m = enc.encode(&prime, &mut frame).expect("encode");
    dec.decode(&frame[..m.len], &mut out).expect("decode");

    // 1. Arbitrary bytes as a frame.
    if let Ok(meta) = dec.decode(data, &mut out) {
        assert!(meta.len <= 4096);
    }
    // 2. Arbitrary bytes as a payload round-trip (the decoder may have
    // stored garbage-free history only, so this must succeed exactly).
    let payload = &data[..data.len().min(4096)];
    let mut dec2 = Decoder::new(0, config()).expect("valid config");
    let mut enc2 = Encoder::with_history_id(0, config(), 2).expect("valid config");
    for _ in 0..2 {
        let m = enc2.encode(payload, &mut frame).expect("encode");
        let d = dec2.decode(&frame[..m.len], &mut out).expect("round trip");
        assert_eq!(&out[..d.len], payload);
    }
});
