//! The seam between the broker and replication: the two interfaces through which everything
//! above the broker (the api layer, the group coordinator, the background tasks) reaches the
//! part that differs between a single node and a cluster.
//!
//! ```text
//!                 api · group · broker/tasks
//!                          │
//!            ┌─────────────┴──────────────┐
//!      ControlPlane                 PartitionWriter (one per partition held here)
//!   topics, offsets, ids,         write a batch (acks), leadership,
//!   routing, membership           retention, stop
//!      │            │                  │                  │
//!  broker::local  cluster::control  broker::local   cluster::writer
//!  (sled)         (metadata group)  (append+fsync)  (partition Raft group)
//! ```
//!
//! Single node and cluster differ in *how* a write becomes durable and *who* decides metadata,
//! not in what a request does. So a caller asks these traits and never which mode it is in;
//! every feature that touches both paths is written once against them, and the broker's tests
//! run against both implementations (`server/tests/seam.rs`).
//!
//! Invariants every implementation keeps:
//! - `ControlPlane::create_topic` returns only once the topic is in this broker's topic table
//!   (and durable: sled fsynced, or committed by a majority of the metadata group);
//!   `delete_topic` returns once it is gone from the table and its partitions are closed;
//! - `ControlPlane::commit_offsets` returns only once the offsets are durable and readable
//!   through `Broker::committed_offsets` on this broker, and stores nothing for a topic
//!   incarnation that was deleted meanwhile (`TopicDeleted`); `delete_topic` deletes every
//!   group's committed offsets for the topic with it, so a topic recreated under the same name
//!   starts without them;
//! - `add_partitions` only ever raises a topic's partition count, and keeps the incarnation
//!   (topic id) and the existing partitions as they are;
//! - `delete_records` never moves a log start down, nor past what consumers could see (the
//!   high watermark) when it was asked;
//! - `PartitionWriter::write` fixes the batch's place in the partition before it returns:
//!   a later `write` on the same partition lands after it (produce streams rely on this for
//!   ordering). The future it returns must be awaited for the batch to become visible
//!   (single node: fsync per policy, then the high watermark moves).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::route::{Origin, Route};
use super::{Broker, Topic};
use crate::auth::{ChangeOutcome, SecurityChange};
use crate::error::BrokerError;
use crate::log::{AppendBatch, RetentionOutcome};
use crate::meta::StoredOffset;
use crate::partition::compaction::{CleanStats, CleanerOptions, CompactionPolicy};
use crate::partition::ProduceOutcome;
use crate::topic_config::TopicSettings;
use tidelog_proto::v1::TopicConfig;

/// A topic to create, as requested.
#[derive(Clone, Debug, Default)]
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    /// 0 = the control plane's default.
    pub replication_factor: u32,
    /// The settings asked for; the broker's topic defaults fill in the rest.
    pub config: Option<TopicConfig>,
}

/// A change to a topic's settings, as requested.
#[derive(Clone, Debug, Default)]
pub struct AlterTopic {
    pub name: String,
    /// Settings to set on the topic.
    pub config: Option<TopicConfig>,
    /// Settings (`topic_config::KEYS` names) to set back to the broker's defaults.
    pub reset: Vec<String>,
}

/// Who the cluster is, for DescribeCluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    pub cluster_id: String,
    /// The controller (metadata leader); a single node is its own.
    pub controller: Option<u64>,
    /// Every broker's id and client address, this one included.
    pub brokers: BTreeMap<u64, String>,
    /// Each broker's place in the metadata group ("voter", "observer"); empty on a single node.
    pub roles: BTreeMap<u64, &'static str>,
}

/// One partition's new replicas (preferred leader first); empty cancels its move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMove {
    pub topic: String,
    pub partition: u32,
    pub replicas: Vec<u64>,
}

/// A partition move in progress, for ListPartitionReassignments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoveView {
    pub topic: String,
    pub partition: u32,
    /// The replicas before the move, and the target.
    pub replicas: Vec<u64>,
    pub target: Vec<u64>,
    /// Set when this broker leads the partition: it then knows each new replica's progress,
    /// `(broker, entries behind, "LEARNER" | "VOTER")`.
    pub leader: Option<u64>,
    pub progress: Vec<(u64, u64, &'static str)>,
}

/// When a write is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// Once the leader appended it (fsynced under fsync=always).
    Leader,
    /// Once a majority of the replicas stored it (a single node: as `Leader`).
    All,
}

/// A replicated partition's state, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    /// The partition's Raft term.
    pub term: Option<u64>,
    /// On the leader: each follower and how many entries it is behind the leader's log.
    pub follower_lag: Vec<(u64, u64)>,
}

/// The answer to a write, once it is durable per its acks and policy.
pub type WriteAnswer = BoxFuture<'static, Result<ProduceOutcome, BrokerError>>;

/// Who decides metadata, and where requests that need a single decider go.
#[tonic::async_trait]
pub trait ControlPlane: Send + Sync + std::fmt::Debug {
    /// The replication factor a create that asks for `requested` gets (0: the default), or
    /// why it cannot have it. Checked before anything else about a create.
    fn replication_factor(&self, requested: u32) -> Result<u32, BrokerError>;

    /// Creates a topic. The broker checked it already (name, partitions, `settings`: the
    /// request's config over the broker's defaults) and resolved its replication factor.
    async fn create_topic(
        &self,
        broker: &Broker,
        topic: &NewTopic,
        settings: TopicSettings,
        replication_factor: u32,
        origin: Origin,
    ) -> Result<Arc<Topic>, BrokerError>;

    /// Alters `topic` (the incarnation the broker looked up) as `request` says, on every
    /// broker, applied to the topic as it is when the alteration takes its turn (so two
    /// concurrent alterations both take effect); returns the topic as it is then.
    async fn alter_topic(
        &self,
        broker: &Broker,
        topic: &Topic,
        request: &AlterTopic,
        origin: Origin,
    ) -> Result<Arc<Topic>, BrokerError>;

    /// Raises `topic` (the incarnation the broker looked up) to `partitions` partitions, the
    /// new ones placed as at creation, on every broker; returns the topic once this broker has
    /// them. The broker checked the count grows; a concurrent raise past it is not an error.
    async fn add_partitions(
        &self,
        broker: &Broker,
        topic: &Topic,
        partitions: u32,
        origin: Origin,
    ) -> Result<Arc<Topic>, BrokerError>;

    /// Deletes the records below the given offset of each partition of `topic` (moves their log
    /// start up), on every replica. The broker checked each offset is at most the partition's
    /// high watermark. Returns each partition's log start afterwards, as this broker knows it.
    async fn delete_records(
        &self,
        broker: &Broker,
        topic: &Topic,
        before: &[(u32, u64)],
        origin: Origin,
    ) -> Result<Vec<(u32, u64)>, BrokerError>;

    /// Deletes a topic and its data; its subscribers end with "topic deleted".
    async fn delete_topic(&self, broker: &Broker, name: &str, origin: Origin) -> Result<(), BrokerError>;

    /// Stores a group's committed offsets for one topic, the incarnation the caller looked up
    /// (the coordinator checked the generation already).
    async fn commit_offsets(
        &self,
        broker: &Broker,
        group: &str,
        topic: &Topic,
        offsets: Vec<StoredOffset>,
    ) -> Result<(), BrokerError>;

    /// Deletes every committed offset of a group (the coordinator checked it has no members);
    /// returns how many partitions' offsets went.
    async fn delete_group(&self, broker: &Broker, group: &str) -> Result<usize, BrokerError>;

    /// Applies a change to the ACLs and quotas on every broker, in one order everywhere;
    /// returns what it did once this broker enforces it (and it is durable: sled fsynced, or
    /// committed by the metadata group). The caller checked the change and the caller's right
    /// to make it.
    async fn alter_security(
        &self,
        broker: &Broker,
        change: SecurityChange,
        origin: Origin,
    ) -> Result<ChangeOutcome, BrokerError>;

    /// Stores a transactional id's state on every broker, as a compare-and-set over version
    /// `entry.version - 1` applied in one order everywhere; returns whether it was stored,
    /// once it is durable (sled fsynced, or committed by the metadata group) and in this
    /// broker's `Broker::transactions` table. Called by the transaction coordinator only, on
    /// the broker `coordinator` routes to.
    async fn store_transaction(
        &self,
        broker: &Broker,
        id: &str,
        entry: crate::meta::txn::TxnEntry,
    ) -> Result<bool, BrokerError>;

    /// A producer id no other producer of this cluster was given.
    async fn next_producer_id(&self, broker: &Broker) -> Result<i64, BrokerError>;

    /// Where consumer-group calls (sessions, commits, fetches, describes) are served. A
    /// forwarded call is never forwarded again (`route.rs`).
    async fn coordinator(&self, origin: Origin) -> Result<Route, BrokerError>;

    /// Resolves once this broker stops being the group coordinator (never on a single node):
    /// the sessions it coordinates then end and their members rejoin elsewhere.
    fn coordinator_lost(self: Arc<Self>) -> BoxFuture<'static, ()>;

    /// Resolves once the coordinator is no longer broker `id` (a proxied session then ends).
    fn coordinator_moved_from(self: Arc<Self>, id: u64) -> BoxFuture<'static, ()>;

    /// The gRPC channel to broker `id`, for calls passed on to it.
    fn channel_to(&self, id: u64) -> Result<tonic::transport::Channel, BrokerError>;

    /// Every broker's id and client address, this one included.
    fn brokers(&self, broker: &Broker) -> BTreeMap<u64, String>;

    /// Brokers, controller, cluster id.
    fn describe_cluster(&self, broker: &Broker) -> Result<ClusterView, BrokerError>;

    /// Adds broker `id` (started with `--join`) to the cluster; a single node refuses.
    async fn add_broker(
        &self,
        broker: &Broker,
        id: u64,
        address: &str,
        internal: Option<&str>,
        origin: Origin,
    ) -> Result<(), BrokerError>;

    /// Removes broker `id`: once it holds no replica (until then, moves its replicas to other
    /// brokers and refuses, saying so); a single node refuses.
    async fn remove_broker(&self, broker: &Broker, id: u64, origin: Origin) -> Result<(), BrokerError>;

    /// Starts (or cancels) partition moves, throttled to `throttle` bytes/s (0: the default);
    /// a single node refuses.
    async fn reassign_partitions(
        &self,
        broker: &Broker,
        moves: Vec<PartitionMove>,
        throttle: u64,
        origin: Origin,
    ) -> Result<(), BrokerError>;

    /// The partition moves in progress (of `topic`, or all), with progress for the partitions
    /// this broker leads.
    fn reassignments(&self, broker: &Broker, topic: Option<&str>) -> Vec<MoveView>;

    /// Whether this broker's topic table is current. While it is not (a cluster member
    /// catching up on metadata) an unknown topic is a retryable `NotLeader`, not `UnknownTopic`.
    fn metadata_ready(&self) -> bool;

    /// Where a new group's generations start: above every generation an earlier coordinator
    /// of this cluster may have handed out.
    fn generation_base(&self) -> u32;

    /// Graceful shutdown, first step: hands the leadership of whatever this broker leads to
    /// another broker, waiting at most `wait` (a single node has nothing to hand over).
    async fn hand_over(&self, broker: &Broker, wait: Duration);

    /// Graceful shutdown, after the hand-over and before the partitions close: stops
    /// replication (every Raft group held here).
    async fn stop(&self, broker: &Broker);
}

/// How batches become durable on one partition held here.
#[tonic::async_trait]
pub trait PartitionWriter: Send + Sync + std::fmt::Debug {
    /// Starts writing a batch (see the module invariants: its place is fixed when this
    /// returns) and returns the future of its answer. `payload` is the batch's bytes as
    /// received (`batch.payload` is the same bytes), shared without a copy where the writer
    /// must keep them.
    async fn write(&self, batch: AppendBatch<'_>, payload: &Bytes, acks: Acks) -> Result<WriteAnswer, BrokerError>;

    /// The partition's leader as this broker knows it.
    fn leader(&self) -> Option<u64>;

    /// The replicas holding every committed batch, as far as this broker knows (only a leader
    /// knows; elsewhere empty).
    fn in_sync(&self) -> Vec<u64>;

    /// Replication state for metrics (a single node has none).
    fn replication(&self) -> Replication {
        Replication::default()
    }

    /// One retention pass: deletes what the topic's retention lets go, never what a replica
    /// may still need. A failure says why, for the caller's log; the next pass retries.
    async fn retain(&self, now_ms: i64) -> Result<RetentionOutcome, String>;

    /// One cleaning of a compacted topic's partition, if it is dirty enough for `policy` (or
    /// `force`): never compacts what a replica may still need (a replicated partition purges
    /// its Raft log up to the cleaned segments first). `None` when nothing was due.
    async fn compact(
        &self,
        now_ms: i64,
        policy: CompactionPolicy,
        options: &CleanerOptions,
        force: bool,
    ) -> Result<Option<CleanStats>, String>;

    /// Stops the partition's replication (its topic was deleted, or the broker stops).
    async fn stop(&self);
}
