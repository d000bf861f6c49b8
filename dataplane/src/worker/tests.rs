//! Worker tests on memory ports, driven step by step or by the threaded pool.

use std::time::{Duration, Instant};

use super::*;
use crate::io::mem::{MemConfig, MemPort};

/// LAN frames go out on the WAN; a frame whose first byte names another worker is handed
/// to that worker first (as a tunnel would for a lane it does not own).
struct CrossConnect;

impl Process for CrossConnect {
    fn process(&mut self, ports: &mut Ports, from: Port, frame: Frame) -> Action {
        let owner = ports.peek(from).data(&frame)[0] as usize;
        if from == Port::Lan && owner < 8 && !is_mine(owner) {
            return Action::Handoff {
                worker: owner,
                from,
                frame,
            };
        }
        let out = match from {
            Port::Lan => Port::Wan,
            Port::Wan => Port::Lan,
        };
        match ports.copy_across(from, &frame) {
            Some(copy) => {
                ports.get(from).release(frame);
                Action::Transmit(out, copy)
            }
            None => Action::Drop(from, frame),
        }
    }
}

thread_local! {
    static ME: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn is_mine(owner: usize) -> bool {
    ME.with(|me| me.get() == owner)
}

struct Owned(usize, CrossConnect);

impl Process for Owned {
    fn begin(&mut self, worker: usize) {
        assert_eq!(worker, self.0);
        ME.with(|me| me.set(worker));
    }

    fn process(&mut self, ports: &mut Ports, from: Port, frame: Frame) -> Action {
        self.1.process(ports, from, frame)
    }
}

fn config(slots: usize) -> MemConfig {
    MemConfig {
        chunks: 256,
        chunk_size: 2048,
        wire_slots: slots,
    }
}

/// A worker plus the host ends of its LAN and WAN wires.
fn worker(index: usize, mesh: &Arc<Mesh>) -> (Worker, MemPort, MemPort) {
    let (lan, lan_host) = MemPort::pair(config(128));
    let (wan, wan_host) = MemPort::pair(config(128));
    let ports = Ports {
        lan: Box::new(lan),
        wan: Box::new(wan),
    };
    let w = Worker::new(
        index,
        ports,
        Box::new(Owned(index, CrossConnect)),
        mesh.clone(),
        32,
    );
    (w, lan_host, wan_host)
}

#[test]
fn frames_cross_from_lan_to_wan_in_order() {
    let mesh = Mesh::new(1, 16, 2048);
    let (mut w, mut lan_host, mut wan_host) = worker(0, &mesh);
    for i in 0..100u8 {
        assert!(lan_host.inject(&[0, i, 1, 2, 3]));
    }
    while w.poll_once() > 0 {}
    for i in 0..100u8 {
        assert_eq!(wan_host.collect(|d| d.to_vec()), Some(vec![0, i, 1, 2, 3]));
    }
    assert_eq!(wan_host.collect(|_| ()), None);
    let c = w.counters().snapshot();
    assert_eq!((c.rx, c.tx, c.dropped), (100, 100, 0));
}

#[test]
fn foreign_frames_reach_their_owner() {
    let mesh = Mesh::new(2, 16, 2048);
    let (mut w0, mut lan0, mut wan0) = worker(0, &mesh);
    let (mut w1, _lan1, mut wan1) = worker(1, &mesh);
    assert!(lan0.inject(&[1, 42]));
    assert!(lan0.inject(&[0, 43]));
    w0.poll_once();
    assert_eq!(wan0.collect(|d| d.to_vec()), Some(vec![0, 43]));
    assert_eq!(wan1.collect(|_| ()), None, "not before its owner ran");
    w1.poll_once();
    assert_eq!(wan1.collect(|d| d.to_vec()), Some(vec![1, 42]));
    assert_eq!(w0.counters().snapshot().handoff_out, 1);
    assert_eq!(w1.counters().snapshot().handoff_in, 1);
}

#[test]
fn full_inbox_is_counted_not_silent() {
    let mesh = Mesh::new(2, 2, 2048);
    let (mut w0, mut lan0, _wan0) = worker(0, &mesh);
    for i in 0..5u8 {
        assert!(lan0.inject(&[1, i]));
    }
    w0.poll_once();
    let c = w0.counters().snapshot();
    assert_eq!((c.handoff_out, c.handoff_full), (2, 3));
    assert_eq!(mesh.inbox(1).len(), 2);
}

#[test]
fn pool_forwards_and_stops_cleanly() {
    let (lan, mut lan_host) = MemPort::pair(config(512));
    let (wan, mut wan_host) = MemPort::pair(config(512));
    let spec = WorkerSpec {
        ports: Ports {
            lan: Box::new(lan),
            wan: Box::new(wan),
        },
        core: Some(0),
        process: Box::new(Owned(0, CrossConnect)),
    };
    let pool = WorkerPool::start(PoolConfig::default(), vec![spec]).unwrap();
    let total = 2000u32;
    let (mut sent, mut got) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(20);
    while got < total && Instant::now() < deadline {
        // At most a wire's worth in flight: a full wire drops (counted), like a link.
        let window = sent - got < 511;
        if sent < total && window && lan_host.inject(&sent.to_be_bytes().map(|b| b & 0x7f)) {
            sent += 1;
        }
        while wan_host.collect(|_| ()).is_some() {
            got += 1;
        }
    }
    let reports = pool.stop().unwrap();
    assert_eq!(got, total);
    assert_eq!(reports[0].counters.tx, u64::from(total));
    assert_eq!(reports[0].wan.tx_frames, u64::from(total));
}

#[test]
fn missing_core_is_refused() {
    let (lan, _a) = MemPort::pair(config(4));
    let (wan, _b) = MemPort::pair(config(4));
    let spec = WorkerSpec {
        ports: Ports {
            lan: Box::new(lan),
            wan: Box::new(wan),
        },
        core: Some(100_000),
        process: Box::new(CrossConnect),
    };
    assert!(matches!(
        WorkerPool::start(PoolConfig::default(), vec![spec]),
        Err(WorkerError::NoSuchCore { core: 100_000, .. })
    ));
}
