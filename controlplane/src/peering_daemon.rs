//! Secure peering inside `shunt-control`: one [`PeeringEndpoint`] on the
//! tunnel's UDP port, kept in step with the appliance's settings (peering
//! enabled, credentials, verification, cipher specification, licence,
//! keystore open or sealed, configured partners), and every partner status it
//! reports fed into [`Appliance::update_partner_runtime`], where
//! ListPartners/WatchPartners read it.
//!
//! The endpoint takes its settings when it starts, so a change of any of them
//! restarts it (signaling reconnects within the backoff; keys of the new
//! sessions follow).
//!
//! ## Session keys hook
//!
//! Every `PeeringEvent::Keys` (one per partner and key epoch) is sent to the
//! [`KeysSender`] handed to [`spawn`]; the daemon's `main` gives the receiving
//! half to whatever installs keys in the data plane (the agent client). With
//! no consumer the keys are dropped and a debug line says so. The keys are
//! never logged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::appliance::{Appliance, PEERING_KEY, PeeringSettings};
use crate::credentials::{
    CertificateInfo, CipherSpec, CredentialError, PeeringCredentials, StoredIdentity, Verification,
    certificates_from_pem,
};
use crate::keystore::KeystoreState;
use crate::partner::PartnerConfig as ConfiguredPartner;
use crate::peering::{
    Connection, LocalSecurity, PartnerConfig, PartnerStatus, PeeringConfig, PeeringEndpoint,
    PeeringError, PeeringEvent, Reason, Role, SessionKeys,
};
use crate::store::PARTNERS;

/// Where session keys go: the receiving half belongs to the data-plane agent.
pub type KeysSender = mpsc::UnboundedSender<SessionKeys>;
/// The receiving half of [`KeysSender`].
pub type KeysReceiver = mpsc::UnboundedReceiver<SessionKeys>;

/// A channel for session keys: give the sender to [`spawn`], the receiver to
/// the data-plane agent.
pub fn keys_channel() -> (KeysSender, KeysReceiver) {
    mpsc::unbounded_channel()
}

/// Everything the endpoint depends on; a change restarts it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    enabled: bool,
    keystore: KeystoreState,
    licence: Result<(), String>,
    identity_chain_pem: String,
    trust_pem: BTreeMap<String, String>,
    verification: i32,
    cipher_spec: String,
    partners: Vec<(String, String)>,
}

impl Inputs {
    fn read(appliance: &Appliance) -> anyhow::Result<(Self, PeeringSettings)> {
        let s = appliance.peering_settings()?;
        let partners: Vec<(String, ConfiguredPartner)> = appliance.store.list(PARTNERS)?;
        let inputs = Self {
            enabled: s.enabled,
            keystore: appliance.keystore_state(),
            licence: appliance
                .licence()
                .check(SystemTime::now())
                .map_err(|e| e.to_string()),
            identity_chain_pem: s.identity_chain_pem.clone(),
            trust_pem: s.trust_pem.clone(),
            verification: s.verification,
            cipher_spec: s.cipher_spec.clone(),
            partners: partners
                .into_iter()
                .map(|(name, p)| (name, p.address))
                .collect(),
        };
        Ok((inputs, s))
    }
}

/// The peering credentials the settings describe (the key stays in the keystore).
pub fn credentials_from_settings(
    s: &PeeringSettings,
) -> Result<PeeringCredentials, CredentialError> {
    let chain = certificates_from_pem(s.identity_chain_pem.as_bytes())?;
    let info = CertificateInfo::from_der(&chain[0])?;
    let mut trust = Vec::new();
    for pem in s.trust_pem.values() {
        trust.extend(certificates_from_pem(pem.as_bytes())?);
    }
    let ciphers = if s.cipher_spec.trim().is_empty() {
        CipherSpec::default()
    } else {
        CipherSpec::from_str(&s.cipher_spec)?
    };
    Ok(PeeringCredentials {
        identity: StoredIdentity {
            chain,
            key_name: PEERING_KEY.into(),
            info,
        },
        trust,
        verification: if s.verification == 2 {
            Verification::ChainOnly
        } else {
            Verification::Full
        },
        ciphers,
    })
}

/// This appliance's side of secure peering, from its settings, licence and keystore.
pub fn local_security(appliance: &Appliance, settings: &PeeringSettings) -> LocalSecurity {
    if !settings.enabled {
        return LocalSecurity::Off;
    }
    let licence = appliance.licence();
    if let Err(e) = licence.check(SystemTime::now()) {
        return LocalSecurity::Blocked(Reason::NoLicence(e.to_string()));
    }
    if !settings.credentials_installed {
        return LocalSecurity::Blocked(Reason::Credentials(
            "no credentials installed: import a certificate and key, or create a private CA".into(),
        ));
    }
    match appliance.keystore_state() {
        KeystoreState::Sealed => return LocalSecurity::Blocked(Reason::KeystoreSealed),
        KeystoreState::Uninitialized => {
            return LocalSecurity::Blocked(Reason::Credentials(
                "the keystore is not initialized".into(),
            ));
        }
        KeystoreState::Open => {}
    }
    match credentials_from_settings(settings) {
        Ok(creds) => LocalSecurity::enable(
            creds,
            appliance.secrets(),
            licence.licence.as_ref(),
            SystemTime::now(),
        ),
        Err(e) => LocalSecurity::Blocked(Reason::Credentials(e.to_string())),
    }
}

/// Starts the supervisor: binds `config.listen` now (so a busy port fails the
/// start) and then keeps the endpoint in step with the settings. Returns the
/// bound tunnel address and the task.
pub async fn spawn(
    appliance: Arc<Appliance>,
    config: PeeringConfig,
    keys: Option<KeysSender>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let (inputs, settings) = Inputs::read(&appliance)?;
    let mut config = config;
    let (endpoint, events) = start(&appliance, &config, &inputs, &settings).await?;
    let bound = endpoint.local_addr();
    // Restarts reuse the port actually bound (the flag may say port 0).
    config.listen = bound;
    let task = tokio::spawn(supervise(appliance, config, keys, inputs, endpoint, events));
    Ok((bound, task))
}

async fn start(
    appliance: &Appliance,
    config: &PeeringConfig,
    inputs: &Inputs,
    settings: &PeeringSettings,
) -> anyhow::Result<(PeeringEndpoint, mpsc::UnboundedReceiver<PeeringEvent>)> {
    let security = local_security(appliance, settings);
    let mut partners = Vec::new();
    for (name, address) in &inputs.partners {
        match resolve(address).await {
            Some(addr) => partners.push(PartnerConfig {
                name: name.clone(),
                address: addr,
                role: Role::Auto,
            }),
            None => appliance.update_partner_runtime(name, |r| {
                r.connected = false;
                r.authenticated = false;
                r.failure = Some(format!(
                    "partner address {address:?} does not resolve; fix it with the Partners API"
                ));
            }),
        }
    }
    tracing::info!(listen = %config.listen, security = security_name(&security),
                   partners = partners.len(), "starting the peering endpoint");
    // Partners restart from scratch with the endpoint.
    for p in &partners {
        appliance.update_partner_runtime(&p.name, |r| {
            r.connected = false;
            r.authenticated = false;
            r.failure = None;
        });
    }
    // A restart may find the old endpoint's socket not yet released: retry
    // the bind briefly.
    let mut attempts = 0;
    loop {
        match PeeringEndpoint::start(config.clone(), security.clone(), partners.clone()) {
            Err(PeeringError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && attempts < BIND_RETRIES =>
            {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Ok(other?),
        }
    }
}

fn security_name(s: &LocalSecurity) -> &'static str {
    match s {
        LocalSecurity::Off => "off",
        LocalSecurity::Blocked(_) => "blocked",
        LocalSecurity::On(_) => "on",
    }
}

async fn resolve(address: &str) -> Option<SocketAddr> {
    tokio::net::lookup_host(address).await.ok()?.next()
}

/// Bind attempts (50 ms apart) when restarting on a port still in use.
const BIND_RETRIES: u32 = 60;

/// How often the inputs are re-read even without a change signal (a licence
/// that expires changes nothing else).
const RECHECK: Duration = Duration::from_secs(30);

async fn supervise(
    appliance: Arc<Appliance>,
    config: PeeringConfig,
    keys: Option<KeysSender>,
    mut inputs: Inputs,
    endpoint: PeeringEndpoint,
    events: mpsc::UnboundedReceiver<PeeringEvent>,
) {
    let mut endpoint = Some(endpoint);
    // None while no endpoint runs (a restart failed).
    let mut events = Some(events);
    let mut changes = appliance.subscribe();
    loop {
        tokio::select! {
            event = next_event(&mut events) => match event {
                Some(PeeringEvent::Status(status)) => record(&appliance, &status),
                Some(PeeringEvent::Keys(k)) => deliver(keys.as_ref(), k),
                None => events = None,
            },
            changed = changes.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(next_recheck(&appliance)) => {}
        }
        let (now, settings) = match Inputs::read(&appliance) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the peering settings");
                continue;
            }
        };
        if now == inputs && endpoint.is_some() {
            continue;
        }
        if let Some(old) = endpoint.take() {
            old.shutdown().await;
        }
        // What the old endpoint still had queued is stale.
        events = None;
        for (name, _) in &inputs.partners {
            if !now.partners.iter().any(|(n, _)| n == name) {
                appliance.forget_partner_runtime(name);
            }
        }
        inputs = now;
        match start(&appliance, &config, &inputs, &settings).await {
            Ok((e, rx)) => {
                endpoint = Some(e);
                events = Some(rx);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot restart the peering endpoint; retrying on the next change");
            }
        }
    }
    if let Some(e) = endpoint {
        e.shutdown().await;
    }
}

/// Sleeps until the next periodic re-read, or until just after the licence
/// expires if that comes first (so an expiry takes effect at once).
fn next_recheck(appliance: &Appliance) -> Duration {
    let Some(licence) = appliance.licence().licence else {
        return RECHECK;
    };
    // `check` counts a licence as expired once the clock passes `not_after`
    // (whole seconds).
    let expires = SystemTime::UNIX_EPOCH
        + Duration::from_secs(licence.terms().not_after)
        + Duration::from_millis(1050);
    match expires.duration_since(SystemTime::now()) {
        Ok(d) if d < RECHECK => d,
        _ => RECHECK,
    }
}

async fn next_event(
    events: &mut Option<mpsc::UnboundedReceiver<PeeringEvent>>,
) -> Option<PeeringEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn record(appliance: &Appliance, status: &PartnerStatus) {
    appliance.update_partner_runtime(&status.partner, |r| {
        r.connected = status.connection == Connection::ConnectedAvailable;
        r.partner_secure_peering = status.partner_secure_peering;
        r.authenticated = status.secure;
        r.failure = status.reason.as_ref().map(ToString::to_string);
    });
}

fn deliver(keys: Option<&KeysSender>, k: SessionKeys) {
    let (partner, epoch) = (k.partner.clone(), k.epoch);
    match keys {
        Some(tx) if tx.send(k).is_ok() => {
            tracing::debug!(%partner, epoch, "session keys handed to the data plane");
        }
        _ => tracing::debug!(%partner, epoch, "no data-plane consumer: session keys not installed"),
    }
}
