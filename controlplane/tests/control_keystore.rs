//! Keystore lifecycle through the API of a real daemon, across restarts
//! (DESIGN.md section 2: rule 7 sealed after restart, rule 8 reset destroys,
//! rule 10 licence required), and crash safety of keystore writes.

#[path = "control_common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Daemon, Flags};
use shunt_proto::management as m;
use tonic::Code;

const KS_PW: &str = "keystore-pw-1";
const KS_PW2: &str = "keystore-pw-2";

fn state(code: i32) -> m::KeystoreState {
    m::KeystoreState::try_from(code).unwrap()
}

#[tokio::test]
async fn keystore_lifecycle_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let daemon = Daemon::start(&state_dir, &Flags::default());
    let admin = daemon.admin().await;
    let mut ks = admin.keystore();
    assert_eq!(
        state(
            ks.status(m::KeystoreStatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .state
        ),
        m::KeystoreState::Uninitialized
    );

    // Initialize, turn on history encryption (its key goes into the keystore),
    // add a partner.
    let s = ks
        .initialize(m::InitializeKeystoreRequest {
            password: KS_PW.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(s.state), m::KeystoreState::Open);
    let e = ks
        .initialize(m::InitializeKeystoreRequest {
            password: KS_PW.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    admin
        .data_store()
        .set_data_store(m::SetDataStoreRequest {
            encryption: Some(true),
            size_bytes: None,
        })
        .await
        .unwrap();
    let s = ks
        .status(m::KeystoreStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.secret_names, ["history-key"]);
    admin
        .partners()
        .add_partner(m::AddPartnerRequest {
            name: "site-b".into(),
            address: "192.0.2.2:4500".into(),
            prefixes: vec!["10.2.0.0/16".into()],
        })
        .await
        .unwrap();
    // Some "history" on disk, encrypted under the history key.
    std::fs::write(state_dir.join("history/site-b.blk"), vec![0x5a; 4096]).unwrap();

    // Restart: the keystore is sealed, secure peering and compression off.
    drop(admin);
    daemon.stop();
    let daemon = Daemon::start(&state_dir, &Flags::default());
    let admin = daemon.admin().await;
    let mut ks = admin.keystore();
    let s = ks
        .status(m::KeystoreStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(s.state), m::KeystoreState::Sealed);
    assert!(
        s.effect.contains("secure peering and compression are off"),
        "{}",
        s.effect
    );
    assert!(
        s.secret_names.is_empty(),
        "names are not shown while sealed"
    );
    let partners = admin
        .partners()
        .list_partners(m::ListPartnersRequest {})
        .await
        .unwrap()
        .into_inner();
    let b = &partners.partners[0];
    assert!(!b.secure);
    assert!(b.reason.contains("keystore sealed"), "{}", b.reason);
    assert_eq!(b.traffic, "not compressed, not encrypted");
    let ds = admin
        .data_store()
        .get_data_store(m::GetDataStoreRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(ds.state.contains("keystore sealed"), "{}", ds.state);

    // Wrong password refused, right one opens with everything kept.
    let e = ks
        .open(m::OpenKeystoreRequest {
            password: "wrong-password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let s = ks
        .open(m::OpenKeystoreRequest {
            password: KS_PW.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(s.state), m::KeystoreState::Open);
    assert_eq!(s.secret_names, ["history-key"]);
    let partners = admin
        .partners()
        .list_partners(m::ListPartnersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!partners.partners[0].reason.contains("keystore sealed"));

    // Change password: nothing lost; after restart only the new one opens.
    ks.change_password(m::ChangeKeystorePasswordRequest {
        current_password: KS_PW.into(),
        new_password: KS_PW2.into(),
    })
    .await
    .unwrap();
    drop((ks, admin));
    daemon.stop();
    let daemon = Daemon::start(&state_dir, &Flags::default());
    let admin = daemon.admin().await;
    let mut ks = admin.keystore();
    let e = ks
        .open(m::OpenKeystoreRequest {
            password: KS_PW.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let s = ks
        .open(m::OpenKeystoreRequest {
            password: KS_PW2.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.secret_names, ["history-key"]);
    let key_file_before = std::fs::read_to_string(state_dir.join("keystore")).unwrap();

    // Reset needs the explicit confirmation, then destroys keys and history.
    let e = ks
        .reset(m::ResetKeystoreRequest {
            confirm: "yes".into(),
            new_password: "after-reset-pw".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains(shunt_proto::RESET_CONFIRMATION),
        "{}",
        e.message()
    );
    let reply = ks
        .reset(m::ResetKeystoreRequest {
            confirm: shunt_proto::RESET_CONFIRMATION.into(),
            new_password: "after-reset-pw".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.destroyed_secrets, ["history-key"]);
    assert_eq!(reply.destroyed_history_bytes, 4096);
    assert!(!state_dir.join("history/site-b.blk").exists());
    let key_file_after = std::fs::read_to_string(state_dir.join("keystore")).unwrap();
    assert_ne!(key_file_before, key_file_after);
    // A fresh history key (different from the destroyed one) is made because
    // history encryption is still on.
    assert_eq!(reply.status.unwrap().secret_names, ["history-key"]);

    drop((ks, admin));
    daemon.stop();
    let daemon = Daemon::start(&state_dir, &Flags::default());
    let admin = daemon.admin().await;
    let e = admin
        .keystore()
        .open(m::OpenKeystoreRequest {
            password: KS_PW2.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "the old password is gone with the old keys"
    );
    admin
        .keystore()
        .open(m::OpenKeystoreRequest {
            password: "after-reset-pw".into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn failed_keystore_opens_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("state"), &Flags::default());
    let admin = daemon.admin().await;
    let mut ks = admin.keystore();
    ks.initialize(m::InitializeKeystoreRequest {
        password: KS_PW.into(),
    })
    .await
    .unwrap();
    ks.seal(m::SealKeystoreRequest {}).await.unwrap();
    for _ in 0..shunt_control::keystore::MAX_FAILED_OPENS {
        let e = ks
            .open(m::OpenKeystoreRequest {
                password: "wrong-password".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
    }
    let e = ks
        .open(m::OpenKeystoreRequest {
            password: KS_PW.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
}

/// Rule 10: without a valid licence secure peering cannot be enabled, and
/// the error says why.
#[tokio::test]
async fn secure_peering_needs_a_licence() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("state"), &Flags::default());
    let admin = daemon.admin().await;
    let e = admin
        .peering()
        .set_enabled(m::SetPeeringEnabledRequest { enabled: true })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("licence"), "{}", e.message());
    let p = admin
        .peering()
        .get_peering(m::GetPeeringRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!p.enabled);
    let lic = admin
        .licensing()
        .get_licence(m::GetLicenceRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!lic.valid && lic.detail.contains("no licence"), "{lic:?}");
    let e = admin
        .licensing()
        .install_licence(m::InstallLicenceRequest {
            licence: b"forged".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Disabling is always allowed.
    admin
        .peering()
        .set_enabled(m::SetPeeringEnabledRequest { enabled: false })
        .await
        .unwrap();
}

/// Kills a process that rewrites the keystore in a loop at random moments;
/// afterwards the keystore always opens with the old or the new password
/// and keeps its secrets.
#[test]
fn keystore_survives_kill_at_any_point_of_a_write() {
    use rand::Rng as _;
    use shunt_control::keystore::{KdfParams, Keystore, Password, SecretBytes};

    let kdf = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore");
    let mut ks = Keystore::load(&path, kdf).unwrap();
    ks.initialize(&Password::new("password-a")).unwrap();
    ks.put_secret("ca-key", &SecretBytes::new(b"the private CA key".to_vec()))
        .unwrap();

    let mut rng = rand::rng();
    let mut rounds_seen = std::collections::BTreeSet::new();
    for kill in 0..25 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keystore-churn"))
            .arg(&path)
            .args(["password-a", "password-b", "64"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Let it complete 1-3 rounds, then kill at a random point of the next.
        let mut progress =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        for _ in 0..rng.random_range(1..=3) {
            let line = progress.next().expect("churn reports progress").unwrap();
            assert!(
                line.starts_with("changed "),
                "kill {kill}: unexpected churn output {line:?}"
            );
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..20_000)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none(),
            "kill {kill}: churn ended by itself: {status}"
        );

        let mut ks = Keystore::load(&path, kdf)
            .unwrap_or_else(|e| panic!("kill {kill}: keystore unreadable: {e}"));
        if ks.open(&Password::new("password-a")).is_err() {
            ks = Keystore::load(&path, kdf).unwrap();
            ks.open(&Password::new("password-b"))
                .unwrap_or_else(|e| panic!("kill {kill}: opens with neither password: {e}"));
        }
        assert_eq!(ks.secret("ca-key").unwrap().expose(), b"the private CA key");
        if let Ok(round) = ks.secret("round") {
            rounds_seen.insert(u64::from_le_bytes(round.expose().try_into().unwrap()));
        }
    }
    assert!(
        !rounds_seen.is_empty(),
        "the churn process never completed a write; the test proved nothing"
    );
}
