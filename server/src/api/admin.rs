//! `AdminService`: topics, offsets by time, cluster description. Creates and deletes go to
//! the broker, whose control plane decides them (and passes them on to the controller where
//! it must); offsets of partitions held on other brokers are asked of one of their replicas.

use std::collections::BTreeMap;
use std::sync::Arc;

use tidelog_proto::v1::admin_service_client::AdminServiceClient;
use tidelog_proto::v1::admin_service_server::AdminService;
use tidelog_proto::v1::{
    offset_spec, AddBrokerRequest, AddBrokerResponse, AlterPartitionReassignmentsRequest,
    AlterPartitionReassignmentsResponse, AlterTopicConfigRequest, AlterTopicConfigResponse, BrokerInfo,
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicRequest, CreateTopicResponse, DeleteRecordsRequest,
    DeleteRecordsResponse, DeleteTopicRequest, DeleteTopicResponse, DescribeClusterRequest, DescribeClusterResponse,
    DescribeTopicRequest, DescribeTopicResponse, IsolationLevel, ListOffsetsRequest, ListOffsetsResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, ListTopicsRequest, ListTopicsResponse,
    OngoingReassignment, PartitionDescription, PartitionLowWatermark, PartitionOffsetAtTime, RemoveBrokerRequest,
    RemoveBrokerResponse, ReplicaProgress, TopicDescription,
};
use tonic::{Request, Response, Status};

use super::authorize;
use crate::auth::layer::caller;
use crate::auth::{Operation, ResourceType, CLUSTER_NAME};
use crate::broker::route::{forwarded_request, Origin, APPLY_WAIT};
use crate::broker::seam::{AlterTopic, NewTopic, PartitionMove};
use crate::broker::{Broker, Topic};
use crate::error::BrokerError;

#[derive(Debug)]
pub struct AdminApi {
    broker: Arc<Broker>,
}

impl AdminApi {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

fn describe(brokers: &[u64], t: &Topic) -> TopicDescription {
    let partitions: Vec<PartitionDescription> = (0..t.record.partitions)
        .map(|i| {
            let mut d = PartitionDescription { partition: i, ..PartitionDescription::default() };
            // Replicas from the placement; leader and in-sync replicas as this broker's writer
            // sees them (a broker that holds no replica knows neither, nor the offsets).
            d.replica_ids = t.record.replicas_in(i, brokers.iter().copied()).into_iter().map(|v| v as u32).collect();
            if let Some(m) = t.record.reassigning.get(&i) {
                let before = t.record.replicas_of(i);
                d.adding_replica_ids = m.target.iter().filter(|b| !before.contains(b)).map(|b| *b as u32).collect();
                d.removing_replica_ids = before.iter().filter(|b| !m.target.contains(b)).map(|b| *b as u32).collect();
            }
            if let Some((p, writer)) = t.here(i) {
                let o = p.offsets();
                let (size, segments) = p.size_bytes();
                d.log_start_offset = o.log_start.0;
                d.high_watermark = o.high_watermark.0;
                d.log_end_offset = o.log_end.0;
                d.size_bytes = size;
                d.segment_count = segments as u32;
                d.leader_id = writer.leader().map_or(0, |l| l as u32);
                d.in_sync_replica_ids = writer.in_sync().into_iter().map(|v| v as u32).collect();
                if t.record.settings.cleanup_policy.compacts() {
                    let c = p.cleaner_status();
                    (d.dirty_ratio, d.last_cleaned_ms, d.cleaned_offset) =
                        (c.dirty_ratio, c.last_cleaned_ms, c.cleaned_offset);
                }
            }
            d
        })
        .collect();
    TopicDescription {
        name: t.record.name.clone(),
        partition_count: t.record.partitions,
        replication_factor: partitions.first().map_or(1, |p| p.replica_ids.len() as u32),
        config: Some(t.record.settings.to_proto()),
        created_at_ms: t.record.created_at_ms,
        partitions,
        config_overrides: t.record.own_settings(),
    }
}

/// Describes topics as this broker sees them.
fn describe_all(broker: &Broker, topics: &[Arc<Topic>]) -> Vec<TopicDescription> {
    let brokers = broker.broker_ids();
    topics.iter().map(|t| describe(&brokers, t)).collect()
}

/// Offsets of a topic's partitions by position. Partitions held elsewhere (a cluster with a
/// replication factor below its size) are asked of a broker that holds them, one hop at most
/// (`broker/route.rs`).
pub async fn list_offsets(
    broker: &Broker,
    req: ListOffsetsRequest,
    origin: Origin,
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
                Some(replicas) if origin == Origin::Client => {
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
            offset_spec::Spec::Latest(_) if req.isolation_level == IsolationLevel::ReadCommitted as i32 => {
                (p.last_stable_offset(), -1)
            }
            offset_spec::Spec::Latest(_) => (o.high_watermark.0, -1),
            offset_spec::Spec::TimestampMs(t) => p.offset_for_time(t)?.unwrap_or((o.high_watermark.0, -1)),
        };
        offsets.push(PartitionOffsetAtTime { partition: i, offset, timestamp_ms });
    }
    for (replicas, partitions) in remote {
        // Each replica in turn until one answers: any of them has the committed offsets.
        let mut failure = None;
        for id in replicas {
            let sub = ListOffsetsRequest {
                topic: req.topic.clone(),
                partitions: partitions.clone(),
                spec: Some(tidelog_proto::v1::OffsetSpec { spec: Some(spec) }),
                isolation_level: req.isolation_level,
            };
            let mut client = AdminServiceClient::new(broker.channel_to(id)?);
            match client.list_offsets(forwarded_request(sub, Some(APPLY_WAIT))).await {
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
    // In the order asked.
    offsets.sort_by_key(|o| indexes.iter().position(|i| *i == o.partition));
    Ok(ListOffsetsResponse { offsets })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let origin = Origin::of(&request);
        let caller = caller(&request);
        let auth = self.broker.auth();
        if !auth.allowed(&caller, Operation::Create, ResourceType::Cluster, CLUSTER_NAME) {
            auth.authorize(&caller, Operation::Create, ResourceType::Topic, &request.get_ref().name)
                .map_err(BrokerError::from)?;
        }
        let req = request.into_inner();
        let new = NewTopic {
            name: req.name,
            partitions: req.partitions.max(1),
            replication_factor: req.replication_factor,
            config: req.config,
        };
        let topic = self.broker.create_topic(new, origin).await?;
        let topic = describe_all(&self.broker, &[topic]).pop();
        Ok(Response::new(CreateTopicResponse { topic }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let origin = Origin::of(&request);
        authorize(&self.broker, &request, Operation::Delete, ResourceType::Topic, &request.get_ref().name)?;
        self.broker.delete_topic(&request.into_inner().name, origin).await?;
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn list_topics(&self, request: Request<ListTopicsRequest>) -> Result<Response<ListTopicsResponse>, Status> {
        // Only the topics the caller may describe (the others are not mentioned at all).
        let caller = caller(&request);
        let auth = self.broker.auth();
        let visible: Vec<Arc<Topic>> = self
            .broker
            .topics()
            .into_iter()
            .filter(|t| auth.allowed(&caller, Operation::Describe, ResourceType::Topic, &t.record.name))
            .collect();
        let topics = describe_all(&self.broker, &visible);
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        authorize(&self.broker, &request, Operation::Describe, ResourceType::Topic, &request.get_ref().name)?;
        let topic = self.broker.topic(&request.into_inner().name)?;
        Ok(Response::new(DescribeTopicResponse { topic: describe_all(&self.broker, &[topic]).pop() }))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let origin = Origin::of(&request);
        authorize(&self.broker, &request, Operation::Describe, ResourceType::Topic, &request.get_ref().topic)?;
        list_offsets(&self.broker, request.into_inner(), origin).await.map(Response::new)
    }

    async fn alter_topic_config(
        &self,
        request: Request<AlterTopicConfigRequest>,
    ) -> Result<Response<AlterTopicConfigResponse>, Status> {
        let origin = Origin::of(&request);
        authorize(&self.broker, &request, Operation::AlterConfigs, ResourceType::Topic, &request.get_ref().name)?;
        let req = request.into_inner();
        let alter = AlterTopic { name: req.name, config: req.config, reset: req.reset };
        let topic = self.broker.alter_topic(alter, origin).await?;
        Ok(Response::new(AlterTopicConfigResponse { topic: describe_all(&self.broker, &[topic]).pop() }))
    }

    async fn create_partitions(
        &self,
        request: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        let origin = Origin::of(&request);
        authorize(&self.broker, &request, Operation::Alter, ResourceType::Topic, &request.get_ref().topic)?;
        let req = request.into_inner();
        let topic = self.broker.add_partitions(&req.topic, req.total_count, origin).await?;
        Ok(Response::new(CreatePartitionsResponse { topic: describe_all(&self.broker, &[topic]).pop() }))
    }

    async fn delete_records(
        &self,
        request: Request<DeleteRecordsRequest>,
    ) -> Result<Response<DeleteRecordsResponse>, Status> {
        let origin = Origin::of(&request);
        authorize(&self.broker, &request, Operation::Delete, ResourceType::Topic, &request.get_ref().topic)?;
        let req = request.into_inner();
        let mut before = Vec::with_capacity(req.partitions.len());
        for p in &req.partitions {
            let offset = match p.before_offset {
                -1 => None,
                o => Some(u64::try_from(o).map_err(|_| {
                    Status::invalid_argument(format!(
                        "before_offset {o} of partition {} is not an offset (use 0 or more, or -1 for the high watermark)",
                        p.partition
                    ))
                })?),
            };
            before.push((p.partition, offset));
        }
        let lows = self.broker.delete_records(&req.topic, &before, origin).await?;
        let partitions = lows
            .into_iter()
            .map(|(partition, low_watermark)| PartitionLowWatermark { partition, low_watermark })
            .collect();
        Ok(Response::new(DeleteRecordsResponse { partitions }))
    }

    async fn describe_cluster(
        &self,
        _request: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        let view = self.broker.describe_cluster()?;
        let role = |id: u64| view.roles.get(&id).copied().unwrap_or_default().to_string();
        Ok(Response::new(DescribeClusterResponse {
            cluster_id: view.cluster_id.clone(),
            controller_id: view.controller.map_or(0, |l| l as u32),
            brokers: view
                .brokers
                .iter()
                .map(|(id, address)| BrokerInfo { id: *id as u32, address: address.clone(), role: role(*id) })
                .collect(),
        }))
    }

    /// Kafka's rule for membership changes: ALTER on the cluster.
    async fn add_broker(&self, request: Request<AddBrokerRequest>) -> Result<Response<AddBrokerResponse>, Status> {
        let origin = Origin::of(&request);
        authorize(&self.broker, &request, Operation::Alter, ResourceType::Cluster, CLUSTER_NAME)?;
        let req = request.into_inner();
        let internal = Some(req.internal_address.as_str()).filter(|a| !a.is_empty());
        self.broker.add_broker(u64::from(req.id), &req.address, internal, origin).await?;
        let view = self.broker.describe_cluster()?;
        let broker = BrokerInfo {
            id: req.id,
            address: view.brokers.get(&u64::from(req.id)).cloned().unwrap_or(req.address),
            role: view.roles.get(&u64::from(req.id)).copied().unwrap_or_default().to_string(),
        };
        Ok(Response::new(AddBrokerResponse { broker: Some(broker) }))
    }

    async fn remove_broker(
        &self,
        request: Request<RemoveBrokerRequest>,
    ) -> Result<Response<RemoveBrokerResponse>, Status> {
        let origin = Origin::of(&request);
        authorize(&self.broker, &request, Operation::Alter, ResourceType::Cluster, CLUSTER_NAME)?;
        self.broker.remove_broker(u64::from(request.get_ref().id), origin).await?;
        Ok(Response::new(RemoveBrokerResponse {}))
    }

    /// Kafka's rule: ALTER on the cluster.
    async fn alter_partition_reassignments(
        &self,
        request: Request<AlterPartitionReassignmentsRequest>,
    ) -> Result<Response<AlterPartitionReassignmentsResponse>, Status> {
        let origin = Origin::of(&request);
        authorize(&self.broker, &request, Operation::Alter, ResourceType::Cluster, CLUSTER_NAME)?;
        let req = request.into_inner();
        let moves = req
            .reassignments
            .into_iter()
            .map(|r| PartitionMove {
                topic: r.topic,
                partition: r.partition,
                replicas: r.replicas.into_iter().map(u64::from).collect(),
            })
            .collect();
        self.broker.reassign_partitions(moves, req.throttle_bytes_per_sec, origin).await?;
        Ok(Response::new(AlterPartitionReassignmentsResponse {}))
    }

    /// Kafka's rule: DESCRIBE on the cluster.
    async fn list_partition_reassignments(
        &self,
        request: Request<ListPartitionReassignmentsRequest>,
    ) -> Result<Response<ListPartitionReassignmentsResponse>, Status> {
        authorize(&self.broker, &request, Operation::Describe, ResourceType::Cluster, CLUSTER_NAME)?;
        let topic = Some(request.get_ref().topic.as_str()).filter(|t| !t.is_empty());
        let ids = |v: &[u64]| v.iter().map(|b| *b as u32).collect::<Vec<u32>>();
        let reassignments = self
            .broker
            .reassignments(topic)?
            .into_iter()
            .map(|m| OngoingReassignment {
                adding_replica_ids: ids(&m
                    .target
                    .iter()
                    .filter(|b| !m.replicas.contains(b))
                    .copied()
                    .collect::<Vec<_>>()),
                removing_replica_ids: ids(&m
                    .replicas
                    .iter()
                    .filter(|b| !m.target.contains(b))
                    .copied()
                    .collect::<Vec<_>>()),
                replicas: ids(&m.replicas),
                target_replicas: ids(&m.target),
                leader_id: m.leader.map_or(0, |l| l as u32),
                adding: m
                    .progress
                    .iter()
                    .map(|(b, lag, role)| ReplicaProgress {
                        broker_id: *b as u32,
                        lag_entries: *lag,
                        role: (*role).to_string(),
                    })
                    .collect(),
                topic: m.topic,
                partition: m.partition,
            })
            .collect();
        Ok(Response::new(ListPartitionReassignmentsResponse { reassignments }))
    }
}
