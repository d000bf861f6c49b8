//! Licensing service: install a licence file, point at a licence server,
//! status. Verification goes through [`crate::licensing::LicenceVerifier`].

use std::sync::Arc;

use shunt_proto::management as m;
use tonic::{Request, Response, Status};

use super::{require, session};
use crate::appliance::Appliance;
use crate::auth::Role;
use crate::licensing::LicenceState;

pub struct LicensingService {
    appliance: Arc<Appliance>,
}

impl LicensingService {
    pub fn new(appliance: Arc<Appliance>) -> Self {
        Self { appliance }
    }
}

pub(crate) fn licence_status(appliance: &Appliance) -> m::LicenceStatus {
    let l = appliance.licence();
    let valid = l.is_valid_now();
    let detail = if !valid && l.detail.is_empty() {
        "licence expired: install a new one".into()
    } else {
        l.detail
    };
    m::LicenceStatus {
        valid,
        holder: l.holder,
        expires_at_unix: l.expires_at_unix,
        source: l.source,
        detail,
    }
}

#[tonic::async_trait]
impl m::licensing_server::Licensing for LicensingService {
    async fn install_licence(
        &self,
        request: Request<m::InstallLicenceRequest>,
    ) -> Result<Response<m::LicenceStatus>, Status> {
        require(&request, Role::Admin)?;
        let licence = request.into_inner().licence;
        let verified = self
            .appliance
            .licence_verifier
            .verify(&licence)
            .map_err(|why| Status::failed_precondition(format!("licence refused: {why}")))?;
        self.appliance.set_licence(LicenceState {
            holder: verified.holder,
            expires_at_unix: verified.expires_at_unix,
            source: "file".into(),
            detail: String::new(),
        });
        Ok(Response::new(licence_status(&self.appliance)))
    }

    async fn set_licence_server(
        &self,
        request: Request<m::SetLicenceServerRequest>,
    ) -> Result<Response<m::LicenceStatus>, Status> {
        require(&request, Role::Admin)?;
        let body = request.into_inner();
        if body.address.is_empty() {
            self.appliance.set_licence(LicenceState::none());
            return Ok(Response::new(licence_status(&self.appliance)));
        }
        crate::tls::parse_fingerprint(&body.fingerprint)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // TODO: fetching licences from a licence server needs the licensing
        // library (issue 5, item 5); until it is merged the request is
        // refused rather than pretending a server answered.
        Err(Status::failed_precondition(format!(
            "cannot use licence server {}: this build has no licence-server client; install a licence file instead",
            body.address
        )))
    }

    async fn get_licence(
        &self,
        request: Request<m::GetLicenceRequest>,
    ) -> Result<Response<m::LicenceStatus>, Status> {
        session(&request)?;
        Ok(Response::new(licence_status(&self.appliance)))
    }
}
