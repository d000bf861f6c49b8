//! The verification setting and the cipher specification take effect on the secure
//! signaling channel.

mod common;

use common::pair::{pair, secure, shutdown};
use common::{Alg, credentials, intermediate_ca, leaf, root_ca, wait_keys, wait_status};
use shunt_control::credentials::{MemorySecretStore, Verification};
use shunt_control::peering::{Connection, Reason};

fn pki(dir: &std::path::Path) {
    root_ca(dir, "root");
    intermediate_ca(dir, "inter", "root");
    leaf(dir, "a", "site-a.example", "inter", Alg::Ec, 30);
    leaf(dir, "b", "site-b.example", "inter", Alg::Ec, 30);
    root_ca(dir, "other");
    leaf(dir, "b-foreign", "site-b.example", "other", Alg::Ec, 30);
}

#[tokio::test]
async fn chain_only_ignores_names_but_not_the_ca() {
    let d = tempfile::tempdir().unwrap();
    pki(d.path());
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let mut ca = credentials(d.path(), "a", "root.pem", &sa);
    let mut cb = credentials(d.path(), "b", "root.pem", &sb);
    ca.verification = Verification::ChainOnly;
    cb.verification = Verification::ChainOnly;
    // A calls its partner "site-c.example": accepted, since names are not checked.
    let (mut a, mut b) = pair(
        secure(ca.clone(), &sa),
        secure(cb, &sb),
        "site-c.example",
        "site-a.example",
    );
    wait_status(&mut a.events, "site-c.example", "secure", |s| s.secure).await;
    wait_keys(&mut b.events, 1).await;
    shutdown(a, b).await;

    let mut foreign = credentials(d.path(), "b-foreign", "root.pem", &sb);
    foreign.verification = Verification::ChainOnly;
    let (mut a, b) = pair(
        secure(ca, &sa),
        secure(foreign, &sb),
        "site-b.example",
        "site-a.example",
    );
    let s = wait_status(&mut a.events, "site-b.example", "wrong CA", |s| {
        s.connection == Connection::Down
    })
    .await;
    assert!(matches!(s.reason, Some(Reason::WrongCa { .. })), "{s:?}");
    shutdown(a, b).await;
}

#[tokio::test]
async fn dangerous_none_accepts_any_certificate() {
    let d = tempfile::tempdir().unwrap();
    pki(d.path());
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let mut ca = credentials(d.path(), "a", "root.pem", &sa);
    let mut cb = credentials(d.path(), "b-foreign", "root.pem", &sb);
    ca.verification = Verification::DangerousNone;
    cb.verification = Verification::DangerousNone;
    let (mut a, b) = pair(
        secure(ca, &sa),
        secure(cb, &sb),
        "site-b.example",
        "site-a.example",
    );
    wait_status(&mut a.events, "site-b.example", "secure", |s| s.secure).await;
    shutdown(a, b).await;
}

#[tokio::test]
async fn cipher_specification_is_applied() {
    let d = tempfile::tempdir().unwrap();
    pki(d.path());
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let mut ca = credentials(d.path(), "a", "root.pem", &sa);
    let mut cb = credentials(d.path(), "b", "root.pem", &sb);

    // A common suite named two ways: works.
    ca.ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384".parse().unwrap();
    cb.ciphers = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
        .parse()
        .unwrap();
    let (mut a, b) = pair(
        secure(ca.clone(), &sa),
        secure(cb.clone(), &sb),
        "site-b.example",
        "site-a.example",
    );
    wait_status(&mut a.events, "site-b.example", "secure", |s| s.secure).await;
    shutdown(a, b).await;

    // No suite in common: the secure channel cannot be set up.
    ca.ciphers = "TLS_AES_256_GCM_SHA384".parse().unwrap();
    cb.ciphers = "TLS_CHACHA20_POLY1305_SHA256".parse().unwrap();
    let (mut a, b) = pair(
        secure(ca, &sa),
        secure(cb, &sb),
        "site-b.example",
        "site-a.example",
    );
    let s = wait_status(&mut a.events, "site-b.example", "handshake failure", |s| {
        s.connection == Connection::Down
    })
    .await;
    assert!(
        matches!(s.reason, Some(Reason::NoCommonAlgorithms { .. })),
        "{s:?}"
    );
    assert!(!s.secure);
    shutdown(a, b).await;
}

#[tokio::test]
async fn epochs_roll_over_on_the_rekey_interval() {
    let d = tempfile::tempdir().unwrap();
    pki(d.path());
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let ca = credentials(d.path(), "a", "root.pem", &sa);
    let cb = credentials(d.path(), "b", "root.pem", &sb);
    let (mut a, mut b) = common::pair::pair_with(
        secure(ca, &sa),
        secure(cb, &sb),
        "site-b.example",
        "site-a.example",
        |c| c.rekey_interval = std::time::Duration::from_millis(200),
    );
    let mut previous = None;
    for epoch in 1..=3 {
        let (ka, kb) = (
            wait_keys(&mut a.events, epoch).await,
            wait_keys(&mut b.events, epoch).await,
        );
        assert_eq!(ka.tx_key, kb.rx_key);
        assert_ne!(Some(ka.tx_key.clone()), previous);
        previous = Some(ka.tx_key);
    }
    shutdown(a, b).await;
}
