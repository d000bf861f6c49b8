//! Two endpoints A (initiator) and B (responder) on loopback.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use shunt_control::credentials::{MemorySecretStore, PeeringCredentials};
use shunt_control::licence::{
    Licence, LicenceSigner, LicenceTerms, LicenceVerifier, SECURE_PEERING,
};
use shunt_control::peering::{
    LocalSecurity, PartnerConfig, PeeringConfig, PeeringEndpoint, PeeringEvent, Role,
};
use tokio::sync::mpsc::UnboundedReceiver;

use super::free_udp;

pub struct Side {
    pub endpoint: PeeringEndpoint,
    pub events: UnboundedReceiver<PeeringEvent>,
}

pub fn licence() -> Licence {
    let (signer, _) = LicenceSigner::generate().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let file = signer
        .sign(&LicenceTerms {
            licence_id: "T-1".into(),
            customer: "test".into(),
            features: vec![SECURE_PEERING.into()],
            not_before: now - 60,
            not_after: now + 3600,
        })
        .unwrap();
    LicenceVerifier::new(&signer.public_key())
        .unwrap()
        .verify(&file)
        .unwrap()
}

pub fn secure(creds: PeeringCredentials, store: &MemorySecretStore) -> LocalSecurity {
    let sec = LocalSecurity::enable(creds, store, Some(&licence()), SystemTime::now());
    assert!(matches!(sec, LocalSecurity::On(_)), "{sec:?}");
    sec
}

pub fn config(name: &str, addr: SocketAddr) -> PeeringConfig {
    let mut c = PeeringConfig::new(name, addr);
    c.keepalive = Duration::from_millis(200);
    c.idle_timeout = Duration::from_secs(2);
    c.backoff.initial = Duration::from_millis(100);
    c.backoff.max = Duration::from_millis(400);
    c
}

/// Starts A (initiator, knows B as `b_name`) and B (responder, knows A as `a_name`).
pub fn pair(a: LocalSecurity, b: LocalSecurity, b_name: &str, a_name: &str) -> (Side, Side) {
    pair_with(a, b, b_name, a_name, |_| {})
}

/// Like [`pair`], with a tweak applied to both endpoints' configuration.
pub fn pair_with(
    a: LocalSecurity,
    b: LocalSecurity,
    b_name: &str,
    a_name: &str,
    tweak: impl Fn(&mut PeeringConfig),
) -> (Side, Side) {
    let config = |name: &str, addr| {
        let mut c = config(name, addr);
        tweak(&mut c);
        c
    };
    let (a_addr, b_addr) = (free_udp(), free_udp());
    let (ea, ra) = PeeringEndpoint::start(
        config("site-a", a_addr),
        a,
        vec![PartnerConfig {
            name: b_name.into(),
            address: b_addr,
            role: Role::Initiator,
        }],
    )
    .unwrap();
    let (eb, rb) = PeeringEndpoint::start(
        config("site-b", b_addr),
        b,
        vec![PartnerConfig {
            name: a_name.into(),
            address: a_addr,
            role: Role::Responder,
        }],
    )
    .unwrap();
    (
        Side {
            endpoint: ea,
            events: ra,
        },
        Side {
            endpoint: eb,
            events: rb,
        },
    )
}

pub async fn shutdown(a: Side, b: Side) {
    a.endpoint.shutdown().await;
    b.endpoint.shutdown().await;
}
