//! Prints the codec's bytes-out/bytes-in table next to zstd level 1 per
//! packet and over the whole stream, for the benchmark data sets.
//! Run: `cargo run --release -p shunt-benches --bin codec_report [MiB]`.

use shunt_benches::codec_data::{
    PACKET, bench_config, encode_all, incompressible, text_like, zstd_per_packet, zstd_stream,
};
use shunt_dataplane::codec::Encoder;

/// A data set: name, bytes, and what the history saw before (if anything).
type Case<'a> = (&'static str, Vec<u8>, Option<&'a [u8]>);

fn main() -> anyhow::Result<()> {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(16);
    let len = mib << 20;
    let text = text_like(1, len);
    let mut changed = text.clone();
    let r = incompressible(99, len / 100 * 8);
    for k in 0..len / 100 {
        let at = u64::from_le_bytes(r[k * 8..k * 8 + 8].try_into()?) as usize % len;
        changed[at] = changed[at].wrapping_add(1);
    }
    println!("codec ratio (bytes out / bytes in), {mib} MiB in {PACKET}-byte packets");
    println!(
        "{:<26} {:>8} {:>13} {:>13}",
        "data", "shunt", "zstd1/packet", "zstd1/stream"
    );
    let cases: [Case<'_>; 4] = [
        ("incompressible", incompressible(2, len), None),
        ("text-like, first pass", text.clone(), None),
        ("text-like, repeated", text.clone(), Some(&text)),
        ("text-like, 1% bytes changed", changed, Some(&text)),
    ];
    for (name, data, before) in cases {
        let mut enc = Encoder::new(0, bench_config())?;
        if let Some(b) = before {
            encode_all(&mut enc, b);
        }
        let out: usize = encode_all(&mut enc, &data).iter().map(Vec::len).sum();
        let stream = match before {
            Some(b) => zstd_stream(&[b, &data[..]].concat()) - zstd_stream(b),
            None => zstd_stream(&data),
        };
        let n = data.len() as f64;
        println!(
            "{name:<26} {:>8.4} {:>13.4} {:>13.4}",
            out as f64 / n,
            zstd_per_packet(&data) as f64 / n,
            stream as f64 / n
        );
    }
    Ok(())
}
