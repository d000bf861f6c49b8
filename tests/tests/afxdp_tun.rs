//! The TUN port in a namespace this test creates (run as root): a UDP datagram the kernel
//! routes into the TUN interface is received as a bare IPv4 packet, and a reply written
//! to the port (addresses swapped, checksums recomputed with `forward::checksum`) is
//! delivered by the kernel to the sending socket.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use shunt_dataplane::forward::checksum;
use shunt_dataplane::io::tun::TunPort;
use shunt_dataplane::io::{Batch, Link, PacketIo};
use shunt_tests::netns::Netns;

#[test]
fn afxdp_tun_port_receives_routed_packets_and_injects_replies() {
    let ns = Netns::new("tun").expect("namespace (run as root)");
    ns.run("ip", &["link", "set", "lo", "up"]).unwrap();
    let (echoed, stats) = ns
        .enter(|| {
            let mut port = TunPort::open("shtun0", 64).expect("TUN port");
            assert_eq!(port.link(), Link::Ip);
            let ip = |args: &[&str]| {
                let ok = std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "ip {args:?}");
            };
            ip(&["addr", "add", "10.77.0.1/24", "dev", port.name()]);
            ip(&["link", "set", port.name(), "up"]);

            let sock = UdpSocket::bind("10.77.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let remote = SocketAddr::from((Ipv4Addr::new(10, 77, 0, 99), 7777));
            let mut batch = Batch::with_capacity(8);
            let deadline = Instant::now() + Duration::from_secs(10);
            let packet = loop {
                sock.send_to(b"ping over tun", remote).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                port.recv(&mut batch).unwrap();
                let found = batch.drain().find_map(|f| {
                    let d = port.data(&f).to_vec();
                    port.release(f);
                    (d.len() > 28 && d[9] == 17 && d[16..20] == [10, 77, 0, 99]).then_some(d)
                });
                if let Some(p) = found {
                    break p;
                }
                assert!(
                    Instant::now() < deadline,
                    "no routed packet arrived on the TUN port"
                );
            };
            assert_eq!(&packet[28..], b"ping over tun");
            assert_eq!(
                checksum::checksum(&packet[..20]),
                0,
                "kernel's IPv4 checksum"
            );

            // Reply from 10.77.0.99:7777, built in place in a frame of the port.
            let mut reply = packet.clone();
            reply[12..16].copy_from_slice(&packet[16..20]);
            reply[16..20].copy_from_slice(&packet[12..16]);
            reply[20..22].copy_from_slice(&packet[22..24]);
            reply[22..24].copy_from_slice(&packet[20..22]);
            let n = reply.len();
            reply[28..].copy_from_slice(&b"PONG OVER TUN"[..n - 28]);
            reply[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(&reply[..20]);
            reply[10..12].copy_from_slice(&c.to_be_bytes());
            reply[26..28].copy_from_slice(&[0, 0]);
            let c = checksum::udp_v4(
                Ipv4Addr::new(10, 77, 0, 99),
                Ipv4Addr::new(10, 77, 0, 1),
                &reply[20..],
            );
            reply[26..28].copy_from_slice(&c.to_be_bytes());

            let mut f = port.alloc().unwrap();
            assert!(f.set_len(reply.len()));
            port.data_mut(&f).copy_from_slice(&reply);
            batch.push(f).unwrap();
            assert_eq!(port.send(&mut batch).unwrap(), 1);

            let mut buf = [0u8; 64];
            let (n, from) = sock
                .recv_from(&mut buf)
                .expect("reply delivered (checksums valid)");
            assert_eq!(from, remote);
            (buf[..n].to_vec(), port.stats())
        })
        .expect("enter namespace");
    assert_eq!(echoed, b"PONG OVER TUN");
    assert_eq!(stats.tx_frames, 1);
    assert!(stats.rx_frames >= 1);
}
