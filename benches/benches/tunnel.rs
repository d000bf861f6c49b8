//! Per-stage cost of the tunnel at 64, 512 and 1400 bytes: encapsulation (header
//! build and parse), the AEAD stage (`Session::seal_data` / `Session::open`) next to
//! raw aws-lc-rs AES-256-GCM on the same buffers in the same run, and the anti-replay
//! window. Compare `tunnel/seal/session` with `tunnel/seal/raw-aws-lc` (and the same
//! for open): the ratio raw / session is the AEAD stage's efficiency.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use shunt_dataplane::tunnel::aead::nonce;
use shunt_dataplane::tunnel::replay::ReplayWindow;
use shunt_dataplane::tunnel::{
    EpochKeys, HEADER_LEN, Header, KeyLimits, Mode, PacketType, SecretKey, Session, SessionParams,
    TAG_LEN,
};

const SIZES: [usize; 3] = [64, 512, 1400];
const NOW: Duration = Duration::from_secs(1_000);
const KEY: [u8; 32] = [7; 32];

fn session(local: u32, remote: u32, send: [u8; 32], receive: [u8; 32]) -> Session {
    let params = SessionParams {
        partner: "bench".into(),
        remote: "192.0.2.1:4790".parse().expect("literal address"),
        local_index: local,
        remote_index: remote,
        mode: Mode::Encrypted,
        lanes: 1,
        initial_counter: 0,
        limits: KeyLimits::default(),
    };
    let mut s = Session::new(params, NOW);
    let keys = EpochKeys {
        send: SecretKey::from_bytes(send),
        receive: SecretKey::from_bytes(receive),
    };
    s.install_epoch(1, &keys, NOW).expect("first epoch");
    s
}

fn raw_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).expect("32-byte key"))
}

fn encapsulation(c: &mut Criterion) {
    let mut g = c.benchmark_group("tunnel/encapsulation");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut frame = vec![0u8; HEADER_LEN + size + TAG_LEN];
        let mut counter = 0u64;
        g.bench_function(format!("{size}"), |b| {
            b.iter(|| {
                counter += 1;
                let h = Header {
                    packet_type: PacketType::Data,
                    flags: 1,
                    epoch: 1,
                    lane: 0,
                    receiver_index: 20,
                    counter,
                };
                let head: &mut [u8; HEADER_LEN] =
                    (&mut frame[..HEADER_LEN]).try_into().expect("header room");
                h.write(head);
                black_box(Header::parse(black_box(&frame[..])).expect("own header parses"))
            })
        });
    }
    g.finish();
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("tunnel/seal");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0x5Au8; size];
        let raw = raw_key();
        let aad = [1u8; HEADER_LEN];
        let mut counter = 0u64;
        g.bench_function(format!("raw-aws-lc/{size}"), |b| {
            b.iter(|| {
                counter += 1;
                let n = Nonce::assume_unique_for_key(nonce(0, counter));
                black_box(
                    raw.seal_in_place_separate_tag(n, Aad::from(&aad), &mut buf)
                        .expect("seal"),
                )
            })
        });
        let mut s = session(10, 20, KEY, [8; 32]);
        g.bench_function(format!("session/{size}"), |b| {
            b.iter(|| black_box(s.seal_data(0, &mut buf, NOW).expect("seal")))
        });
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("tunnel/open");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let raw = raw_key();
        let mut counter = 0u64;
        g.bench_function(format!("raw-aws-lc/{size}"), |b| {
            b.iter_batched_ref(
                || {
                    counter += 1;
                    let mut p = vec![0x5Au8; HEADER_LEN + size + TAG_LEN];
                    let (head, body) = p.split_at_mut(HEADER_LEN);
                    let n = Nonce::assume_unique_for_key(nonce(0, counter));
                    let tag = raw
                        .seal_in_place_separate_tag(n, Aad::from(&*head), &mut body[..size])
                        .expect("seal");
                    body[size..].copy_from_slice(tag.as_ref());
                    (counter, p)
                },
                |(ctr, p)| {
                    let (head, body) = p.split_at_mut(HEADER_LEN);
                    let n = Nonce::assume_unique_for_key(nonce(0, *ctr));
                    black_box(
                        raw.open_in_place(n, Aad::from(&*head), body)
                            .expect("open")
                            .len(),
                    )
                },
                BatchSize::SmallInput,
            )
        });
        let mut sender = session(10, 20, KEY, [8; 32]);
        let mut receiver = session(20, 10, [8; 32], KEY);
        g.bench_function(format!("session/{size}"), |b| {
            b.iter_batched_ref(
                || {
                    let mut p = vec![0x5Au8; HEADER_LEN + size + TAG_LEN];
                    sender
                        .seal_into(PacketType::Data, 0, &mut p, size, NOW)
                        .expect("seal");
                    p
                },
                |p| black_box(receiver.open(p, NOW).expect("open").payload.len()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("tunnel/replay");
    let mut w = ReplayWindow::default();
    let mut counter = 0u64;
    g.bench_function("in-order", |b| {
        b.iter(|| {
            counter += 1;
            black_box(w.check(counter)).expect("fresh counter");
            w.mark(counter);
        })
    });
    let mut w = ReplayWindow::default();
    for i in 0..4000 {
        w.mark(i);
    }
    let mut i = 0u64;
    g.bench_function("duplicate-in-window", |b| {
        b.iter(|| {
            i = (i + 997) % 4000;
            black_box(w.check(black_box(i))).expect_err("already seen")
        })
    });
    g.finish();
}

/// The AEAD stage's efficiency measured robustly on a shared machine: raw aws-lc-rs
/// and `Session::seal_data` alternate in rounds of 2000 seals on the same buffer,
/// and the median of the per-round ratios (raw time / session time) is printed.
fn seal_ratio_interleaved(_: &mut Criterion) {
    for size in SIZES {
        let mut buf = vec![0x5Au8; size];
        let raw = raw_key();
        let aad = [1u8; HEADER_LEN];
        let mut s = session(10, 20, KEY, [8; 32]);
        let mut counter = 0u64;
        let mut ratios = Vec::with_capacity(101);
        for _ in 0..101 {
            let t = Instant::now();
            for _ in 0..2000 {
                counter += 1;
                let n = Nonce::assume_unique_for_key(nonce(0, counter));
                let tag = raw.seal_in_place_separate_tag(n, Aad::from(&aad), &mut buf);
                black_box(tag.expect("seal").as_ref()[0]);
            }
            let raw_time = t.elapsed();
            let t = Instant::now();
            for _ in 0..2000 {
                let sealed = s.seal_data(0, &mut buf, NOW);
                black_box(sealed.expect("seal"));
            }
            ratios.push(raw_time.as_secs_f64() / t.elapsed().as_secs_f64());
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "tunnel/seal-ratio-interleaved/{size}: raw/session median {:.3} (p25 {:.3}, p75 {:.3})",
            ratios[50], ratios[25], ratios[75]
        );
    }
}

/// The same for opening: each round seals 1000 packets both ways (untimed), then
/// times raw `open_in_place` and `Session::open` over them, alternating.
fn open_ratio_interleaved(_: &mut Criterion) {
    const BATCH: usize = 1000;
    for size in SIZES {
        let raw = raw_key();
        let mut sender = session(10, 20, KEY, [8; 32]);
        let mut receiver = session(20, 10, [8; 32], KEY);
        let mut counter = 0u64;
        let mut ratios = Vec::with_capacity(51);
        let fresh = || vec![vec![0x5Au8; HEADER_LEN + size + TAG_LEN]; BATCH];
        for _ in 0..51 {
            let mut raw_packets = fresh();
            for p in &mut raw_packets {
                counter += 1;
                let (head, body) = p.split_at_mut(HEADER_LEN);
                head[12..20].copy_from_slice(&counter.to_be_bytes());
                let n = Nonce::assume_unique_for_key(nonce(0, counter));
                let tag = raw.seal_in_place_separate_tag(n, Aad::from(&*head), &mut body[..size]);
                body[size..].copy_from_slice(tag.expect("seal").as_ref());
            }
            let mut packets = fresh();
            for p in &mut packets {
                sender
                    .seal_into(PacketType::Data, 0, p, size, NOW)
                    .expect("seal");
            }
            let t = Instant::now();
            for p in &mut raw_packets {
                let (head, body) = p.split_at_mut(HEADER_LEN);
                let ctr = u64::from_be_bytes(head[12..20].try_into().expect("8 bytes"));
                let n = Nonce::assume_unique_for_key(nonce(0, ctr));
                black_box(
                    raw.open_in_place(n, Aad::from(&*head), body)
                        .expect("open")
                        .len(),
                );
            }
            let raw_time = t.elapsed();
            let t = Instant::now();
            for p in &mut packets {
                black_box(receiver.open(p, NOW).expect("open").payload.len());
            }
            ratios.push(raw_time.as_secs_f64() / t.elapsed().as_secs_f64());
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "tunnel/open-ratio-interleaved/{size}: raw/session median {:.3} (p25 {:.3}, p75 {:.3})",
            ratios[25], ratios[12], ratios[38]
        );
    }
}

criterion_group!(
    benches,
    encapsulation,
    seal,
    open,
    replay,
    seal_ratio_interleaved,
    open_ratio_interleaved
);
criterion_main!(benches);
