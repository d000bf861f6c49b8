//! Gateway forwarding on the AF_XDP fast path, on the two-site testbed (run as root):
//! site A's XDP program redirects client→server traffic into an AF_XDP socket on its LAN
//! port; a pinned worker running `forward::Gateway` resolves the WAN next hop from the
//! kernel's tables, decrements the TTL and transmits on the WAN port's AF_XDP socket.
//! The kernel is kept off that path (IPv4 forwarding disabled for packets arriving on
//! the LAN port), so a TCP transfer that arrives with an equal SHA-256 went through the
//! worker. Return traffic takes the kernel's path.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shunt_common::RuleAction;
use shunt_dataplane::forward::{Gateway, GatewayConfig, Resolver};
use shunt_dataplane::io::afxdp::{AfXdpPort, BindMode, XskConfig};
use shunt_dataplane::worker::{PoolConfig, Ports, WorkerPool, WorkerSpec};
use shunt_dataplane::xdp::{ModeRequest, Prefix, Role, Rule, Steering};
use shunt_tests::testbed::Testbed;

const BYTES: usize = 16 << 20;

fn pattern(offset: usize, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = (offset + i) as u64;
        *b = (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
    }
}

#[test]
fn forward_afxdp_gateway_carries_tcp_intact() {
    let tb = Testbed::new().expect("testbed (run as root)");
    let a = &tb.site_a;
    a.netns
        .sysctl(&format!("net.ipv4.conf.{}.forwarding", a.lan_if), "0")
        .expect("keep the kernel off the LAN→WAN path");
    let (lan_if, wan_if, router) = (a.lan_if.clone(), a.wan_if.clone(), a.lan_ipv4);
    let (server_prefix, server_len) = shunt_tests::testbed::SITE_B_LAN_V4;

    let (steering, pool, resolver, counters) = a
        .netns
        .enter(move || {
            let (hops, resolver) = Resolver::start(Duration::from_secs(1)).expect("resolver");
            let view = hops.view();
            let snap = view.snapshot();
            let lan_ifindex = snap.link_by_name(&lan_if).expect("lan link").index;
            let wan_ifindex = snap.link_by_name(&wan_if).expect("wan link").index;
            let wan_mtu = snap.link(wan_ifindex).unwrap().mtu as usize;

            let open = |name: &str| {
                let mut c = XskConfig::new(name, 0);
                c.mode = BindMode::Copy;
                AfXdpPort::open(&c).unwrap_or_else(|e| panic!("AF_XDP on {name}: {e}"))
            };
            let lan = open(&lan_if);
            let wan = open(&wan_if);

            let mut steering = Steering::load().expect("load XDP program");
            steering
                .attach(Role::Lan, &lan_if, ModeRequest::Driver)
                .expect("attach to LAN");
            let prefix = Prefix::new(IpAddr::V4(server_prefix), server_len).unwrap();
            let rule = Rule {
                partner: 0,
                action: RuleAction::Accelerate,
                must_protect: false,
            };
            steering.add_rule(prefix, rule).expect("rule");
            steering.set_partner_ready(0, true).expect("partner ready");
            steering
                .register_socket(&lan_if, 0, lan.fd())
                .expect("XSK map");

            let gateway = Gateway::new(
                GatewayConfig {
                    lan_ifindex,
                    wan_ifindex,
                    wan_mtu,
                    overhead: 0,
                    router_v4: Some(router),
                    router_v6: None,
                },
                view,
            );
            let counters = gateway.counters();
            let spec = WorkerSpec {
                ports: Ports {
                    lan: Box::new(lan),
                    wan: Box::new(wan),
                },
                core: Some(0),
                process: Box::new(gateway),
            };
            let pool = WorkerPool::start(PoolConfig::default(), vec![spec]).expect("worker");
            (steering, pool, resolver, counters)
        })
        .expect("enter site_a");

    let fast = transfer(&tb, 5301);

    let reports = pool.stop().expect("worker stops");
    let verdicts = steering.verdicts(Role::Lan).expect("verdicts");
    drop(resolver);
    drop(steering);

    // Reference in the same run: the kernel forwards the same transfer (XDP detached).
    a.netns
        .sysctl(&format!("net.ipv4.conf.{}.forwarding", a.lan_if), "1")
        .unwrap();
    let kernel = transfer(&tb, 5302);
    assert_eq!(kernel.sent, kernel.got);
    let (received, got, sent, elapsed) = (fast.received, fast.got, fast.sent, fast.elapsed);

    assert_eq!(received, BYTES);
    assert_eq!(got, sent, "SHA-256 at both ends");
    let forwarded = counters.forwarded.load(Ordering::Relaxed);
    // 16 MiB needs at least 16 MiB / 1460 ≈ 11 500 segments; all went through the worker.
    assert!(forwarded as usize >= BYTES / 1460, "forwarded {forwarded}");
    assert_eq!(
        reports[0].counters.tx, forwarded,
        "everything sent was forwarded"
    );
    assert_eq!(reports[0].wan.tx_frames, reports[0].counters.tx);
    assert!(
        verdicts.redirected >= forwarded,
        "XDP redirected what the worker forwarded"
    );
    assert!(reports[0].lan.rx_frames >= forwarded);
    // A measurement for the report, not an assertion (debug build, copy mode, veth).
    eprintln!(
        "forwarded {forwarded} packets in {elapsed:?} ({:.0} packets/s, {:.1} MB/s; kernel \
         forwarding {:.1} MB/s, ratio {:.2}); worker {:?}; verdicts {verdicts:?}; \
         no_neighbour {}",
        forwarded as f64 / elapsed.as_secs_f64(),
        BYTES as f64 / elapsed.as_secs_f64() / 1e6,
        BYTES as f64 / kernel.elapsed.as_secs_f64() / 1e6,
        kernel.elapsed.as_secs_f64() / elapsed.as_secs_f64(),
        reports[0],
        counters.no_neighbour.load(Ordering::Relaxed)
    );
}

struct Transfer {
    received: usize,
    got: sha2::digest::Output<Sha256>,
    sent: sha2::digest::Output<Sha256>,
    /// From connection establishment to the receiver's end of stream.
    elapsed: Duration,
}

/// Sends `BYTES` of a pattern from the client to the server on `port`, hashing both ends.
fn transfer(tb: &Testbed, port: u16) -> Transfer {
    let server_addr = SocketAddr::new(IpAddr::V4(tb.server.ipv4), port);
    let listener = tb
        .server
        .netns
        .enter(move || TcpListener::bind(server_addr))
        .unwrap()
        .expect("listen");
    let receiver = tb
        .server
        .netns
        .spawn_thread(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let (mut hash, mut total, mut buf) = (Sha256::new(), 0usize, vec![0u8; 65536]);
            loop {
                let n = s.read(&mut buf).expect("read");
                if n == 0 {
                    return (total, hash.finalize());
                }
                hash.update(&buf[..n]);
                total += n;
            }
        })
        .expect("receiver");
    let (sent, started) = tb
        .client
        .netns
        .enter(move || {
            // The first SYN may be dropped while the WAN next hop is resolved; TCP retries.
            let mut s =
                TcpStream::connect_timeout(&server_addr, Duration::from_secs(10)).expect("connect");
            s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            let started = Instant::now();
            let (mut hash, mut buf) = (Sha256::new(), vec![0u8; 65536]);
            let mut off = 0;
            while off < BYTES {
                let n = buf.len().min(BYTES - off);
                pattern(off, &mut buf[..n]);
                s.write_all(&buf[..n]).expect("write");
                hash.update(&buf[..n]);
                off += n;
            }
            (hash.finalize(), started)
        })
        .expect("enter client");
    let (received, got) = receiver.join().expect("receiver thread");
    Transfer {
        received,
        got,
        sent,
        elapsed: started.elapsed(),
    }
}
