//! Partners, policy, stats and data store through the API of an in-process
//! server, with the runtime state the peering would report injected: the
//! watch streams every change, and monitoring shows `secure`, the
//! connection status and the reason (DESIGN.md section 2, rule 12).

use std::sync::Arc;
use std::time::Duration;

use shunt_control::appliance::{Appliance, ApplianceOptions};
use shunt_control::auth::AuthSettings;
use shunt_control::client::Client;
use shunt_control::keystore::{KdfParams, Password};
use shunt_control::licensing::NoVerifyingKey;
use shunt_control::partner::Counters;
use shunt_proto::management as m;
use tokio_stream::StreamExt as _;
use tonic::Code;

struct Server {
    appliance: Arc<Appliance>,
    client: Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let options = ApplianceOptions {
        state_dir: dir.path().join("state"),
        auth: AuthSettings::default(),
        kdf: KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        },
    };
    let appliance = Arc::new(Appliance::open(&options, Box::new(NoVerifyingKey)).unwrap());
    appliance
        .auth
        .bootstrap(&Password::new("bootstrap-admin-pw"))
        .unwrap();
    let identity = shunt_control::tls::load_or_create_identity(&options.state_dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = appliance.clone();
    tokio::spawn(async move {
        shunt_control::server::serve(served, &identity, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let fingerprint = shunt_control::tls::load_or_create_identity(&options.state_dir)
        .unwrap()
        .fingerprint;
    let mut client = Client::connect(&address, &fingerprint).await.unwrap();
    client.login("admin", "bootstrap-admin-pw").await.unwrap();
    Server {
        appliance,
        client,
        _stop: stop,
        _dir: dir,
    }
}

#[tokio::test]
async fn partner_watch_follows_every_change() {
    let s = server().await;
    let mut watch = s
        .client
        .partners()
        .watch_partners(m::WatchPartnersRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.partners.is_empty());

    s.client
        .partners()
        .add_partner(m::AddPartnerRequest {
            name: "site-b".into(),
            address: "192.0.2.2:4500".into(),
            prefixes: vec!["10.2.0.0/16".into()],
        })
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b = &next.partners[0];
    assert_eq!(
        (b.name.as_str(), b.secure, b.connection_status.as_str()),
        ("site-b", false, "Disconnected")
    );
    assert!(b.reason.contains("not reached"), "{}", b.reason);

    // What the signaling reports once both sides authenticated (peering
    // enabled locally is a precondition, which needs a licence; here the
    // partner runs with secure peering off on both sides).
    s.appliance.update_partner_runtime("site-b", |r| {
        r.connected = true;
        r.partner_secure_peering = Some(false);
        r.counters = Counters {
            bytes_before_compression: 1000,
            bytes_after_compression: 400,
            packets: 10,
            errors: 0,
        };
    });
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b = &next.partners[0];
    assert_eq!(b.connection_status, "Connected Available");
    assert_eq!(b.traffic, "compressed, not encrypted");
    assert!(
        !b.secure && b.reason.contains("off on both"),
        "{}",
        b.reason
    );
    assert_eq!(b.counters.unwrap().bytes_after_compression, 400);

    let stats = s
        .client
        .stats()
        .get_stats(m::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.total.unwrap().bytes_before_compression, 1000);
    assert_eq!(stats.per_partner["site-b"].packets, 10);

    s.client
        .partners()
        .remove_partner(m::RemovePartnerRequest {
            name: "site-b".into(),
        })
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(next.partners.is_empty());
}

#[tokio::test]
async fn stats_watch_streams_snapshots() {
    let s = server().await;
    let mut watch = s
        .client
        .stats()
        .watch_stats(m::WatchStatsRequest { interval_ms: 100 })
        .await
        .unwrap()
        .into_inner();
    let a = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(b.taken_at_unix_ms > a.taken_at_unix_ms);
    assert!(
        a.management_calls >= 2,
        "login and the watch itself are counted"
    );
}

#[tokio::test]
async fn partners_and_rules_are_validated_and_persisted() {
    let s = server().await;
    let mut p = s.client.partners();
    let e = p
        .add_partner(m::AddPartnerRequest {
            name: "x".into(),
            address: "192.0.2.2".into(),
            prefixes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("host:port"), "{}", e.message());
    p.add_partner(m::AddPartnerRequest {
        name: "x".into(),
        address: "192.0.2.2:4500".into(),
        prefixes: vec![],
    })
    .await
    .unwrap();
    let e = p
        .add_partner(m::AddPartnerRequest {
            name: "x".into(),
            address: "192.0.2.3:4500".into(),
            prefixes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = p
        .remove_partner(m::RemovePartnerRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let mut pol = s.client.policy();
    let rule = |name: &str, priority, dst: &str| m::Rule {
        name: name.into(),
        priority,
        source_prefix: "10.1.0.0/16".into(),
        destination_prefix: dst.into(),
        protocol: "tcp".into(),
        port_low: 0,
        port_high: 65535,
        action: m::RuleAction::Accelerate as i32,
    };
    pol.add_rule(m::AddRuleRequest {
        rule: Some(rule("web", 20, "10.2.0.0/16")),
    })
    .await
    .unwrap();
    pol.add_rule(m::AddRuleRequest {
        rule: Some(rule("all", 10, "10.3.0.0/16")),
    })
    .await
    .unwrap();
    let e = pol
        .add_rule(m::AddRuleRequest {
            rule: Some(rule("bad", 1, "10.2.0.0")),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let rules = pol
        .list_rules(m::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .rules;
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["all", "web"], "ordered by priority");

    // History encryption needs the keystore.
    let e = s
        .client
        .data_store()
        .set_data_store(m::SetDataStoreRequest {
            encryption: Some(true),
            size_bytes: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let ds = s
        .client
        .data_store()
        .set_data_store(m::SetDataStoreRequest {
            encryption: None,
            size_bytes: Some(1 << 30),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ds.size_bytes, ds.encryption), (1 << 30, false));
}
