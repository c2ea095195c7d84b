//! `SecurityService`: who am I, ACLs and client quotas. Changes go through the broker's
//! control plane (`Broker::alter_security`), so they are durable and every broker enforces
//! them; reads answer from this broker's copy.

use std::sync::Arc;

use tidelog_proto::v1::security_service_server::SecurityService;
use tidelog_proto::v1::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, ClientQuota, CreateAclsRequest, CreateAclsResponse,
    DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest, DescribeAclsResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse, WhoAmIRequest, WhoAmIResponse,
};
use tonic::{Request, Response, Status};

use super::authorize;
use crate::auth::layer::caller;
use crate::auth::proto::{
    acl_from_proto, acl_to_proto, entity_from_proto, entity_to_proto, filter_from_proto, limits_from_proto,
    limits_to_proto,
};
use crate::auth::{Operation, ResourceType, SecurityChange, CLUSTER_NAME};
use crate::broker::route::Origin;
use crate::broker::Broker;

/// Most ACLs or filters one request may carry.
const MAX_PER_REQUEST: usize = 1000;

#[derive(Debug)]
pub struct SecurityApi {
    broker: Arc<Broker>,
}

impl SecurityApi {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

fn too_many(n: usize) -> Result<(), Status> {
    if n > MAX_PER_REQUEST {
        return Err(Status::invalid_argument(format!("at most {MAX_PER_REQUEST} per request, got {n}")));
    }
    Ok(())
}

#[tonic::async_trait]
impl SecurityService for SecurityApi {
    async fn who_am_i(&self, request: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let c = caller(&request);
        let auth = self.broker.auth();
        Ok(Response::new(WhoAmIResponse {
            principal: c.principal.to_string(),
            authenticated_by: c.source.as_str().into(),
            authorization_enabled: auth.authorization(),
            superuser: auth.is_superuser(&c),
            client_id: c.client_id.to_string(),
        }))
    }

    async fn create_acls(&self, request: Request<CreateAclsRequest>) -> Result<Response<CreateAclsResponse>, Status> {
        authorize(&self.broker, &request, Operation::Alter, ResourceType::Cluster, CLUSTER_NAME)?;
        let origin = Origin::of(&request);
        let req = request.into_inner();
        too_many(req.acls.len())?;
        if req.acls.is_empty() {
            return Err(Status::invalid_argument("no ACL given"));
        }
        let acls = req
            .acls
            .iter()
            .enumerate()
            .map(|(i, a)| acl_from_proto(a).map_err(|e| Status::invalid_argument(format!("ACL {i}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let outcome = self.broker.alter_security(SecurityChange::AddAcls { acls }, origin).await?;
        Ok(Response::new(CreateAclsResponse { created: outcome.acls_added as u32 }))
    }

    async fn describe_acls(
        &self,
        request: Request<DescribeAclsRequest>,
    ) -> Result<Response<DescribeAclsResponse>, Status> {
        authorize(&self.broker, &request, Operation::Describe, ResourceType::Cluster, CLUSTER_NAME)?;
        let filter = request.into_inner().filter.unwrap_or_default();
        let filter = filter_from_proto(&filter).map_err(Status::invalid_argument)?;
        let state = self.broker.auth().state();
        let acls = state.acls.iter().filter(|a| filter.matches(a)).map(acl_to_proto).collect();
        Ok(Response::new(DescribeAclsResponse { acls }))
    }

    async fn delete_acls(&self, request: Request<DeleteAclsRequest>) -> Result<Response<DeleteAclsResponse>, Status> {
        authorize(&self.broker, &request, Operation::Alter, ResourceType::Cluster, CLUSTER_NAME)?;
        let origin = Origin::of(&request);
        let req = request.into_inner();
        too_many(req.filters.len())?;
        if req.filters.is_empty() {
            return Err(Status::invalid_argument("no filter given (an empty filter matches every ACL: send one)"));
        }
        let filters = req
            .filters
            .iter()
            .map(|f| filter_from_proto(f).map_err(Status::invalid_argument))
            .collect::<Result<Vec<_>, _>>()?;
        let outcome = self.broker.alter_security(SecurityChange::RemoveAcls { filters }, origin).await?;
        Ok(Response::new(DeleteAclsResponse { acls: outcome.acls_removed.iter().map(acl_to_proto).collect() }))
    }

    async fn alter_client_quotas(
        &self,
        request: Request<AlterClientQuotasRequest>,
    ) -> Result<Response<AlterClientQuotasResponse>, Status> {
        authorize(&self.broker, &request, Operation::AlterConfigs, ResourceType::Cluster, CLUSTER_NAME)?;
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let entity = entity_from_proto(req.entity.as_ref()).map_err(Status::invalid_argument)?;
        let set = limits_from_proto(req.set.as_ref());
        set.validate().map_err(Status::invalid_argument)?;
        for r in &req.remove {
            if !matches!(r.as_str(), "producer_byte_rate" | "consumer_byte_rate" | "request_rate") {
                return Err(Status::invalid_argument(format!(
                    "unknown quota {r:?}: producer_byte_rate, consumer_byte_rate or request_rate"
                )));
            }
        }
        if set.is_empty() && req.remove.is_empty() {
            return Err(Status::invalid_argument("nothing to set or remove"));
        }
        let change = SecurityChange::AlterQuota { entity, set, remove: req.remove };
        let outcome = self.broker.alter_security(change, origin).await?;
        Ok(Response::new(AlterClientQuotasResponse { limits: Some(limits_to_proto(&outcome.limits)) }))
    }

    async fn describe_client_quotas(
        &self,
        request: Request<DescribeClientQuotasRequest>,
    ) -> Result<Response<DescribeClientQuotasResponse>, Status> {
        authorize(&self.broker, &request, Operation::DescribeConfigs, ResourceType::Cluster, CLUSTER_NAME)?;
        let req = request.into_inner();
        let state = self.broker.auth().state();
        let quotas = state
            .quotas
            .iter()
            .map(|(e, l)| ClientQuota { entity: Some(entity_to_proto(e)), limits: Some(limits_to_proto(l)) })
            .collect();
        let effective = (!req.effective_for_user.is_empty() || !req.effective_for_client_id.is_empty())
            .then(|| limits_to_proto(&state.quotas.effective(&req.effective_for_user, &req.effective_for_client_id)));
        Ok(Response::new(DescribeClientQuotasResponse { quotas, effective }))
    }
}
