//! The client side of the agent API: `shunt-control` drives `shunt-dataplane` over
//! its unix socket.
//!
//! [`DataPlaneLink`] keeps one connection (reconnecting with backoff), installs the
//! configured partners in the mode the mode matrix gives them, installs session keys
//! as secure peering produces them, pushes the rules the XDP classifier can express,
//! and reads the counters back into the partner table once a second.
//!
//! Sessions outlive the control plane: an encrypted session the data plane holds is
//! left alone while its keys are valid, even if this process has just started (its
//! keystore sealed) or the partner's signaling is down. It changes when new keys
//! arrive, when the partner is removed, or after its keys expired.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shunt_proto::agent::{self as pb, agent_client::AgentClient};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use zeroize::Zeroizing;

use crate::appliance::{Appliance, HISTORY_KEY};
use crate::keystore::KeystoreState;
use crate::partner::{self, Counters, PartnerConfig, TrafficMode};
use crate::peering::{Backoff, BackoffPolicy, SessionKeys};
use crate::policy::RuleRecord;
use crate::store;

/// Errors reaching the data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The socket could not be opened.
    #[error(
        "cannot reach the data plane at {path}: {source}; is shunt-dataplane running with --agent-socket, as the same user?"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("data plane refused {call}: {status}")]
    Call {
        /// Which call.
        call: &'static str,
        /// gRPC status.
        status: Box<tonic::Status>,
    },
    /// The configuration database could not be read.
    #[error("configuration: {0}")]
    Store(#[from] store::StoreError),
    /// The data store settings could not be read.
    #[error("data store settings: {0}")]
    Settings(String),
}

/// Opens a gRPC channel over the unix socket at `path`.
pub async fn connect(path: &Path) -> Result<AgentClient<Channel>, AgentError> {
    let socket = path.to_owned();
    // The URI is required by the HTTP/2 layer but unused: the connector dials the socket.
    let channel = tonic::transport::Endpoint::from_static("http://shunt-dataplane.invalid")
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| AgentError::Connect {
            path: path.to_owned(),
            source,
        })?;
    Ok(AgentClient::new(channel))
}

/// How the link runs.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The data plane's agent socket.
    pub socket: PathBuf,
    /// Lifetime of installed session keys: the data plane keeps using them this long
    /// without hearing from us (a control-plane restart).
    pub key_lifetime: Duration,
    /// Counter refresh interval.
    pub counters_every: Duration,
    /// Reconnection backoff.
    pub backoff: BackoffPolicy,
}

impl LinkSettings {
    /// Defaults: keys live 30 minutes (three rekey intervals), counters every second.
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            key_lifetime: Duration::from_secs(1800),
            counters_every: Duration::from_secs(1),
            backoff: BackoffPolicy::default(),
        }
    }
}

/// The task that drives the data plane.
#[derive(Debug)]
pub struct DataPlaneLink;

impl DataPlaneLink {
    /// Starts the link task on the current tokio runtime. `keys` carries the
    /// session keys secure peering produces (`peering_daemon::keys_channel`):
    /// each is installed at once, and again after the data plane reconnects.
    pub fn start(
        appliance: Arc<Appliance>,
        settings: LinkSettings,
        keys: mpsc::UnboundedReceiver<SessionKeys>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(appliance, settings, keys))
    }
}

/// Keys this process holds for a partner, with their expiry.
struct HeldKeys {
    keys: SessionKeys,
    expires_at: u64,
}

/// What the data plane holds for a partner, as far as we know.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    mode: pb::PartnerMode,
    epoch: u32,
    expires_at: u64,
    local_index: u32,
    endpoint: String,
    prefixes: Vec<String>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn run(
    appliance: Arc<Appliance>,
    settings: LinkSettings,
    mut rx: mpsc::UnboundedReceiver<SessionKeys>,
) {
    let mut keys: HashMap<String, HeldKeys> = HashMap::new();
    let mut backoff = Backoff::new(settings.backoff);
    let mut reported = false;
    loop {
        match connect(&settings.socket).await {
            Ok(client) => {
                backoff.reset();
                reported = false;
                let mut link = Link {
                    appliance: &appliance,
                    settings: &settings,
                    client,
                    held: HashMap::new(),
                    rules: None,
                    store: None,
                };
                if let Err(e) = link.serve(&mut keys, &mut rx).await {
                    tracing::warn!(error = %e, "data plane link lost; reconnecting");
                }
            }
            Err(e) => {
                if !reported {
                    tracing::warn!(error = %e, "data plane not reachable; retrying with backoff");
                    reported = true;
                }
                let delay = backoff.next_delay(rand::random::<f64>());
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                // Keep taking keys while waiting, so none is lost.
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        k = rx.recv() => match k {
                            Some(k) => hold(&mut keys, k, settings.key_lifetime),
                            None => return,
                        },
                    }
                }
            }
        }
    }
}

fn hold(keys: &mut HashMap<String, HeldKeys>, k: SessionKeys, lifetime: Duration) {
    let expires_at = unix_now() + lifetime.as_secs();
    keys.insert(
        k.partner.clone(),
        HeldKeys {
            keys: k,
            expires_at,
        },
    );
}

struct Link<'a> {
    appliance: &'a Arc<Appliance>,
    settings: &'a LinkSettings,
    client: AgentClient<Channel>,
    held: HashMap<String, Held>,
    /// Rules last pushed.
    rules: Option<Vec<pb::AgentRule>>,
    /// History store settings last sent.
    store: Option<StoreSettings>,
}

/// The history store settings the data plane should have: directory (empty:
/// memory only), size and key. Compared with what was last sent; never logged
/// with its key.
#[derive(PartialEq, Eq)]
struct StoreSettings {
    dir: String,
    size_mib: u64,
    key: Option<Zeroizing<Vec<u8>>>,
}

impl StoreSettings {
    /// From the data store settings and the keystore: the history key only while
    /// the keystore is open; with encryption on and no key (keystore not
    /// initialized, key missing), no directory at all, so nothing is written in
    /// clear. `None` while the keystore is sealed: the data plane keeps what it
    /// was given, as it keeps its sessions (a restarted control plane starts
    /// sealed), and a data plane given nothing keeps its history in memory.
    fn of(appliance: &Appliance) -> Result<Option<Self>, AgentError> {
        let settings = appliance
            .data_store_settings()
            .map_err(|e| AgentError::Settings(e.to_string()))?;
        let memory_only = Self {
            dir: String::new(),
            size_mib: 0,
            key: None,
        };
        let ks = appliance.keystore();
        let state = ks.state();
        if state == KeystoreState::Sealed {
            return Ok(None);
        }
        if settings.encryption && state != KeystoreState::Open {
            return Ok(Some(memory_only));
        }
        let key = if settings.encryption {
            match ks.secret(HISTORY_KEY) {
                Ok(k) if k.len() == 64 => Some(Zeroizing::new(k.expose().to_vec())),
                _ => {
                    tracing::warn!(
                        "history encryption is on but the keystore holds no history key; history kept in memory only"
                    );
                    return Ok(Some(memory_only));
                }
            }
        } else {
            None
        };
        Ok(Some(Self {
            dir: appliance.history_dir().display().to_string(),
            size_mib: settings.size_bytes >> 20,
            key,
        }))
    }
}

fn call_error(call: &'static str) -> impl FnOnce(tonic::Status) -> AgentError {
    move |status| AgentError::Call {
        call,
        status: Box::new(status),
    }
}

impl Link<'_> {
    async fn serve(
        &mut self,
        keys: &mut HashMap<String, HeldKeys>,
        rx: &mut mpsc::UnboundedReceiver<SessionKeys>,
    ) -> Result<(), AgentError> {
        let hello = self
            .client
            .hello(pb::AgentHello {
                control_version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .await
            .map_err(call_error("Hello"))?
            .into_inner();
        tracing::info!(
            dataplane_version = %hello.dataplane_version,
            sessions = hello.sessions.len(),
            "connected to the data plane"
        );
        self.held = hello
            .sessions
            .into_iter()
            .map(|s| {
                let mode = pb::PartnerMode::try_from(s.mode).unwrap_or_default();
                let held = Held {
                    mode,
                    epoch: s.epoch,
                    expires_at: s.expires_at_unix,
                    // Unknown after a restart of ours; new keys replace the session.
                    local_index: u32::MAX,
                    endpoint: s.endpoint,
                    prefixes: s.prefixes,
                };
                (s.partner, held)
            })
            .collect();
        let mut events = self
            .client
            .watch_events(pb::WatchEventsRequest {})
            .await
            .map_err(call_error("WatchEvents"))?
            .into_inner();
        let mut changes = self.appliance.subscribe();
        let mut tick = tokio::time::interval(self.settings.counters_every);
        self.sync(keys).await?;
        loop {
            tokio::select! {
                k = rx.recv() => {
                    let Some(k) = k else { return Ok(()) };
                    hold(keys, k, self.settings.key_lifetime);
                    self.sync(keys).await?;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    self.sync(keys).await?;
                }
                _ = tick.tick() => {
                    self.counters().await?;
                    // Picks up expired keys too.
                    self.sync(keys).await?;
                }
                event = events.message() => match event {
                    Ok(Some(e)) => log_event(&e),
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(call_error("WatchEvents")(status)),
                },
            }
        }
    }

    /// Brings the data plane in line with the configuration, the mode matrix and
    /// the keys we hold.
    async fn sync(&mut self, keys: &HashMap<String, HeldKeys>) -> Result<(), AgentError> {
        // Before any session: sessions installed after it open their store.
        self.push_history_store().await?;
        let now = unix_now();
        let partners: Vec<(String, PartnerConfig)> = self.appliance.store.list(store::PARTNERS)?;
        let local = self.appliance.local_security();
        for name in self.held.keys().cloned().collect::<Vec<_>>() {
            if !partners.iter().any(|(n, _)| *n == name) {
                self.client
                    .remove_session(pb::RemoveSessionRequest {
                        partner: name.clone(),
                    })
                    .await
                    .map_err(call_error("RemoveSession"))?;
                self.held.remove(&name);
            }
        }
        for (name, config) in &partners {
            let held = self.held.get(name);
            let valid_encrypted = held.is_some_and(|h| {
                h.mode == pb::PartnerMode::CompressEncrypt && h.epoch > 0 && h.expires_at > now
            });
            if let Some(k) = keys.get(name).filter(|k| k.expires_at > now) {
                let epoch = u32::try_from(k.keys.epoch).unwrap_or(u32::MAX);
                let current = held.is_some_and(|h| {
                    h.mode == pb::PartnerMode::CompressEncrypt
                        && h.epoch == epoch
                        && h.local_index == k.keys.local_index
                });
                if !current {
                    self.install_encrypted(name, config, k).await?;
                }
                continue;
            }
            if valid_encrypted {
                continue;
            }
            let runtime = self.appliance.partner_runtime(name);
            let verdict = partner::verdict(local, &runtime);
            let mode = match verdict.traffic {
                TrafficMode::Compressed => pb::PartnerMode::Compress,
                // Keys are on their way; until then nothing is tunnelled.
                TrafficMode::CompressedEncrypted | TrafficMode::Plain | TrafficMode::Unknown => {
                    pb::PartnerMode::Plain
                }
            };
            let same = held.is_some_and(|h| {
                h.mode == mode && h.endpoint == config.address && h.prefixes == config.prefixes
            });
            if !same {
                self.install_unkeyed(name, config, mode).await?;
            }
        }
        self.push_rules().await
    }

    async fn install_encrypted(
        &mut self,
        name: &str,
        config: &PartnerConfig,
        k: &HeldKeys,
    ) -> Result<(), AgentError> {
        let epoch = u32::try_from(k.keys.epoch).unwrap_or(u32::MAX);
        let request = pb::InstallSessionRequest {
            partner: name.to_owned(),
            endpoint: config.address.clone(),
            epoch,
            keys: vec![
                pb::SessionKey {
                    direction: pb::Direction::Transmit as i32,
                    key: k.keys.tx_key.expose().to_vec(),
                },
                pb::SessionKey {
                    direction: pb::Direction::Receive as i32,
                    key: k.keys.rx_key.expose().to_vec(),
                },
            ],
            expires_at_unix: k.expires_at,
            prefixes: config.prefixes.clone(),
            mode: pb::PartnerMode::CompressEncrypt as i32,
            local_index: k.keys.local_index,
            remote_index: k.keys.remote_index,
        };
        // TODO: the request's key bytes are freed, not wiped, once tonic has encoded
        // them (prost messages have no zeroizing drop); a wiping buffer type in the
        // generated code would close that gap.
        let reply = self
            .client
            .install_session(request)
            .await
            .map_err(call_error("InstallSession"))?
            .into_inner();
        tracing::info!(
            partner = name,
            epoch,
            new_session = reply.new_session,
            "session keys installed in the data plane"
        );
        self.held.insert(
            name.to_owned(),
            Held {
                mode: pb::PartnerMode::CompressEncrypt,
                epoch,
                expires_at: k.expires_at,
                local_index: k.keys.local_index,
                endpoint: config.address.clone(),
                prefixes: config.prefixes.clone(),
            },
        );
        Ok(())
    }

    async fn install_unkeyed(
        &mut self,
        name: &str,
        config: &PartnerConfig,
        mode: pb::PartnerMode,
    ) -> Result<(), AgentError> {
        let (local_index, remote_index) = if mode == pb::PartnerMode::Compress {
            compress_indices(&config.address)
        } else {
            (0, 0)
        };
        self.client
            .install_session(pb::InstallSessionRequest {
                partner: name.to_owned(),
                endpoint: config.address.clone(),
                prefixes: config.prefixes.clone(),
                mode: mode as i32,
                local_index,
                remote_index,
                ..Default::default()
            })
            .await
            .map_err(call_error("InstallSession"))?;
        tracing::info!(partner = name, mode = ?mode, "partner installed in the data plane");
        self.held.insert(
            name.to_owned(),
            Held {
                mode,
                epoch: 0,
                expires_at: 0,
                local_index,
                endpoint: config.address.clone(),
                prefixes: config.prefixes.clone(),
            },
        );
        Ok(())
    }

    /// Sends the history store settings when they changed (data store settings,
    /// keystore opened, sealed or reset). The data plane discards the history files
    /// when the key or the encryption setting changes.
    async fn push_history_store(&mut self) -> Result<(), AgentError> {
        let Some(wanted) = StoreSettings::of(self.appliance)? else {
            return Ok(());
        };
        if self.store.as_ref() == Some(&wanted) {
            return Ok(());
        }
        let encrypt = wanted.key.is_some();
        let request = pb::SetHistoryStoreRequest {
            dir: wanted.dir.clone(),
            size_mib: wanted.size_mib,
            encrypt,
            key: wanted.key.as_ref().map(|k| k.to_vec()).unwrap_or_default(),
        };
        // As for session keys: tonic frees, not wipes, the request's copy once sent.
        let reply = self
            .client
            .set_history_store(request)
            .await
            .map_err(call_error("SetHistoryStore"))?
            .into_inner();
        tracing::info!(
            dir = %reply.dir,
            encrypt,
            size_mib = wanted.size_mib,
            partners = reply.partners,
            discarded = reply.discarded,
            "history store set in the data plane"
        );
        self.store = Some(wanted);
        Ok(())
    }

    /// Pushes the pass-through rules the classifier can express (destination
    /// prefix only); accelerate rules are implied by the partners' prefixes.
    async fn push_rules(&mut self) -> Result<(), AgentError> {
        let rules: Vec<(String, RuleRecord)> = self.appliance.store.list(store::RULES)?;
        let rules: Vec<pb::AgentRule> = rules
            .iter()
            .filter(|(_, r)| {
                !r.accelerate
                    && r.source_prefix.is_empty()
                    && r.protocol.is_empty()
                    && r.port_low == 0
                    && r.port_high == 0
                    && !r.destination_prefix.is_empty()
            })
            .map(|(name, r)| pb::AgentRule {
                name: name.clone(),
                priority: r.priority,
                destination_prefix: r.destination_prefix.clone(),
                action: pb::Action::PassThrough as i32,
                ..Default::default()
            })
            .collect();
        if self.rules.as_ref() == Some(&rules) {
            return Ok(());
        }
        self.rules = Some(rules.clone());
        self.client
            .set_rules(pb::SetRulesRequest { rules })
            .await
            .map_err(call_error("SetRules"))?;
        Ok(())
    }

    /// Reads the counters into the partner table (watchers see changes at once).
    async fn counters(&mut self) -> Result<(), AgentError> {
        let reply = self
            .client
            .get_counters(pb::GetCountersRequest {})
            .await
            .map_err(call_error("GetCounters"))?
            .into_inner();
        for (name, c) in reply.per_partner {
            let counters = Counters {
                bytes_before_compression: c.bytes_before_compression,
                bytes_after_compression: c.bytes_after_compression,
                packets: c.packets,
                errors: c.errors,
            };
            if self.appliance.partner_runtime(&name).counters != counters {
                self.appliance
                    .update_partner_runtime(&name, |r| r.counters = counters);
            }
        }
        Ok(())
    }
}

fn log_event(e: &pb::DataPlaneEvent) {
    use pb::data_plane_event::Event;
    match &e.event {
        Some(Event::SessionExpiredEpoch(epoch)) => {
            tracing::warn!(partner = %e.partner, epoch, "data plane: session keys expired")
        }
        Some(Event::RekeyNeededEpoch(epoch)) => {
            tracing::info!(partner = %e.partner, epoch, "data plane: keys expire soon")
        }
        Some(Event::Fault(fault)) => {
            tracing::warn!(partner = %e.partner, %fault, "data plane fault")
        }
        _ => tracing::debug!(partner = %e.partner, event = ?e.event, "data plane event"),
    }
}

/// Session indices of a compress-only partner, which has no signaling channel to
/// agree on them: each side derives the index of packets toward an appliance from
/// the (sender, receiver) WAN addresses, so both compute the same pair.
fn compress_indices(partner_address: &str) -> (u32, u32) {
    let remote: Option<SocketAddr> = partner_address.parse().ok();
    let local = remote.and_then(|r| {
        let any: SocketAddr = if r.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let s = UdpSocket::bind(any).ok()?;
        s.connect(r).ok()?;
        s.local_addr().ok()
    });
    match (local, remote) {
        (Some(l), Some(r)) => (index(r.ip(), l.ip()), index(l.ip(), r.ip())),
        _ => (1, 2),
    }
}

fn index(sender: IpAddr, receiver: IpAddr) -> u32 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"shunt compress-only index");
    h.update(sender.to_string());
    h.update(b"->");
    h.update(receiver.to_string());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_only_indices_mirror_between_partners() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // A's (local, remote) must be B's (remote, local).
        let at_a = (index(b, a), index(a, b));
        let at_b = (index(a, b), index(b, a));
        assert_eq!(at_a.0, at_b.1);
        assert_eq!(at_a.1, at_b.0);
        assert_ne!(at_a.0, at_a.1);
    }
}
