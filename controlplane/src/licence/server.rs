//! The remote licence server: one `shunt-control` serves signed licence files to
//! others over a small TCP request/response protocol. Licences authenticate
//! themselves (the client verifies the signature), so the transport adds none.
//!
//! Wire format, both directions: a 4-byte big-endian length, then a JSON object.
//! Request `{"appliance": "<name>"}`; response `{"licence": "<file text>"}` or
//! `{"error": "<message>"}`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::LicenceError;

const MAX_MESSAGE: u32 = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Somewhere a licence file can be fetched from.
pub trait LicenceSource: Send + Sync {
    /// Fetches the licence file bytes (not yet verified).
    fn fetch(&self) -> impl Future<Output = Result<Vec<u8>, LicenceError>> + Send;
}

#[derive(Serialize, Deserialize)]
struct Request {
    appliance: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Response {
    #[serde(skip_serializing_if = "Option::is_none")]
    licence: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Serves licence files: a file per appliance name, or a default for any appliance.
#[derive(Clone, Default)]
pub struct LicenceServer {
    licences: Arc<RwLock<HashMap<String, String>>>,
    default: Arc<RwLock<Option<String>>>,
}

impl std::fmt::Debug for LicenceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenceServer").finish_non_exhaustive()
    }
}

impl LicenceServer {
    /// A server with no licences.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `file` to the appliance named `appliance`.
    pub fn assign(&self, appliance: &str, file: &[u8]) {
        let text = String::from_utf8_lossy(file).into_owned();
        self.licences
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(appliance.to_owned(), text);
    }

    /// Serves `file` to every appliance without its own assignment.
    pub fn set_default(&self, file: &[u8]) {
        *self.default.write().unwrap_or_else(|e| e.into_inner()) =
            Some(String::from_utf8_lossy(file).into_owned());
    }

    /// Answers requests on `listener` until the task is dropped or aborted.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(e) = tokio::time::timeout(TIMEOUT, server.answer(stream)).await {
                    tracing::debug!(%peer, error = %e, "licence request timed out");
                }
            });
        }
    }

    async fn answer(&self, mut stream: TcpStream) {
        let response = match read_frame::<Request>(&mut stream).await {
            Ok(req) => self.lookup(&req.appliance),
            Err(e) => Response {
                error: Some(e),
                ..Response::default()
            },
        };
        let _ = write_frame(&mut stream, &response).await;
    }

    fn lookup(&self, appliance: &str) -> Response {
        let assigned = self
            .licences
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(appliance)
            .cloned();
        let file = assigned.or_else(|| {
            self.default
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        match file {
            Some(licence) => Response {
                licence: Some(licence),
                error: None,
            },
            None => Response {
                licence: None,
                error: Some(format!("no licence is assigned to appliance {appliance:?}")),
            },
        }
    }
}

/// A licence server another appliance runs.
#[derive(Clone, Debug)]
pub struct RemoteLicence {
    /// The server's address.
    pub server: SocketAddr,
    /// This appliance's name, as the server knows it.
    pub appliance: String,
}

impl LicenceSource for RemoteLicence {
    async fn fetch(&self) -> Result<Vec<u8>, LicenceError> {
        let err = |detail: String| LicenceError::Server {
            server: self.server.to_string(),
            detail,
        };
        let exchange = async {
            let mut stream = TcpStream::connect(self.server)
                .await
                .map_err(|e| e.to_string())?;
            write_frame(
                &mut stream,
                &Request {
                    appliance: self.appliance.clone(),
                },
            )
            .await?;
            read_frame::<Response>(&mut stream).await
        };
        let response = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| err("no answer within 5 s".into()))?
            .map_err(err)?;
        match (response.licence, response.error) {
            (Some(licence), _) => Ok(licence.into_bytes()),
            (None, Some(e)) => Err(err(e)),
            (None, None) => Err(err("empty answer".into())),
        }
    }
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, msg: &T) -> Result<(), String> {
    let body = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
    let len = u32::try_from(body.len()).map_err(|_| "message too large".to_owned())?;
    stream
        .write_all(&len.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(&body).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

async fn read_frame<T: for<'de> Deserialize<'de>>(stream: &mut TcpStream) -> Result<T, String> {
    let len = stream.read_u32().await.map_err(|e| e.to_string())?;
    if len > MAX_MESSAGE {
        return Err(format!(
            "message of {len} bytes exceeds the {MAX_MESSAGE}-byte limit"
        ));
    }
    let mut body = vec![0; len as usize];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("malformed message: {e}"))
}
