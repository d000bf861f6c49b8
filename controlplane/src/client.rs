//! Client side of the management API, used by `shuntctl`, the tests, the
//! latency benchmark and (for enrollment) another appliance: a TLS channel
//! pinned to the daemon's certificate fingerprint, plus a bearer token.

use std::sync::Arc;

use http::Uri;
use hyper_util::rt::TokioIo;
use shunt_proto::management as m;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::tls;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(<token>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// A connection to one `shunt-control`.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    bearer: Bearer,
}

impl Client {
    /// Connects to `address` ("host:port") and checks that the server's
    /// certificate has the SHA-256 `fingerprint`.
    pub async fn connect(address: &str, fingerprint: &str) -> anyhow::Result<Self> {
        let pin = tls::parse_fingerprint(fingerprint)?;
        let config = Arc::new(tls::pinned_client_config(pin));
        let target = address.to_owned();
        let connector = tower::service_fn(move |_: Uri| {
            let config = config.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from(tls::MANAGEMENT_NAME)
                    .expect("static server name is valid");
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let endpoint = Endpoint::from_shared(format!("http://{address}"))?;
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach shunt-control at {address}: {}",
                    error_chain(&e)
                )
            })?;
        Ok(Self {
            channel,
            bearer: Bearer(None),
        })
    }

    /// Uses `token` for every further call.
    pub fn with_token(mut self, token: &str) -> anyhow::Result<Self> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("token is not printable ASCII"))?;
        self.bearer = Bearer(Some(value));
        Ok(self)
    }

    /// Logs in and keeps the token for further calls.
    pub async fn login(
        &mut self,
        account: &str,
        password: &str,
    ) -> Result<m::LoginReply, tonic::Status> {
        let reply = self
            .system()
            .login(m::LoginRequest {
                account: account.to_owned(),
                password: password.to_owned(),
            })
            .await?
            .into_inner();
        let value = format!("Bearer {}", reply.token)
            .parse()
            .map_err(|_| tonic::Status::internal("bad token"))?;
        self.bearer = Bearer(Some(value));
        Ok(reply)
    }

    pub fn system(&self) -> m::system_client::SystemClient<Authed> {
        m::system_client::SystemClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn keystore(&self) -> m::keystore_client::KeystoreClient<Authed> {
        m::keystore_client::KeystoreClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    pub fn partners(&self) -> m::partners_client::PartnersClient<Authed> {
        m::partners_client::PartnersClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    pub fn policy(&self) -> m::policy_client::PolicyClient<Authed> {
        m::policy_client::PolicyClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn stats(&self) -> m::stats_client::StatsClient<Authed> {
        m::stats_client::StatsClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn data_store(&self) -> m::data_store_client::DataStoreClient<Authed> {
        m::data_store_client::DataStoreClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    pub fn licensing(&self) -> m::licensing_client::LicensingClient<Authed> {
        m::licensing_client::LicensingClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    pub fn peering(&self) -> m::secure_peering_client::SecurePeeringClient<Authed> {
        m::secure_peering_client::SecurePeeringClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
