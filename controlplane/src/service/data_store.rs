//! DataStore service: the compression-history store's encryption (keyed
//! through the keystore) and size.

use std::sync::Arc;

use shunt_proto::management as m;
use tonic::{Request, Response, Status};

use super::{blocking, require, session, store_status};
use crate::appliance::{Appliance, DATA_STORE_SETTINGS, dir_size, erase_dir};
use crate::auth::Role;
use crate::keystore::KeystoreState;
use crate::store::SETTINGS;

/// Smallest history store accepted.
pub const MIN_SIZE_BYTES: u64 = 16 << 20;

pub struct DataStoreService {
    appliance: Arc<Appliance>,
}

impl DataStoreService {
    pub fn new(appliance: Arc<Appliance>) -> Self {
        Self { appliance }
    }
}

pub(crate) fn data_store_status(appliance: &Appliance) -> Result<m::DataStoreStatus, Status> {
    let settings = appliance.data_store_settings().map_err(super::internal)?;
    let state = match (appliance.keystore_state(), settings.encryption) {
        (KeystoreState::Sealed, _) => {
            "locked: keystore sealed, compression is off until it is opened"
        }
        (KeystoreState::Open, true) => "ready, encrypted (AES-256-XTS)",
        (KeystoreState::Uninitialized, true) => {
            "locked: initialize the keystore to hold the history key"
        }
        (_, false) => "ready, not encrypted",
    };
    Ok(m::DataStoreStatus {
        encryption: settings.encryption,
        size_bytes: settings.size_bytes,
        used_bytes: dir_size(&appliance.history_dir()),
        state: state.into(),
    })
}

#[tonic::async_trait]
impl m::data_store_server::DataStore for DataStoreService {
    async fn get_data_store(
        &self,
        request: Request<m::GetDataStoreRequest>,
    ) -> Result<Response<m::DataStoreStatus>, Status> {
        session(&request)?;
        Ok(Response::new(data_store_status(&self.appliance)?))
    }

    async fn set_data_store(
        &self,
        request: Request<m::SetDataStoreRequest>,
    ) -> Result<Response<m::DataStoreStatus>, Status> {
        require(&request, Role::Admin)?;
        let body = request.into_inner();
        blocking(&self.appliance, move |a| -> Result<(), Status> {
            let mut settings = a.data_store_settings().map_err(super::internal)?;
            if let Some(size) = body.size_bytes {
                if size < MIN_SIZE_BYTES {
                    return Err(Status::invalid_argument(format!(
                        "history store size {size} B is too small: give at least {MIN_SIZE_BYTES} B"
                    )));
                }
                settings.size_bytes = size;
            }
            if let Some(encryption) = body.encryption
                && encryption != settings.encryption
            {
                if encryption && a.keystore_state() != KeystoreState::Open {
                    return Err(Status::failed_precondition(
                        "history encryption is keyed through the keystore: open (or initialize) the keystore first",
                    ));
                }
                // History written under the other setting cannot be read under
                // the new one: start the history afresh.
                let erased = erase_dir(&a.history_dir())
                    .map_err(|e| Status::internal(format!("cannot erase the old history: {e}")))?;
                tracing::info!(encryption, erased_bytes = erased, "history encryption changed; history erased");
                settings.encryption = encryption;
            }
            a.store.put(SETTINGS, DATA_STORE_SETTINGS, &settings).map_err(store_status)?;
            super::keystore::ensure_history_key(a)
        })
        .await??;
        self.appliance.changed();
        Ok(Response::new(data_store_status(&self.appliance)?))
    }
}
