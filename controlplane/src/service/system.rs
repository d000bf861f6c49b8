//! System service: health, login, logout, account administration, status.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use shunt_proto::management as m;
use tonic::{Request, Response, Status};

use super::{auth_status, blocking, require, session};
use crate::appliance::Appliance;
use crate::auth::Role;
use crate::keystore::Password;

pub struct SystemService {
    appliance: Arc<Appliance>,
}

impl SystemService {
    pub fn new(appliance: Arc<Appliance>) -> Self {
        Self { appliance }
    }
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[tonic::async_trait]
impl m::system_server::System for SystemService {
    async fn health(
        &self,
        _: Request<m::HealthRequest>,
    ) -> Result<Response<m::HealthReply>, Status> {
        Ok(Response::new(m::HealthReply {
            version: VERSION.into(),
            serving: true,
        }))
    }

    async fn login(
        &self,
        request: Request<m::LoginRequest>,
    ) -> Result<Response<m::LoginReply>, Status> {
        let source = request.remote_addr().map(|a| a.ip()).ok_or_else(|| {
            Status::internal("cannot tell the caller's address; the rate limit needs it")
        })?;
        let m::LoginRequest { account, password } = request.into_inner();
        let password = Password::new(password);
        let login = blocking(&self.appliance, move |a| {
            a.auth.login(&account, &password, source)
        })
        .await?
        .map_err(auth_status)?;
        Ok(Response::new(m::LoginReply {
            token: String::from_utf8(login.token.expose().to_vec()).expect("hex token"),
            expires_at_unix: login
                .expires_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            roles: login
                .roles
                .iter()
                .map(|r| role_to_proto(*r) as i32)
                .collect(),
        }))
    }

    async fn logout(
        &self,
        request: Request<m::LogoutRequest>,
    ) -> Result<Response<m::LogoutReply>, Status> {
        let session = session(&request)?;
        self.appliance.auth.logout(&session);
        Ok(Response::new(m::LogoutReply {}))
    }

    async fn change_admin_password(
        &self,
        request: Request<m::ChangeAdminPasswordRequest>,
    ) -> Result<Response<m::ChangeAdminPasswordReply>, Status> {
        let session = session(&request)?;
        let m::ChangeAdminPasswordRequest {
            current_password,
            new_password,
        } = request.into_inner();
        let (current, new) = (Password::new(current_password), Password::new(new_password));
        blocking(&self.appliance, move |a| {
            a.auth.change_password(&session.account, &current, &new)
        })
        .await?
        .map_err(|e| match e {
            crate::auth::AuthError::BadCredentials => Status::permission_denied(
                "the current password is wrong; give the account's current password",
            ),
            other => auth_status(other),
        })?;
        Ok(Response::new(m::ChangeAdminPasswordReply {}))
    }

    async fn status(
        &self,
        request: Request<m::StatusRequest>,
    ) -> Result<Response<m::SystemStatus>, Status> {
        session(&request)?;
        let a = &self.appliance;
        Ok(Response::new(m::SystemStatus {
            version: VERSION.into(),
            uptime_seconds: a.started.elapsed().as_secs(),
            licence: Some(super::licensing::licence_status(a)),
            keystore: Some(super::keystore::keystore_status_of(a)),
            peering: Some(super::peering::peering_status(a)?),
            data_plane: Some(m::DataPlaneHealth {
                connected: false,
                // TODO: the agent-API client (issue 5, item 8) fills this in
                // once shunt-dataplane serves the agent socket.
                detail: "data plane not connected: the agent API client is not running".into(),
            }),
        }))
    }

    async fn create_account(
        &self,
        request: Request<m::CreateAccountRequest>,
    ) -> Result<Response<m::Account>, Status> {
        require(&request, Role::Admin)?;
        let m::CreateAccountRequest {
            name,
            password,
            roles,
        } = request.into_inner();
        let roles = roles_from_proto(&roles)?;
        let password = Password::new(password);
        let stored = roles.clone();
        let name2 = name.clone();
        blocking(&self.appliance, move |a| {
            a.auth.create_account(&name2, &password, &stored)
        })
        .await?
        .map_err(auth_status)?;
        Ok(Response::new(m::Account {
            name,
            roles: roles.iter().map(|r| role_to_proto(*r) as i32).collect(),
        }))
    }

    async fn remove_account(
        &self,
        request: Request<m::RemoveAccountRequest>,
    ) -> Result<Response<m::RemoveAccountReply>, Status> {
        require(&request, Role::Admin)?;
        self.appliance
            .auth
            .remove_account(&request.into_inner().name)
            .map_err(auth_status)?;
        Ok(Response::new(m::RemoveAccountReply {}))
    }

    async fn list_accounts(
        &self,
        request: Request<m::ListAccountsRequest>,
    ) -> Result<Response<m::AccountList>, Status> {
        require(&request, Role::Admin)?;
        let accounts = self.appliance.auth.accounts().map_err(auth_status)?;
        Ok(Response::new(m::AccountList {
            accounts: accounts
                .into_iter()
                .map(|(name, r)| m::Account {
                    name,
                    roles: r.roles.iter().map(|r| role_to_proto(*r) as i32).collect(),
                })
                .collect(),
        }))
    }
}

pub fn role_to_proto(role: Role) -> m::Role {
    match role {
        Role::Admin => m::Role::Admin,
        Role::KeystoreAdmin => m::Role::KeystoreAdmin,
    }
}

fn roles_from_proto(roles: &[i32]) -> Result<Vec<Role>, Status> {
    let mut out = Vec::new();
    for r in roles {
        let role = match m::Role::try_from(*r) {
            Ok(m::Role::Admin) => Role::Admin,
            Ok(m::Role::KeystoreAdmin) => Role::KeystoreAdmin,
            _ => {
                return Err(Status::invalid_argument(
                    "unknown role: use admin or keystore-admin",
                ));
            }
        };
        if !out.contains(&role) {
            out.push(role);
        }
    }
    if out.is_empty() {
        return Err(Status::invalid_argument(
            "give the account at least one role: admin or keystore-admin",
        ));
    }
    Ok(out)
}
