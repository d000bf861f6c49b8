//! SecurePeering service: enable/disable (refused without a valid licence),
//! credential mode, own credentials (PEM, encrypted PEM, PKCS#12), named CA
//! stores, verification setting, cipher specification, and the private CA
//! with the enrollment of remote appliances (their private keys never leave
//! them). Private keys go to the keystore through `credentials::SecretStore`.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use shunt_proto::management as m;
use tonic::{Request, Response, Status};

use super::{require, session, store_status};
use crate::appliance::{
    Appliance, ConnectedPeerRecord, PEERING_KEY, PEERING_SETTINGS, PRIVATE_CA_KEY, PeeringSettings,
};
use crate::auth::Role;
use crate::ca::{Ca, CaError, Enrollment};
use crate::credentials::{
    CipherSpec, CredentialError, Secret, SecretStoreError, certificates_from_pem, import_pem,
    import_pkcs12,
};
use crate::keystore::KeystoreState;
use crate::store::SETTINGS;

/// Name of the CA store that holds the private CA's certificate.
pub const PRIVATE_CA_STORE: &str = "private-ca";

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
        update_settings(&self.appliance, change)?;
        Ok(Response::new(peering_status(&self.appliance)?))
    }
}

fn update_settings(
    appliance: &Appliance,
    change: impl FnOnce(&mut PeeringSettings),
) -> Result<(), Status> {
    let mut settings = appliance.peering_settings().map_err(super::internal)?;
    change(&mut settings);
    appliance
        .store
        .put(SETTINGS, PEERING_SETTINGS, &settings)
        .map_err(store_status)?;
    appliance.changed();
    Ok(())
}

fn credential_status(e: CredentialError) -> Status {
    match e {
        CredentialError::SecretStore(e) => secret_store_status(e),
        other => Status::invalid_argument(other.to_string()),
    }
}

fn secret_store_status(e: SecretStoreError) -> Status {
    match e {
        SecretStoreError::Sealed => Status::failed_precondition(
            "the keystore is sealed: open it (`shuntctl keystore open`) before handling private keys",
        ),
        SecretStoreError::Storage(why) if why.contains("not initialized") => {
            Status::failed_precondition(format!(
                "{why}: run `shuntctl keystore init` before handling private keys"
            ))
        }
        other => Status::internal(other.to_string()),
    }
}

fn ca_status(e: CaError) -> Status {
    match e {
        CaError::Credential(e) => credential_status(e),
        CaError::SecretStore(e) => secret_store_status(e),
        CaError::NoPendingEnrollment => Status::failed_precondition(e.to_string()),
        CaError::BadName(_) | CaError::BadCsr(_) | CaError::NotInstallable(_) => {
            Status::invalid_argument(e.to_string())
        }
        other => Status::internal(other.to_string()),
    }
}

fn pem_chain(chain: &[CertificateDer<'_>]) -> String {
    pem::encode_many(
        &chain
            .iter()
            .map(|c| pem::Pem::new("CERTIFICATE", c.to_vec()))
            .collect::<Vec<_>>(),
    )
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn days(n: u32, default: u32) -> Duration {
    Duration::from_secs(u64::from(if n == 0 { default } else { n }) * 86_400)
}

/// Issues this appliance's own certificate from its private CA (key made and
/// kept in the local keystore) and installs it with the CA as trust anchor.
fn enroll_self(appliance: &Appliance, ca: &Ca, validity: Duration) -> Result<(), Status> {
    let store = appliance.secrets();
    let enrollment = Enrollment::new(PEERING_KEY);
    let csr = enrollment
        .make_csr(store, appliance.name())
        .map_err(ca_status)?;
    let issued = ca
        .sign_csr(store, &csr, &[appliance.name().to_owned()], validity)
        .map_err(ca_status)?;
    let installed = enrollment
        .install_issued(store, issued.certificate, issued.ca_certificate)
        .map_err(ca_status)?;
    let chain = pem_chain(&installed.identity.chain);
    let ca_pem = ca.certificate_pem();
    update_settings(appliance, |s| {
        s.identity_chain_pem = chain;
        s.trust_pem.insert(PRIVATE_CA_STORE.into(), ca_pem.clone());
        s.ca_stores = s.trust_pem.keys().cloned().collect();
        s.private_ca_pem = ca_pem;
        s.private_ca = true;
        s.credentials_installed = true;
        s.mode = m::CredentialMode::PrivateCa as i32;
    })
}

/// Secure peering as the API shows it, with the reason it is not active.
pub(crate) fn peering_status(appliance: &Appliance) -> Result<m::PeeringStatus, Status> {
    let s = appliance.peering_settings().map_err(super::internal)?;
    let licence = appliance.licence().check(SystemTime::now());
    let licence_detail;
    let detail = match (s.enabled, appliance.keystore_state()) {
        (false, _) => "secure peering is disabled",
        (true, _) if licence.is_err() => {
            licence_detail = format!(
                "inactive: {}",
                licence.err().map(|e| e.to_string()).unwrap_or_default()
            );
            &licence_detail
        }
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

#[tonic::async_trait]
impl m::secure_peering_server::SecurePeering for PeeringService {
    async fn set_enabled(
        &self,
        request: Request<m::SetPeeringEnabledRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        let enabled = request.into_inner().enabled;
        if enabled && let Err(why) = self.appliance.licence().check(SystemTime::now()) {
            return Err(Status::failed_precondition(format!(
                "secure peering cannot be enabled: {why}; install a licence with \
                 `shuntctl licence install FILE` or `shuntctl licence server HOST:PORT`"
            )));
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
        let material = request.into_inner().material.ok_or_else(|| {
            Status::invalid_argument("give the credentials as a PEM pair or a PKCS#12 bundle")
        })?;
        let appliance = self.appliance.clone();
        super::blocking(&self.appliance, move |_| {
            let identity = match material {
                m::import_credentials_request::Material::Pem(p) => {
                    let password =
                        (!p.key_password.is_empty()).then(|| Secret::from(p.key_password.as_str()));
                    import_pem(
                        p.certificate_chain_pem.as_bytes(),
                        p.private_key_pem.as_bytes(),
                        password.as_ref(),
                    )
                }
                m::import_credentials_request::Material::Pkcs12(b) => {
                    import_pkcs12(&b.der, &Secret::from(b.file_password.as_str()))
                }
            }
            .map_err(credential_status)?;
            let subject = identity.info.subject.clone();
            let stored = identity
                .store(appliance.secrets(), PEERING_KEY)
                .map_err(credential_status)?;
            let chain = pem_chain(&stored.chain);
            update_settings(&appliance, |s| {
                s.identity_chain_pem = chain;
                s.credentials_installed = true;
                s.mode = m::CredentialMode::Own as i32;
            })?;
            tracing::info!(%subject, "own peering credentials imported");
            Ok::<_, Status>(())
        })
        .await??;
        Ok(Response::new(peering_status(&self.appliance)?))
    }

    async fn import_ca_certificates(
        &self,
        request: Request<m::ImportCaCertificatesRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        let m::ImportCaCertificatesRequest {
            store,
            certificates_pem,
        } = request.into_inner();
        let store = store.trim().to_owned();
        if store.is_empty() {
            return Err(Status::invalid_argument(
                "name the CA store, e.g. `partners`",
            ));
        }
        let certs =
            certificates_from_pem(certificates_pem.as_bytes()).map_err(credential_status)?;
        let added = pem_chain(&certs);
        tracing::info!(%store, certificates = certs.len(), "CA certificates imported");
        self.update(|s| {
            s.trust_pem.entry(store).or_default().push_str(&added);
            s.ca_stores = s.trust_pem.keys().cloned().collect();
        })
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
        if !spec.trim().is_empty() {
            CipherSpec::from_str(&spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        self.update(|s| s.cipher_spec = spec)
    }

    async fn create_private_ca(
        &self,
        request: Request<m::CreatePrivateCaRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        let body = request.into_inner();
        let common_name = if body.common_name.trim().is_empty() {
            format!("Shunt private CA ({})", self.appliance.name())
        } else {
            body.common_name
        };
        let validity = days(body.validity_days, 3650);
        let appliance = self.appliance.clone();
        super::blocking(&self.appliance, move |_| {
            let ca = Ca::generate(&common_name, validity, appliance.secrets(), PRIVATE_CA_KEY)
                .map_err(ca_status)?;
            enroll_self(&appliance, &ca, validity.min(days(365, 365)))?;
            tracing::info!(%common_name, "private CA created; own certificate issued");
            Ok::<_, Status>(())
        })
        .await??;
        Ok(Response::new(peering_status(&self.appliance)?))
    }

    async fn connect_appliance(
        &self,
        request: Request<m::ConnectApplianceRequest>,
    ) -> Result<Response<m::ConnectedPeer>, Status> {
        require(&request, Role::Admin)?;
        let body = request.into_inner();
        let settings = self.appliance.peering_settings().map_err(super::internal)?;
        let ca_cert = certificates_from_pem(settings.private_ca_pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| {
                Status::failed_precondition(
                    "this appliance has no private CA: create it first (`shuntctl peering create-ca`)",
                )
            })?;
        let ca = Ca::load(ca_cert, PRIVATE_CA_KEY);
        if body.name.trim().is_empty() || body.address.trim().is_empty() {
            return Err(Status::invalid_argument(
                "give the remote appliance's name (as its partners will know it) and management address",
            ));
        }
        let account = if body.account.is_empty() {
            "admin".to_owned()
        } else {
            body.account.clone()
        };
        // The remote's management certificate is pinned by fingerprint, as
        // shuntctl does; its admin account authenticates us.
        let remote_err = |what: &str, e: &dyn std::fmt::Display| {
            Status::unavailable(format!(
                "remote appliance {} at {}: {what}: {e}",
                body.name, body.address
            ))
        };
        let mut remote = crate::client::Client::connect(&body.address, &body.fingerprint)
            .await
            .map_err(|e| remote_err("cannot connect (check the address and fingerprint)", &e))?;
        remote
            .login(&account, &body.password)
            .await
            .map_err(|e| remote_err("login refused", &e.message()))?;
        let csr_pem = remote
            .peering()
            .request_csr(m::RequestCsrRequest {
                common_name: body.name.clone(),
            })
            .await
            .map_err(|e| remote_err("cannot make a key and CSR", &e.message()))?
            .into_inner()
            .csr_pem;
        let csr_der = pem::parse(&csr_pem)
            .map_err(|e| remote_err("returned a malformed CSR", &e))?
            .into_contents();
        let validity = days(body.validity_days, 365);
        let names = vec![body.name.clone()];
        let issued = super::blocking(&self.appliance, move |a| {
            ca.sign_csr(
                a.secrets(),
                &CertificateSigningRequestDer::from(csr_der),
                &names,
                validity,
            )
            .map_err(ca_status)
        })
        .await??;
        remote
            .peering()
            .install_issued_certificate(m::InstallIssuedCertificateRequest {
                certificate_chain_pem: pem_chain(std::slice::from_ref(&issued.certificate)),
                ca_certificate_pem: pem_chain(std::slice::from_ref(&issued.ca_certificate)),
            })
            .await
            .map_err(|e| remote_err("cannot install the issued certificate", &e.message()))?;
        let _ = remote.system().logout(m::LogoutRequest {}).await;
        let record = ConnectedPeerRecord {
            name: body.name.clone(),
            address: body.address.clone(),
            fingerprint: body.fingerprint.clone(),
            certificate_subject: issued.info.subject.clone(),
            expires_at_unix: unix(issued.info.not_after),
        };
        let saved = record.clone();
        update_settings(&self.appliance, move |s| {
            s.connected_peers.retain(|p| p.name != saved.name);
            s.connected_peers.push(saved);
        })?;
        tracing::info!(peer = %record.name, address = %record.address, "appliance enrolled into the private CA");
        Ok(Response::new(peer_view(&record)))
    }

    async fn list_connected_peers(
        &self,
        request: Request<m::ListConnectedPeersRequest>,
    ) -> Result<Response<m::ConnectedPeerList>, Status> {
        session(&request)?;
        let settings = self.appliance.peering_settings().map_err(super::internal)?;
        Ok(Response::new(m::ConnectedPeerList {
            peers: settings.connected_peers.iter().map(peer_view).collect(),
        }))
    }

    async fn remove_connected_peer(
        &self,
        request: Request<m::RemoveConnectedPeerRequest>,
    ) -> Result<Response<m::RemoveConnectedPeerReply>, Status> {
        require(&request, Role::Admin)?;
        let name = request.into_inner().name;
        let settings = self.appliance.peering_settings().map_err(super::internal)?;
        if !settings.connected_peers.iter().any(|p| p.name == name) {
            return Err(Status::not_found(format!(
                "no connected peer named {name:?}; see `shuntctl peering peers`"
            )));
        }
        update_settings(&self.appliance, |s| {
            s.connected_peers.retain(|p| p.name != name);
        })?;
        Ok(Response::new(m::RemoveConnectedPeerReply {}))
    }

    async fn request_csr(
        &self,
        request: Request<m::RequestCsrRequest>,
    ) -> Result<Response<m::RequestCsrReply>, Status> {
        require(&request, Role::Admin)?;
        let name = request.into_inner().common_name;
        let csr = super::blocking(&self.appliance, move |a| {
            Enrollment::new(PEERING_KEY)
                .make_csr(a.secrets(), &name)
                .map_err(ca_status)
        })
        .await??;
        tracing::info!("key pair made for enrollment; CSR returned");
        Ok(Response::new(m::RequestCsrReply {
            csr_pem: pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr.to_vec())),
        }))
    }

    async fn install_issued_certificate(
        &self,
        request: Request<m::InstallIssuedCertificateRequest>,
    ) -> Result<Response<m::PeeringStatus>, Status> {
        require(&request, Role::Admin)?;
        let body = request.into_inner();
        let chain = certificates_from_pem(body.certificate_chain_pem.as_bytes())
            .map_err(credential_status)?;
        let ca_pem = body.ca_certificate_pem;
        let ca = certificates_from_pem(ca_pem.as_bytes())
            .map_err(credential_status)?
            .remove(0);
        let appliance = self.appliance.clone();
        super::blocking(&self.appliance, move |_| {
            let installed = Enrollment::new(PEERING_KEY)
                .install_issued(appliance.secrets(), chain[0].clone(), ca)
                .map_err(ca_status)?;
            let chain = pem_chain(&installed.identity.chain);
            update_settings(&appliance, |s| {
                s.identity_chain_pem = chain;
                s.trust_pem.insert(PRIVATE_CA_STORE.into(), ca_pem);
                s.ca_stores = s.trust_pem.keys().cloned().collect();
                s.credentials_installed = true;
                s.mode = m::CredentialMode::PrivateCa as i32;
            })?;
            tracing::info!(subject = %installed.identity.info.subject, "issued certificate installed");
            Ok::<_, Status>(())
        })
        .await??;
        Ok(Response::new(peering_status(&self.appliance)?))
    }
}

fn peer_view(p: &ConnectedPeerRecord) -> m::ConnectedPeer {
    m::ConnectedPeer {
        name: p.name.clone(),
        address: p.address.clone(),
        certificate_subject: p.certificate_subject.clone(),
        expires_at_unix: p.expires_at_unix,
    }
}
