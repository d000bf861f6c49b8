//! Keystore service: initialize, open, seal, change password, reset, status.
//! Everything but status needs the `keystore-admin` role.

use std::sync::Arc;

use shunt_proto::management as m;
use tonic::{Request, Response, Status};

use super::{blocking, keystore_status, require, session};
use crate::appliance::{Appliance, HISTORY_KEY, erase_dir};
use crate::auth::Role;
use crate::keystore::{KeystoreState, Password, SecretBytes};

pub struct KeystoreService {
    appliance: Arc<Appliance>,
}

impl KeystoreService {
    pub fn new(appliance: Arc<Appliance>) -> Self {
        Self { appliance }
    }

    async fn finish(&self) -> Result<Response<m::KeystoreStatus>, Status> {
        self.appliance.changed();
        Ok(Response::new(keystore_status_of(&self.appliance)))
    }
}

#[tonic::async_trait]
impl m::keystore_server::Keystore for KeystoreService {
    async fn initialize(
        &self,
        request: Request<m::InitializeKeystoreRequest>,
    ) -> Result<Response<m::KeystoreStatus>, Status> {
        require(&request, Role::KeystoreAdmin)?;
        let password = Password::new(request.into_inner().password);
        blocking(&self.appliance, move |a| -> Result<(), Status> {
            a.keystore()
                .initialize(&password)
                .map_err(keystore_status)?;
            ensure_history_key(a)
        })
        .await??;
        self.finish().await
    }

    async fn open(
        &self,
        request: Request<m::OpenKeystoreRequest>,
    ) -> Result<Response<m::KeystoreStatus>, Status> {
        require(&request, Role::KeystoreAdmin)?;
        let password = Password::new(request.into_inner().password);
        blocking(&self.appliance, move |a| -> Result<(), Status> {
            a.keystore().open(&password).map_err(keystore_status)?;
            ensure_history_key(a)
        })
        .await??;
        self.finish().await
    }

    async fn seal(
        &self,
        request: Request<m::SealKeystoreRequest>,
    ) -> Result<Response<m::KeystoreStatus>, Status> {
        require(&request, Role::KeystoreAdmin)?;
        self.appliance.keystore().seal();
        self.finish().await
    }

    async fn change_password(
        &self,
        request: Request<m::ChangeKeystorePasswordRequest>,
    ) -> Result<Response<m::KeystoreStatus>, Status> {
        require(&request, Role::KeystoreAdmin)?;
        let body = request.into_inner();
        let (current, new) = (
            Password::new(body.current_password),
            Password::new(body.new_password),
        );
        blocking(&self.appliance, move |a| {
            a.keystore().change_password(&current, &new)
        })
        .await?
        .map_err(keystore_status)?;
        self.finish().await
    }

    async fn reset(
        &self,
        request: Request<m::ResetKeystoreRequest>,
    ) -> Result<Response<m::ResetKeystoreReply>, Status> {
        let who = require(&request, Role::KeystoreAdmin)?;
        let body = request.into_inner();
        if body.confirm != shunt_proto::RESET_CONFIRMATION {
            return Err(Status::failed_precondition(format!(
                "reset destroys every private key, the private CA and all encrypted data including the \
                 compression history; to go ahead set confirm to {:?}",
                shunt_proto::RESET_CONFIRMATION
            )));
        }
        let new_password = Password::new(body.new_password);
        let (destroyed, erased) = blocking(
            &self.appliance,
            move |a| -> Result<(Vec<String>, u64), Status> {
                let destroyed = a.keystore().reset(&new_password).map_err(keystore_status)?;
                let erased = erase_dir(&a.history_dir()).map_err(|e| {
                    Status::internal(format!(
                        "keys destroyed but erasing the history failed: {e}"
                    ))
                })?;
                forget_credentials(a)?;
                ensure_history_key(a)?;
                Ok((destroyed, erased))
            },
        )
        .await??;
        tracing::warn!(account = %who.account, destroyed = destroyed.len(), erased_bytes = erased, "keystore reset");
        self.appliance.changed();
        Ok(Response::new(m::ResetKeystoreReply {
            destroyed_secrets: destroyed,
            destroyed_history_bytes: erased,
            status: Some(keystore_status_of(&self.appliance)),
        }))
    }

    async fn status(
        &self,
        request: Request<m::KeystoreStatusRequest>,
    ) -> Result<Response<m::KeystoreStatus>, Status> {
        session(&request)?;
        Ok(Response::new(keystore_status_of(&self.appliance)))
    }
}

/// The keystore as the API shows it.
pub(crate) fn keystore_status_of(appliance: &Appliance) -> m::KeystoreStatus {
    let ks = appliance.keystore();
    let kdf = ks.kdf_params();
    let (state, effect) = match ks.state() {
        KeystoreState::Uninitialized => (
            m::KeystoreState::Uninitialized,
            "secure peering and history encryption are unavailable: initialize the keystore",
        ),
        KeystoreState::Sealed => (
            m::KeystoreState::Sealed,
            "secure peering and compression are off: keystore sealed; open it with its password",
        ),
        KeystoreState::Open => (m::KeystoreState::Open, ""),
    };
    m::KeystoreStatus {
        state: state as i32,
        secret_names: if ks.state() == KeystoreState::Open {
            ks.secret_names()
        } else {
            Vec::new()
        },
        effect: effect.into(),
        kdf_memory_kib: kdf.memory_kib,
        kdf_iterations: kdf.iterations,
        kdf_parallelism: kdf.parallelism,
    }
}

/// With history encryption on, the keystore holds the history key; make it
/// when the keystore is open and it is missing (first use, after a reset).
pub(crate) fn ensure_history_key(appliance: &Appliance) -> Result<(), Status> {
    let wanted = appliance
        .data_store_settings()
        .map_err(super::internal)?
        .encryption;
    let mut ks = appliance.keystore();
    if wanted && ks.state() == KeystoreState::Open && !ks.contains(HISTORY_KEY) {
        ks.put_secret(HISTORY_KEY, &SecretBytes::random(64))
            .map_err(keystore_status)?;
    }
    Ok(())
}

/// After a reset the installed credentials and private CA are gone.
fn forget_credentials(appliance: &Appliance) -> Result<(), Status> {
    let mut settings = appliance.peering_settings().map_err(super::internal)?;
    // The keys are gone: the certificates that went with them are useless,
    // and the private CA can issue nothing more (its peers' records go too).
    settings.credentials_installed = false;
    settings.private_ca = false;
    settings.identity_chain_pem.clear();
    settings.private_ca_pem.clear();
    settings.connected_peers.clear();
    appliance
        .store
        .put(
            crate::store::SETTINGS,
            crate::appliance::PEERING_SETTINGS,
            &settings,
        )
        .map_err(super::store_status)
}
