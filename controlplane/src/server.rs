//! The management server: every service behind the token layer, over TLS
//! with the daemon's own certificate.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use shunt_proto::management as m;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::appliance::Appliance;
use crate::service::{
    AuthLayer, DataStoreService, KeystoreService, LicensingService, PartnersService,
    PeeringService, PolicyService, StatsService, SystemService,
};
use crate::tls::ManagementIdentity;
use tokio_stream::StreamExt as _;

/// Serves the management API on `listener` until `shutdown` completes.
pub async fn serve(
    appliance: Arc<Appliance>,
    identity: &ManagementIdentity,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        &identity.certificate_pem,
        identity.key_pem.as_bytes(),
    ));
    let a = &appliance;
    Server::builder()
        .tls_config(tls)
        .context("invalid management TLS configuration")?
        .layer(AuthLayer::new(a.clone()))
        .add_service(m::system_server::SystemServer::new(SystemService::new(
            a.clone(),
        )))
        .add_service(m::keystore_server::KeystoreServer::new(
            KeystoreService::new(a.clone()),
        ))
        .add_service(m::partners_server::PartnersServer::new(
            PartnersService::new(a.clone()),
        ))
        .add_service(m::policy_server::PolicyServer::new(PolicyService::new(
            a.clone(),
        )))
        .add_service(m::stats_server::StatsServer::new(StatsService::new(
            a.clone(),
        )))
        .add_service(m::data_store_server::DataStoreServer::new(
            DataStoreService::new(a.clone()),
        ))
        .add_service(m::licensing_server::LicensingServer::new(
            LicensingService::new(a.clone()),
        ))
        .add_service(m::secure_peering_server::SecurePeeringServer::new(
            PeeringService::new(a.clone()),
        ))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .context("management server failed")
}

/// Accepted connections with Nagle's algorithm off: management replies are
/// small and must not wait for the peer's delayed ACK (~40 ms).
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}
