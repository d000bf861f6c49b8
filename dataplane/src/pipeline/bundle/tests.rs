use super::*;
use crate::codec::{CodecConfig, Encoder};

fn cfg() -> CodecConfig {
    CodecConfig {
        history_bytes: 1 << 20,
        max_payload: 2048,
        // Small, so a stream repeated right away is referenced.
        reorder_guard_bytes: 2048,
        ..CodecConfig::default()
    }
}

/// A valid TCP packet (IPv4 or IPv6, with the Linux timestamp option), checksums right.
pub(super) fn tcp_packet(
    v6: bool,
    seq: u32,
    ack: u32,
    id: u16,
    ts: (u32, u32),
    payload: &[u8],
) -> Vec<u8> {
    let ip_len = if v6 { 40 } else { 20 };
    let mut p = vec![0u8; ip_len + 32];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((32 + payload.len()) as u16).to_be_bytes());
        p[6] = IPPROTO_TCP;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((52 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&[10, 1, 0, 2]);
        p[16..20].copy_from_slice(&[10, 2, 0, 2]);
    }
    let t = ip_len;
    p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&5001u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&ack.to_be_bytes());
    p[t + 12] = 8 << 4;
    p[t + 13] = 0x10;
    p[t + 14..t + 16].copy_from_slice(&502u16.to_be_bytes());
    p[t + 20..t + 24].copy_from_slice(&[1, 1, 8, 10]);
    p[t + 24..t + 28].copy_from_slice(&ts.0.to_be_bytes());
    p[t + 28..t + 32].copy_from_slice(&ts.1.to_be_bytes());
    if !v6 {
        let c = ipv4_checksum(&p, 20);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let l = layout(&p).expect("tcp layout");
    let c = tcp_checksum(&p, &l, payload);
    p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Bundles `packets` (whole IP packets) with `enc`; returns the bundle bytes.
pub(super) fn bundle(enc: &mut Encoder, packets: &[Vec<u8>]) -> Vec<u8> {
    let mut buf = vec![0u8; 64 << 10];
    let mut w = BundleWriter::new();
    w.start(&mut buf);
    let mut frame = vec![0u8; 4096];
    for p in packets {
        let hlen = crate::pipeline::inner::header_len(p);
        let (headers, payload) = p.split_at(hlen);
        let n = if payload.is_empty() {
            0
        } else {
            enc.encode(payload, &mut frame).expect("encode").len
        };
        let m = Member {
            headers,
            payload,
            frame: &frame[..n],
            raw: false,
        };
        assert!(w.append(&mut buf, &m));
    }
    buf.truncate(w.len());
    buf
}

fn unbundle(dec: &mut Decoder, b: &[u8]) -> Vec<Result<Vec<u8>, String>> {
    let mut r = BundleReader::new(b).expect("bundle");
    let mut scratch = vec![0u8; 4096];
    let mut out = vec![0u8; 4096];
    let mut v = Vec::new();
    while let Some(m) = r.next_into(dec, &mut scratch, &mut out) {
        v.push(m.map(|(n, _)| out[..n].to_vec()).map_err(|e| e.to_string()));
    }
    v
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn stream(v6: bool, n: usize, data: &[u8]) -> Vec<Vec<u8>> {
    let mut seq = 1000u32;
    (0..n)
        .map(|i| {
            let payload = &data[i * 1000 % (data.len() - 1000)..][..1000];
            let p = tcp_packet(
                v6,
                seq,
                77 + (i as u32 / 3) * 1448,
                100 + i as u16,
                (5000 + i as u32 / 2, 9000),
                payload,
            );
            seq = seq.wrapping_add(1000);
            p
        })
        .collect()
}

#[test]
fn tcp_headers_round_trip_exactly_and_compactly() {
    for v6 in [false, true] {
        let data = noise(20_000, 7);
        let packets = stream(v6, 12, &data);
        let mut enc = Encoder::new(0, cfg()).unwrap();
        let mut dec = Decoder::new(0, cfg()).unwrap();
        let b = bundle(&mut enc, &packets);
        let got = unbundle(&mut dec, &b);
        assert_eq!(got.len(), packets.len());
        for (g, p) in got.iter().zip(&packets) {
            assert_eq!(g.as_ref().unwrap(), p);
        }
        // Send the same stream again (new sequence numbers would not matter): every
        // member is a history copy with a few header bytes.
        let b = bundle(&mut enc, &packets);
        let per_member = b.len() / packets.len();
        assert!(per_member < 40, "{per_member} bytes per repeated member");
        let got = unbundle(&mut dec, &b);
        for (g, p) in got.iter().zip(&packets) {
            assert_eq!(g.as_ref().unwrap(), p);
        }
    }
}

#[test]
fn odd_headers_travel_in_full() {
    let data = vec![9u8; 3000];
    let mut packets = stream(false, 3, &data);
    // A wrong TCP checksum is carried as it is.
    packets[1][36] ^= 0x55;
    // A wrong IPv4 checksum forces a full header.
    let mut bad_ip = tcp_packet(false, 4000, 77, 103, (1, 2), &data[..500]);
    bad_ip[10] ^= 1;
    packets.push(bad_ip);
    // A UDP datagram and an ICMP packet (all header).
    let mut udp = vec![
        0x45, 0, 0, 40, 0, 1, 0, 0, 64, 17, 0, 0, 10, 1, 0, 2, 10, 2, 0, 2,
    ];
    udp.extend_from_slice(&[0x12, 0x34, 0x00, 0x35, 0, 20, 0, 0]);
    udp.extend_from_slice(&[7u8; 12]);
    packets.push(udp);
    let icmp = vec![
        0x45, 0, 0, 28, 0, 2, 0, 0, 64, 1, 0, 0, 10, 1, 0, 2, 10, 2, 0, 2, 8, 0, 0, 0, 0, 0, 0, 0,
    ];
    packets.push(icmp);
    // A pure ACK of the flow (no payload).
    packets.push(tcp_packet(false, 5000, 99, 104, (3, 4), &[]));
    let mut enc = Encoder::new(0, cfg()).unwrap();
    let mut dec = Decoder::new(0, cfg()).unwrap();
    let b = bundle(&mut enc, &packets);
    let got = unbundle(&mut dec, &b);
    assert_eq!(got.len(), packets.len());
    for (g, p) in got.iter().zip(&packets) {
        assert_eq!(g.as_ref().unwrap(), p);
    }
}

#[test]
fn a_member_that_misses_is_dropped_alone() {
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let packets = stream(false, 6, &data);
    let mut enc = Encoder::new(0, cfg()).unwrap();
    let mut dec = Decoder::new(0, cfg()).unwrap();
    // The first bundle is lost; enough traffic follows that the encoder references it.
    let _lost = bundle(&mut enc, &packets);
    let filler_packets = stream(false, 40, &vec![0x5a; 60_000]);
    let _ = bundle(&mut enc, &filler_packets);
    let b = bundle(&mut enc, &packets);
    let got = unbundle(&mut dec, &b);
    assert_eq!(got.len(), packets.len());
    // Nothing wrong is ever delivered: each member is exact or reported missing.
    let mut missed = 0;
    for (g, p) in got.iter().zip(&packets) {
        match g {
            Ok(v) => assert_eq!(v, p),
            Err(e) => {
                assert!(e.contains("not restored"), "{e}");
                missed += 1;
            }
        }
    }
    assert!(missed > 0, "the references into the lost bundle missed");
}

#[test]
fn garbage_never_panics_and_truncation_is_detected() {
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 3 % 241) as u8).collect();
    let packets = stream(true, 5, &data);
    let mut enc = Encoder::new(0, cfg()).unwrap();
    let b = bundle(&mut enc, &packets);
    for cut in 1..b.len() {
        let mut dec = Decoder::new(0, cfg()).unwrap();
        for (m, p) in unbundle(&mut dec, &b[..cut]).iter().zip(&packets) {
            if let Ok(v) = m {
                assert_eq!(v, p, "a truncated bundle delivered a wrong packet");
            }
        }
    }
    assert!(BundleReader::new(&[0, 1, 2]).is_err());
}

#[test]
fn payloads_travel_as_they_are_with_compression_off() {
    let data = noise(20_000, 11);
    let packets = stream(false, 8, &data);
    let mut buf = vec![0u8; 64 << 10];
    let mut w = BundleWriter::new();
    w.start(&mut buf);
    for p in &packets {
        let hlen = crate::pipeline::inner::header_len(p);
        let (headers, payload) = p.split_at(hlen);
        let m = Member {
            headers,
            payload,
            frame: &[],
            raw: true,
        };
        assert!(w.append(&mut buf, &m));
    }
    buf.truncate(w.len());
    let mut dec = Decoder::new(0, cfg()).unwrap();
    let got = unbundle(&mut dec, &buf);
    assert_eq!(got.len(), packets.len());
    for (g, p) in got.iter().zip(&packets) {
        assert_eq!(g.as_ref().unwrap(), p);
    }
    // Nothing went through the history.
    assert_eq!(dec.stats().frames, 0);
}
