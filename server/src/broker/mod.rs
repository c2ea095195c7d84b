//! The broker: this node's topic table, its metadata store, and the seam (`seam.rs`) through
//! which everything that differs between a single node and a cluster is reached. Every request
//! goes through here; the api layer above only validates, calls these methods and maps errors,
//! and never asks which mode it runs in.
//!
//! ```text
//! Broker ── topics: name → Topic (topic.rs) ── partition slots: log + PartitionWriter
//!        ├─ store: sled MetaStore (committed offsets, producer ids, votes; topics on a node)
//!        └─ control: dyn ControlPlane — broker::local::LocalControl  (single node)
//!                                       cluster::Cluster            (Raft, set by node.rs)
//! ```
//!
//! Invariants:
//! - the topic table changes only through [`Broker::publish_topic`] and
//!   [`Broker::withdraw_topic`], called by a control plane once its decision is durable;
//! - a withdrawn topic's partitions are closed before its files go, so its subscribers end
//!   with a clear status instead of reading vanished files;
//! - after [`Broker::shutdown`] returns, everything acknowledged is on disk.
//!
//! Never: import `cluster`, `raft` or `api` (they depend on this module, not the other way).

pub mod local;
mod records_admin;
pub mod route;
pub mod seam;
pub mod stats;
pub mod tasks;
pub mod topic;
pub mod txn_table;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

pub use crate::error::BrokerError;
use crate::meta::{MetaStore, StoredOffset, TopicRecord};
use crate::partition::{Closed, Partition};
use crate::topic_config::TopicSettings;
use route::{Origin, Route};
use seam::{AlterTopic, ClusterView, ControlPlane, NewTopic};
pub use topic::{PartitionSlot, Topic};

/// Longest topic name (Kafka's limit).
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Most partitions one topic may have on this broker.
pub const MAX_PARTITIONS: u32 = 10_000;

/// What the broker needs from the configuration.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    pub data_dir: PathBuf,
    pub node_id: u32,
    /// The address clients reach this broker at (for DescribeCluster).
    pub advertised_address: String,
    pub topic_defaults: TopicSettings,
    pub retention_check_interval: Duration,
    /// The log cleaner of compacted topics.
    pub cleaner: crate::partition::compaction::CleanerOptions,
    /// Authentication, ACLs and quotas (the control plane installs the stored ACLs/quotas).
    pub auth: Arc<crate::auth::Auth>,
}

#[cfg(test)]
impl BrokerOptions {
    /// A single node in `dir` with every default (unit tests).
    pub fn for_test(dir: &std::path::Path) -> Self {
        Self {
            data_dir: dir.to_path_buf(),
            node_id: 1,
            advertised_address: "127.0.0.1:0".into(),
            topic_defaults: TopicSettings::default(),
            auth: Default::default(),
            retention_check_interval: Duration::from_secs(60),
            cleaner: crate::partition::compaction::CleanerOptions::default(),
        }
    }
}

#[derive(Debug)]
pub struct Broker {
    options: BrokerOptions,
    store: MetaStore,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    shutdown: watch::Sender<bool>,
    control: OnceLock<Arc<dyn ControlPlane>>,
    /// Transactional ids' coordinator state, as the control plane stored it.
    txns: txn_table::TxnTable,
}

/// Checks a topic name: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME_LEN
        && name != "."
        && name != ".."
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::InvalidArgument(format!(
            "invalid topic name {name:?}: use 1-{MAX_TOPIC_NAME_LEN} characters of [a-zA-Z0-9._-], not '.' or '..'"
        )))
    }
}

impl Broker {
    /// Opens the data directory's metadata store. Topics come from the control plane, which
    /// `node.rs` starts next ([`local::LocalControl::start`] or `cluster::Cluster::start`).
    pub fn open(options: BrokerOptions) -> Result<Arc<Self>, BrokerError> {
        options.topic_defaults.validate().map_err(|e| BrokerError::InvalidArgument(format!("topic_defaults: {e}")))?;
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|e| crate::log::LogError::io(format!("creating {}", options.data_dir.display()), e))?;
        let store = MetaStore::open(&crate::layout::meta_dir(&options.data_dir))?;
        let (shutdown, _) = watch::channel(false);
        Ok(Arc::new(Self {
            options,
            store,
            topics: RwLock::new(BTreeMap::new()),
            shutdown,
            control: OnceLock::new(),
            txns: txn_table::TxnTable::default(),
        }))
    }

    /// Installs the control plane, once (`node.rs`, right after it is started).
    pub fn set_control(&self, control: Arc<dyn ControlPlane>) -> Result<(), BrokerError> {
        self.control.set(control).map_err(|_| BrokerError::InvalidArgument("the control plane is set already".into()))
    }

    fn control(&self) -> Result<&Arc<dyn ControlPlane>, BrokerError> {
        self.control.get().ok_or_else(|| BrokerError::NotLeader {
            what: "anything yet (the broker is starting)".into(),
            leader: None,
        })
    }

    pub fn options(&self) -> &BrokerOptions {
        &self.options
    }

    /// Authentication, ACLs and quotas.
    pub fn auth(&self) -> &Arc<crate::auth::Auth> {
        &self.options.auth
    }

    /// Changes the ACLs or quotas on every broker (the caller checked the caller's right).
    pub async fn alter_security(
        &self,
        change: crate::auth::SecurityChange,
        origin: Origin,
    ) -> Result<crate::auth::ChangeOutcome, BrokerError> {
        self.control()?.alter_security(self, change, origin).await
    }

    /// The sled metadata store (only control planes and the raft storage open it directly).
    pub fn store(&self) -> &MetaStore {
        &self.store
    }

    /// This broker's id.
    pub fn node_id(&self) -> u64 {
        u64::from(self.options.node_id)
    }

    /// Publishes a topic a control plane created (or recovered at start).
    pub fn publish_topic(&self, topic: Arc<Topic>) {
        self.topics.write().unwrap_or_else(PoisonError::into_inner).insert(topic.record.name.clone(), topic);
    }

    /// Withdraws a topic a control plane deleted, and closes its partitions held here (their
    /// subscribers end with "topic deleted"). Stopping their writers is the caller's.
    pub fn withdraw_topic(&self, name: &str) -> Option<Arc<Topic>> {
        let topic = self.topics.write().unwrap_or_else(PoisonError::into_inner).remove(name)?;
        for (p, _) in topic.local() {
            p.close(Closed::TopicDeleted);
        }
        Some(topic)
    }

    /// A topic by name. While this broker's metadata is not current (a cluster member catching
    /// up) a missing topic is a retryable `NotLeader`, not `UnknownTopic`: it may exist and
    /// just not be applied here yet.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        let found = self.topics.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned();
        found.ok_or_else(|| match self.control() {
            Ok(c) if !c.metadata_ready() => BrokerError::NotLeader {
                what: format!("metadata for topic '{name}' yet (this broker is catching up on cluster metadata)"),
                leader: None,
            },
            _ => BrokerError::UnknownTopic(name.to_string()),
        })
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    pub(crate) fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions_where(|_| true)
    }

    /// The partitions held here for which `pred` holds, picked under the topics' read lock
    /// without cloning the rest (loops that visit every partition many times a second ask
    /// this, so their cost at thousands of idle partitions is a pass over the slots).
    pub(crate) fn partitions_where(&self, pred: impl Fn(&Partition) -> bool) -> Vec<Arc<Partition>> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics.values().flat_map(|t| t.local()).filter(|(p, _)| pred(p)).map(|(p, _)| Arc::clone(p)).collect()
    }

    /// Checks a topic to be created: its name, partition count and (complete) settings.
    pub fn check_new_topic(&self, name: &str, partitions: u32, settings: &TopicSettings) -> Result<(), BrokerError> {
        validate_topic_name(name)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(BrokerError::InvalidArgument(format!(
                "partitions must be 1..={MAX_PARTITIONS}, got {partitions}"
            )));
        }
        settings.validate().map_err(BrokerError::InvalidArgument)
    }

    /// Creates a topic; returns it once it is durable and in this broker's topic table.
    /// Checks, in this order: replication factor, settings, name and partitions, running,
    /// exists.
    pub async fn create_topic(&self, topic: NewTopic, origin: Origin) -> Result<Arc<Topic>, BrokerError> {
        let control = self.control()?;
        let rf = control.replication_factor(topic.replication_factor)?;
        let settings =
            self.options.topic_defaults.merged(topic.config.as_ref()).map_err(BrokerError::InvalidArgument)?;
        self.check_new_topic(&topic.name, topic.partitions, &settings)?;
        self.check_running()?;
        if self.topic(&topic.name).is_ok() {
            return Err(BrokerError::TopicExists(topic.name));
        }
        control.create_topic(self, &topic, settings, rf, origin).await
    }

    /// Changes a topic's settings; returns the topic once the change is durable and applied
    /// to its partitions here.
    pub async fn alter_topic(&self, alter: AlterTopic, origin: Origin) -> Result<Arc<Topic>, BrokerError> {
        self.check_running()?;
        let topic = self.topic(&alter.name)?;
        // Checked here against the topic as looked up, for a clear refusal; the control plane
        // applies it to the topic as it is when its turn comes.
        self.options
            .topic_defaults
            .altered(&topic.record.settings, &topic.record.own_settings(), alter.config.as_ref(), &alter.reset)
            .map_err(BrokerError::InvalidArgument)?;
        self.control()?.alter_topic(self, &topic, &alter, origin).await
    }

    /// Publishes `topic` with a new definition (same incarnation and partitions) and applies
    /// its settings to the partitions held here. For control planes applying an alteration.
    pub fn republish(&self, topic: &Topic, record: TopicRecord) -> Result<Arc<Topic>, BrokerError> {
        let new = Arc::new(Topic { record, slots: topic.slots.clone(), topic_id: topic.topic_id });
        for (p, _) in new.local() {
            p.reconfigure(new.record.settings.log_config(), new.record.settings.fsync_policy())?;
        }
        self.publish_topic(Arc::clone(&new));
        tracing::info!(topic = %new.record.name, overrides = ?new.record.overrides, "topic settings changed");
        Ok(new)
    }

    /// Deletes a topic and its data. Its subscribers end with "topic deleted".
    pub async fn delete_topic(&self, name: &str, origin: Origin) -> Result<(), BrokerError> {
        self.check_running()?;
        self.control()?.delete_topic(self, name, origin).await
    }

    /// Stores a group's committed offsets for one topic (the incarnation looked up), durably.
    pub async fn commit_offsets(
        &self,
        group: &str,
        topic: &Topic,
        offsets: Vec<StoredOffset>,
    ) -> Result<(), BrokerError> {
        self.check_running()?;
        self.control()?.commit_offsets(self, group, topic, offsets).await
    }

    /// Deletes every committed offset of a group, durably.
    pub async fn delete_group(&self, group: &str) -> Result<usize, BrokerError> {
        self.check_running()?;
        self.control()?.delete_group(self, group).await
    }

    /// Every group with committed offsets, as this broker's store has them.
    pub fn groups_with_offsets(&self) -> Result<std::collections::BTreeSet<String>, BrokerError> {
        Ok(self.store.offset_groups()?)
    }

    /// Whether a group has any committed offset here.
    pub fn group_has_offsets(&self, group: &str) -> Result<bool, BrokerError> {
        Ok(self.store.has_offsets(group)?)
    }

    /// A group's committed offsets for one topic, as this broker's store has them.
    pub fn committed_offsets(&self, group: &str, topic: &str) -> Result<Vec<StoredOffset>, BrokerError> {
        Ok(self.store.committed_offsets(group, topic)?)
    }

    /// Transactional ids' coordinator state as this broker knows it (control planes write it).
    pub fn transactions(&self) -> &txn_table::TxnTable {
        &self.txns
    }

    /// Stores a transactional id's new state, on every broker, if the stored one is still the
    /// one it was computed from (version `entry.version - 1`). Returns whether it was stored
    /// (durable, and in this broker's table). Only the transaction coordinator calls this.
    pub async fn store_transaction(&self, id: &str, entry: crate::meta::txn::TxnEntry) -> Result<bool, BrokerError> {
        self.check_running()?;
        self.control()?.store_transaction(self, id, entry).await
    }

    /// A producer id unique in the cluster.
    pub async fn next_producer_id(&self) -> Result<i64, BrokerError> {
        self.check_running()?;
        self.control()?.next_producer_id(self).await
    }

    /// Where consumer-group calls are served (`route.rs`).
    pub async fn coordinator_route(&self, origin: Origin) -> Result<Route, BrokerError> {
        self.control()?.coordinator(origin).await
    }

    /// Resolves once this broker stops coordinating groups (never, on a single node).
    pub fn coordinator_lost(&self) -> BoxFuture<'static, ()> {
        match self.control() {
            Ok(c) => Arc::clone(c).coordinator_lost(),
            Err(_) => Box::pin(std::future::pending()),
        }
    }

    /// Resolves once the coordinator is no longer broker `id`.
    pub fn coordinator_moved_from(&self, id: u64) -> BoxFuture<'static, ()> {
        match self.control() {
            Ok(c) => Arc::clone(c).coordinator_moved_from(id),
            Err(_) => Box::pin(std::future::ready(())),
        }
    }

    /// The channel to broker `id`, for a call passed on to it.
    pub fn channel_to(&self, id: u64) -> Result<tonic::transport::Channel, BrokerError> {
        self.control()?.channel_to(id)
    }

    /// Every broker's id (this one's alone while the control plane is not started).
    pub fn broker_ids(&self) -> Vec<u64> {
        match self.control() {
            Ok(c) => c.brokers(self).into_keys().collect(),
            Err(_) => vec![self.node_id()],
        }
    }

    /// Brokers, controller, cluster id.
    pub fn describe_cluster(&self) -> Result<ClusterView, BrokerError> {
        self.control()?.describe_cluster(self)
    }

    /// Adds a broker to the cluster (passed on to the controller).
    pub async fn add_broker(
        &self,
        id: u64,
        address: &str,
        internal: Option<&str>,
        origin: Origin,
    ) -> Result<(), BrokerError> {
        self.control()?.add_broker(self, id, address, internal, origin).await
    }

    /// Removes a broker once it holds no replica, moving them away first (passed on to the
    /// controller).
    pub async fn remove_broker(&self, id: u64, origin: Origin) -> Result<(), BrokerError> {
        self.control()?.remove_broker(self, id, origin).await
    }

    /// Starts or cancels partition moves (passed on to the controller).
    pub async fn reassign_partitions(
        &self,
        moves: Vec<seam::PartitionMove>,
        throttle: u64,
        origin: Origin,
    ) -> Result<(), BrokerError> {
        self.control()?.reassign_partitions(self, moves, throttle, origin).await
    }

    /// The partition moves in progress.
    pub fn reassignments(&self, topic: Option<&str>) -> Result<Vec<seam::MoveView>, BrokerError> {
        Ok(self.control()?.reassignments(self, topic))
    }

    /// Where a new consumer group's generations start.
    pub fn generation_base(&self) -> u32 {
        self.control().map_or(0, |c| c.generation_base())
    }

    pub fn check_running(&self) -> Result<(), BrokerError> {
        if *self.shutdown.borrow() {
            Err(BrokerError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Resolves when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Graceful shutdown, first step (while this broker still serves peers and clients):
    /// hands over whatever it leads, waiting at most `wait`.
    pub async fn hand_over(&self, wait: Duration) {
        if let Ok(c) = self.control() {
            c.hand_over(self, wait).await;
        }
    }

    /// Graceful shutdown: stops new work, ends subscriptions, fsyncs every partition and the
    /// metadata store. Durability: after this returns, everything acknowledged is on disk.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        for p in self.all_partitions() {
            p.close(Closed::ShuttingDown);
            if let Err(e) = p.flush() {
                tracing::error!(topic = p.topic(), partition = p.index(), error = %e, "fsync at shutdown failed");
            }
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "metadata flush at shutdown failed");
        }
    }

    /// Graceful shutdown, after the hand-over and before [`Broker::shutdown`] closes the
    /// partitions: stops replication.
    pub async fn stop_control(&self) {
        if let Ok(c) = self.control() {
            c.stop(self).await;
        }
    }
}
