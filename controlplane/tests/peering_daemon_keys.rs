//! The session-keys hook of the daemon's peering: two in-process appliances
//! (management API served, peering supervisor running with a keys channel)
//! enrolled through the private CA reach a secure relationship, and the
//! consumer of each keys channel receives matching per-direction keys for
//! every epoch, fresh at each rekey. This is what the data-plane agent
//! consumes (docs/peering.md, "Daemon").

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shunt_control::appliance::{Appliance, ApplianceOptions};
use shunt_control::auth::AuthSettings;
use shunt_control::client::Client;
use shunt_control::keystore::{KdfParams, Password};
use shunt_control::licence::{LicenceSigner, LicenceTerms, LicenceVerifier, SECURE_PEERING};
use shunt_control::peering::{BackoffPolicy, PeeringConfig, SessionKeys};
use shunt_control::peering_daemon::{KeysReceiver, keys_channel, spawn};
use shunt_proto::management as m;

const ADMIN: &str = "bootstrap-admin-pw";

struct Site {
    client: Client,
    address: String,
    fingerprint: String,
    tunnel: String,
    keys: KeysReceiver,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn site(name: &str, signer: &LicenceSigner, licence: &[u8]) -> Site {
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
    let verifier = LicenceVerifier::new(&signer.public_key()).unwrap();
    let appliance = Arc::new(
        Appliance::open(&options, Box::new(verifier))
            .unwrap()
            .named(name),
    );
    appliance.auth.bootstrap(&Password::new(ADMIN)).unwrap();
    let identity = shunt_control::tls::load_or_create_identity(&options.state_dir).unwrap();
    let fingerprint = identity.fingerprint.clone();
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

    let mut config = PeeringConfig::new(name, "127.0.0.1:0".parse().unwrap());
    config.keepalive = Duration::from_millis(200);
    config.idle_timeout = Duration::from_secs(2);
    config.rekey_interval = Duration::from_millis(700);
    config.backoff = BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(300),
    };
    let (tx, keys) = keys_channel();
    let (tunnel, _task) = spawn(appliance.clone(), config, Some(tx)).await.unwrap();

    let mut client = Client::connect(&address, &fingerprint).await.unwrap();
    client.login("admin", ADMIN).await.unwrap();
    client
        .keystore()
        .initialize(m::InitializeKeystoreRequest {
            password: "keystore-pw-1".into(),
        })
        .await
        .unwrap();
    client
        .licensing()
        .install_licence(m::InstallLicenceRequest {
            licence: licence.to_vec(),
        })
        .await
        .unwrap();
    Site {
        client,
        address,
        fingerprint,
        tunnel: tunnel.to_string(),
        keys,
        _stop: stop,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_reach_the_hook_for_every_epoch() {
    let (signer, _) = LicenceSigner::generate().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let licence = signer
        .sign(&LicenceTerms {
            licence_id: "K-1".into(),
            customer: "test".into(),
            features: vec![SECURE_PEERING.into()],
            not_before: now - 60,
            not_after: now + 3600,
        })
        .unwrap();
    let mut a = site("site-a", &signer, &licence).await;
    let mut b = site("site-b", &signer, &licence).await;

    a.client
        .peering()
        .create_private_ca(m::CreatePrivateCaRequest {
            common_name: String::new(),
            validity_days: 0,
        })
        .await
        .unwrap();
    a.client
        .peering()
        .connect_appliance(m::ConnectApplianceRequest {
            name: "site-b".into(),
            address: b.address.clone(),
            fingerprint: b.fingerprint.clone(),
            account: "admin".into(),
            password: ADMIN.into(),
            validity_days: 1,
        })
        .await
        .unwrap();
    for (me, other, tunnel) in [(&a, "site-b", &b.tunnel), (&b, "site-a", &a.tunnel)] {
        me.client
            .partners()
            .add_partner(m::AddPartnerRequest {
                name: other.into(),
                address: tunnel.clone(),
                prefixes: vec![],
            })
            .await
            .unwrap();
        me.client
            .peering()
            .set_enabled(m::SetPeeringEnabledRequest { enabled: true })
            .await
            .unwrap();
    }

    // Settings changes restart the endpoint, so early sessions may have
    // produced keys too: wait for the secure relationship, then collect what
    // both hooks receive over a few rekey intervals and pair the keys of the
    // same session (indices) and epoch.
    for (me, other) in [(&a, "site-b"), (&b, "site-a")] {
        let start = std::time::Instant::now();
        loop {
            let list = me
                .client
                .partners()
                .list_partners(m::ListPartnersRequest {})
                .await
                .unwrap()
                .into_inner();
            let p = list.partners.iter().find(|p| p.name == other).unwrap();
            if p.secure && p.connection_status == "Connected Available" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{p:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        tokio::select! {
            Some(k) = a.keys.recv() => from_a.push(k),
            Some(k) = b.keys.recv() => from_b.push(k),
            () = tokio::time::sleep_until(until) => {}
        }
    }
    let pairs: Vec<(&SessionKeys, &SessionKeys)> = from_a
        .iter()
        .filter_map(|ka| {
            from_b
                .iter()
                .find(|kb| {
                    kb.epoch == ka.epoch
                        && kb.local_index == ka.remote_index
                        && kb.remote_index == ka.local_index
                })
                .map(|kb| (ka, kb))
        })
        .collect();
    assert!(
        pairs.len() >= 2,
        "expected keys of at least two epochs of one session on both hooks: {} from A, {} from B",
        from_a.len(),
        from_b.len()
    );
    for (ka, kb) in &pairs {
        assert_eq!(ka.partner, "site-b");
        assert_eq!(kb.partner, "site-a");
        assert_eq!(ka.tx_key, kb.rx_key);
        assert_eq!(ka.rx_key, kb.tx_key);
        assert_ne!(ka.tx_key, ka.rx_key);
    }
    let mut rekeys = 0;
    for w in pairs.windows(2) {
        let ((a1, _), (a2, _)) = (w[0], w[1]);
        if a1.local_index == a2.local_index {
            rekeys += 1;
            assert!(a2.epoch > a1.epoch);
            assert_ne!(a1.tx_key, a2.tx_key, "a new epoch has new keys");
            assert_ne!(a1.rx_key, a2.rx_key);
        }
    }
    assert!(rekeys >= 1, "no rekey of one session was seen");
}
