//! Signaling messages between partner appliances and their framing on QUIC streams:
//! a 4-byte big-endian length, then one protobuf `shunt.signaling.v1.SignalMessage`
//! (`proto/proto/shunt/signaling.proto`, at most 16 KiB). [`Signal`] is the form the
//! endpoint works with; the codec converts at the stream.

use prost::Message as _;
use serde::{Deserialize, Serialize};
use shunt_proto::signaling as pb;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::PeeringError;

/// Signaling protocol version carried in every hello.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest accepted message body.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// One signaling message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Signal {
    /// First message on each channel, sent by both sides.
    Hello(Hello),
    /// Initiator → responder: start key epoch `epoch` with this ephemeral X25519 key.
    RekeyRequest {
        /// The new epoch number (1 for the first).
        epoch: u64,
        /// Hex of the 32-byte ephemeral public key.
        public: String,
    },
    /// Responder → initiator: accept epoch `epoch` with this ephemeral X25519 key.
    RekeyAck {
        /// The epoch acknowledged.
        epoch: u64,
        /// Hex of the 32-byte ephemeral public key.
        public: String,
    },
    /// Responder → initiator: please start a new epoch now.
    RekeyAsk,
}

/// A hello: who is speaking and whether it runs secure peering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The sender's appliance name.
    pub appliance: String,
    /// Whether the sender has secure peering enabled and usable.
    pub secure_peering: bool,
    /// Whether the sender's operator enabled secure peering (it may still be unusable,
    /// e.g. keystore sealed); decides the mode matrix row.
    #[serde(default)]
    pub secure_peering_configured: bool,
    /// When `secure_peering` is false: why (e.g. "keystore sealed").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_off_reason: Option<String>,
    /// Optional features the sender supports (e.g. "compression", "rekey-x25519").
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// On the secure channel: the sender's session index for tunnel packets it receives.
    #[serde(default)]
    pub session_index: u32,
}

/// Writes one framed message.
pub async fn write_signal<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Signal,
) -> Result<(), PeeringError> {
    let body = encode(msg)?;
    let len = u32::try_from(body.len())
        .map_err(|_| PeeringError::Protocol("message too large".into()))?;
    w.write_all(&len.to_be_bytes()).await.map_err(io)?;
    w.write_all(&body).await.map_err(io)?;
    Ok(())
}

/// Reads one framed message; `Ok(None)` at a clean end of stream.
pub async fn read_signal<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Signal>, PeeringError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(PeeringError::Protocol(format!(
            "message of {len} bytes exceeds {MAX_MESSAGE}"
        )));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.map_err(io)?;
    decode(&body).map(Some)
}

/// Encodes a message body.
pub fn encode(msg: &Signal) -> Result<Vec<u8>, PeeringError> {
    use pb::signal_message::Body;
    let share = |public: &str| {
        hex::decode(public).map_err(|_| PeeringError::Protocol("ephemeral key is not hex".into()))
    };
    let body = match msg {
        Signal::Hello(h) => Body::Hello(pb::Hello {
            version: u32::from(h.version),
            appliance: h.appliance.clone(),
            secure_peering: h.secure_peering,
            secure_peering_configured: h.secure_peering_configured,
            secure_off_reason: h.secure_off_reason.clone().unwrap_or_default(),
            capabilities: h.capabilities.clone(),
            session_index: h.session_index,
        }),
        Signal::RekeyRequest { epoch, public } => Body::RekeyRequest(pb::RekeyRequest {
            epoch: *epoch,
            x25519_public: share(public)?,
        }),
        Signal::RekeyAck { epoch, public } => Body::RekeyAck(pb::RekeyAck {
            epoch: *epoch,
            x25519_public: share(public)?,
        }),
        Signal::RekeyAsk => Body::RekeyAsk(pb::RekeyAsk {}),
    };
    Ok(pb::SignalMessage { body: Some(body) }.encode_to_vec())
}

/// Parses a message body (exposed for fuzzing and tests).
pub fn decode(body: &[u8]) -> Result<Signal, PeeringError> {
    use pb::signal_message::Body;
    let malformed = |why: String| PeeringError::Protocol(format!("malformed signal: {why}"));
    let msg = pb::SignalMessage::decode(body).map_err(|e| malformed(e.to_string()))?;
    Ok(match msg.body {
        None => return Err(malformed("empty or unknown message".into())),
        Some(Body::Hello(h)) => Signal::Hello(Hello {
            version: u16::try_from(h.version)
                .map_err(|_| malformed(format!("version {} out of range", h.version)))?,
            appliance: h.appliance,
            secure_peering: h.secure_peering,
            secure_peering_configured: h.secure_peering_configured,
            secure_off_reason: (!h.secure_off_reason.is_empty()).then_some(h.secure_off_reason),
            capabilities: h.capabilities,
            session_index: h.session_index,
        }),
        Some(Body::RekeyRequest(r)) => Signal::RekeyRequest {
            epoch: r.epoch,
            public: hex::encode(r.x25519_public),
        },
        Some(Body::RekeyAck(r)) => Signal::RekeyAck {
            epoch: r.epoch,
            public: hex::encode(r.x25519_public),
        },
        Some(Body::RekeyAsk(_)) => Signal::RekeyAsk,
    })
}

fn io(e: std::io::Error) -> PeeringError {
    PeeringError::Protocol(format!("signaling stream: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let hello = Signal::Hello(Hello {
            version: PROTOCOL_VERSION,
            appliance: "site-a".into(),
            secure_peering: false,
            secure_peering_configured: true,
            secure_off_reason: Some("keystore sealed".into()),
            capabilities: vec!["rekey-x25519".into()],
            session_index: 7,
        });
        let mut buf = Vec::new();
        write_signal(&mut buf, &hello).await.unwrap();
        write_signal(&mut buf, &Signal::RekeyAsk).await.unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_signal(&mut r).await.unwrap(), Some(hello));
        assert_eq!(read_signal(&mut r).await.unwrap(), Some(Signal::RekeyAsk));
        assert_eq!(read_signal(&mut r).await.unwrap(), None);

        let mut huge = (MAX_MESSAGE as u32 + 1).to_be_bytes().to_vec();
        huge.extend(vec![b' '; 8]);
        assert!(read_signal(&mut huge.as_slice()).await.is_err());
        assert!(decode(b"").is_err(), "a message without a body is refused");
        assert!(decode(&[0xff, 0x00]).is_err());
        let rekey = Signal::RekeyRequest {
            epoch: 3,
            public: hex::encode([7u8; 32]),
        };
        assert_eq!(decode(&encode(&rekey).unwrap()).unwrap(), rekey);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes from the network either parse or yield an error; never a panic.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        /// Any framed stream is read without panicking and without reading past a limit.
        #[test]
        fn framing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = rt.block_on(read_signal(&mut bytes.as_slice()));
        }
    }
}
