//! `OffsetService`: consumer-group committed offsets.
//!
//! Durability, before a commit is answered: the broker's control plane stores it (single
//! node: the metadata store, fsynced; cluster: an entry of the metadata Raft group committed
//! by a majority and applied here). Commits and fetches are served where the broker routes
//! group calls (`broker/route.rs`): here, or passed on once to the group coordinator, so one
//! coordinator fences every commit and a fetch sees every acknowledged commit.

use std::sync::Arc;

use futures::StreamExt;
use tidelog_proto::v1::offset_service_client::OffsetServiceClient;
use tidelog_proto::v1::offset_service_server::OffsetService;
use tidelog_proto::v1::{
    CommitRequest, CommitResponse, CommittedOffset, ErrorCode, FetchCommittedRequest, FetchCommittedResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::authorize;
use crate::auth::layer::caller;
use crate::auth::{Caller, Operation, ResourceType};
use crate::broker::route::{forwarded_request, upstream_error, upstream_status, Origin, Route, APPLY_WAIT};
use crate::broker::Broker;
use crate::clock::now_ms;
use crate::error::{error_code, BrokerError};
use crate::group::Coordinator;
use crate::meta::StoredOffset;

/// Longest group id and offset metadata accepted.
const MAX_GROUP_LEN: usize = 255;
const MAX_METADATA_LEN: usize = 4096;

#[derive(Debug)]
pub struct OffsetApi {
    broker: Arc<Broker>,
    coordinator: Arc<Coordinator>,
}

impl OffsetApi {
    pub fn new(broker: Arc<Broker>, coordinator: Arc<Coordinator>) -> Self {
        Self { broker, coordinator }
    }
}

pub(super) fn validate_group(group: &str) -> Result<(), BrokerError> {
    if group.is_empty() || group.len() > MAX_GROUP_LEN || group.chars().any(char::is_control) {
        return Err(BrokerError::InvalidArgument(format!(
            "invalid group id {group:?}: use 1-{MAX_GROUP_LEN} printable characters"
        )));
    }
    Ok(())
}

async fn commit_one(broker: &Broker, coordinator: &Coordinator, req: &CommitRequest) -> Result<(), BrokerError> {
    broker.check_running()?;
    validate_group(&req.group)?;
    // Fencing: only a current member of the current generation may commit for a live group.
    coordinator.check_commit(&req.group, req.generation, &req.member_id)?;
    let topic = broker.topic(&req.topic)?;
    if req.offsets.is_empty() {
        return Err(BrokerError::InvalidArgument("commit lists no partitions".into()));
    }
    let now = now_ms();
    let mut offsets = Vec::with_capacity(req.offsets.len());
    for o in &req.offsets {
        topic.check_partition(o.partition)?;
        if o.metadata.len() > MAX_METADATA_LEN {
            return Err(BrokerError::InvalidArgument(format!(
                "offset metadata is longer than {MAX_METADATA_LEN} bytes"
            )));
        }
        offsets.push(StoredOffset {
            partition: o.partition,
            offset: o.offset,
            commit_time_ms: now,
            metadata: o.metadata.clone(),
        });
    }
    broker.commit_offsets(&req.group, &topic, offsets).await
}

/// Serves one commit here, or forwards it to the coordinator; the answer either way.
async fn commit_routed(
    broker: &Broker,
    coordinator: &Coordinator,
    caller: &Caller,
    req: CommitRequest,
    origin: Origin,
) -> Result<CommitResponse, BrokerError> {
    // Checked where the commit enters the cluster, before it is passed on (Kafka: READ on the
    // group and on the topic).
    let auth = broker.auth();
    auth.authorize(caller, Operation::Read, ResourceType::Group, &req.group)?;
    auth.authorize(caller, Operation::Read, ResourceType::Topic, &req.topic)?;
    match broker.coordinator_route(origin).await? {
        Route::Here => {
            commit_one(broker, coordinator, &req).await?;
            Ok(CommitResponse {
                request_id: req.request_id,
                error_code: ErrorCode::Unspecified as i32,
                ..Default::default()
            })
        }
        Route::To(channel, _) => {
            let once = futures::stream::iter([req]);
            let call = async {
                let mut responses = OffsetServiceClient::new(channel)
                    .commit(forwarded_request(once, None))
                    .await
                    .map_err(upstream)?
                    .into_inner();
                responses.message().await.map_err(upstream)?.ok_or_else(|| BrokerError::NotLeader {
                    what: "the group coordinator (it closed the forwarded commit; retry)".into(),
                    leader: None,
                })
            };
            tokio::time::timeout(APPLY_WAIT, call).await.unwrap_or_else(|_| {
                Err(BrokerError::NotLeader {
                    what: "the group coordinator (no answer in time; retry)".into(),
                    leader: None,
                })
            })
        }
    }
}

/// A forwarded call that failed in transport or at the coordinator: retryable.
fn upstream(s: Status) -> BrokerError {
    upstream_error("the group coordinator", &s)
}

#[tonic::async_trait]
impl OffsetService for OffsetApi {
    type CommitStream = ReceiverStream<Result<CommitResponse, Status>>;

    async fn commit(&self, request: Request<Streaming<CommitRequest>>) -> Result<Response<Self::CommitStream>, Status> {
        let origin = Origin::of(&request);
        let caller = caller(&request);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let broker = Arc::clone(&self.broker);
        let coordinator = Arc::clone(&self.coordinator);
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                let Ok(req) = msg else { return };
                let request_id = req.request_id;
                let resp = commit_routed(&broker, &coordinator, &caller, req, origin).await.unwrap_or_else(|e| {
                    CommitResponse { request_id, error_code: error_code(&e) as i32, error_message: e.to_string() }
                });
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_committed(
        &self,
        request: Request<FetchCommittedRequest>,
    ) -> Result<Response<FetchCommittedResponse>, Status> {
        let origin = Origin::of(&request);
        authorize(&self.broker, &request, Operation::Describe, ResourceType::Group, &request.get_ref().group)?;
        authorize(&self.broker, &request, Operation::Describe, ResourceType::Topic, &request.get_ref().topic)?;
        let req = request.into_inner();
        validate_group(&req.group)?;
        if let Route::To(channel, _) = self.broker.coordinator_route(origin).await? {
            return OffsetServiceClient::new(channel)
                .fetch_committed(forwarded_request(req, Some(APPLY_WAIT)))
                .await
                .map_err(upstream_status);
        }
        let topic = self.broker.topic(&req.topic)?;
        for p in &req.partitions {
            topic.check_partition(*p)?;
        }
        // Offsets an open transaction will commit would be stale now (Kafka's
        // UNSTABLE_OFFSET_COMMIT): a consumer taking over must wait for it to end.
        if self.broker.transactions().holds_offsets_of(&req.group) {
            return Err(BrokerError::UnstableOffsetCommit(req.group).into());
        }
        let offsets = self
            .broker
            .committed_offsets(&req.group, &req.topic)?
            .into_iter()
            .filter(|o| o.partition < topic.record.partitions)
            .filter(|o| req.partitions.is_empty() || req.partitions.contains(&o.partition))
            .map(|o| CommittedOffset {
                partition: o.partition,
                offset: o.offset,
                metadata: o.metadata,
                commit_time_ms: o.commit_time_ms,
            })
            .collect();
        Ok(Response::new(FetchCommittedResponse { offsets }))
    }
}
