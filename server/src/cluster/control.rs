//! The cluster's `ControlPlane` (`broker/seam.rs`): metadata decisions are entries of the
//! metadata Raft group, proposed by the controller (its leader) and applied by every broker
//! (`metadata.rs`). A write that reaches another broker is passed on to the controller, once
//! (`broker/route.rs`), and answered when this broker has applied it too, so a client that
//! created a topic anywhere can use it there at once.
//!
//! Consumer groups are coordinated by the controller alone, so one coordinator fences every
//! commit of a group: [`ControlPlane::coordinator`] below decides where their calls go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tidelog_proto::v1::admin_service_client::AdminServiceClient;
use tidelog_proto::v1::{
    AddBrokerRequest, AlterPartitionReassignmentsRequest, AlterTopicConfigRequest, CreatePartitionsRequest,
    CreateTopicRequest, DeleteRecordsPartition, DeleteRecordsRequest, DeleteTopicRequest, PartitionReassignment,
    RemoveBrokerRequest,
};

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::Instant as _;

use tidelog_proto::v1::security_service_client::SecurityServiceClient;
use tidelog_proto::v1::{AlterClientQuotasRequest, CreateAclsRequest, DeleteAclsRequest};

use super::metadata::{self, MetaCommand};
use super::{members, placement, reassign, Cluster, RaftReplica};
use crate::auth::proto as auth_proto;
use crate::auth::{ChangeOutcome, SecurityChange};
use crate::broker::route::{
    apply_wait_for, forwarded_request, upstream_status, Origin, Route, APPLY_WAIT, CONTROLLER_WAIT,
};
use crate::broker::seam::{AlterTopic, ClusterView, ControlPlane, MoveView, NewTopic, PartitionMove};
use crate::broker::{Broker, Topic};
use crate::clock::now_ms;
use crate::config::MAX_NODE_ID;
use crate::error::BrokerError;
use crate::meta::{StoredOffset, TopicRecord};
use crate::topic_config::TopicSettings;

#[tonic::async_trait]
impl ControlPlane for Cluster {
    fn replication_factor(&self, requested: u32) -> Result<u32, BrokerError> {
        let n = self.brokers().len() as u32;
        match requested {
            0 => Ok(placement::DEFAULT_REPLICATION_FACTOR.min(n)),
            rf if rf <= n => Ok(rf),
            rf => Err(BrokerError::InvalidArgument(format!(
                "replication_factor {rf} is more than the {n} brokers of this cluster (use 1..={n}, or 0 for {})",
                placement::DEFAULT_REPLICATION_FACTOR.min(n)
            ))),
        }
    }

    /// Proposed by the controller with the placement; any other broker passes the request on
    /// to the controller as it came (so the controller's topic defaults apply, as for a create
    /// sent to it directly) and answers once it applied the topic itself.
    async fn create_topic(
        &self,
        broker: &Broker,
        new: &NewTopic,
        settings: TopicSettings,
        rf: u32,
        origin: Origin,
    ) -> Result<Arc<Topic>, BrokerError> {
        let brokers: Vec<u64> = self.brokers.placeable();
        let replicas = placement::assign(&brokers, new.partitions, rf, &new.name);
        let record = TopicRecord {
            name: new.name.clone(),
            partitions: new.partitions,
            created_at_ms: now_ms(),
            settings,
            replicas,
            overrides: Some(crate::topic_config::keys_in(new.config.as_ref())),
            reassigning: Default::default(),
        };
        let wait = apply_wait_for(new.partitions);
        let topic = match metadata::propose(self, &MetaCommand::CreateTopic { record }).await {
            Ok(offset) => {
                self.wait_applied(offset + 1, wait).await?;
                let topic = broker.topic(&new.name)?;
                if topic.topic_id != metadata::topic_id_at(offset) {
                    return Err(BrokerError::TopicExists(new.name.clone()));
                }
                topic
            }
            Err(BrokerError::NotLeader { leader: Some((id, _)), .. }) if origin == Origin::Client => {
                let req = CreateTopicRequest {
                    name: new.name.clone(),
                    partitions: new.partitions,
                    replication_factor: new.replication_factor,
                    config: new.config,
                };
                self.admin_client(id)?
                    .create_topic(forwarded_request(req, Some(wait)))
                    .await
                    .map_err(|s| BrokerError::Forwarded(upstream_status(s)))?;
                self.wait_topic_where(broker, &new.name, wait, |t| t.settled()).await?
            }
            Err(e) => return Err(e),
        };
        self.wait_for_leaders(&topic).await;
        Ok(topic)
    }

    /// An `AlterTopic` entry naming the incarnation, proposed by the controller; any other
    /// broker passes the request on as it came and answers once it applied the change itself.
    async fn alter_topic(
        &self,
        broker: &Broker,
        topic: &Topic,
        request: &AlterTopic,
        origin: Origin,
    ) -> Result<Arc<Topic>, BrokerError> {
        let name = &topic.record.name;
        let defaults = broker.options().topic_defaults.clone();
        let values = defaults.merged(request.config.as_ref()).map_err(BrokerError::InvalidArgument)?;
        let cmd = MetaCommand::AlterTopic {
            name: name.clone(),
            topic_id: topic.topic_id,
            set: crate::topic_config::keys_in(request.config.as_ref()),
            values,
            reset: request.reset.clone(),
            defaults,
        };
        match metadata::propose(self, &cmd).await {
            Ok(offset) => {
                self.wait_applied(offset + 1, APPLY_WAIT).await?;
                match broker.topic(name) {
                    Ok(t) if t.topic_id == topic.topic_id => Ok(t),
                    _ => Err(BrokerError::TopicDeleted(name.clone())),
                }
            }
            Err(BrokerError::NotLeader { leader: Some((id, _)), .. }) if origin == Origin::Client => {
                let req = AlterTopicConfigRequest {
                    name: name.clone(),
                    config: request.config,
                    reset: request.reset.clone(),
                };
                let resp = self
                    .admin_client(id)?
                    .alter_topic_config(forwarded_request(req, Some(APPLY_WAIT)))
                    .await
                    .map_err(|s| BrokerError::Forwarded(upstream_status(s)))?
                    .into_inner();
                let want = resp.topic.and_then(|t| t.config);
                self.wait_topic_where(broker, name, APPLY_WAIT, |t| Some(t.record.settings.to_proto()) == want).await
            }
            Err(e) => Err(e),
        }
    }

    /// An `AddPartitions` entry with the new partitions' placement (Kafka's rule continued:
    /// `placement::assign` over the brokers now, from the first new partition), proposed by
    /// the controller; any other broker passes the request on and answers once it applied it.
    async fn add_partitions(
        &self,
        broker: &Broker,
        topic: &Topic,
        partitions: u32,
        origin: Origin,
    ) -> Result<Arc<Topic>, BrokerError> {
        let name = &topic.record.name;
        let old = topic.record.partitions as usize;
        let replicas = if topic.record.replicas.is_empty() {
            Vec::new() // placed before placement existed: every broker holds every partition
        } else {
            let brokers: Vec<u64> = self.brokers.placeable();
            let rf = topic.record.replicas.first().map_or(1, Vec::len) as u32;
            placement::assign(&brokers, partitions, rf, name).split_off(old)
        };
        let from = topic.record.partitions;
        let cmd =
            MetaCommand::AddPartitions { name: name.clone(), topic_id: topic.topic_id, from, partitions, replicas };
        let wait = apply_wait_for(partitions - from);
        let grown = match metadata::propose(self, &cmd).await {
            Ok(offset) => {
                self.wait_applied(offset + 1, wait).await?;
                match broker.topic(name) {
                    Ok(t) if t.topic_id == topic.topic_id && t.record.partitions >= partitions => t,
                    Ok(t) if t.topic_id == topic.topic_id => {
                        return Err(BrokerError::InvalidArgument(format!(
                            "topic '{name}' could not grow to {partitions} partitions (it has {}); see the broker log",
                            t.record.partitions
                        )))
                    }
                    _ => return Err(BrokerError::TopicDeleted(name.clone())),
                }
            }
            Err(BrokerError::NotLeader { leader: Some((id, _)), .. }) if origin == Origin::Client => {
                let req = CreatePartitionsRequest { topic: name.clone(), total_count: partitions };
                self.admin_client(id)?
                    .create_partitions(forwarded_request(req, Some(wait)))
                    .await
                    .map_err(|s| BrokerError::Forwarded(upstream_status(s)))?;
                self.wait_topic_where(broker, name, wait, |t| t.record.partitions >= partitions && t.settled()).await?
            }
            Err(e) => return Err(e),
        };
        self.wait_for_leaders(&grown).await;
        Ok(grown)
    }

    /// A `DeleteRecords` entry, proposed by the controller (any other broker passes the
    /// request on, with the offsets it checked) and answered once applied here.
    async fn delete_records(
        &self,
        _broker: &Broker,
        topic: &Topic,
        before: &[(u32, u64)],
        origin: Origin,
    ) -> Result<Vec<(u32, u64)>, BrokerError> {
        let name = &topic.record.name;
        let cmd = MetaCommand::DeleteRecords { name: name.clone(), topic_id: topic.topic_id, before: before.to_vec() };
        match metadata::propose(self, &cmd).await {
            Ok(offset) => {
                self.wait_applied(offset + 1, APPLY_WAIT).await?;
                // At least the offset asked for; more where this broker holds the partition
                // and an earlier deletion went further.
                Ok(before
                    .iter()
                    .map(|(p, offset)| {
                        (*p, topic.partition(*p).map_or(*offset, |l| l.offsets().log_start.0.max(*offset)))
                    })
                    .collect())
            }
            Err(BrokerError::NotLeader { leader: Some((id, _)), .. }) if origin == Origin::Client => {
                let partitions = before
                    .iter()
                    .map(|(p, o)| DeleteRecordsPartition { partition: *p, before_offset: *o as i64 })
                    .collect();
                let req = DeleteRecordsRequest { topic: name.clone(), partitions };
                let resp = self
                    .admin_client(id)?
                    .delete_records(forwarded_request(req, Some(APPLY_WAIT)))
                    .await
                    .map_err(|s| BrokerError::Forwarded(upstream_status(s)))?
                    .into_inner();
                Ok(resp.partitions.into_iter().map(|p| (p.partition, p.low_watermark)).collect())
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_topic(&self, broker: &Broker, name: &str, origin: Origin) -> Result<(), BrokerError> {
        let topic = broker.topic(name)?;
        let cmd = MetaCommand::DeleteTopic {
            name: name.to_string(),
            topic_id: topic.topic_id,
            partitions: topic.record.partitions,
        };
        match metadata::propose(self, &cmd).await {
            Ok(offset) => self.wait_applied(offset + 1, APPLY_WAIT).await,
            Err(BrokerError::NotLeader { leader: Some((id, _)), .. }) if origin == Origin::Client => {
                let req = DeleteTopicRequest { name: name.to_string() };
                self.admin_client(id)?
                    .delete_topic(forwarded_request(req, Some(APPLY_WAIT)))
                    .await
                    .map_err(|s| BrokerError::Forwarded(upstream_status(s)))?;
                match self.wait_topic_gone(broker, name).await {
                    Ok(_) | Err(BrokerError::UnknownTopic(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A `CommitOffsets` entry of the metadata group naming the topic's incarnation, answered
    /// once a majority stored it (fsynced) and this broker applied it. Applying skips it if
    /// that incarnation was deleted by an earlier entry (`metadata.rs`).
    async fn commit_offsets(
        &self,
        broker: &Broker,
        group: &str,
        topic: &Topic,
        offsets: Vec<StoredOffset>,
    ) -> Result<(), BrokerError> {
        let name = &topic.record.name;
        let cmd = MetaCommand::CommitOffsets {
            group: group.to_string(),
            topic: name.clone(),
            offsets,
            topic_id: topic.topic_id,
        };
        let offset = metadata::propose(self, &cmd).await?;
        self.wait_applied(offset + 1, APPLY_WAIT).await?;
        match broker.topic(name) {
            Ok(current) if current.topic_id == topic.topic_id => Ok(()),
            _ => Err(BrokerError::TopicDeleted(name.clone())),
        }
    }

    /// A `DeleteGroup` entry of the metadata group, answered once committed and applied here.
    async fn delete_group(&self, broker: &Broker, group: &str) -> Result<usize, BrokerError> {
        let before = broker.store().offset_count(group)?;
        let offset = metadata::propose(self, &MetaCommand::DeleteGroup { group: group.to_string() }).await?;
        self.wait_applied(offset + 1, APPLY_WAIT).await?;
        Ok(before)
    }

    /// Proposed to the metadata group, so every broker applies it in the same order. The
    /// outcome (ACLs added or removed) is as this broker's view had it just before the change.
    async fn alter_security(
        &self,
        broker: &Broker,
        change: SecurityChange,
        origin: Origin,
    ) -> Result<ChangeOutcome, BrokerError> {
        let before = broker.auth().state();
        let cmd = MetaCommand::Security { change: change.clone() };
        match metadata::propose(self, &cmd).await {
            Ok(offset) => {
                self.wait_applied(offset + 1, APPLY_WAIT).await?;
                let mut outcome = (*before).clone().apply(&change);
                if let SecurityChange::AlterQuota { entity, .. } = &change {
                    outcome.limits = broker.auth().state().quotas.get(entity).copied().unwrap_or_default();
                }
                Ok(outcome)
            }
            Err(BrokerError::NotLeader { leader: Some((id, _)), .. }) if origin == Origin::Client => {
                let mut client = SecurityServiceClient::new(self.channel_to_broker(id)?);
                let up = |s| BrokerError::Forwarded(upstream_status(s));
                let mut outcome = ChangeOutcome::default();
                match change {
                    SecurityChange::AddAcls { acls } => {
                        let req = CreateAclsRequest { acls: acls.iter().map(auth_proto::acl_to_proto).collect() };
                        let resp = client.create_acls(forwarded_request(req, Some(APPLY_WAIT))).await.map_err(up)?;
                        outcome.acls_added = resp.into_inner().created as usize;
                    }
                    SecurityChange::RemoveAcls { filters } => {
                        let filters = filters.iter().map(auth_proto::filter_to_proto).collect();
                        let req = DeleteAclsRequest { filters };
                        let resp = client.delete_acls(forwarded_request(req, Some(APPLY_WAIT))).await.map_err(up)?;
                        outcome.acls_removed =
                            resp.into_inner().acls.iter().filter_map(|a| auth_proto::acl_from_proto(a).ok()).collect();
                    }
                    SecurityChange::AlterQuota { entity, set, remove } => {
                        let req = AlterClientQuotasRequest {
                            entity: Some(auth_proto::entity_to_proto(&entity)),
                            set: Some(auth_proto::limits_to_proto(&set)),
                            remove,
                        };
                        let resp =
                            client.alter_client_quotas(forwarded_request(req, Some(APPLY_WAIT))).await.map_err(up)?;
                        outcome.limits = auth_proto::limits_from_proto(resp.into_inner().limits.as_ref());
                    }
                }
                Ok(outcome)
            }
            Err(e) => Err(e),
        }
    }

    /// Unique across the cluster without a round trip: the low bits name the broker that
    /// issued it (node ids are below `MAX_NODE_ID`).
    async fn store_transaction(
        &self,
        broker: &Broker,
        id: &str,
        entry: crate::meta::txn::TxnEntry,
    ) -> Result<bool, BrokerError> {
        let cmd = MetaCommand::Txn { id: id.to_string(), entry };
        let offset = metadata::propose(self, &cmd).await?;
        self.wait_applied(offset + 1, APPLY_WAIT).await?;
        broker.transactions().outcome_at(offset).ok_or_else(|| BrokerError::NotLeader {
            what: "the transaction coordinator (its change was applied too long ago to tell; retry)".into(),
            leader: None,
        })
    }

    async fn next_producer_id(&self, broker: &Broker) -> Result<i64, BrokerError> {
        let local = broker.store().next_producer_id().await?;
        Ok(local * MAX_NODE_ID as i64 + self.node_id() as i64)
    }

    /// On the controller, the only broker that proposes `CommitOffsets`, so one coordinator
    /// fences every commit of a group. This broker counts as the controller only while it
    /// leads with a fresh quorum ([`Cluster::leads_with_quorum`]) *and* has applied an entry
    /// of its own term (so every commit acknowledged by an earlier controller is applied here
    /// before it answers a FetchCommitted). Waits up to `CONTROLLER_WAIT` for a controller to
    /// be known, then answers a retryable `NotLeader` (also what a controller cut off from its
    /// quorum answers).
    async fn coordinator(&self, origin: Origin) -> Result<Route, BrokerError> {
        match self.controller_serving(CONTROLLER_WAIT).await? {
            None => Ok(Route::Here),
            Some(id) if origin == Origin::Forwarded => Err(BrokerError::NotLeader {
                what: format!("the group coordinator (it moved to broker {id}; retry)"),
                leader: self.leader_hint(Some(id)),
            }),
            Some(id) => Ok(Route::To(self.channel_to_broker(id)?, id)),
        }
    }

    /// Once this broker no longer leads the metadata group with a fresh quorum (or the group
    /// stopped): the group sessions it coordinates end, and their members rejoin at the new
    /// controller.
    fn coordinator_lost(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut metrics = self.metadata_group.raft.metrics();
            let check = Duration::from_millis(self.raft_config.heartbeat_interval);
            while self.leads_with_quorum() {
                if let Ok(Err(_)) = tokio::time::timeout(check, metrics.changed()).await {
                    return;
                }
            }
        })
    }

    /// Once this broker's view of the controller is no longer `id` (a proxied session then
    /// ends, and its member rejoins where the controller is now).
    fn coordinator_moved_from(self: Arc<Self>, id: u64) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut metrics = self.metadata_group.raft.metrics();
            while self.controller() == Some(id) {
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    fn channel_to(&self, id: u64) -> Result<tonic::transport::Channel, BrokerError> {
        self.channel_to_broker(id)
    }

    fn brokers(&self, _broker: &Broker) -> BTreeMap<u64, String> {
        Cluster::brokers(self)
    }

    fn describe_cluster(&self, _broker: &Broker) -> Result<ClusterView, BrokerError> {
        let m = self.metadata_group.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let mut roles: BTreeMap<u64, &'static str> = membership.learner_ids().map(|id| (id, "observer")).collect();
        roles.extend(membership.voter_ids().map(|id| (id, "voter")));
        Ok(ClusterView {
            // Named by the brokers it was started with (a joining broker learns it).
            cluster_id: self.cluster_id().to_string(),
            controller: self.controller(),
            brokers: self.brokers(),
            roles,
        })
    }

    /// On the controller (any other broker passes the request on): the `AddBroker` entry, then
    /// the metadata group's learner, promoted to voter once caught up while the group has
    /// fewer than three voters (`members.rs`).
    async fn add_broker(
        &self,
        broker: &Broker,
        id: u64,
        address: &str,
        internal: Option<&str>,
        origin: Origin,
    ) -> Result<(), BrokerError> {
        match self.controller() {
            Some(c) if c == self.node_id() => {
                members::add_broker(broker, self, id, address.to_string(), internal.map(str::to_string)).await?;
                members::settle_voters(self, members::ADD_PROMOTE_WAIT).await?;
                Ok(())
            }
            Some(c) if origin == Origin::Client => {
                let req = AddBrokerRequest {
                    id: id as u32,
                    address: address.to_string(),
                    internal_address: internal.unwrap_or_default().to_string(),
                };
                self.admin_client(c)?
                    .add_broker(forwarded_request(req, Some(APPLY_WAIT)))
                    .await
                    .map_err(|s| BrokerError::Forwarded(upstream_status(s)))?;
                Ok(())
            }
            c => Err(BrokerError::NotLeader { what: "the cluster metadata".into(), leader: self.leader_hint(c) }),
        }
    }

    /// On the controller (any other broker passes the request on), validated there.
    async fn reassign_partitions(
        &self,
        broker: &Broker,
        moves: Vec<PartitionMove>,
        throttle: u64,
        origin: Origin,
    ) -> Result<(), BrokerError> {
        match self.controller() {
            Some(c) if c == self.node_id() => reassign::propose_moves(broker, self, moves, throttle).await,
            Some(c) if origin == Origin::Client => {
                let req = AlterPartitionReassignmentsRequest {
                    reassignments: moves
                        .into_iter()
                        .map(|m| PartitionReassignment {
                            topic: m.topic,
                            partition: m.partition,
                            replicas: m.replicas.into_iter().map(|r| r as u32).collect(),
                        })
                        .collect(),
                    throttle_bytes_per_sec: throttle,
                };
                self.admin_client(c)?
                    .alter_partition_reassignments(forwarded_request(req, Some(APPLY_WAIT)))
                    .await
                    .map_err(|s| BrokerError::Forwarded(upstream_status(s)))?;
                Ok(())
            }
            c => Err(BrokerError::NotLeader { what: "the cluster metadata".into(), leader: self.leader_hint(c) }),
        }
    }

    fn reassignments(&self, broker: &Broker, topic: Option<&str>) -> Vec<MoveView> {
        reassign::views(broker, self, topic)
    }

    /// On the controller (any other broker passes the request on).
    async fn remove_broker(&self, broker: &Broker, id: u64, origin: Origin) -> Result<(), BrokerError> {
        match self.controller() {
            Some(c) if c == self.node_id() => members::remove_broker(broker, self, id).await,
            Some(c) if origin == Origin::Client => {
                self.admin_client(c)?
                    .remove_broker(forwarded_request(RemoveBrokerRequest { id: id as u32 }, Some(APPLY_WAIT)))
                    .await
                    .map_err(|s| BrokerError::Forwarded(upstream_status(s)))?;
                Ok(())
            }
            c => Err(BrokerError::NotLeader { what: "the cluster metadata".into(), leader: self.leader_hint(c) }),
        }
    }

    fn metadata_ready(&self) -> bool {
        Cluster::metadata_ready(self)
    }

    fn generation_base(&self) -> u32 {
        (self.meta_term().min(0xFFFF) as u32) << 16
    }

    /// Hands the leadership of every group this broker leads (partitions and the metadata
    /// group) to an up-to-date follower, all at once. Producers then get NOT_LEADER naming the
    /// new leader and re-route, instead of waiting out an election timeout: a rolling restart
    /// costs a re-route per partition, not errors.
    async fn hand_over(&self, _broker: &Broker, wait: Duration) {
        // From now on this broker takes no leadership handed to it.
        self.groups.set_stopping();
        let replicas: Vec<RaftReplica> =
            self.partition_replicas().into_iter().chain([self.metadata_group.clone()]).collect();
        let moved = futures::future::join_all(replicas.iter().map(|r| r.hand_to(None, wait))).await;
        let n = moved.iter().filter(|m| **m).count();
        tracing::info!(moved = n, groups = replicas.len(), "leadership handed over for shutdown");
    }

    /// Stops every Raft group hosted here (partitions, then metadata). Followers of a group
    /// this broker still led (no hand-over) elect after their election timeout.
    async fn stop(&self, _broker: &Broker) {
        self.groups.close(Duration::from_millis(self.raft_config.election_timeout_max)).await;
        let replicas = self.partition_replicas();
        futures::future::join_all(replicas.iter().map(|r| r.stop(&self.groups))).await;
        self.metadata_group.stop(&self.groups).await;
    }
}

impl Cluster {
    /// The channel to broker `id`, or a retryable error when its address is unknown.
    fn channel_to_broker(&self, id: u64) -> Result<tonic::transport::Channel, BrokerError> {
        self.peers.channel(id).map_err(|_| BrokerError::NotLeader {
            what: format!("this call here (no address is known for the controller, broker {id})"),
            leader: None,
        })
    }

    /// Whether this broker leads the metadata group *and* a quorum acknowledged it within
    /// the minimum election timeout: no other broker can have been elected since (followers
    /// vote only after that long without hearing from it). openraft never steps down a
    /// leader cut off from its quorum, so leadership alone is not enough to serve groups.
    fn leads_with_quorum(&self) -> bool {
        let m = self.metadata_group.raft.metrics().borrow_watched().clone();
        let lease = Duration::from_millis(self.raft_config.election_timeout_min);
        m.current_leader == Some(self.node_id) && m.last_quorum_acked.is_some_and(|t| t.elapsed() < lease)
    }

    /// The controller once one is known: `None` if it is this broker and it may serve groups
    /// ([`ControlPlane::coordinator`] says when), else its id. Waits up to `wait`.
    async fn controller_serving(&self, wait: Duration) -> Result<Option<u64>, BrokerError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut metrics = self.metadata_group.raft.metrics();
        let mut applied = self.applied.subscribe();
        let recheck = Duration::from_millis(self.raft_config.heartbeat_interval);
        loop {
            let (leader, current) = {
                let m = metrics.borrow_watched();
                let own_term_applied = m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
                (m.current_leader, own_term_applied)
            };
            match leader {
                Some(id) if id != self.node_id => return Ok(Some(id)),
                Some(_) if current && self.metadata_ready() && self.leads_with_quorum() => return Ok(None),
                _ => {}
            }
            let changed = async {
                tokio::select! {
                    r = metrics.changed() => r.is_ok(),
                    r = applied.changed() => r.is_ok(),
                    () = tokio::time::sleep(recheck) => true, // a quorum ack refreshes no watch
                }
            };
            if tokio::time::Instant::now() >= deadline
                || !matches!(tokio::time::timeout_at(deadline, changed).await, Ok(true))
            {
                return Err(BrokerError::NotLeader {
                    what: "the group coordinator (no controller with a quorum yet; retry)".into(),
                    leader: None,
                });
            }
        }
    }

    /// The admin service of broker `id` (the controller).
    pub(super) fn admin_client(&self, id: u64) -> Result<AdminServiceClient<tonic::transport::Channel>, BrokerError> {
        Ok(AdminServiceClient::new(self.channel_to_broker(id)?))
    }

    /// Waits, briefly, until every partition group of `topic` held here knows a leader, so a
    /// create answers with its leaders (a new group elects within an election timeout or two);
    /// past that it answers anyway, and describe shows them once elected.
    async fn wait_for_leaders(&self, topic: &Topic) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.raft_config.election_timeout_max * 3);
        for p in 0..topic.record.partitions {
            let hosted = self
                .hosted
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&super::group_id(topic.topic_id, p))
                .cloned();
            let Some(h) = hosted else { continue };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let elected = h.replica.raft.wait(Some(left)).metrics(|m| m.current_leader.is_some(), "a leader").await;
            if elected.is_err() {
                tracing::debug!(topic = %topic.record.name, partition = p, "no leader yet; answering the create anyway");
                return;
            }
        }
    }

    /// Waits until this broker's topic table no longer shows topic `name`.
    async fn wait_topic_gone(&self, broker: &Broker, name: &str) -> Result<Arc<Topic>, BrokerError> {
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        let mut applied = self.watch_applied();
        loop {
            if let Err(e @ BrokerError::UnknownTopic(_)) = broker.topic(name) {
                return Err(e);
            }
            if tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
                return Err(BrokerError::NotLeader {
                    what: format!("the metadata of topic '{name}' yet (not applied on this broker in time)"),
                    leader: None,
                });
            }
        }
    }

    /// Waits up to `wait` until this broker's topic table shows topic `name` as `ready` says.
    async fn wait_topic_where(
        &self,
        broker: &Broker,
        name: &str,
        wait: Duration,
        ready: impl Fn(&Topic) -> bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut applied = self.watch_applied();
        loop {
            if let Ok(t) = broker.topic(name) {
                if ready(&t) {
                    return Ok(t);
                }
            }
            if tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
                return Err(BrokerError::NotLeader {
                    what: format!("the metadata of topic '{name}' yet (not applied on this broker in time)"),
                    leader: None,
                });
            }
        }
    }
}
