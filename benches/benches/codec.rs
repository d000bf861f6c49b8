//! Codec throughput per core on 1400-byte packets (incompressible, text-like,
//! fully redundant), with zstd level 1 per packet and over the whole stream as
//! references in the same run. Prints a bytes-out/bytes-in table first.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shunt_benches::codec_data::{
    PACKET, bench_config, decode_all, encode_all, incompressible, text_like, zstd_per_packet,
    zstd_stream,
};
use shunt_dataplane::codec::{Decoder, Encoder, ForgetRanges, MAX_FRAME_OVERHEAD};

const LEN: usize = 4 << 20;

struct Set {
    name: &'static str,
    data: Vec<u8>,
    /// Encode with the history already holding `data` (fully redundant).
    warm: bool,
}

fn sets() -> Vec<Set> {
    let text = text_like(1, LEN);
    vec![
        Set {
            name: "incompressible",
            data: incompressible(2, LEN),
            warm: false,
        },
        Set {
            name: "text",
            data: text.clone(),
            warm: false,
        },
        Set {
            name: "redundant",
            data: text,
            warm: true,
        },
    ]
}

fn forget_everything(enc: &mut Encoder) {
    enc.apply_forget(&ForgetRanges {
        lane: enc.lane(),
        ranges: vec![(0, u64::MAX)],
    });
}

fn ratio_table(sets: &[Set]) {
    println!(
        "\ncodec ratio (bytes out / bytes in), {} MiB in {PACKET}-byte packets",
        LEN >> 20
    );
    println!(
        "{:<15} {:>10} {:>14} {:>14}",
        "data", "shunt", "zstd1/packet", "zstd1/stream"
    );
    for s in sets {
        let mut enc = Encoder::new(0, bench_config()).expect("config");
        if s.warm {
            encode_all(&mut enc, &s.data);
        }
        let out: usize = encode_all(&mut enc, &s.data).iter().map(Vec::len).sum();
        let n = s.data.len() as f64;
        let (pp, st) = if s.warm {
            // References see the data a second time too.
            let twice = [s.data.as_slice(), s.data.as_slice()].concat();
            (
                zstd_per_packet(&s.data) as f64,
                (zstd_stream(&twice) - zstd_stream(&s.data)) as f64,
            )
        } else {
            (zstd_per_packet(&s.data) as f64, zstd_stream(&s.data) as f64)
        };
        println!(
            "{:<15} {:>10.4} {:>14.4} {:>14.4}",
            s.name,
            out as f64 / n,
            pp / n,
            st / n
        );
    }
    println!();
}

fn bench(c: &mut Criterion) {
    let sets = sets();
    ratio_table(&sets);
    let mut g = c.benchmark_group("codec");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for s in &sets {
        g.throughput(Throughput::Bytes(s.data.len() as u64));
        let mut enc = Encoder::new(0, bench_config()).expect("config");
        encode_all(&mut enc, &s.data);
        let mut frame = vec![0u8; PACKET + MAX_FRAME_OVERHEAD];
        g.bench_function(format!("encode/{}", s.name), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if !s.warm {
                        forget_everything(&mut enc);
                    }
                    let t = Instant::now();
                    for p in s.data.chunks(PACKET) {
                        black_box(enc.encode(p, &mut frame).expect("encode"));
                    }
                    spent += t.elapsed();
                }
                spent
            })
        });
        // Frames as the decoder sees them: first pass, or a repeat for redundant.
        let mut fresh = Encoder::new(0, bench_config()).expect("config");
        let mut frames = encode_all(&mut fresh, &s.data);
        let mut dec = Decoder::new(0, bench_config()).expect("config");
        decode_all(&mut dec, &frames);
        if s.warm {
            frames = encode_all(&mut fresh, &s.data);
            decode_all(&mut dec, &frames);
        }
        g.bench_function(format!("decode/{}", s.name), |b| {
            b.iter(|| decode_all(&mut dec, &frames))
        });
        if !s.warm {
            g.bench_function(format!("zstd1_packet/{}", s.name), |b| {
                b.iter(|| zstd_per_packet(&s.data))
            });
            g.bench_function(format!("zstd1_stream/{}", s.name), |b| {
                b.iter(|| zstd_stream(&s.data))
            });
            let packets: Vec<Vec<u8>> = {
                let mut c = zstd::bulk::Compressor::new(1).expect("zstd");
                s.data
                    .chunks(PACKET)
                    .map(|p| c.compress(p).expect("zstd"))
                    .collect()
            };
            let whole = zstd::bulk::compress(&s.data, 1).expect("zstd");
            g.bench_function(format!("zstd1_packet_decode/{}", s.name), |b| {
                let mut d = zstd::bulk::Decompressor::new().expect("zstd");
                let mut out = vec![0u8; PACKET];
                b.iter(|| {
                    packets
                        .iter()
                        .map(|p| d.decompress_to_buffer(p, &mut out[..]).expect("zstd"))
                        .sum::<usize>()
                })
            });
            g.bench_function(format!("zstd1_stream_decode/{}", s.name), |b| {
                b.iter(|| zstd::bulk::decompress(&whole, LEN).expect("zstd").len())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
