//! SecurePeering service, configuration side: enable/disable (refused
//! without a valid licence), credential mode, verification setting, cipher
//! specification. Credential import, the private CA and enrollment come from
//! the credentials library (issue 5, items 4 and 6); until it is merged those
//! calls are refused with a reason instead of pretending to work.

use std::sync::Arc;

use shunt_proto::management as m;
use tonic::{Request, Response, Status};

use super::{require, session, store_status};
use crate::appliance::{Appliance, PEERING_SETTINGS, PeeringSettings};
use crate::auth::Role;
use crate::keystore::KeystoreState;
use crate::store::SETTINGS;

pub struct PeeringService {
    appliance: Arc<Appliance>,
}

impl PeeringService {
    pub fn new(appliance: Arc<Appliance>) -> Self {
        Self { appliance }
    }

    fn update(
        &self,
        change: impl FnOnce(&mut PeeringSettings),
    ) -> Result<Response<m::PeeringStatus>, Status> {
        let mut settings = self.appliance.peering_settings().map_err(super::internal)?;
        change(&mut settings);
        self.appliance
            .store
            .put(SETTINGS, PEERING_SETTINGS, &settings)
            .map_err(store_status)?;
        self.appliance.changed();
        Ok(Response::new(peering_status(&self.appliance)?))
    }
}

/// Secure peering as the API shows it, with the reason it is not active.
pub(crate) fn peering_status(appliance: &Appliance) -> Result<m::PeeringStatus, Status> {
    let s = appliance.peering_settings().map_err(super::internal)?;
    let licence_valid = appliance.licence().is_valid_now();
    let detail = match (s.enabled, appliance.keystore_state()) {
        (false, _) => "secure peering is disabled",
        (true, _) if !licence_valid => "inactive: no valid crypto licence",
        (true, KeystoreState::Sealed) => "inactive: keystore sealed; open it with its password",
        (true, KeystoreState::Uninitialized) => "inactive: keystore not initialized",
        (true, KeystoreState::Open) if !s.credentials_installed => {
            "inactive: no credentials installed"
        }
        (true, KeystoreState::Open) => "",
    };
    Ok(m::PeeringStatus {
        enabled: s.enabled,
        mode: s.mode,
        verification: if s.verification == 0 {
            m::Verification::Full as i32
        } else {
            s.verification
        },
        cipher_spec: s.cipher_spec,
        detail: detail.into(),
        credentials_installed: s.credentials_installed,
        ca_stores: s.ca_stores,
        private_ca: s.private_ca,
    })
}

/// Checks a cipher specification ("A:B:...") against the TLS 1.3 and 1.2
/// suites the TLS library offers; the error names what it cannot honour.
pub fn check_cipher_spec(spec: &str) -> Result<(), String> {
    let known: Vec<&str> = rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .filter_map(|s| s.suite().as_str())
        .collect();
    let unknown: Vec<&str> = spec
        .split(':')
        .map(str::trim)
        .filter(|n| !n.is_empty() && !known.contains(n))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "cipher suites not supported: {}; choose from {}",
            unknown.join(", "),
            known.join(", ")
        ))
    }
}

fn needs_credentials_library(what: &str) -> Status {
    Status::failed_precondition(format!(
        "{what} needs the credentials library, which this build of shunt-control does not include"
    ))
}

#[tonic::async_trait]
impl m::secure_peering_server::SecurePeering for PeeringService {
    async fn set_enabled(
        &self,
        request: Request<m::SetPeeringEnabledRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        let enabled = request.into_inner().enabled;
        if enabled {
            let licence = self.appliance.licence();
            if !licence.is_valid_now() {
                let why = if licence.detail.is_empty() {
                    "licence expired".to_owned()
                } else {
                    licence.detail
                };
                return Err(Status::failed_precondition(format!(
                    "secure peering needs a valid crypto licence ({why}); install one with `shuntctl licence install FILE`"
                )));
            }
        }
        tracing::info!(enabled, "secure peering setting changed");
        self.update(|s| s.enabled = enabled)
    }

    async fn get_peering(
        &self,
        request: Request<m::GetPeeringRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        session(&request)?;
        Ok(Response::new(peering_status(&self.appliance)?))
    }

    async fn set_credential_mode(
        &self,
        request: Request<m::SetCredentialModeRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        let mode = request.into_inner().mode;
        if !matches!(
            m::CredentialMode::try_from(mode),
            Ok(m::CredentialMode::Own | m::CredentialMode::PrivateCa)
        ) {
            return Err(Status::invalid_argument(
                "credential mode: use own or private-ca",
            ));
        }
        self.update(|s| s.mode = mode)
    }

    async fn import_credentials(
        &self,
        request: Request<m::ImportCredentialsRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        Err(needs_credentials_library("importing a certificate and key"))
    }

    async fn import_ca_certificates(
        &self,
        request: Request<m::ImportCaCertificatesRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        Err(needs_credentials_library("importing CA certificates"))
    }

    async fn set_verification(
        &self,
        request: Request<m::SetVerificationRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        let v = request.into_inner().verification;
        if !matches!(
            m::Verification::try_from(v),
            Ok(m::Verification::Full | m::Verification::ChainOnly)
        ) {
            return Err(Status::invalid_argument(
                "verification: use full or chain-only",
            ));
        }
        self.update(|s| s.verification = v)
    }

    async fn set_cipher_spec(
        &self,
        request: Request<m::SetCipherSpecRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        let spec = request.into_inner().spec;
        check_cipher_spec(&spec).map_err(Status::invalid_argument)?;
        self.update(|s| s.cipher_spec = spec)
    }

    async fn create_private_ca(
        &self,
        request: Request<m::CreatePrivateCaRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        Err(needs_credentials_library("creating the private CA"))
    }

    async fn connect_appliance(
        &self,
        request: Request<m::ConnectApplianceRequest>,
    ) -> Result<Response<m::ConnectedPeer>, Status> {
        require(&request, Role::Admin)?;
        Err(needs_credentials_library("enrolling a remote appliance"))
    }

    async fn list_connected_peers(
        &self,
        request: Request<m::ListConnectedPeersRequest>,
    ) -> Result<Response<m::ConnectedPeerList>, Status> {
        session(&request)?;
        // No enrollment is possible without the credentials library, so no
        // appliance has been connected.
        Ok(Response::new(m::ConnectedPeerList { peers: Vec::new() }))
    }

    async fn remove_connected_peer(
        &self,
        request: Request<m::RemoveConnectedPeerRequest>,
    ) -> Result<Response<m::RemoveConnectedPeerReply>, Status> {
        require(&request, Role::Admin)?;
        let name = request.into_inner().name;
        Err(Status::not_found(format!(
            "no connected peer named {name:?}; see `shuntctl peering peers`"
        )))
    }

    async fn request_csr(
        &self,
        request: Request<m::RequestCsrRequest>,
    ) -> Result<Response<m::RequestCsrReply>, Status> {
        require(&request, Role::Admin)?;
        Err(needs_credentials_library(
            "making a key and CSR for enrollment",
        ))
    }

    async fn install_issued_certificate(
        &self,
        request: Request<m::InstallIssuedCertificateRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        Err(needs_credentials_library(
            "installing an issued certificate",
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cipher_spec_names_what_it_cannot_honour() {
        super::check_cipher_spec("TLS13_AES_256_GCM_SHA384:TLS13_AES_128_GCM_SHA256").unwrap();
        let err = super::check_cipher_spec("TLS13_AES_256_GCM_SHA384:RC4-MD5").unwrap_err();
        assert!(
            err.contains("RC4-MD5") && !err.contains("not supported: TLS13"),
            "{err}"
        );
    }
}
