//! Fuzzes the bundle reader (tunnel data payload format 2): arbitrary bytes as a
//! bundle must never panic, and anything delivered has consistent lengths; the
//! input cut into packets must round-trip through a bundle exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shunt_dataplane::codec::{CodecConfig, Decoder, Encoder};
use shunt_dataplane::pipeline::bundle::{BundleReader, BundleWriter, Member};

fn config() -> CodecConfig {
    CodecConfig { history_bytes: 1 << 20, max_payload: 4096, reorder_guard_bytes: 0, index_bits: 12, zstd_level: 1 }
}

fuzz_target!(|data: &[u8]| {
    let mut scratch = vec![0u8; 8192];
    let mut out = vec![0u8; 4096];
    // 1. Arbitrary bytes as a bundle.
    let mut dec = Decoder::new(0, config()).expect("valid config");
    let mut bundle = vec![2u8];
    bundle.extend_from_slice(data);
    let mut reader = BundleReader::new(&bundle).expect("format byte");
    while let Some(m) = reader.next_into(&mut dec, &mut scratch, &mut out) {
        if let Ok((len, payload)) = m {
            assert!(payload <= len && len <= out.len());
        }
    }
    // 2. The input as UDP payloads of one flow, bundled and read back exactly.
    let mut enc = Encoder::with_history_id(0, config(), 7).expect("valid config");
    let mut dec = Decoder::new(0, config()).expect("valid config");
    let mut buf = vec![0u8; 64 << 10];
    let mut w = BundleWriter::new();
    w.start(&mut buf);
    let mut packets = Vec::new();
    let mut frame = vec![0u8; 4200];
    for chunk in data.chunks(700) {
        let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 2, 10, 2, 0, 2];
        p[2..4].copy_from_slice(&((28 + chunk.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0x30, 0x39, 0, 53]);
        p.extend_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        let n = enc.encode(chunk, &mut frame).expect("encode").len;
        let m = Member { headers: &p, payload: chunk, frame: &frame[..n], raw: false };
        assert!(w.append(&mut buf, &m));
        p.extend_from_slice(chunk);
        packets.push(p);
    }
    buf.truncate(w.len());
    let mut reader = BundleReader::new(&buf).expect("bundle");
    for p in &packets {
        let (len, _) = reader
            .next_into(&mut dec, &mut scratch, &mut out)
            .expect("member")
            .expect("exact round trip");
        assert_eq!(&out[..len], &p[..]);
    }
    assert!(reader.next_into(&mut dec, &mut scratch, &mut out).is_none());
});
