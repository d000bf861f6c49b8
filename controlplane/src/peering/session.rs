//! The secure signaling channel once TLS is up: the authenticated hello with session
//! indices, the exporter secret, and the per-epoch X25519 rekey exchange.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

use super::endpoint::{PeeringEvent, Shared, expect_hello};
use super::keys::{
    EXPORTER_LABEL, EphemeralHalf, ExporterSecret, SessionKeys, Side, exporter_context,
};
use super::messages::{Signal, read_signal, write_signal};
use super::status::{Connection, Reason, classify};
use super::{PartnerConfig, PeeringError};

/// Runs an authenticated signaling connection until it ends; returns why it ended.
pub(super) async fn run_secure(
    conn: &quinn::Connection,
    shared: &Shared,
    partner: &PartnerConfig,
    side: Side,
    up: &mut bool,
) -> Reason {
    match secure_session(conn, shared, partner, side, up).await {
        Ok(reason) | Err(reason) => {
            shared
                .rekey
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&partner.name);
            reason
        }
    }
}

async fn secure_session(
    conn: &quinn::Connection,
    shared: &Shared,
    partner: &PartnerConfig,
    side: Side,
    up: &mut bool,
) -> Result<Reason, Reason> {
    // A stream error usually means the connection went away (for the initiator, often
    // because the partner rejected its certificate after the handshake): prefer that.
    let proto = |e: PeeringError| {
        conn.close_reason()
            .map(|c| classify(&c, true))
            .unwrap_or_else(|| Reason::Protocol(e.to_string()))
    };
    let local_index: u32 = rand::random();
    let (mut send, mut recv) = match side {
        Side::Initiator => conn.open_bi().await,
        Side::Responder => conn.accept_bi().await,
    }
    .map_err(|e| classify(&e, true))?;
    let peer = match side {
        Side::Initiator => {
            write_signal(&mut send, &shared.hello(local_index))
                .await
                .map_err(proto)?;
            expect_hello(read_signal(&mut recv).await.map_err(proto)?).map_err(proto)?
        }
        Side::Responder => {
            let peer = expect_hello(read_signal(&mut recv).await.map_err(proto)?).map_err(proto)?;
            write_signal(&mut send, &shared.hello(local_index))
                .await
                .map_err(proto)?;
            peer
        }
    };
    let remote_index = peer.session_index;
    let (i_idx, r_idx) = match side {
        Side::Initiator => (local_index, remote_index),
        Side::Responder => (remote_index, local_index),
    };
    let mut secret = [0u8; 32];
    conn.export_keying_material(&mut secret, EXPORTER_LABEL, &exporter_context(i_idx, r_idx))
        .map_err(|_| Reason::Protocol("TLS exporter unavailable".into()))?;
    let exporter = ExporterSecret::new(secret);
    zeroize::Zeroize::zeroize(&mut secret);

    let (rekey_tx, mut rekey_rx) = mpsc::unbounded_channel();
    shared
        .rekey
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(partner.name.clone(), rekey_tx);
    shared.update(&partner.name, |s| {
        s.connection = Connection::ConnectedAvailable;
        s.secure = true;
        s.reason = None;
        s.partner_secure_peering = Some(true);
        s.reconnect_attempts = 0;
    });
    *up = true;
    info!(
        local_index,
        remote_index, "secure peer relationship established"
    );

    // A reader task, so that waiting for messages is cancel-safe inside select!.
    let (msg_tx, mut msgs) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let msg = read_signal(&mut recv).await;
            let end = !matches!(msg, Ok(Some(_)));
            if msg_tx.send(msg).is_err() || end {
                break;
            }
        }
    });
    let _reader_guard = AbortOnDrop(reader);

    let keys = |epoch, (tx_key, rx_key)| SessionKeys {
        partner: partner.name.clone(),
        epoch,
        tx_key,
        rx_key,
        local_index,
        remote_index,
    };
    let mut epoch = 0u64;
    let mut pending: Option<EphemeralHalf> = None;
    let mut timer = tokio::time::interval(shared.config.rekey_interval);
    loop {
        tokio::select! {
            _ = timer.tick(), if side == Side::Initiator && pending.is_none() => {
                pending = Some(start_rekey(&mut send, epoch + 1).await.map_err(proto)?);
            }
            Some(()) = rekey_rx.recv() => match side {
                Side::Initiator if pending.is_none() => {
                    pending = Some(start_rekey(&mut send, epoch + 1).await.map_err(proto)?);
                }
                Side::Initiator => {}
                Side::Responder => write_signal(&mut send, &Signal::RekeyAsk).await.map_err(proto)?,
            },
            msg = msgs.recv() => match (side, msg) {
                (Side::Responder, Some(Ok(Some(Signal::RekeyRequest { epoch: n, public })))) => {
                    if n != epoch + 1 {
                        return Err(Reason::Protocol(format!("rekey to epoch {n} after {epoch}")));
                    }
                    let half = EphemeralHalf::generate().map_err(proto)?;
                    let ours = hex::encode(half.public());
                    let peer_pub = hex::decode(public).map_err(|_| Reason::Protocol("bad rekey key".into()))?;
                    let pair = half.finish(&exporter, &peer_pub, n, side).map_err(proto)?;
                    write_signal(&mut send, &Signal::RekeyAck { epoch: n, public: ours }).await.map_err(proto)?;
                    epoch = n;
                    emit_keys(shared, &partner.name, keys(n, pair));
                }
                (Side::Initiator, Some(Ok(Some(Signal::RekeyAck { epoch: n, public })))) => {
                    let half = pending.take().ok_or_else(|| Reason::Protocol("unsolicited rekey ack".into()))?;
                    if n != epoch + 1 {
                        return Err(Reason::Protocol(format!("rekey ack for epoch {n}, expected {}", epoch + 1)));
                    }
                    let peer_pub = hex::decode(public).map_err(|_| Reason::Protocol("bad rekey key".into()))?;
                    let pair = half.finish(&exporter, &peer_pub, n, side).map_err(proto)?;
                    epoch = n;
                    emit_keys(shared, &partner.name, keys(n, pair));
                }
                (Side::Initiator, Some(Ok(Some(Signal::RekeyAsk)))) => {
                    if pending.is_none() {
                        pending = Some(start_rekey(&mut send, epoch + 1).await.map_err(proto)?);
                    }
                }
                (_, Some(Ok(Some(other)))) => return Err(Reason::Protocol(format!("unexpected {other:?}"))),
                (_, Some(Err(e))) => return Ok(proto(e)),
                (_, Some(Ok(None)) | None) => {
                    let err = conn.closed().await;
                    return Ok(classify(&err, true));
                }
            },
            err = conn.closed() => return Ok(classify(&err, true)),
        }
    }
}

async fn start_rekey(
    send: &mut quinn::SendStream,
    epoch: u64,
) -> Result<EphemeralHalf, PeeringError> {
    let half = EphemeralHalf::generate()?;
    write_signal(
        send,
        &Signal::RekeyRequest {
            epoch,
            public: hex::encode(half.public()),
        },
    )
    .await?;
    Ok(half)
}

fn emit_keys(shared: &Shared, partner: &str, keys: SessionKeys) {
    info!(partner, epoch = keys.epoch, "new key epoch");
    let epoch = keys.epoch;
    shared.update(partner, |s| s.epoch = epoch);
    let _ = shared.events.send(PeeringEvent::Keys(keys));
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
