//! Two peering endpoints on loopback: secure relationships with openssl-made and
//! private-CA credentials, each authentication failure with its reason, the mode
//! matrix, and per-direction, per-epoch session keys.

mod common;

use common::pair::{Side, licence, pair, secure, shutdown};

use std::time::{Duration, SystemTime};

use common::{Alg, credentials, intermediate_ca, leaf, root_ca, wait_keys, wait_status};
use shunt_control::ca::{Ca, Enrollment};
use shunt_control::credentials::MemorySecretStore;
use shunt_control::peering::{Connection, DetectedBy, LocalSecurity, Reason, TrafficMode};

/// Openssl chain: root → intermediate → leaves for site-a (RSA) and site-b (ECDSA).
fn openssl_pki(dir: &std::path::Path) {
    root_ca(dir, "root");
    intermediate_ca(dir, "inter", "root");
    leaf(dir, "a", "site-a.example", "inter", Alg::Rsa, 30);
    leaf(dir, "b", "site-b.example", "inter", Alg::Ec, 30);
}

async fn expect_secure_with_keys(a: &mut Side, b: &mut Side) {
    let sa = wait_status(&mut a.events, "site-b.example", "secure", |s| s.secure).await;
    assert_eq!(sa.connection, Connection::ConnectedAvailable);
    assert_eq!(sa.traffic, TrafficMode::CompressedAndEncrypted);
    wait_status(&mut b.events, "site-a.example", "secure", |s| s.secure).await;

    let (ka, kb) = (
        wait_keys(&mut a.events, 1).await,
        wait_keys(&mut b.events, 1).await,
    );
    assert_eq!(ka.tx_key, kb.rx_key, "A→B key agrees");
    assert_eq!(ka.rx_key, kb.tx_key, "B→A key agrees");
    assert_ne!(ka.tx_key, ka.rx_key, "one key per direction");
    assert_eq!(ka.local_index, kb.remote_index);
    assert_eq!(ka.remote_index, kb.local_index);

    // A new epoch, asked for by either side, brings fresh keys on both.
    b.endpoint.rekey("site-a.example").unwrap();
    let (ka2, kb2) = (
        wait_keys(&mut a.events, 2).await,
        wait_keys(&mut b.events, 2).await,
    );
    assert_eq!(ka2.tx_key, kb2.rx_key);
    assert_ne!(ka2.tx_key, ka.tx_key, "epoch 2 differs from epoch 1");
    assert_ne!(ka2.rx_key, ka.rx_key);
    a.endpoint.rekey("site-b.example").unwrap();
    let ka3 = wait_keys(&mut a.events, 3).await;
    assert_ne!(ka3.tx_key, ka2.tx_key);
    assert_eq!(a.endpoint.status("site-b.example").unwrap().epoch, 3);
}

#[tokio::test]
async fn openssl_credentials_rsa_and_ecdsa_peer_securely() {
    let d = tempfile::tempdir().unwrap();
    openssl_pki(d.path());
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let ca = credentials(d.path(), "a", "root.pem", &sa);
    let cb = credentials(d.path(), "b", "root.pem", &sb);
    let (mut a, mut b) = pair(
        secure(ca, &sa),
        secure(cb, &sb),
        "site-b.example",
        "site-a.example",
    );
    expect_secure_with_keys(&mut a, &mut b).await;
    shutdown(a, b).await;
}

#[tokio::test]
async fn self_signed_openssl_certificates_pinned_in_the_trust_store() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for (name, dns) in [("a", "site-a.example"), ("b", "site-b.example")] {
        common::openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}-chain.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/CN={dns}"),
                "-addext",
                &format!("subjectAltName=DNS:{dns}"),
            ],
        );
    }
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let ca = credentials(dir, "a", "b-chain.pem", &sa);
    let cb = credentials(dir, "b", "a-chain.pem", &sb);
    let (mut a, mut b) = pair(
        secure(ca, &sa),
        secure(cb, &sb),
        "site-b.example",
        "site-a.example",
    );
    expect_secure_with_keys(&mut a, &mut b).await;
    shutdown(a, b).await;
}

#[tokio::test]
async fn private_ca_enrollment_peers_securely() {
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    // Appliance A holds the CA and enrolls itself and B; B's key never leaves B.
    let ca = Ca::generate(
        "Shunt private CA",
        Duration::from_secs(86400),
        &sa,
        "private-ca",
    )
    .unwrap();
    let mut creds = Vec::new();
    for (store, name) in [(&sa, "site-a.example"), (&sb, "site-b.example")] {
        let enrollment = Enrollment::new("identity");
        let csr = enrollment.make_csr(store, name).unwrap();
        let issued = ca
            .sign_csr(&sa, &csr, &[name.to_owned()], Duration::from_secs(3600))
            .unwrap();
        let installed = enrollment
            .install_issued(store, issued.certificate, issued.ca_certificate)
            .unwrap();
        creds.push(installed.peering_credentials());
    }
    let cb = creds.pop().unwrap();
    let ca_creds = creds.pop().unwrap();
    let (mut a, mut b) = pair(
        secure(ca_creds, &sa),
        secure(cb, &sb),
        "site-b.example",
        "site-a.example",
    );
    expect_secure_with_keys(&mut a, &mut b).await;
    shutdown(a, b).await;
}

#[tokio::test]
async fn wrong_ca_is_reported_on_both_sides() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    openssl_pki(dir);
    root_ca(dir, "other-root");
    leaf(
        dir,
        "b-foreign",
        "site-b.example",
        "other-root",
        Alg::Ec,
        30,
    );
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let ca = credentials(dir, "a", "root.pem", &sa);
    let cb = credentials(dir, "b-foreign", "root.pem", &sb);
    let (mut a, mut b) = pair(
        secure(ca, &sa),
        secure(cb, &sb),
        "site-b.example",
        "site-a.example",
    );
    let s = wait_status(&mut a.events, "site-b.example", "wrong CA", |s| {
        s.reason.is_some() && s.connection == Connection::Down
    })
    .await;
    assert_eq!(
        s.reason,
        Some(Reason::WrongCa {
            detected_by: DetectedBy::Us
        }),
        "{s:?}"
    );
    assert!(!s.secure);
    assert_eq!(s.traffic, TrafficMode::Untouched);
    let s = wait_status(&mut b.events, "site-a.example", "wrong CA", |s| {
        matches!(s.reason, Some(Reason::WrongCa { .. }))
    })
    .await;
    assert_eq!(
        s.reason,
        Some(Reason::WrongCa {
            detected_by: DetectedBy::Partner
        })
    );
    assert!(s.reason.unwrap().to_string().contains("wrong CA"));
    shutdown(a, b).await;
}

#[tokio::test]
async fn expired_certificate_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    openssl_pki(dir);
    // `-days -1`: notAfter lies before notBefore, so the certificate is already expired.
    leaf(dir, "a-expired", "site-a.example", "inter", Alg::Rsa, -1);
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let ca = credentials(dir, "a-expired", "root.pem", &sa);
    let cb = credentials(dir, "b", "root.pem", &sb);
    let (mut a, mut b) = pair(
        secure(ca, &sa),
        secure(cb, &sb),
        "site-b.example",
        "site-a.example",
    );
    // B (server) rejects A's client certificate; A learns it from B's alert.
    let s = wait_status(&mut b.events, "site-a.example", "expired", |s| {
        s.reason.is_some()
    })
    .await;
    assert_eq!(
        s.reason,
        Some(Reason::Expired {
            detected_by: DetectedBy::Us
        }),
        "{s:?}"
    );
    let s = wait_status(&mut a.events, "site-b.example", "expired", |s| {
        matches!(s.reason, Some(Reason::Expired { .. }))
    })
    .await;
    assert_eq!(
        s.reason,
        Some(Reason::Expired {
            detected_by: DetectedBy::Partner
        })
    );
    shutdown(a, b).await;
}

#[tokio::test]
async fn name_mismatch_is_reported() {
    let d = tempfile::tempdir().unwrap();
    openssl_pki(d.path());
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let ca = credentials(d.path(), "a", "root.pem", &sa);
    let cb = credentials(d.path(), "b", "root.pem", &sb);
    // A expects its partner to be "site-c.example", but B's certificate names site-b.
    let (mut a, mut b) = pair(
        secure(ca, &sa),
        secure(cb, &sb),
        "site-c.example",
        "site-a.example",
    );
    let s = wait_status(&mut a.events, "site-c.example", "name mismatch", |s| {
        s.reason.is_some() && s.connection == Connection::Down
    })
    .await;
    assert_eq!(
        s.reason,
        Some(Reason::NameMismatch {
            detected_by: DetectedBy::Us
        }),
        "{s:?}"
    );
    let s = wait_status(&mut b.events, "site-a.example", "name mismatch", |s| {
        s.reason.is_some()
    })
    .await;
    assert_eq!(
        s.reason,
        Some(Reason::NameMismatch {
            detected_by: DetectedBy::Partner
        }),
        "{s:?}"
    );
    shutdown(a, b).await;
}

#[tokio::test]
async fn mode_matrix_and_local_blocks() {
    let d = tempfile::tempdir().unwrap();
    openssl_pki(d.path());
    let (sa, sb) = (MemorySecretStore::new(), MemorySecretStore::new());
    let ca = credentials(d.path(), "a", "root.pem", &sa);
    let cb = credentials(d.path(), "b", "root.pem", &sb);

    // on / off: peer not secured, nothing compressed or encrypted.
    let (mut a, mut b) = pair(
        secure(ca.clone(), &sa),
        LocalSecurity::Off,
        "site-b.example",
        "site-a.example",
    );
    let s = wait_status(&mut a.events, "site-b.example", "peer not secured", |s| {
        s.reason.is_some()
    })
    .await;
    assert_eq!(
        s.reason,
        Some(Reason::PeerNotSecured {
            peer_says: Some("disabled".into())
        })
    );
    assert_eq!(
        (s.connection, s.secure, s.traffic),
        (
            Connection::ConnectedAvailable,
            false,
            TrafficMode::Untouched
        )
    );
    let s = wait_status(&mut b.events, "site-a.example", "local off", |s| {
        s.partner_secure_peering.is_some()
    })
    .await;
    assert_eq!(
        (s.reason, s.traffic),
        (Some(Reason::LocalOff), TrafficMode::Untouched)
    );
    shutdown(a, b).await;

    // off / off: compress-only relationship, no fault.
    let (mut a, mut b) = pair(
        LocalSecurity::Off,
        LocalSecurity::Off,
        "site-b.example",
        "site-a.example",
    );
    for (side, name) in [(&mut a, "site-b.example"), (&mut b, "site-a.example")] {
        let s = wait_status(&mut side.events, name, "connected", |s| {
            s.connection == Connection::ConnectedAvailable
        })
        .await;
        assert_eq!(
            (s.secure, s.reason, s.traffic),
            (false, None, TrafficMode::CompressedNotEncrypted)
        );
    }
    shutdown(a, b).await;

    // on / on but B's keystore sealed: B says why, A shows it.
    sb.set_sealed(true);
    let sealed = LocalSecurity::enable(cb.clone(), &sb, Some(&licence()), SystemTime::now());
    assert!(
        matches!(sealed, LocalSecurity::Blocked(Reason::KeystoreSealed)),
        "{sealed:?}"
    );
    let (mut a, mut b) = pair(
        secure(ca.clone(), &sa),
        sealed,
        "site-b.example",
        "site-a.example",
    );
    let s = wait_status(&mut a.events, "site-b.example", "peer sealed", |s| {
        s.reason.is_some()
    })
    .await;
    assert_eq!(
        s.reason,
        Some(Reason::PeerNotSecured {
            peer_says: Some("keystore sealed".into())
        })
    );
    let s = wait_status(&mut b.events, "site-a.example", "sealed", |s| {
        s.partner_secure_peering.is_some()
    })
    .await;
    assert_eq!(
        (s.reason, s.traffic),
        (Some(Reason::KeystoreSealed), TrafficMode::Untouched)
    );
    shutdown(a, b).await;
    sb.set_sealed(false);

    // No licence: secure peering cannot be enabled, and the reason says so.
    let unlicensed = LocalSecurity::enable(cb, &sb, None, SystemTime::now());
    let LocalSecurity::Blocked(Reason::NoLicence(why)) = &unlicensed else {
        panic!("{unlicensed:?}")
    };
    assert!(why.contains("no licence"), "{why}");
    let (mut a, b) = pair(
        secure(ca, &sa),
        unlicensed,
        "site-b.example",
        "site-a.example",
    );
    let s = wait_status(&mut a.events, "site-b.example", "peer unlicensed", |s| {
        s.reason.is_some()
    })
    .await;
    assert_eq!(
        s.reason,
        Some(Reason::PeerNotSecured {
            peer_says: Some("no licence".into())
        })
    );
    shutdown(a, b).await;
}
