//! Partners service: static partners, their secure flag, connection status,
//! reason and counters; the watch streams the list on every change.

use std::pin::Pin;
use std::sync::Arc;

use shunt_proto::management as m;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{require, session, store_status};
use crate::appliance::Appliance;
use crate::auth::Role;
use crate::partner::{self, PartnerConfig};
use crate::store::PARTNERS;

pub struct PartnersService {
    appliance: Arc<Appliance>,
}

impl PartnersService {
    pub fn new(appliance: Arc<Appliance>) -> Self {
        Self { appliance }
    }
}

/// Every configured partner as the operator sees it now.
pub(crate) fn partner_list(appliance: &Appliance) -> Result<m::PartnerList, Status> {
    let local = appliance.local_security();
    let configured: Vec<(String, PartnerConfig)> =
        appliance.store.list(PARTNERS).map_err(store_status)?;
    Ok(m::PartnerList {
        partners: configured
            .iter()
            .map(|(name, config)| {
                partner::view(name, config, &appliance.partner_runtime(name), local)
            })
            .collect(),
    })
}

type PartnerStream = Pin<Box<dyn Stream<Item = Result<m::PartnerList, Status>> + Send>>;

#[tonic::async_trait]
impl m::partners_server::Partners for PartnersService {
    type WatchPartnersStream = PartnerStream;

    async fn add_partner(
        &self,
        request: Request<m::AddPartnerRequest>,
    ) -> Result<Response<m::Partner>, Status> {
        require(&request, Role::Admin)?;
        let m::AddPartnerRequest {
            name,
            address,
            prefixes,
        } = request.into_inner();
        let config = PartnerConfig { address, prefixes };
        partner::validate(&name, &config).map_err(Status::invalid_argument)?;
        if !self
            .appliance
            .store
            .insert_new(PARTNERS, &name, &config)
            .map_err(store_status)?
        {
            return Err(Status::already_exists(format!(
                "partner {name:?} already exists; remove it first to change it"
            )));
        }
        tracing::info!(partner = %name, address = %config.address, "partner added");
        self.appliance.changed();
        let local = self.appliance.local_security();
        Ok(Response::new(partner::view(
            &name,
            &config,
            &self.appliance.partner_runtime(&name),
            local,
        )))
    }

    async fn remove_partner(
        &self,
        request: Request<m::RemovePartnerRequest>,
    ) -> Result<Response<m::RemovePartnerReply>, Status> {
        require(&request, Role::Admin)?;
        let name = request.into_inner().name;
        if !self
            .appliance
            .store
            .remove(PARTNERS, &name)
            .map_err(store_status)?
        {
            return Err(Status::not_found(format!(
                "no partner named {name:?}; see `shuntctl partners list`"
            )));
        }
        self.appliance.forget_partner_runtime(&name);
        tracing::info!(partner = %name, "partner removed");
        Ok(Response::new(m::RemovePartnerReply {}))
    }

    async fn list_partners(
        &self,
        request: Request<m::ListPartnersRequest>,
    ) -> Result<Response<m::PartnerList>, Status> {
        session(&request)?;
        Ok(Response::new(partner_list(&self.appliance)?))
    }

    async fn watch_partners(
        &self,
        request: Request<m::WatchPartnersRequest>,
    ) -> Result<Response<Self::WatchPartnersStream>, Status> {
        session(&request)?;
        let appliance = self.appliance.clone();
        let mut changes = appliance.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                changes.borrow_and_update();
                let list = partner_list(&appliance);
                let failed = list.is_err();
                if tx.send(list).await.is_err() || failed {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
