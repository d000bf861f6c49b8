//! Keepalives detect a dead partner, reconnection backs off and recovers, and every
//! signaling packet keeps a top bit of its first byte set (no QUIC-bit greasing), so it
//! never looks like a tunnel packet. The WAN is a UDP relay the test can cut.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::{Alg, credentials, free_udp, intermediate_ca, leaf, root_ca, wait_keys, wait_status};
use shunt_control::credentials::MemorySecretStore;
use shunt_control::licence::{LicenceSigner, LicenceTerms, LicenceVerifier, SECURE_PEERING};
use shunt_control::peering::{
    Connection, LocalSecurity, PartnerConfig, PeeringConfig, PeeringEndpoint, Reason, Role,
};
use tokio::net::UdpSocket;

/// Forwards A ⇄ B between two sockets; drops everything while `cut` is set; counts
/// packets whose first byte has both top bits clear (which must never happen).
struct Relay {
    cut: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    bad_first_byte: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// `toward_b` receives from A, `toward_a` from B.
    async fn start(a: SocketAddr, b: SocketAddr) -> (Self, SocketAddr, SocketAddr) {
        let toward_b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let toward_a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (addr_for_a, addr_for_b) = (
            toward_b.local_addr().unwrap(),
            toward_a.local_addr().unwrap(),
        );
        let cut = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (from, to, dest) in [
            (toward_b.clone(), toward_a.clone(), b),
            (toward_a, toward_b, a),
        ] {
            let (cut, forwarded, bad) = (cut.clone(), forwarded.clone(), bad.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((n, _)) = from.recv_from(&mut buf).await else {
                        return;
                    };
                    if n > 0 && buf[0] & 0xc0 == 0 {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    if cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    forwarded.fetch_add(1, Ordering::Relaxed);
                    let _ = to.send_to(&buf[..n], dest).await;
                }
            }));
        }
        (
            Self {
                cut,
                forwarded,
                bad_first_byte: bad,
                tasks,
            },
            addr_for_a,
            addr_for_b,
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[tokio::test]
async fn dead_partner_detected_then_backoff_then_recovery() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    root_ca(dir, "root");
    intermediate_ca(dir, "inter", "root");
    leaf(dir, "a", "site-a.example", "inter", Alg::Ec, 30);
    leaf(dir, "b", "site-b.example", "inter", Alg::Rsa, 30);
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let (signer, _) = LicenceSigner::generate().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let file = signer
        .sign(&LicenceTerms {
            licence_id: "T".into(),
            customer: "t".into(),
            features: vec![SECURE_PEERING.into()],
            not_before: now - 10,
            not_after: now + 600,
        })
        .unwrap();
    let lic = LicenceVerifier::new(&signer.public_key())
        .unwrap()
        .verify(&file)
        .unwrap();
    let sec_a = LocalSecurity::enable(
        credentials(dir, "a", "root.pem", &sa),
        &sa,
        Some(&lic),
        SystemTime::now(),
    );
    let sec_b = LocalSecurity::enable(
        credentials(dir, "b", "root.pem", &sb),
        &sb,
        Some(&lic),
        SystemTime::now(),
    );

    let (a_addr, b_addr) = (free_udp(), free_udp());
    let (relay, b_seen_by_a, a_seen_by_b) = Relay::start(a_addr, b_addr).await;
    let cfg = |name: &str, addr| {
        let mut c = PeeringConfig::new(name, addr);
        c.keepalive = Duration::from_millis(100);
        c.idle_timeout = Duration::from_millis(600);
        c.backoff.initial = Duration::from_millis(200);
        c.backoff.max = Duration::from_millis(800);
        c
    };
    let (ea, mut ra) = PeeringEndpoint::start(
        cfg("site-a", a_addr),
        sec_a,
        vec![PartnerConfig {
            name: "site-b.example".into(),
            address: b_seen_by_a,
            role: Role::Initiator,
        }],
    )
    .unwrap();
    let (eb, _rb) = PeeringEndpoint::start(
        cfg("site-b", b_addr),
        sec_b,
        vec![PartnerConfig {
            name: "site-a.example".into(),
            address: a_seen_by_b,
            role: Role::Responder,
        }],
    )
    .unwrap();

    wait_status(&mut ra, "site-b.example", "secure", |s| s.secure).await;
    let first = wait_keys(&mut ra, 1).await;

    // Cut the WAN: keepalives go unanswered and A declares the partner dead.
    relay.cut.store(true, Ordering::Relaxed);
    let s = wait_status(&mut ra, "site-b.example", "keepalive timeout", |s| {
        s.connection == Connection::Down
    })
    .await;
    assert_eq!(s.reason, Some(Reason::KeepaliveTimeout), "{s:?}");
    assert!(!s.secure);

    // Reconnection attempts fail and back off: the attempt counter climbs, and the gaps
    // between attempts are at least half of each growing ceiling (200, 400, 800 ms).
    let mut downs = Vec::new();
    for attempt in 1..=3u32 {
        let s = wait_status(&mut ra, "site-b.example", "failed attempt", |s| {
            s.connection == Connection::Down && s.reconnect_attempts == attempt + 1
        })
        .await;
        assert!(matches!(s.reason, Some(Reason::Unreachable(_))), "{s:?}");
        downs.push(Instant::now());
    }
    let gap = downs[2] - downs[1];
    assert!(
        gap >= Duration::from_millis(200),
        "backoff gap {gap:?} too short for a 400 ms ceiling"
    );

    // Heal the WAN: the next attempt succeeds with fresh keys.
    relay.cut.store(false, Ordering::Relaxed);
    let s = wait_status(&mut ra, "site-b.example", "secure again", |s| s.secure).await;
    assert_eq!(
        (s.connection, s.reconnect_attempts),
        (Connection::ConnectedAvailable, 0)
    );
    let again = wait_keys(&mut ra, 1).await;
    assert_ne!(again.tx_key, first.tx_key, "a new session has new keys");

    assert!(relay.forwarded.load(Ordering::Relaxed) > 10);
    assert_eq!(
        relay.bad_first_byte.load(Ordering::Relaxed),
        0,
        "a QUIC packet had both top bits clear"
    );
    ea.shutdown().await;
    eb.shutdown().await;
}
