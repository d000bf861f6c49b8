//! An appliance restarts with its keystore sealed: its partner sees "peer not secured
//! (keystore sealed)" until the keystore is opened and secure peering restarted. Also:
//! roles chosen automatically by address.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::pair::{config, licence, secure};
use common::{Alg, credentials, free_udp, intermediate_ca, leaf, root_ca, wait_status};
use shunt_control::credentials::{MemorySecretStore, PeeringCredentials};
use shunt_control::peering::{
    Connection, LocalSecurity, PartnerConfig, PeeringEndpoint, PeeringEvent, Reason, Role,
};
use tokio::sync::mpsc::UnboundedReceiver;

async fn start(
    name: &str,
    addr: SocketAddr,
    security: LocalSecurity,
    partner: &str,
    partner_addr: SocketAddr,
    role: Role,
) -> (PeeringEndpoint, UnboundedReceiver<PeeringEvent>) {
    // The previous endpoint on this port may take a moment to release it.
    for _ in 0..50 {
        match PeeringEndpoint::start(
            config(name, addr),
            security.clone(),
            vec![PartnerConfig {
                name: partner.into(),
                address: partner_addr,
                role,
            }],
        ) {
            Ok(started) => return started,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("cannot bind {addr}");
}

fn creds(
    dir: &std::path::Path,
    sa: &MemorySecretStore,
    sb: &MemorySecretStore,
) -> (PeeringCredentials, PeeringCredentials) {
    root_ca(dir, "root");
    intermediate_ca(dir, "inter", "root");
    leaf(dir, "a", "site-a.example", "inter", Alg::Ec, 30);
    leaf(dir, "b", "site-b.example", "inter", Alg::Ec, 30);
    (
        credentials(dir, "a", "root.pem", sa),
        credentials(dir, "b", "root.pem", sb),
    )
}

#[tokio::test]
async fn restart_with_sealed_keystore_then_open() {
    let d = tempfile::tempdir().unwrap();
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let (ca, cb) = creds(d.path(), &sa, &sb);
    let (a_addr, b_addr) = (free_udp(), free_udp());
    let (ea, mut ra) = start(
        "site-a",
        a_addr,
        secure(ca, &sa),
        "site-b.example",
        b_addr,
        Role::Initiator,
    )
    .await;
    let (eb, _rb) = start(
        "site-b",
        b_addr,
        secure(cb.clone(), &sb),
        "site-a.example",
        a_addr,
        Role::Responder,
    )
    .await;
    wait_status(&mut ra, "site-b.example", "secure", |s| s.secure).await;

    // B restarts: its keystore is sealed after every start.
    eb.shutdown().await;
    let s = wait_status(&mut ra, "site-b.example", "B gone", |s| !s.secure).await;
    assert_ne!(s.connection, Connection::ConnectedAvailable, "{s:?}");
    sb.set_sealed(true);
    let sealed = LocalSecurity::enable(cb.clone(), &sb, Some(&licence()), SystemTime::now());
    let (eb, _rb) = start(
        "site-b",
        b_addr,
        sealed,
        "site-a.example",
        a_addr,
        Role::Responder,
    )
    .await;
    let s = wait_status(&mut ra, "site-b.example", "peer sealed", |s| {
        s.connection == Connection::ConnectedAvailable && s.reason.is_some()
    })
    .await;
    assert_eq!(
        s.reason,
        Some(Reason::PeerNotSecured {
            peer_says: Some("keystore sealed".into())
        })
    );
    assert!(!s.secure);

    // The operator opens the keystore; secure peering restarts and the partner is secure.
    sb.set_sealed(false);
    eb.shutdown().await;
    let (eb, _rb) = start(
        "site-b",
        b_addr,
        secure(cb, &sb),
        "site-a.example",
        a_addr,
        Role::Responder,
    )
    .await;
    let s = wait_status(&mut ra, "site-b.example", "secure again", |s| s.secure).await;
    assert_eq!(s.connection, Connection::ConnectedAvailable);
    ea.shutdown().await;
    eb.shutdown().await;
}

#[tokio::test]
async fn automatic_roles_agree() {
    let d = tempfile::tempdir().unwrap();
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let (ca, cb) = creds(d.path(), &sa, &sb);
    let (a_addr, b_addr) = (free_udp(), free_udp());
    let (ea, mut ra) = start(
        "site-a",
        a_addr,
        secure(ca, &sa),
        "site-b.example",
        b_addr,
        Role::Auto,
    )
    .await;
    let (eb, mut rb) = start(
        "site-b",
        b_addr,
        secure(cb, &sb),
        "site-a.example",
        a_addr,
        Role::Auto,
    )
    .await;
    wait_status(&mut ra, "site-b.example", "secure", |s| s.secure).await;
    wait_status(&mut rb, "site-a.example", "secure", |s| s.secure).await;
    ea.shutdown().await;
    eb.shutdown().await;
}
