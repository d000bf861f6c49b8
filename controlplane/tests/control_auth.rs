//! Management API access control against a real daemon on loopback: every
//! method but login and health is refused without a valid token; tokens
//! expire; failed logins are rate-limited per source; roles separate
//! keystore administration (DESIGN.md section 2, rule 6).

#[path = "control_common/mod.rs"]
mod common;

use std::time::Duration;

use common::{ADMIN_PASSWORD, Daemon, Flags};
use shunt_proto::management as m;
use tonic::Code;

/// Calls every method of every service and collects (method, code).
async fn call_everything(client: &shunt_control::client::Client) -> Vec<(&'static str, Code)> {
    macro_rules! probe {
        ($out:ident, $svc:expr, $method:ident, $req:expr) => {{
            let code = match $svc.$method($req).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            };
            $out.push((stringify!($method), code));
        }};
    }
    let mut out = Vec::new();
    let mut sys = client.system();
    probe!(
        out,
        sys,
        change_admin_password,
        m::ChangeAdminPasswordRequest::default()
    );
    probe!(out, sys, status, m::StatusRequest {});
    probe!(out, sys, create_account, m::CreateAccountRequest::default());
    probe!(out, sys, remove_account, m::RemoveAccountRequest::default());
    probe!(out, sys, list_accounts, m::ListAccountsRequest {});
    let mut ks = client.keystore();
    probe!(out, ks, initialize, m::InitializeKeystoreRequest::default());
    probe!(out, ks, open, m::OpenKeystoreRequest::default());
    probe!(out, ks, seal, m::SealKeystoreRequest {});
    probe!(
        out,
        ks,
        change_password,
        m::ChangeKeystorePasswordRequest::default()
    );
    probe!(out, ks, reset, m::ResetKeystoreRequest::default());
    probe!(out, ks, status, m::KeystoreStatusRequest {});
    let mut p = client.partners();
    probe!(out, p, add_partner, m::AddPartnerRequest::default());
    probe!(out, p, remove_partner, m::RemovePartnerRequest::default());
    probe!(out, p, list_partners, m::ListPartnersRequest {});
    probe!(out, p, watch_partners, m::WatchPartnersRequest {});
    let mut pol = client.policy();
    probe!(out, pol, add_rule, m::AddRuleRequest::default());
    probe!(out, pol, remove_rule, m::RemoveRuleRequest::default());
    probe!(out, pol, list_rules, m::ListRulesRequest {});
    let mut st = client.stats();
    probe!(out, st, get_stats, m::GetStatsRequest {});
    probe!(out, st, watch_stats, m::WatchStatsRequest::default());
    let mut ds = client.data_store();
    probe!(out, ds, get_data_store, m::GetDataStoreRequest {});
    probe!(out, ds, set_data_store, m::SetDataStoreRequest::default());
    let mut lic = client.licensing();
    probe!(
        out,
        lic,
        install_licence,
        m::InstallLicenceRequest::default()
    );
    probe!(
        out,
        lic,
        set_licence_server,
        m::SetLicenceServerRequest::default()
    );
    probe!(out, lic, get_licence, m::GetLicenceRequest {});
    let mut sp = client.peering();
    probe!(out, sp, set_enabled, m::SetPeeringEnabledRequest::default());
    probe!(out, sp, get_peering, m::GetPeeringRequest {});
    probe!(
        out,
        sp,
        set_credential_mode,
        m::SetCredentialModeRequest::default()
    );
    probe!(
        out,
        sp,
        import_credentials,
        m::ImportCredentialsRequest::default()
    );
    probe!(
        out,
        sp,
        import_ca_certificates,
        m::ImportCaCertificatesRequest::default()
    );
    probe!(
        out,
        sp,
        set_verification,
        m::SetVerificationRequest::default()
    );
    probe!(out, sp, set_cipher_spec, m::SetCipherSpecRequest::default());
    probe!(
        out,
        sp,
        create_private_ca,
        m::CreatePrivateCaRequest::default()
    );
    probe!(
        out,
        sp,
        connect_appliance,
        m::ConnectApplianceRequest::default()
    );
    probe!(
        out,
        sp,
        list_connected_peers,
        m::ListConnectedPeersRequest {}
    );
    probe!(
        out,
        sp,
        remove_connected_peer,
        m::RemoveConnectedPeerRequest::default()
    );
    probe!(out, sp, request_csr, m::RequestCsrRequest::default());
    probe!(
        out,
        sp,
        install_issued_certificate,
        m::InstallIssuedCertificateRequest::default()
    );
    // Last: it revokes the token.
    probe!(out, sys, logout, m::LogoutRequest {});
    out
}

/// 39 methods: every method of the API except System.Login and System.Health.
const GUARDED_METHODS: usize = 39;

#[tokio::test]
async fn every_method_is_refused_without_a_valid_token() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("state"), &Flags::default());

    let anonymous = daemon.client().await;
    let health = anonymous
        .system()
        .health(m::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(health.serving);
    let results = call_everything(&anonymous).await;
    assert_eq!(results.len(), GUARDED_METHODS);
    for (method, code) in &results {
        assert_eq!(*code, Code::Unauthenticated, "{method} without a token");
    }

    let forged = daemon.client().await.with_token(&"ab".repeat(32)).unwrap();
    for (method, code) in call_everything(&forged).await {
        assert_eq!(code, Code::Unauthenticated, "{method} with a forged token");
    }

    // With a valid token no call is refused for lack of one.
    let admin = daemon.admin().await;
    for (method, code) in call_everything(&admin).await {
        assert_ne!(code, Code::Unauthenticated, "{method} with a valid token");
    }
}

#[tokio::test]
async fn tokens_expire() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("state"),
        &Flags(vec!["--token-ttl-secs".into(), "1".into()]),
    );
    let admin = daemon.admin().await;
    admin
        .system()
        .status(m::StatusRequest {})
        .await
        .expect("fresh token works");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = admin
        .system()
        .status(m::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("log in again"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn failed_logins_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("state"),
        &Flags(vec!["--max-failed-logins".into(), "3".into()]),
    );
    let mut client = daemon.client().await;
    for _ in 0..3 {
        let e = client.login("admin", "not-the-password").await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let e = client.login("admin", ADMIN_PASSWORD).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("try again"), "{}", e.message());
}

#[tokio::test]
async fn keystore_administration_is_a_separate_role() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("state"), &Flags::default());
    let admin = daemon.admin().await;
    for (name, role) in [
        ("operator", m::Role::Admin),
        ("custodian", m::Role::KeystoreAdmin),
    ] {
        admin
            .system()
            .create_account(m::CreateAccountRequest {
                name: name.into(),
                password: "long-enough-pw".into(),
                roles: vec![role as i32],
            })
            .await
            .unwrap();
    }
    let mut operator = daemon.client().await;
    operator.login("operator", "long-enough-pw").await.unwrap();
    let e = operator
        .keystore()
        .initialize(m::InitializeKeystoreRequest {
            password: "keystore-pw".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("keystore-admin"), "{}", e.message());

    let mut custodian = daemon.client().await;
    custodian
        .login("custodian", "long-enough-pw")
        .await
        .unwrap();
    custodian
        .keystore()
        .initialize(m::InitializeKeystoreRequest {
            password: "keystore-pw".into(),
        })
        .await
        .expect("keystore-admin initializes");
    let e = custodian
        .partners()
        .add_partner(m::AddPartnerRequest {
            name: "b".into(),
            address: "192.0.2.2:4500".into(),
            prefixes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[test]
fn first_start_without_bootstrap_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shunt-control"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--bootstrap-admin-password-file")
            && stderr.contains("no default password"),
        "{stderr}"
    );
}
