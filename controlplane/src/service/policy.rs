//! Policy service: acceleration rules.

use std::sync::Arc;

use shunt_proto::management as m;
use tonic::{Request, Response, Status};

use super::{require, session, store_status};
use crate::appliance::Appliance;
use crate::auth::Role;
use crate::policy::{RuleRecord, validate_rule};
use crate::store::RULES;

pub struct PolicyService {
    appliance: Arc<Appliance>,
}

impl PolicyService {
    pub fn new(appliance: Arc<Appliance>) -> Self {
        Self { appliance }
    }
}

#[tonic::async_trait]
impl m::policy_server::Policy for PolicyService {
    async fn add_rule(
        &self,
        request: Request<m::AddRuleRequest>,
    ) -> Result<Response<m::Rule>, Status> {
        require(&request, Role::Admin)?;
        let rule = request
            .into_inner()
            .rule
            .ok_or_else(|| Status::invalid_argument("give a rule"))?;
        let record = RuleRecord::from_proto(&rule);
        validate_rule(&rule.name, &record).map_err(Status::invalid_argument)?;
        if !self
            .appliance
            .store
            .insert_new(RULES, &rule.name, &record)
            .map_err(store_status)?
        {
            return Err(Status::already_exists(format!(
                "rule {:?} already exists; remove it first",
                rule.name
            )));
        }
        tracing::info!(rule = %rule.name, "rule added");
        Ok(Response::new(record.to_proto(&rule.name)))
    }

    async fn remove_rule(
        &self,
        request: Request<m::RemoveRuleRequest>,
    ) -> Result<Response<m::RemoveRuleReply>, Status> {
        require(&request, Role::Admin)?;
        let name = request.into_inner().name;
        if !self
            .appliance
            .store
            .remove(RULES, &name)
            .map_err(store_status)?
        {
            return Err(Status::not_found(format!(
                "no rule named {name:?}; see `shuntctl rules list`"
            )));
        }
        Ok(Response::new(m::RemoveRuleReply {}))
    }

    async fn list_rules(
        &self,
        request: Request<m::ListRulesRequest>,
    ) -> Result<Response<m::RuleList>, Status> {
        session(&request)?;
        let mut rules: Vec<(String, RuleRecord)> =
            self.appliance.store.list(RULES).map_err(store_status)?;
        rules.sort_by(|a, b| (a.1.priority, &a.0).cmp(&(b.1.priority, &b.0)));
        Ok(Response::new(m::RuleList {
            rules: rules.iter().map(|(n, r)| r.to_proto(n)).collect(),
        }))
    }
}
