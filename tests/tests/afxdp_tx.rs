//! AF_XDP transmit on a veth inside a namespace this test creates (run as root): frames
//! written to the socket's TX ring arrive, intact and in order, on the veth peer, where
//! an AF_PACKET socket reads them, with and without busy polling. Transmit needs no XDP
//! program.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType, recvfrom, socket,
};
use shunt_dataplane::io::afxdp::{AfXdpPort, BindMode, BusyPoll, XskConfig};
use shunt_dataplane::io::{Batch, PacketIo};
use shunt_tests::netns::{Netns, VethEnd, create_veth};

const FRAMES: u16 = 500;
const MARK: &[u8] = b"shunt-afxdp-tx";

fn frame(seq: u16) -> Vec<u8> {
    let mut f = vec![0u8; 60 + usize::from(seq % 900)];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental EtherType
    f[14..16].copy_from_slice(&seq.to_be_bytes());
    f[16..16 + MARK.len()].copy_from_slice(MARK);
    for (i, b) in f[16 + MARK.len()..].iter_mut().enumerate() {
        *b = (i as u16 ^ seq) as u8;
    }
    f
}

#[test]
fn afxdp_tx_frames_arrive_on_the_peer() {
    transmit_and_check(None);
}

#[test]
fn afxdp_tx_with_busy_polling_arrives_too() {
    transmit_and_check(Some(BusyPoll {
        usecs: 20,
        budget: 64,
    }));
}

fn transmit_and_check(busy_poll: Option<BusyPoll>) {
    let ns = Netns::new("xsktx").expect("namespace (run as root)");
    let end = |name| VethEnd {
        netns: Some(&ns),
        name,
        mac: None,
    };
    create_veth(end("xtx0"), end("xtx1"), 1500).expect("veth pair");
    let peer_index = ns.ifindex("xtx1").unwrap();

    let received = ns
        .enter(move || {
            let sniffer = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_NONBLOCK,
                SockProtocol::EthAll,
            )
            .expect("AF_PACKET socket");
            let mut config = XskConfig::new("xtx0", 0);
            config.mode = BindMode::Copy;
            config.frames = 1024;
            config.ring_size = 256;
            config.busy_poll = busy_poll;
            let mut port = AfXdpPort::open(&config).expect("AF_XDP socket on xtx0");

            let mut batch = Batch::with_capacity(32);
            let mut next = 0u16;
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut buf = vec![0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(20);
            while got.len() < usize::from(FRAMES) && Instant::now() < deadline {
                while next < FRAMES && batch.room() > 0 {
                    let Some(mut f) = port.alloc() else { break };
                    let bytes = frame(next);
                    assert!(f.set_len(bytes.len()));
                    port.data_mut(&f).copy_from_slice(&bytes);
                    batch.push(f).unwrap();
                    next += 1;
                }
                let _ = port.send(&mut batch).unwrap();
                port.maintain().unwrap();
                while let Ok((n, Some(from))) = recvfrom::<LinkAddr>(sniffer.as_raw_fd(), &mut buf)
                {
                    // Only what arrives on the peer, not the copy seen leaving xtx0.
                    const PACKET_OUTGOING: u8 = 4;
                    let inbound =
                        from.ifindex() == peer_index as usize && from.pkttype() != PACKET_OUTGOING;
                    if inbound && buf[16..16 + MARK.len()] == *MARK {
                        got.push(buf[..n].to_vec());
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (got, port.stats())
        })
        .expect("enter namespace");

    let (got, stats) = received;
    assert_eq!(
        got.len(),
        usize::from(FRAMES),
        "frames on the peer; port stats {stats:?}"
    );
    for (seq, bytes) in got.iter().enumerate() {
        assert_eq!(bytes, &frame(seq as u16), "frame {seq} intact and in order");
    }
    assert_eq!(stats.tx_frames, u64::from(FRAMES));
    assert_eq!(stats.tx_full, 0);
}
