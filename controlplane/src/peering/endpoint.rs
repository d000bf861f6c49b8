//! The peering endpoint: one quinn endpoint on the tunnel's UDP port that accepts and
//! opens signaling connections to the configured partners and reports their state and
//! session keys.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use quinn::VarInt;
use rustls::sign::CertifiedKey;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use super::backoff::Backoff;
use super::keys::{SessionKeys, Side};
use super::messages::{Hello, PROTOCOL_VERSION, Signal, read_signal, write_signal};
use super::session::run_secure;
use super::status::{Connection, PartnerStatus, Reason, TrafficMode, classify, close};
use super::tls::{self, HELLO_ALPN, HELLO_SERVER_NAME, SECURE_ALPN};
use super::{LocalSecurity, PartnerConfig, PeeringConfig, PeeringError, Role, SecureSetup};

/// What the endpoint reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeeringEvent {
    /// A partner's state changed.
    Status(PartnerStatus),
    /// New keys for a partner's epoch; hand them to the data plane.
    Keys(SessionKeys),
}

/// The running signaling endpoint.
pub struct PeeringEndpoint {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

pub(super) struct Shared {
    pub(super) config: PeeringConfig,
    pub(super) security: LocalSecurity,
    pub(super) local_addr: SocketAddr,
    pub(super) partners: HashMap<SocketAddr, PartnerConfig>,
    pub(super) hello_key: Arc<CertifiedKey>,
    pub(super) transport: Arc<quinn::TransportConfig>,
    pub(super) statuses: Mutex<HashMap<String, PartnerStatus>>,
    pub(super) rekey: Mutex<HashMap<String, mpsc::UnboundedSender<()>>>,
    pub(super) events: mpsc::UnboundedSender<PeeringEvent>,
    /// Responder side: number of the newest accepted connection per partner. An
    /// older connection that ends (a partner that restarted and dialled again)
    /// must not mark the partner down over the newer one.
    pub(super) accepted: Mutex<HashMap<String, u64>>,
}

impl PeeringEndpoint {
    /// Binds the tunnel port and starts signaling with `partners`. Events (status
    /// changes and session keys) arrive on the returned receiver.
    pub fn start(
        config: PeeringConfig,
        security: LocalSecurity,
        partners: Vec<PartnerConfig>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<PeeringEvent>), PeeringError> {
        let socket = UdpSocket::bind(config.listen).map_err(|source| PeeringError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = socket.local_addr().map_err(|source| PeeringError::Bind {
            addr: config.listen,
            source,
        })?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        // Every QUIC packet keeps a top bit set, so the data plane's tunnel header
        // (both top bits zero) never collides with signaling on the shared port.
        endpoint_config.grease_quic_bit(false);
        let transport = tls::transport(config.keepalive, config.idle_timeout)?;
        let hello_key = tls::hello_identity()?;
        let default_server = tls::server(
            None,
            HELLO_SERVER_NAME,
            hello_key.clone(),
            transport.clone(),
        )?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| PeeringError::Config("peering needs a tokio runtime".into()))?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(default_server), socket, runtime)
            .map_err(|source| PeeringError::Bind {
                addr: config.listen,
                source,
            })?;

        let (events, rx) = mpsc::unbounded_channel();
        let mut statuses = HashMap::new();
        let mut by_addr = HashMap::new();
        for p in partners {
            if by_addr.contains_key(&p.address) {
                return Err(PeeringError::Config(format!(
                    "two partners share address {}",
                    p.address
                )));
            }
            let mut status = PartnerStatus::new(&p.name);
            status.reason = security.local_reason();
            statuses.insert(p.name.clone(), status);
            by_addr.insert(p.address, p);
        }
        let shared = Arc::new(Shared {
            config,
            security,
            local_addr,
            partners: by_addr,
            hello_key,
            transport,
            statuses: Mutex::new(statuses),
            rekey: Mutex::new(HashMap::new()),
            events,
            accepted: Mutex::new(HashMap::new()),
        });

        let mut tasks = Vec::new();
        let accept = {
            let (endpoint, shared) = (endpoint.clone(), shared.clone());
            tokio::spawn(accept_loop(endpoint, shared))
        };
        tasks.push(accept);
        for partner in shared.partners.values() {
            if shared.initiates(partner) {
                let (endpoint, shared2, partner) =
                    (endpoint.clone(), shared.clone(), partner.clone());
                let span = info_span!("partner", partner = %partner.name, side = "initiator");
                tasks.push(tokio::spawn(
                    initiator_loop(endpoint, shared2, partner).instrument(span),
                ));
            }
        }
        Ok((
            Self {
                endpoint,
                shared,
                tasks,
            },
            rx,
        ))
    }

    /// The bound tunnel address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The current state of one partner.
    pub fn status(&self, partner: &str) -> Option<PartnerStatus> {
        self.shared
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(partner)
            .cloned()
    }

    /// Every partner's state, sorted by name.
    pub fn statuses(&self) -> Vec<PartnerStatus> {
        let mut all: Vec<_> = self
            .shared
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.partner.cmp(&b.partner));
        all
    }

    /// Starts a new key epoch with `partner` now (otherwise it happens every
    /// `rekey_interval`).
    pub fn rekey(&self, partner: &str) -> Result<(), PeeringError> {
        let map = self.shared.rekey.lock().unwrap_or_else(|e| e.into_inner());
        let tx = map
            .get(partner)
            .ok_or_else(|| PeeringError::NotSecure(partner.to_owned()))?;
        tx.send(())
            .map_err(|_| PeeringError::NotSecure(partner.to_owned()))
    }

    /// Closes every signaling connection and stops.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.endpoint.close(
            VarInt::from_u32(close::SHUTDOWN),
            b"appliance shutting down",
        );
        self.endpoint.wait_idle().await;
    }
}

impl Shared {
    fn initiates(&self, partner: &PartnerConfig) -> bool {
        match partner.role {
            Role::Initiator => true,
            Role::Responder => false,
            Role::Auto => self.local_addr < partner.address,
        }
    }

    pub(super) fn setup(&self) -> Option<&Arc<SecureSetup>> {
        match &self.security {
            LocalSecurity::On(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn hello(&self, session_index: u32) -> Signal {
        let (secure_peering, secure_off_reason) = self.security.hello_flag();
        Signal::Hello(Hello {
            version: PROTOCOL_VERSION,
            appliance: self.config.appliance.clone(),
            secure_peering,
            secure_peering_configured: !matches!(self.security, LocalSecurity::Off),
            secure_off_reason,
            capabilities: vec!["rekey-x25519".into(), "compression".into()],
            session_index,
        })
    }

    pub(super) fn update(&self, partner: &str, f: impl FnOnce(&mut PartnerStatus)) {
        let local_on = !matches!(self.security, LocalSecurity::Off);
        let snapshot = {
            let mut map = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
            let Some(status) = map.get_mut(partner) else {
                return;
            };
            let before = status.clone();
            f(status);
            status.traffic =
                TrafficMode::from_matrix(local_on, status.partner_secure_peering, status.secure);
            if *status == before {
                return;
            }
            status.clone()
        };
        info!(partner, connection = %snapshot.connection, secure = snapshot.secure,
              reason = snapshot.reason.as_ref().map(|r| r.to_string()), "partner state");
        let _ = self.events.send(PeeringEvent::Status(snapshot));
    }

    /// Numbers a newly accepted connection of `partner`.
    fn accepted(&self, partner: &str) -> u64 {
        let mut map = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(partner.to_owned()).or_default();
        *n += 1;
        *n
    }

    /// `record_down` for accepted connection `number`, unless a newer one exists.
    fn record_down_accepted(&self, partner: &str, number: u64, reason: Reason) {
        let newest = self
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(partner)
            .copied();
        if newest == Some(number) {
            self.record_down(partner, reason, 0);
        } else {
            debug!(partner, %reason, "an older signaling connection ended");
        }
    }

    fn record_down(&self, partner: &str, reason: Reason, attempts: u32) {
        self.update(partner, |s| {
            s.connection = Connection::Down;
            s.secure = false;
            s.reason = Some(reason);
            s.reconnect_attempts = attempts;
        });
    }

    /// Records the outcome of a hello exchange; true when both sides can go secure.
    fn record_hello(&self, partner: &str, peer: &Hello) -> bool {
        let both_on = self.setup().is_some() && peer.secure_peering;
        let reason = if both_on {
            None
        } else if let Some(local) = self.security.local_reason() {
            // Both off is the normal compress-only relationship, not a fault.
            (peer.secure_peering_configured || local != Reason::LocalOff).then_some(local)
        } else {
            Some(Reason::PeerNotSecured {
                peer_says: peer.secure_off_reason.clone(),
            })
        };
        self.update(partner, |s| {
            s.partner_secure_peering = Some(peer.secure_peering_configured);
            s.connection = if both_on {
                Connection::Connecting
            } else {
                Connection::ConnectedAvailable
            };
            s.secure = false;
            s.reason = reason;
        });
        both_on
    }
}

// === initiator ===

async fn initiator_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, partner: PartnerConfig) {
    let mut backoff = Backoff::new(shared.config.backoff);
    loop {
        shared.update(&partner.name, |s| s.connection = Connection::Connecting);
        let (reason, established) = initiate_once(&endpoint, &shared, &partner).await;
        if established {
            backoff.reset();
        }
        let delay = backoff.next_delay(rand::random());
        debug!(?delay, %reason, "signaling ended; will reconnect");
        shared.record_down(&partner.name, reason, backoff.attempts());
        tokio::time::sleep(delay).await;
    }
}

/// One connection attempt, returning why it ended and whether it got established.
async fn initiate_once(
    endpoint: &quinn::Endpoint,
    shared: &Shared,
    partner: &PartnerConfig,
) -> (Reason, bool) {
    // Hello channel: learn whether the partner runs secure peering.
    let hello_cfg = match tls::hello_client(shared.transport.clone()) {
        Ok(c) => c,
        Err(e) => return (Reason::Protocol(e.to_string()), false),
    };
    let conn = match connect(endpoint, hello_cfg, partner.address, HELLO_SERVER_NAME).await {
        Ok(c) => c,
        Err(r) => return (r, false),
    };
    let peer_hello = match exchange_hello_initiator(&conn, shared.hello(0)).await {
        Ok(h) => h,
        Err(e) => return (Reason::Protocol(e.to_string()), false),
    };
    if !shared.record_hello(&partner.name, &peer_hello) {
        // Not secure: keep the hello channel as the liveness link.
        let err = conn.closed().await;
        return (classify(&err, true), true);
    }
    conn.close(
        VarInt::from_u32(close::UPGRADE),
        b"upgrading to the secure channel",
    );

    let Some(setup) = shared.setup() else {
        return (Reason::LocalOff, false);
    };
    let cfg = match tls::secure_client(setup, shared.transport.clone()) {
        Ok(c) => c,
        Err(e) => return (Reason::Credentials(e.to_string()), false),
    };
    let conn = match connect(endpoint, cfg, partner.address, &partner.name).await {
        Ok(c) => c,
        Err(r) => return (r, false),
    };
    let mut up = false;
    let reason = run_secure(&conn, shared, partner, Side::Initiator, &mut up).await;
    conn.close(
        VarInt::from_u32(close::PROTOCOL),
        reason.to_string().as_bytes(),
    );
    (reason, up)
}

async fn connect(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    name: &str,
) -> Result<quinn::Connection, Reason> {
    let connecting = endpoint
        .connect_with(cfg, addr, name)
        .map_err(|e| Reason::Unreachable(e.to_string()))?;
    connecting.await.map_err(|e| classify(&e, false))
}

async fn exchange_hello_initiator(
    conn: &quinn::Connection,
    ours: Signal,
) -> Result<Hello, PeeringError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| PeeringError::Protocol(e.to_string()))?;
    write_signal(&mut send, &ours).await?;
    expect_hello(read_signal(&mut recv).await?)
}

pub(super) fn expect_hello(msg: Option<Signal>) -> Result<Hello, PeeringError> {
    match msg {
        Some(Signal::Hello(h)) if h.version == PROTOCOL_VERSION => Ok(h),
        Some(Signal::Hello(h)) => Err(PeeringError::Protocol(format!(
            "unsupported signaling version {}",
            h.version
        ))),
        Some(other) => Err(PeeringError::Protocol(format!(
            "expected hello, got {other:?}"
        ))),
        None => Err(PeeringError::Protocol("stream ended before hello".into())),
    }
}

// === responder ===

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let Some(partner) = shared.partners.get(&remote).cloned() else {
            debug!(%remote, "signaling from an unconfigured address refused");
            incoming.refuse();
            continue;
        };
        if shared.initiates(&partner) {
            // Both sides initiating would make two sessions with two sets of keys.
            warn!(partner = %partner.name, "partner dialled us but we initiate; check both sides' roles");
            incoming.refuse();
            continue;
        }
        let cfg = match tls::server(
            shared.setup().map(|s| s.as_ref()),
            &partner.name,
            shared.hello_key.clone(),
            shared.transport.clone(),
        ) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                warn!(partner = %partner.name, error = %e, "cannot build the signaling server configuration");
                incoming.refuse();
                continue;
            }
        };
        let connecting = match incoming.accept_with(cfg) {
            Ok(c) => c,
            Err(e) => {
                debug!(partner = %partner.name, error = %e, "signaling accept failed");
                continue;
            }
        };
        let shared = shared.clone();
        let span = info_span!("partner", partner = %partner.name, side = "responder");
        let number = shared.accepted(&partner.name);
        tokio::spawn(respond(connecting, shared, partner, number).instrument(span));
    }
}

async fn respond(
    connecting: quinn::Connecting,
    shared: Arc<Shared>,
    partner: PartnerConfig,
    number: u64,
) {
    let conn = match connecting.await {
        Ok(c) => c,
        Err(e) => {
            // Only the secure channel can fail on certificates.
            shared.record_down_accepted(&partner.name, number, classify(&e, false));
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match alpn.as_deref() {
        Some(p) if p == HELLO_ALPN => respond_hello(conn, &shared, &partner, number).await,
        Some(p) if p == SECURE_ALPN => {
            let has_cert = conn
                .peer_identity()
                .and_then(|i| {
                    i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                        .ok()
                })
                .is_some_and(|c| !c.is_empty());
            if !has_cert {
                conn.close(
                    VarInt::from_u32(close::NO_CLIENT_CERTIFICATE),
                    b"a client certificate is required",
                );
                shared.record_down_accepted(
                    &partner.name,
                    number,
                    Reason::CertificateRejected {
                        detected_by: super::DetectedBy::Us,
                        detail: "the partner presented no client certificate".into(),
                    },
                );
                return;
            }
            let reason = run_secure(&conn, &shared, &partner, Side::Responder, &mut false).await;
            conn.close(
                VarInt::from_u32(close::PROTOCOL),
                reason.to_string().as_bytes(),
            );
            shared.record_down_accepted(&partner.name, number, reason);
        }
        _ => conn.close(
            VarInt::from_u32(close::PROTOCOL),
            b"unknown application protocol",
        ),
    }
}

async fn respond_hello(
    conn: quinn::Connection,
    shared: &Shared,
    partner: &PartnerConfig,
    number: u64,
) {
    let result = async {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| PeeringError::Protocol(e.to_string()))?;
        let peer = expect_hello(read_signal(&mut recv).await?)?;
        write_signal(&mut send, &shared.hello(0)).await?;
        let _ = send.finish();
        Ok::<_, PeeringError>(peer)
    }
    .await;
    let peer = match result {
        Ok(p) => p,
        Err(e) => {
            shared.record_down_accepted(&partner.name, number, Reason::Protocol(e.to_string()));
            return;
        }
    };
    let upgrading = shared.record_hello(&partner.name, &peer);
    let err = conn.closed().await;
    let upgraded = matches!(&err, quinn::ConnectionError::ApplicationClosed(a) if a.error_code == VarInt::from_u32(close::UPGRADE));
    if !(upgrading && upgraded) {
        shared.record_down_accepted(&partner.name, number, classify(&err, true));
    }
}
