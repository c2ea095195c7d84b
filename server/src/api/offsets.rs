//! `OffsetService`: consumer-group committed offsets. Each commit is fsynced by the metadata
//! store before its response is sent.

use std::sync::Arc;

use futures::StreamExt;
use tidelog_proto::v1::offset_service_server::OffsetService;
use tidelog_proto::v1::{
    CommitRequest, CommitResponse, CommittedOffset, ErrorCode, FetchCommittedRequest, FetchCommittedResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::error::error_code;
use crate::broker::{now_ms, Broker, BrokerError};
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

fn validate_group(group: &str) -> Result<(), BrokerError> {
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
        topic.partition(o.partition)?;
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
    broker.meta().commit_offsets(&req.group, &req.topic, &offsets).await?;
    Ok(())
}

#[tonic::async_trait]
impl OffsetService for OffsetApi {
    type CommitStream = ReceiverStream<Result<CommitResponse, Status>>;

    async fn commit(&self, request: Request<Streaming<CommitRequest>>) -> Result<Response<Self::CommitStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let broker = Arc::clone(&self.broker);
        let coordinator = Arc::clone(&self.coordinator);
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                let Ok(req) = msg else { return };
                let mut resp = CommitResponse { request_id: req.request_id, ..Default::default() };
                if let Err(e) = commit_one(&broker, &coordinator, &req).await {
                    resp.error_code = error_code(&e) as i32;
                    resp.error_message = e.to_string();
                } else {
                    resp.error_code = ErrorCode::Unspecified as i32;
                }
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
        let req = request.into_inner();
        validate_group(&req.group)?;
        let topic = self.broker.topic(&req.topic)?;
        for p in &req.partitions {
            topic.partition(*p)?;
        }
        let offsets = self
            .broker
            .meta()
            .committed_offsets(&req.group, &req.topic)
            .map_err(BrokerError::from)?
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
