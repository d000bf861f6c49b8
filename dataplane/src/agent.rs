//! The agent API server: `shunt-control` drives a running appliance (partners,
//! keys, modes, rules, history) and reads its counters and events, over gRPC on a
//! unix socket that only the owning user may open (mode 0600).
//!
//! The appliance keeps its sessions when the control plane disconnects; encrypted
//! sessions lose their keys when the keys' expiry passes (their traffic is then
//! dropped, never sent in clear). See `docs/pipeline.md`, "Agent mode".
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shunt_proto::agent::{self as pb, agent_server};
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use zeroize::Zeroize as _;

use crate::codec::store::StoreKey;
use crate::pipeline::{
    Appliance, ApplianceStats, ControlError, HistoryStoreSettings, RuleSpec, SessionSpec,
};
use crate::tunnel::config::Prefix;
use crate::tunnel::{EpochKeys, Mode, SecretKey};

/// Warn the control plane this long before keys expire.
const REKEY_WARNING: Duration = Duration::from_secs(60);

/// Errors starting the agent server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The socket could not be created.
    #[error("cannot create the agent socket {path}: {source}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process serves the socket.
    #[error("another data plane is serving {0}; stop it or choose another --agent-socket")]
    InUse(PathBuf),
    /// The gRPC server failed.
    #[error("agent server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Creates the listening socket at `path` with mode 0600. A stale socket file left
/// by a previous run is replaced; a live one is an error.
pub fn bind_socket(path: &Path) -> Result<UnixListener, AgentError> {
    let socket_error = |source| AgentError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(socket_error(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(AgentError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(socket_error)?;
    }
    // The umask makes the socket owner-only from its first moment; the chmod makes
    // it so whatever the umask was.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(socket_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket_error)?;
    Ok(listener)
}

/// Serves the agent API on `listener` until `shutdown` completes; also expires keys
/// once a second.
pub async fn serve(
    appliance: Arc<Mutex<Appliance>>,
    listener: UnixListener,
    tunnel_port: u16,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let service = AgentService::new(appliance, tunnel_port);
    let expiry = tokio::spawn(expire_loop(service.clone()));
    let result = tonic::transport::Server::builder()
        .add_service(agent_server::AgentServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    expiry.abort();
    // Wait for the task to go, so that it no longer holds the appliance.
    let _ = expiry.await;
    Ok(result?)
}

/// The Agent service over one appliance.
#[derive(Clone)]
pub struct AgentService {
    appliance: Arc<Mutex<Appliance>>,
    events: broadcast::Sender<pb::DataPlaneEvent>,
    tunnel_port: u16,
}

impl AgentService {
    /// A service for `appliance` (started in agent mode).
    pub fn new(appliance: Arc<Mutex<Appliance>>, tunnel_port: u16) -> Self {
        Self {
            appliance,
            events: broadcast::channel(256).0,
            tunnel_port,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Appliance> {
        // A panic while holding the lock leaves the appliance as consistent as the
        // panicking call left it; keep serving.
        self.appliance.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a control call off the async threads (it waits for the workers).
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Appliance) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, Status> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&mut this.lock()))
            .await
            .map_err(|e| Status::internal(format!("agent call failed: {e}")))?
            .map_err(to_status)
    }

    fn emit(&self, partner: &str, event: pb::data_plane_event::Event) {
        let _ = self.events.send(pb::DataPlaneEvent {
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            partner: partner.to_owned(),
            event: Some(event),
        });
    }
}

async fn expire_loop(service: AgentService) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let result = service.call(|a| a.expire_keys(REKEY_WARNING)).await;
        match result {
            Ok((expired, soon)) => {
                for (partner, epoch) in expired {
                    service.emit(
                        &partner,
                        pb::data_plane_event::Event::SessionExpiredEpoch(epoch),
                    );
                }
                for (partner, epoch) in soon {
                    service.emit(
                        &partner,
                        pb::data_plane_event::Event::RekeyNeededEpoch(epoch),
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e.message(), "key expiry check failed"),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::DataPlaneEvent, Status>> + Send>>;

#[tonic::async_trait]
impl agent_server::Agent for AgentService {
    async fn hello(
        &self,
        request: Request<pb::AgentHello>,
    ) -> Result<Response<pb::AgentHelloReply>, Status> {
        let control = request.into_inner().control_version;
        let sessions = self.lock().sessions();
        tracing::info!(control_version = %control, sessions = sessions.len(), "control plane connected");
        Ok(Response::new(pb::AgentHelloReply {
            dataplane_version: env!("CARGO_PKG_VERSION").to_owned(),
            partners_with_sessions: sessions.iter().map(|s| s.partner.clone()).collect(),
            sessions: sessions
                .into_iter()
                .map(|s| pb::SessionState {
                    partner: s.partner,
                    endpoint: s.remote.to_string(),
                    mode: mode_to_pb(s.mode) as i32,
                    epoch: s.epoch.unwrap_or(0),
                    expires_at_unix: s.expires_at_unix.unwrap_or(0),
                    prefixes: s.prefixes.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            tunnel_port: u32::from(self.tunnel_port),
        }))
    }

    async fn install_session(
        &self,
        request: Request<pb::InstallSessionRequest>,
    ) -> Result<Response<pb::InstallSessionReply>, Status> {
        let spec = session_spec(request.into_inner(), self.tunnel_port)?;
        let (partner, epoch) = (spec.partner.clone(), spec.keys.as_ref().map_or(0, |k| k.0));
        let outcome = self.call(move |a| a.install_session(spec)).await?;
        self.emit(
            &partner,
            pb::data_plane_event::Event::SessionInstalledEpoch(epoch),
        );
        Ok(Response::new(pb::InstallSessionReply {
            new_session: outcome == crate::pipeline::InstallOutcome::NewSession,
        }))
    }

    async fn remove_session(
        &self,
        request: Request<pb::RemoveSessionRequest>,
    ) -> Result<Response<pb::RemoveSessionReply>, Status> {
        let partner = request.into_inner().partner;
        let name = partner.clone();
        self.call(move |a| a.remove_session(&name)).await?;
        self.emit(&partner, pb::data_plane_event::Event::SessionRemoved(true));
        Ok(Response::new(pb::RemoveSessionReply {}))
    }

    async fn set_rules(
        &self,
        request: Request<pb::SetRulesRequest>,
    ) -> Result<Response<pb::SetRulesReply>, Status> {
        let rules = request
            .into_inner()
            .rules
            .into_iter()
            .map(rule_spec)
            .collect::<Result<Vec<_>, _>>()?;
        self.call(move |a| a.set_rules(rules)).await?;
        Ok(Response::new(pb::SetRulesReply {}))
    }

    async fn set_partner_mode(
        &self,
        request: Request<pb::SetPartnerModeRequest>,
    ) -> Result<Response<pb::SetPartnerModeReply>, Status> {
        let request = request.into_inner();
        let mode = mode_from_pb(request.mode)?;
        let partner = request.partner;
        self.call(move |a| a.set_partner_mode(&partner, mode))
            .await?;
        Ok(Response::new(pb::SetPartnerModeReply {}))
    }

    async fn erase_history(
        &self,
        request: Request<pb::EraseHistoryRequest>,
    ) -> Result<Response<pb::EraseHistoryReply>, Status> {
        let partner = request.into_inner().partner;
        let partners = self
            .call(move |a| a.erase_history(Some(partner.as_str()).filter(|p| !p.is_empty())))
            .await?;
        Ok(Response::new(pb::EraseHistoryReply { partners }))
    }

    async fn set_history_store(
        &self,
        request: Request<pb::SetHistoryStoreRequest>,
    ) -> Result<Response<pb::SetHistoryStoreReply>, Status> {
        let settings = history_store_settings(request.into_inner())?;
        let outcome = self.call(move |a| a.set_history_store(settings)).await?;
        Ok(Response::new(pb::SetHistoryStoreReply {
            partners: outcome.partners,
            discarded: outcome.discarded,
            dir: outcome
                .dir
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn get_counters(
        &self,
        _request: Request<pb::GetCountersRequest>,
    ) -> Result<Response<pb::CountersReply>, Status> {
        let stats = self.lock().stats();
        Ok(Response::new(counters_reply(&stats)))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let stream = BroadcastStream::new(self.events.subscribe()).filter_map(|e| match e {
            Ok(event) => Some(Ok(event)),
            // A slow watcher missed events; it keeps the later ones.
            Err(_) => None,
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Maps a control error to the gRPC status an operator can act on.
fn to_status(e: ControlError) -> Status {
    let message = e.to_string();
    match e {
        ControlError::UnknownPartner(_) => Status::not_found(message),
        ControlError::IndexInUse { .. } | ControlError::AddressInUse { .. } => {
            Status::already_exists(message)
        }
        ControlError::NoSlot(_) => Status::resource_exhausted(message),
        ControlError::EpochNotNewer { .. }
        | ControlError::NotAgentMode
        | ControlError::NoRoute { .. } => Status::failed_precondition(message),
        ControlError::Busy => Status::unavailable(message),
        ControlError::Xdp(_) | ControlError::History(_) => Status::internal(message),
        _ => Status::invalid_argument(message),
    }
}

fn mode_from_pb(mode: i32) -> Result<Mode, Status> {
    match pb::PartnerMode::try_from(mode) {
        Ok(pb::PartnerMode::Compress) => Ok(Mode::CompressOnly),
        Ok(pb::PartnerMode::CompressEncrypt) => Ok(Mode::Encrypted),
        Ok(pb::PartnerMode::Plain) => Ok(Mode::PassThrough),
        Ok(pb::PartnerMode::Flow) => Err(Status::unimplemented(
            "flow mode (TCP flow-control acceleration) is not implemented by this data plane",
        )),
        Ok(pb::PartnerMode::Unspecified) | Err(_) => Err(Status::invalid_argument(
            "set mode to COMPRESS, COMPRESS_ENCRYPT or PLAIN",
        )),
    }
}

fn mode_to_pb(mode: Mode) -> pb::PartnerMode {
    match mode {
        Mode::CompressOnly => pb::PartnerMode::Compress,
        Mode::Encrypted => pb::PartnerMode::CompressEncrypt,
        Mode::PassThrough => pb::PartnerMode::Plain,
    }
}

fn parse_prefix(text: &str) -> Result<Prefix, Status> {
    Prefix::from_str(text)
        .map_err(|reason| Status::invalid_argument(format!("prefix {text:?}: {reason}")))
}

fn session_spec(mut r: pb::InstallSessionRequest, tunnel_port: u16) -> Result<SessionSpec, Status> {
    let keys = take_keys(&mut r.keys, &r.partner)?;
    let mode = mode_from_pb(r.mode)?;
    let remote = SocketAddr::from_str(&r.endpoint)
        .or_else(|_| IpAddr::from_str(&r.endpoint).map(|ip| SocketAddr::new(ip, tunnel_port)))
        .map_err(|_| {
            Status::invalid_argument(format!(
                "partner {}: endpoint {:?} is not IP or IP:port",
                r.partner, r.endpoint
            ))
        })?;
    let prefixes = r
        .prefixes
        .iter()
        .map(|p| parse_prefix(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SessionSpec {
        partner: r.partner,
        remote,
        prefixes,
        mode,
        local_index: r.local_index,
        remote_index: r.remote_index,
        keys: keys.map(|k| (r.epoch, k)),
        expires_at_unix: (r.expires_at_unix != 0).then_some(r.expires_at_unix),
    })
}

/// The store settings of a `SetHistoryStore` request; the key is moved out of the
/// request (its bytes wiped). Encryption on without a key is refused: history is
/// never written in clear because a key is missing.
fn history_store_settings(
    mut r: pb::SetHistoryStoreRequest,
) -> Result<Option<HistoryStoreSettings>, Status> {
    let key = if r.key.is_empty() {
        None
    } else {
        let mut bytes = [0u8; 64];
        let fits = r.key.len() == bytes.len();
        if fits {
            bytes.copy_from_slice(&r.key);
        }
        r.key.zeroize();
        if !fits {
            return Err(Status::invalid_argument(
                "the history key must be 64 bytes (two AES-256 keys for XTS)",
            ));
        }
        let key = StoreKey::new(bytes);
        bytes.zeroize();
        Some(key)
    };
    if r.dir.is_empty() {
        return Ok(None);
    }
    match (r.encrypt, key) {
        (true, None) => Err(to_status(ControlError::HistoryKeyMissing)),
        (false, Some(_)) => Err(Status::invalid_argument(
            "a history key was given with encryption off; send the key only with encrypt = true",
        )),
        (_, key) => Ok(Some(HistoryStoreSettings {
            dir: PathBuf::from(r.dir),
            budget_bytes: r.size_mib.saturating_mul(1 << 20),
            key,
        })),
    }
}

/// Moves the keys out of the request (wiping its copies).
fn take_keys(keys: &mut [pb::SessionKey], partner: &str) -> Result<Option<EpochKeys>, Status> {
    let (mut send, mut receive) = (None, None);
    let mut problem = None;
    for k in keys.iter_mut() {
        let bytes = <[u8; 32]>::try_from(k.key.as_slice()).ok();
        k.key.zeroize();
        let Some(bytes) = bytes else {
            problem = Some("every key must be 32 bytes (AES-256)");
            continue;
        };
        let slot = match pb::Direction::try_from(k.direction) {
            Ok(pb::Direction::Transmit) => &mut send,
            Ok(pb::Direction::Receive) => &mut receive,
            _ => {
                problem = Some("every key needs direction TRANSMIT or RECEIVE");
                continue;
            }
        };
        if slot.replace(SecretKey::from_bytes(bytes)).is_some() {
            problem = Some("one key per direction");
        }
    }
    if let Some(problem) = problem {
        return Err(Status::invalid_argument(format!(
            "partner {partner}: {problem}"
        )));
    }
    match (send, receive) {
        (None, None) => Ok(None),
        (Some(send), Some(receive)) if send != receive => Ok(Some(EpochKeys { send, receive })),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "partner {partner}: the transmit and receive keys are equal; each direction needs its own"
        ))),
        _ => Err(Status::invalid_argument(format!(
            "partner {partner}: give one TRANSMIT and one RECEIVE key"
        ))),
    }
}

fn rule_spec(r: pb::AgentRule) -> Result<RuleSpec, Status> {
    let name = if r.name.is_empty() {
        r.destination_prefix.clone()
    } else {
        r.name.clone()
    };
    if !r.source_prefix.is_empty() || r.protocol != 0 || r.port_low != 0 || r.port_high != 0 {
        return Err(Status::invalid_argument(format!(
            "rule {name}: the XDP classifier matches destination prefixes only; \
             remove the source prefix, protocol and ports"
        )));
    }
    let prefix = parse_prefix(&r.destination_prefix)
        .map_err(|s| Status::invalid_argument(format!("rule {name}: {}", s.message())))?;
    match pb::Action::try_from(r.action) {
        Ok(pb::Action::Accelerate) if !r.partner.is_empty() => Ok(RuleSpec::Accelerate {
            prefix,
            partner: r.partner,
        }),
        Ok(pb::Action::Accelerate) => Err(Status::invalid_argument(format!(
            "rule {name}: an accelerate rule names its partner"
        ))),
        Ok(pb::Action::PassThrough) => Ok(RuleSpec::PassThrough { prefix }),
        Ok(pb::Action::Flow) => Err(Status::unimplemented(format!(
            "rule {name}: flow mode is not implemented by this data plane"
        ))),
        _ => Err(Status::invalid_argument(format!(
            "rule {name}: set action to ACCELERATE or PASS_THROUGH"
        ))),
    }
}

/// The agent API's counters from the appliance's.
pub fn counters_reply(stats: &ApplianceStats) -> pb::CountersReply {
    let mut total = pb::Counters::default();
    let mut per_partner = HashMap::new();
    for p in &stats.partners {
        let c = |name: &str| p.counters.get(name).copied().unwrap_or(0);
        let drops: HashMap<String, u64> = p
            .counters
            .iter()
            .filter_map(|(k, &v)| {
                k.strip_prefix("drop_")
                    .filter(|_| v > 0)
                    .map(|k| (k.to_owned(), v))
            })
            .collect();
        let counters = pb::Counters {
            bytes_before_compression: c("bytes_before"),
            bytes_after_compression: c("bytes_after"),
            packets: c("encoded_packets") + c("decoded_packets"),
            errors: drops.values().sum(),
            packets_sent: c("wan_packets_out"),
            packets_received: c("wan_packets_in"),
            wan_bytes_sent: c("wan_bytes_out"),
            wan_bytes_received: c("wan_bytes_in"),
            replay_failures: c("drop_replay"),
            auth_failures: c("drop_auth_failed"),
            drops,
            send_epochs: c("send_epochs"),
        };
        add(&mut total, &counters);
        per_partner.insert(p.name.clone(), counters);
    }
    pb::CountersReply {
        total: Some(total),
        per_partner,
    }
}

fn add(total: &mut pb::Counters, c: &pb::Counters) {
    total.bytes_before_compression += c.bytes_before_compression;
    total.bytes_after_compression += c.bytes_after_compression;
    total.packets += c.packets;
    total.errors += c.errors;
    total.packets_sent += c.packets_sent;
    total.packets_received += c.packets_received;
    total.wan_bytes_sent += c.wan_bytes_sent;
    total.wan_bytes_received += c.wan_bytes_received;
    total.replay_failures += c.replay_failures;
    total.auth_failures += c.auth_failures;
    total.send_epochs += c.send_epochs;
    for (k, v) in &c.drops {
        *total.drops.entry(k.clone()).or_default() += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(direction: pb::Direction, byte: u8) -> pb::SessionKey {
        pb::SessionKey {
            direction: direction as i32,
            key: vec![byte; 32],
        }
    }

    #[test]
    fn keys_are_checked_and_wiped_from_the_request() {
        let mut keys = vec![
            key(pb::Direction::Transmit, 1),
            key(pb::Direction::Receive, 2),
        ];
        let k = take_keys(&mut keys, "b").unwrap().unwrap();
        assert_ne!(k.send, k.receive);
        assert!(keys.iter().all(|k| k.key.is_empty()));

        let mut same = vec![
            key(pb::Direction::Transmit, 1),
            key(pb::Direction::Receive, 1),
        ];
        assert!(take_keys(&mut same, "b").is_err());
        let mut short = vec![pb::SessionKey {
            direction: pb::Direction::Transmit as i32,
            key: vec![1; 16],
        }];
        let e = take_keys(&mut short, "b").unwrap_err();
        assert!(e.message().contains("32 bytes"), "{}", e.message());
        let mut one = vec![key(pb::Direction::Transmit, 1)];
        assert!(take_keys(&mut one, "b").is_err());
        assert!(take_keys(&mut [], "b").unwrap().is_none());
    }

    #[test]
    fn history_store_needs_its_key_when_encrypted_and_never_shows_it() {
        let request = |encrypt: bool, key: Vec<u8>| pb::SetHistoryStoreRequest {
            dir: "/var/lib/shunt/history".into(),
            size_mib: 1024,
            encrypt,
            key,
        };
        let e = history_store_settings(request(true, Vec::new())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("no 64-byte key"), "{}", e.message());
        let e = history_store_settings(request(true, vec![7; 32])).unwrap_err();
        assert!(e.message().contains("64 bytes"), "{}", e.message());
        assert!(history_store_settings(request(false, vec![7; 64])).is_err());
        let plain = history_store_settings(request(false, Vec::new()))
            .unwrap()
            .unwrap();
        assert!(plain.key.is_none());
        assert_eq!(plain.budget_bytes, 1024 << 20);
        let secret = history_store_settings(request(true, vec![0xab; 64]))
            .unwrap()
            .unwrap();
        assert!(secret.key.is_some());
        let shown = format!("{secret:?}");
        assert!(shown.contains("encrypted: true"), "{shown}");
        assert!(!shown.contains("171") && !shown.contains("ab,"), "{shown}");
        // No directory: memory only, whatever else the request says.
        let memory = pb::SetHistoryStoreRequest {
            dir: String::new(),
            ..request(true, Vec::new())
        };
        assert!(history_store_settings(memory).unwrap().is_none());
    }

    #[test]
    fn rules_outside_the_classifier_are_refused_with_the_reason() {
        let rule = pb::AgentRule {
            name: "web".into(),
            destination_prefix: "10.2.0.0/16".into(),
            port_low: 80,
            port_high: 443,
            action: pb::Action::Accelerate as i32,
            partner: "b".into(),
            ..Default::default()
        };
        let e = rule_spec(rule.clone()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("destination prefixes only"));
        let ok = rule_spec(pb::AgentRule {
            port_low: 0,
            port_high: 0,
            ..rule
        })
        .unwrap();
        assert!(matches!(ok, RuleSpec::Accelerate { .. }));
        let bad = rule_spec(pb::AgentRule {
            destination_prefix: "10.2.0.1/16".into(),
            action: pb::Action::PassThrough as i32,
            ..Default::default()
        })
        .unwrap_err();
        assert!(bad.message().contains("host bits"), "{}", bad.message());
    }
}
