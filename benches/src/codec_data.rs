//! Deterministic data sets for the codec benchmarks and ratio report:
//! incompressible bytes, a text-like corpus, and packetisation helpers.

use shunt_dataplane::codec::{CodecConfig, Decoder, Encoder, MAX_FRAME_OVERHEAD};

/// Packet payload size the benchmarks use.
pub const PACKET: usize = 1400;

/// xorshift64 bytes: incompressible, reproducible.
pub fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like corpus: a 4000-word synthetic vocabulary drawn with a Zipf-like
/// skew, sentences with punctuation and paragraph breaks. zstd -1 compresses
/// it roughly as it does English prose.
pub fn text_like(seed: u64, len: usize) -> Vec<u8> {
    const SYLLABLES: &[&str] = &[
        "an", "ber", "co", "da", "el", "fi", "gor", "ha", "in", "jo", "ka", "lin", "mo", "ne",
        "or", "pa", "qui", "ra", "se", "ti", "un", "ver", "wa", "xe", "yo", "zu", "st", "th",
        "ing", "ed", "er", "ly",
    ];
    let r = incompressible(seed, 4096 * 8);
    let mut vocab: Vec<String> = Vec::with_capacity(4000);
    for w in 0..4000usize {
        let n = 1 + (r[w] as usize % 3) + usize::from(w > 1000);
        let mut word = String::new();
        for k in 0..n {
            word.push_str(SYLLABLES[r[w * 3 + k + 4000] as usize % SYLLABLES.len()]);
        }
        vocab.push(word);
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(len + 64);
    let mut sentence = 0;
    while out.len() < len {
        // Zipf-like: the product of two uniforms favours small indices.
        let a = (next() % 4000) as f64 / 4000.0;
        let b = (next() % 4000) as f64 / 4000.0;
        let idx = ((a * b * a) * 4000.0) as usize % 4000;
        let word = &vocab[idx];
        if sentence == 0 {
            let mut c = word.chars();
            if let Some(f) = c.next() {
                out.extend(f.to_uppercase().to_string().bytes());
                out.extend(c.as_str().bytes());
            }
        } else {
            out.extend_from_slice(word.as_bytes());
        }
        sentence += 1;
        let v = next() % 100;
        if sentence > 6 && v < 12 {
            out.extend_from_slice(if v < 2 { b".\n\n" } else { b". " });
            sentence = 0;
        } else if v < 18 {
            out.extend_from_slice(b", ");
        } else {
            out.push(b' ');
        }
    }
    out.truncate(len);
    out
}

/// Encodes `data` in packets; returns the frames.
pub fn encode_all(enc: &mut Encoder, data: &[u8]) -> Vec<Vec<u8>> {
    let mut frame = vec![0u8; PACKET + MAX_FRAME_OVERHEAD];
    data.chunks(PACKET)
        .map(|c| {
            let m = enc.encode(c, &mut frame).expect("encode");
            frame[..m.len].to_vec()
        })
        .collect()
}

/// Decodes frames in order, checking nothing is dropped; returns payload bytes.
pub fn decode_all(dec: &mut Decoder, frames: &[Vec<u8>]) -> usize {
    let mut out = vec![0u8; PACKET];
    frames
        .iter()
        .map(|f| dec.decode(f, &mut out).expect("decode").len)
        .sum()
}

/// Codec settings the benchmarks use (defaults with 64 MiB history).
pub fn bench_config() -> CodecConfig {
    CodecConfig {
        max_payload: 1500,
        ..CodecConfig::default()
    }
}

/// zstd level 1 on each packet alone: total compressed bytes (at most the
/// packet size each, as a real per-packet scheme would send it raw).
pub fn zstd_per_packet(data: &[u8]) -> usize {
    let mut c = zstd::bulk::Compressor::new(1).expect("zstd");
    let mut buf = vec![0u8; PACKET * 2];
    data.chunks(PACKET)
        .map(|p| {
            c.compress_to_buffer(p, &mut buf[..])
                .expect("zstd")
                .min(p.len())
                + 1
        })
        .sum()
}

/// zstd level 1 over the whole stream.
pub fn zstd_stream(data: &[u8]) -> usize {
    zstd::bulk::compress(data, 1).expect("zstd").len()
}
