//! `AdminService`: topics, offsets by time, cluster description.

use std::sync::Arc;

use tidelog_proto::v1::admin_service_server::AdminService;
use tidelog_proto::v1::{
    offset_spec, BrokerInfo, CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribeTopicRequest, DescribeTopicResponse, FsyncPolicy,
    ListOffsetsRequest, ListOffsetsResponse, ListTopicsRequest, ListTopicsResponse, PartitionDescription,
    PartitionOffsetAtTime, TopicConfig, TopicDescription,
};
use tonic::{Request, Response, Status};

use crate::broker::{Broker, BrokerError, Topic};
use crate::settings::{FsyncSetting, TopicSettings};

#[derive(Debug)]
pub struct AdminApi {
    broker: Arc<Broker>,
}

impl AdminApi {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

/// Merges a request's optional config over the broker's defaults.
fn merge_settings(defaults: &TopicSettings, c: Option<&TopicConfig>) -> Result<TopicSettings, BrokerError> {
    let mut s = defaults.clone();
    let Some(c) = c else { return Ok(s) };
    if let Some(v) = c.retention_ms {
        s.retention_ms = v;
    }
    if let Some(v) = c.retention_bytes {
        s.retention_bytes = v;
    }
    if let Some(v) = c.segment_bytes {
        s.segment_bytes = v;
    }
    if let Some(v) = c.segment_ms {
        s.segment_ms = v;
    }
    if let Some(v) = c.fsync_interval_ms {
        s.fsync_interval_ms = v;
    }
    if let Some(v) = c.max_batch_bytes {
        s.max_batch_bytes = v;
    }
    s.fsync = match FsyncPolicy::try_from(c.fsync_policy) {
        Ok(FsyncPolicy::Unspecified) => s.fsync,
        Ok(FsyncPolicy::Always) => FsyncSetting::Always,
        Ok(FsyncPolicy::Interval) => FsyncSetting::Interval,
        Ok(FsyncPolicy::Never) => FsyncSetting::Never,
        Err(_) => return Err(BrokerError::InvalidArgument(format!("unknown fsync_policy {}", c.fsync_policy))),
    };
    Ok(s)
}

fn to_config(s: &TopicSettings) -> TopicConfig {
    TopicConfig {
        retention_ms: Some(s.retention_ms),
        retention_bytes: Some(s.retention_bytes),
        segment_bytes: Some(s.segment_bytes),
        segment_ms: Some(s.segment_ms),
        fsync_policy: FsyncPolicy::from(s.fsync) as i32,
        fsync_interval_ms: Some(s.fsync_interval_ms),
        max_batch_bytes: Some(s.max_batch_bytes),
    }
}

fn describe(broker: &Broker, t: &Topic) -> TopicDescription {
    let node = broker.options().node_id;
    TopicDescription {
        name: t.record.name.clone(),
        partition_count: t.record.partitions,
        replication_factor: 1,
        config: Some(to_config(&t.record.settings)),
        created_at_ms: t.record.created_at_ms,
        partitions: t
            .partitions
            .iter()
            .map(|p| {
                let o = p.offsets();
                let (size, segments) = p.size_bytes();
                PartitionDescription {
                    partition: p.index(),
                    log_start_offset: o.log_start.0,
                    high_watermark: o.high_watermark.0,
                    log_end_offset: o.log_end.0,
                    size_bytes: size,
                    segment_count: segments as u32,
                    leader_id: node,
                    replica_ids: vec![node],
                }
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let req = request.into_inner();
        if req.replication_factor > 1 {
            return Err(Status::invalid_argument(format!(
                "replication_factor {} is not possible: this broker runs as a single node (use 1)",
                req.replication_factor
            )));
        }
        let settings = merge_settings(&self.broker.options().topic_defaults, req.config.as_ref())?;
        let partitions = req.partitions.max(1);
        let topic = self.broker.create_topic(&req.name, partitions, settings).await?;
        Ok(Response::new(CreateTopicResponse { topic: Some(describe(&self.broker, &topic)) }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        self.broker.delete_topic(&request.into_inner().name).await?;
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn list_topics(&self, _request: Request<ListTopicsRequest>) -> Result<Response<ListTopicsResponse>, Status> {
        let topics = self.broker.topics().iter().map(|t| describe(&self.broker, t)).collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let topic = self.broker.topic(&request.into_inner().name)?;
        Ok(Response::new(DescribeTopicResponse { topic: Some(describe(&self.broker, &topic)) }))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let req = request.into_inner();
        let topic = self.broker.topic(&req.topic)?;
        let indexes: Vec<u32> =
            if req.partitions.is_empty() { (0..topic.record.partitions).collect() } else { req.partitions.clone() };
        let spec = req
            .spec
            .and_then(|s| s.spec)
            .ok_or_else(|| Status::invalid_argument("spec is required: earliest, latest or timestamp_ms"))?;
        let mut offsets = Vec::with_capacity(indexes.len());
        for i in indexes {
            let p = topic.partition(i)?;
            let o = p.offsets();
            let (offset, timestamp_ms) = match spec {
                offset_spec::Spec::Earliest(_) => (o.log_start.0, -1),
                offset_spec::Spec::Latest(_) => (o.high_watermark.0, -1),
                offset_spec::Spec::TimestampMs(t) => p.offset_for_time(t)?.unwrap_or((o.high_watermark.0, -1)),
            };
            offsets.push(PartitionOffsetAtTime { partition: i, offset, timestamp_ms });
        }
        Ok(Response::new(ListOffsetsResponse { offsets }))
    }

    async fn describe_cluster(
        &self,
        _request: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        let o = self.broker.options();
        let cluster_id = self.broker.meta().cluster_id().map_err(BrokerError::from)?;
        Ok(Response::new(DescribeClusterResponse {
            cluster_id,
            controller_id: o.node_id,
            brokers: vec![BrokerInfo { id: o.node_id, address: o.advertised_address.clone() }],
        }))
    }
}
