//! The tonic services of the management API. Library errors become
//! `tonic::Status` here, and only here, with messages that say what to do.

mod auth_layer;
mod data_store;
mod keystore;
mod licensing;
mod partners;
mod peering;
mod policy;
mod stats;
mod system;

use std::sync::Arc;

use tonic::{Request, Status};

pub use auth_layer::{AuthLayer, PUBLIC_METHODS};
pub use data_store::DataStoreService;
pub use keystore::KeystoreService;
pub use licensing::{LicensingService, fetch_licence};
pub use partners::PartnersService;
pub use peering::PeeringService;
pub use policy::PolicyService;
pub use stats::StatsService;
pub use system::SystemService;

use crate::appliance::Appliance;
use crate::auth::{AuthError, Role, Session};
use crate::keystore::KeystoreError;
use crate::store::StoreError;

/// The caller's session, put into the request by [`AuthLayer`].
pub(crate) fn session<T>(request: &Request<T>) -> Result<Session, Status> {
    request
        .extensions()
        .get::<Session>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated(AuthError::MissingToken.to_string()))
}

/// The caller's session if it holds `role`.
pub(crate) fn require<T>(request: &Request<T>, role: Role) -> Result<Session, Status> {
    let session = session(request)?;
    if !session.has(role) {
        let role_name = match role {
            Role::Admin => "admin",
            Role::KeystoreAdmin => "keystore-admin",
        };
        return Err(Status::permission_denied(format!(
            "account {:?} lacks the {role_name} role; log in with an account that has it",
            session.account
        )));
    }
    Ok(session)
}

/// Runs blocking work (Argon2id, fsync) off the async workers.
pub(crate) async fn blocking<R: Send + 'static>(
    appliance: &Arc<Appliance>,
    work: impl FnOnce(&Appliance) -> R + Send + 'static,
) -> Result<R, Status> {
    let appliance = appliance.clone();
    tokio::task::spawn_blocking(move || work(&appliance))
        .await
        .map_err(|e| {
            Status::internal(format!(
                "internal task failed: {e}; see the shunt-control log"
            ))
        })
}

pub(crate) fn keystore_status(e: KeystoreError) -> Status {
    let text = e.to_string();
    match e {
        KeystoreError::NotInitialized | KeystoreError::Sealed => Status::failed_precondition(text),
        KeystoreError::AlreadyInitialized => Status::already_exists(text),
        KeystoreError::WrongPassword => Status::permission_denied(text),
        KeystoreError::TooManyAttempts { .. } => Status::resource_exhausted(text),
        KeystoreError::WeakPassword => Status::invalid_argument(text),
        KeystoreError::NoSuchSecret(_) => Status::not_found(text),
        KeystoreError::Corrupt(_) => Status::data_loss(text),
        _ => Status::internal(format!(
            "{text}; check the state directory's disk and permissions"
        )),
    }
}

pub(crate) fn auth_status(e: AuthError) -> Status {
    let text = e.to_string();
    match e {
        AuthError::BadCredentials | AuthError::MissingToken | AuthError::InvalidToken => {
            Status::unauthenticated(text)
        }
        AuthError::TooManyAttempts { .. } => Status::resource_exhausted(text),
        AuthError::AccountExists(_) => Status::already_exists(text),
        AuthError::NoSuchAccount(_) => Status::not_found(text),
        AuthError::WeakPassword => Status::invalid_argument(text),
        AuthError::LastHolder(_) => Status::failed_precondition(text),
        _ => Status::internal(text),
    }
}

pub(crate) fn store_status(e: StoreError) -> Status {
    Status::internal(e.to_string())
}

pub(crate) fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}; see the shunt-control log"))
}
