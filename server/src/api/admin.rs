//! `AdminService`: topics, offsets by time, cluster description.

use std::collections::BTreeMap;
use std::sync::Arc;

use tidelog_proto::v1::admin_service_client::AdminServiceClient;
use tidelog_proto::v1::admin_service_server::AdminService;
use tidelog_proto::v1::{
    offset_spec, BrokerInfo, CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribeTopicRequest, DescribeTopicResponse, FsyncPolicy,
    ListOffsetsRequest, ListOffsetsResponse, ListTopicsRequest, ListTopicsResponse, PartitionDescription,
    PartitionOffsetAtTime, TopicConfig, TopicDescription,
};
use tonic::{Request, Response, Status};

use super::forward::{self, forwarded_request};
use crate::broker::{now_ms, Broker, BrokerError, Topic};
use crate::cluster::metadata::{self, MetaCommand, APPLY_WAIT};
use crate::cluster::placement;
use crate::cluster::Cluster;
use crate::meta::TopicRecord;
use crate::topic_config::{FsyncSetting, TopicSettings};

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
    let cluster = broker.cluster();
    let partitions: Vec<PartitionDescription> = (0..t.record.partitions)
        .map(|i| {
            let mut d = PartitionDescription { partition: i, ..PartitionDescription::default() };
            // Replicas from the placement; leader and in-sync replicas as this broker's Raft
            // group sees them (a broker that holds no replica knows neither, nor the offsets).
            d.replica_ids = match cluster {
                Some(c) => t.record.replicas_in(i, c.brokers().keys().copied()).into_iter().map(|v| v as u32).collect(),
                None => vec![node],
            };
            if let Ok(p) = t.partition(i) {
                let o = p.offsets();
                let (size, segments) = p.size_bytes();
                d.log_start_offset = o.log_start.0;
                d.high_watermark = o.high_watermark.0;
                d.log_end_offset = o.log_end.0;
                d.size_bytes = size;
                d.segment_count = segments as u32;
                (d.leader_id, d.in_sync_replica_ids) = match t.replica(i) {
                    Some(r) => {
                        (r.leader().map_or(0, |l| l as u32), r.in_sync().into_iter().map(|v| v as u32).collect())
                    }
                    None => (node, vec![node]),
                };
            }
            d
        })
        .collect();
    TopicDescription {
        name: t.record.name.clone(),
        partition_count: t.record.partitions,
        replication_factor: partitions.first().map_or(1, |p| p.replica_ids.len() as u32),
        config: Some(to_config(&t.record.settings)),
        created_at_ms: t.record.created_at_ms,
        partitions,
    }
}

impl AdminApi {
    /// Cluster mode: the controller proposes `CreateTopic`; any other broker forwards the call
    /// to it. Either way the answer waits until this broker has applied the topic.
    async fn create_replicated(
        &self,
        cluster: &Cluster,
        req: CreateTopicRequest,
        forwarded: bool,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let brokers: Vec<u64> = cluster.brokers().keys().copied().collect();
        let n = brokers.len() as u32;
        let rf = match req.replication_factor {
            0 => placement::DEFAULT_REPLICATION_FACTOR.min(n),
            rf if rf <= n => rf,
            rf => {
                return Err(Status::invalid_argument(format!(
                    "replication_factor {rf} is more than the {n} brokers of this cluster (use 1..={n}, or 0 for {})",
                    placement::DEFAULT_REPLICATION_FACTOR.min(n)
                )))
            }
        };
        let partitions = req.partitions.max(1);
        let settings = merge_settings(&self.broker.options().topic_defaults, req.config.as_ref())?;
        self.broker.check_new_topic(&req.name, partitions, &settings)?;
        if self.broker.topic(&req.name).is_ok() {
            return Err(BrokerError::TopicExists(req.name).into());
        }
        let replicas = placement::assign(&brokers, partitions, rf, &req.name);
        let record = TopicRecord { name: req.name.clone(), partitions, created_at_ms: now_ms(), settings, replicas };
        match metadata::propose(cluster, &MetaCommand::CreateTopic { record }).await {
            Ok(offset) => {
                cluster.wait_applied(offset + 1, APPLY_WAIT).await?;
                let topic = self.broker.topic(&req.name)?;
                if topic.topic_id != metadata::topic_id_at(offset) {
                    return Err(BrokerError::TopicExists(req.name).into());
                }
                Ok(Response::new(CreateTopicResponse { topic: Some(describe(&self.broker, &topic)) }))
            }
            Err(BrokerError::NotLeader { leader: Some((id, _)), .. }) if !forwarded => {
                let name = req.name.clone();
                controller_client(cluster, id)?
                    .create_topic(forwarded_request(req, Some(APPLY_WAIT)))
                    .await
                    .map_err(forward::upstream_status)?;
                let topic = wait_topic(&self.broker, cluster, &name, true).await?;
                Ok(Response::new(CreateTopicResponse { topic: Some(describe(&self.broker, &topic)) }))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_replicated(
        &self,
        cluster: &Cluster,
        req: DeleteTopicRequest,
        forwarded: bool,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let topic = self.broker.topic(&req.name)?;
        let cmd = MetaCommand::DeleteTopic {
            name: req.name.clone(),
            topic_id: topic.topic_id,
            partitions: topic.record.partitions,
        };
        match metadata::propose(cluster, &cmd).await {
            Ok(offset) => cluster.wait_applied(offset + 1, APPLY_WAIT).await?,
            Err(BrokerError::NotLeader { leader: Some((id, _)), .. }) if !forwarded => {
                controller_client(cluster, id)?
                    .delete_topic(forwarded_request(req.clone(), Some(APPLY_WAIT)))
                    .await
                    .map_err(forward::upstream_status)?;
                wait_topic(&self.broker, cluster, &req.name, false).await.map(|_| ()).or_else(|e| match e {
                    BrokerError::UnknownTopic(_) => Ok(()),
                    e => Err(e),
                })?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Response::new(DeleteTopicResponse {}))
    }
}

/// Offsets of a topic's partitions by position. Partitions held elsewhere (replication factor below the cluster size) are asked of a
/// broker that holds them, one hop at most (`forward.rs`).
pub async fn list_offsets(
    broker: &Broker,
    req: ListOffsetsRequest,
    forwarded: bool,
) -> Result<ListOffsetsResponse, Status> {
    let topic = broker.topic(&req.topic)?;
    let indexes: Vec<u32> =
        if req.partitions.is_empty() { (0..topic.record.partitions).collect() } else { req.partitions.clone() };
    let spec = req
        .spec
        .and_then(|s| s.spec)
        .ok_or_else(|| Status::invalid_argument("spec is required: earliest, latest or timestamp_ms"))?;
    let mut offsets = Vec::with_capacity(indexes.len());
    // Partitions held elsewhere, by their replicas (preferred first).
    let mut remote: BTreeMap<Vec<u64>, Vec<u32>> = BTreeMap::new();
    for &i in &indexes {
        let p = match topic.partition(i) {
            Ok(p) => p,
            Err(e @ BrokerError::NotLeader { .. }) => match topic.elsewhere(i) {
                Some(replicas) if !forwarded => {
                    remote.entry(replicas.iter().map(|(id, _)| *id).collect()).or_default().push(i);
                    continue;
                }
                _ => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        let o = p.offsets();
        let (offset, timestamp_ms) = match spec {
            offset_spec::Spec::Earliest(_) => (o.log_start.0, -1),
            offset_spec::Spec::Latest(_) => (o.high_watermark.0, -1),
            offset_spec::Spec::TimestampMs(t) => p.offset_for_time(t)?.unwrap_or((o.high_watermark.0, -1)),
        };
        offsets.push(PartitionOffsetAtTime { partition: i, offset, timestamp_ms });
    }
    if let Some(cluster) = broker.cluster() {
        for (replicas, partitions) in remote {
            // Each replica in turn until one answers: any of them has the committed offsets.
            let mut failure = None;
            for id in replicas {
                let sub = ListOffsetsRequest {
                    topic: req.topic.clone(),
                    partitions: partitions.clone(),
                    spec: Some(tidelog_proto::v1::OffsetSpec { spec: Some(spec) }),
                };
                match controller_client(cluster, id)?.list_offsets(forwarded_request(sub, Some(APPLY_WAIT))).await {
                    Ok(resp) => {
                        offsets.extend(resp.into_inner().offsets);
                        failure = None;
                        break;
                    }
                    Err(s) => failure = Some(s),
                }
            }
            if let Some(s) = failure {
                return Err(Status::unavailable(format!(
                    "no replica of partitions {partitions:?} of topic '{}' answered: {}",
                    req.topic,
                    s.message()
                )));
            }
        }
    }
    // In the order asked.
    offsets.sort_by_key(|o| indexes.iter().position(|i| *i == o.partition));
    Ok(ListOffsetsResponse { offsets })
}

/// The admin service of broker `id` (the controller, or a partition's replica).
fn controller_client(cluster: &Cluster, id: u64) -> Result<AdminServiceClient<tonic::transport::Channel>, Status> {
    Ok(AdminServiceClient::new(forward::channel_to(cluster, id)?))
}

/// Waits until this broker's metadata shows topic `name` (`present`) or no longer shows it.
async fn wait_topic(broker: &Broker, cluster: &Cluster, name: &str, present: bool) -> Result<Arc<Topic>, BrokerError> {
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    let mut applied = cluster.watch_applied();
    loop {
        match broker.topic(name) {
            Ok(t) if present => return Ok(t),
            Err(e @ BrokerError::UnknownTopic(_)) if !present => return Err(e),
            _ => {}
        }
        if tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
            return Err(BrokerError::NotLeader {
                what: format!("the metadata of topic '{name}' yet (not applied on this broker in time)"),
                leader: None,
            });
        }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let forwarded = forward::is_forwarded(&request);
        let req = request.into_inner();
        if let Some(cluster) = self.broker.cluster() {
            return self.create_replicated(cluster, req, forwarded).await;
        }
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
        if let Some(cluster) = self.broker.cluster() {
            let forwarded = forward::is_forwarded(&request);
            return self.delete_replicated(cluster, request.into_inner(), forwarded).await;
        }
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
        let forwarded = forward::is_forwarded(&request);
        list_offsets(&self.broker, request.into_inner(), forwarded).await.map(Response::new)
    }

    async fn describe_cluster(
        &self,
        _request: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        let o = self.broker.options();
        let cluster_id = self.broker.meta().cluster_id().map_err(BrokerError::from)?;
        if let Some(c) = self.broker.cluster() {
            return Ok(Response::new(DescribeClusterResponse {
                // The metadata group's first entry is the same everywhere; name the cluster by
                // its members instead of this broker's local id.
                cluster_id: format!("tidelog-{}", c.brokers().keys().map(u64::to_string).collect::<Vec<_>>().join("-")),
                controller_id: c.controller().map_or(0, |l| l as u32),
                brokers: c.brokers().iter().map(|(id, a)| BrokerInfo { id: *id as u32, address: a.clone() }).collect(),
            }));
        }
        Ok(Response::new(DescribeClusterResponse {
            cluster_id,
            controller_id: o.node_id,
            brokers: vec![BrokerInfo { id: o.node_id, address: o.advertised_address.clone() }],
        }))
    }
}
