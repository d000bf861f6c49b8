//! Per-stage cost of the tunnel at 64, 512 and 1400 bytes: encapsulation (header
//! build and parse), the AEAD stage (`Session::seal_data` / `Session::open`) next to
//! raw aws-lc-rs AES-256-GCM on the same buffers in the same run, and the anti-replay
//! window. Compare `tunnel/seal/session` with `tunnel/seal/raw-aws-lc` (and the same
//! for open): the ratio raw / session is the AEAD stage's efficiency.

use std::hint::black_box;
use std::time::Duration;

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

criterion_group!(benches, encapsulation, seal, open, replay);
criterion_main!(benches);
