//! Packets per second of one worker on memory ports, at 64, 512 and 1400 bytes.
//!
//! Each iteration pushes a burst of 256 frames into the worker's LAN wire, runs the
//! worker until all of them have left on its WAN wire, and drains that wire. Three
//! variants, all in the same run:
//! - `reference_copy`: the bytes copied the way the wires copy them (in, across, out),
//!   no worker — the floor any worker pays on memory ports;
//! - `cross_connect`: the worker loop with a processor that only copies LAN → WAN;
//! - `gateway`: the worker loop with `forward::Gateway` (TTL decrement with checksum
//!   update, next-hop lookup, MAC rewrite, copy to the WAN port).
//!
//! Criterion reports elements/s = packets/s; compare each variant with the reference.
//! Run: `cargo bench -p shunt-benches --bench io`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shunt_dataplane::forward::checksum;
use shunt_dataplane::forward::nexthop::{LinkInfo, NextHops, Route, Snapshot};
use shunt_dataplane::forward::{Gateway, GatewayConfig};
use shunt_dataplane::io::mem::{MemConfig, MemPort};
use shunt_dataplane::io::{Frame, Port};
use shunt_dataplane::worker::{Action, Mesh, Ports, Process, Worker};

const BURST: usize = 256;
const SIZES: [usize; 3] = [64, 512, 1400];
const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 2, 9];

struct CrossConnect;

impl Process for CrossConnect {
    fn process(&mut self, ports: &mut Ports, from: Port, frame: Frame) -> Action {
        match ports.copy_across(from, &frame) {
            Some(copy) => {
                ports.get(from).release(frame);
                Action::Transmit(Port::Wan, copy)
            }
            None => Action::Drop(from, frame),
        }
    }
}

fn gateway() -> Gateway {
    let link = |index, mac| LinkInfo {
        index,
        name: format!("if{index}"),
        mac,
        mtu: 1500,
    };
    let snapshot = Snapshot::from_parts(
        vec![link(1, [2, 0, 0, 0, 1, 1]), link(2, WAN_MAC)],
        vec![Route {
            dst: IpAddr::V4(Ipv4Addr::new(10, 2, 0, 0)),
            prefix_len: 16,
            gateway: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))),
            oif: 2,
            metric: 0,
        }],
        vec![(2, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), PEER_MAC)],
    );
    let config = GatewayConfig {
        lan_ifindex: 1,
        wan_ifindex: 2,
        wan_mtu: 1500,
        overhead: 0,
        router_v4: Some(Ipv4Addr::new(10, 1, 0, 1)),
        router_v6: None,
    };
    Gateway::new(config, NextHops::new(snapshot).view())
}

/// An Ethernet + IPv4 + UDP frame of `size` bytes towards 10.2.0.7.
fn packet(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (size - 14) as u16;
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 5, 10, 2, 0, 7,
    ]);
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f
}

struct Rig {
    worker: Worker,
    lan_host: MemPort,
    wan_host: MemPort,
}

fn rig(process: Box<dyn Process>) -> Rig {
    let config = MemConfig {
        chunks: 1024,
        chunk_size: 2048,
        wire_slots: 512,
    };
    let (lan, lan_host) = MemPort::pair(config);
    let (wan, wan_host) = MemPort::pair(config);
    let ports = Ports {
        lan: Box::new(lan),
        wan: Box::new(wan),
    };
    Rig {
        worker: Worker::new(0, ports, process, Mesh::new(1, 16, 2048), 64),
        lan_host,
        wan_host,
    }
}

/// One burst through the worker; returns the packets that came out.
fn burst(r: &mut Rig, pkt: &[u8]) -> usize {
    for _ in 0..BURST {
        r.lan_host.inject(pkt);
    }
    while r.worker.poll_once() > 0 {}
    let mut out = 0;
    while r.wan_host.collect(|d| black_box(d.len())).is_some() {
        out += 1;
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("worker_memory");
    g.throughput(Throughput::Elements(BURST as u64));
    for size in SIZES {
        let pkt = packet(size);

        let mut a = vec![0u8; 2048];
        let mut b = vec![0u8; 2048];
        let mut wire = vec![0u8; 2048];
        g.bench_with_input(BenchmarkId::new("reference_copy", size), &pkt, |bn, pkt| {
            bn.iter(|| {
                for _ in 0..BURST {
                    a[..size].copy_from_slice(black_box(pkt));
                    b[..size].copy_from_slice(&a[..size]);
                    wire[..size].copy_from_slice(&b[..size]);
                    black_box(&wire);
                }
            })
        });

        let mut cross = rig(Box::new(CrossConnect));
        assert_eq!(
            burst(&mut cross, &pkt),
            BURST,
            "cross-connect forwards every packet"
        );
        g.bench_with_input(BenchmarkId::new("cross_connect", size), &pkt, |bn, pkt| {
            bn.iter(|| burst(&mut cross, pkt))
        });

        let mut gw = rig(Box::new(gateway()));
        assert_eq!(burst(&mut gw, &pkt), BURST, "gateway forwards every packet");
        g.bench_with_input(BenchmarkId::new("gateway", size), &pkt, |bn, pkt| {
            bn.iter(|| burst(&mut gw, pkt))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
