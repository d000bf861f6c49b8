//! Licensing service: install a licence file, take licences from a licence
//! server (another `shunt-control` serving them), status with expiry. Files
//! are verified with the Ed25519 key the daemon was started with.

use std::sync::Arc;
use std::time::SystemTime;

use shunt_proto::management as m;
use tonic::{Request, Response, Status};

use super::{require, session};
use crate::appliance::Appliance;
use crate::auth::Role;
use crate::licence::{InstalledLicence, LicenceError, LicenceOrigin, LicenceSource, RemoteLicence};

pub struct LicensingService {
    appliance: Arc<Appliance>,
}

impl LicensingService {
    pub fn new(appliance: Arc<Appliance>) -> Self {
        Self { appliance }
    }
}

pub(crate) fn licence_status(appliance: &Appliance) -> m::LicenceStatus {
    status_of(&appliance.licence())
}

fn status_of(l: &InstalledLicence) -> m::LicenceStatus {
    let check = l.check(SystemTime::now());
    let (holder, expires_at_unix) = l
        .licence
        .as_ref()
        .map(|lic| (lic.terms().customer.clone(), lic.terms().not_after))
        .unwrap_or_default();
    let mut detail = match &check {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    };
    if let (Ok(()), Some(problem)) = (&check, &l.problem) {
        // Still valid, but the last refresh failed: say so.
        detail = format!("valid, but the last licence refresh failed: {problem}");
    }
    m::LicenceStatus {
        valid: check.is_ok(),
        holder,
        expires_at_unix,
        source: l.origin.to_string(),
        detail,
    }
}

/// Fetches this appliance's licence from the licence server at `server`
/// ("host:port") and installs it. On failure the held licence stays and the
/// status says why the refresh failed.
pub async fn fetch_licence(
    appliance: &Arc<Appliance>,
    server: &str,
) -> Result<InstalledLicence, LicenceError> {
    let origin = LicenceOrigin::Server(server.to_owned());
    let result = async {
        let address = tokio::net::lookup_host(server)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| LicenceError::Server {
                server: server.to_owned(),
                detail: "the address does not resolve; use host:port".into(),
            })?;
        let remote = RemoteLicence {
            server: address,
            appliance: appliance.name().to_owned(),
        };
        let file = remote.fetch().await?;
        appliance.install_licence(&file, origin.clone())
    }
    .await;
    if let Err(e) = &result {
        tracing::warn!(%server, error = %e, "licence fetch failed");
        appliance.set_licence_problem(origin, e.to_string());
    }
    result
}

fn licence_refused(e: LicenceError) -> Status {
    Status::failed_precondition(format!("licence refused: {e}"))
}

#[tonic::async_trait]
impl m::licensing_server::Licensing for LicensingService {
    async fn install_licence(
        &self,
        request: Request<m::InstallLicenceRequest>,
    ) -> Result<Response<m::LicenceStatus>, Status> {
        require(&request, Role::Admin)?;
        let licence = request.into_inner().licence;
        let installed = super::blocking(&self.appliance, move |a| {
            a.install_licence(&licence, LicenceOrigin::File)
        })
        .await?
        .map_err(licence_refused)?;
        tracing::info!(source = "file", "licence installed");
        Ok(Response::new(status_of(&installed)))
    }

    async fn set_licence_server(
        &self,
        request: Request<m::SetLicenceServerRequest>,
    ) -> Result<Response<m::LicenceStatus>, Status> {
        require(&request, Role::Admin)?;
        let body = request.into_inner();
        if body.address.is_empty() {
            if matches!(self.appliance.licence().origin, LicenceOrigin::Server(_)) {
                self.appliance.remove_licence().map_err(super::internal)?;
            }
            return Ok(Response::new(licence_status(&self.appliance)));
        }
        // Licences authenticate themselves (signature), so the transport to the
        // licence server needs no pinning; a fingerprint, if given, must be
        // well formed but is not used.
        if !body.fingerprint.is_empty() {
            crate::tls::parse_fingerprint(&body.fingerprint)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let installed = fetch_licence(&self.appliance, &body.address)
            .await
            .map_err(|e| match e {
                LicenceError::Server { .. } => Status::unavailable(format!(
                    "{e}; check the address and that the server runs with --serve-licence"
                )),
                other => licence_refused(other),
            })?;
        tracing::info!(server = %body.address, "licence fetched from licence server");
        Ok(Response::new(status_of(&installed)))
    }

    async fn get_licence(
        &self,
        request: Request<m::GetLicenceRequest>,
    ) -> Result<Response<m::LicenceStatus>, Status> {
        session(&request)?;
        Ok(Response::new(licence_status(&self.appliance)))
    }
}
