//! The single-node implementation of the seam: topics and offsets in the sled store, batches
//! appended straight to the partition log.
//!
//! Invariants:
//! - the store is the commit point of topic creation and deletion: a topic exists iff its
//!   record is in the store. Directories without a record (a crash mid-create or mid-delete)
//!   are removed at start;
//! - creates and deletes are serialized by `admin`; a deletion (which deletes every group's
//!   committed offsets for the topic in the same sled transaction) holds `offsets_gate` for
//!   writing and commits hold it for reading, so they never interleave, and a commit for a
//!   deleted incarnation stores nothing. A create never waits for commits, nor they for it;
//! - a topic's partition count is raised (`add_partitions`) by opening the new partitions, then
//!   storing the record (the commit point), then publishing; partition directories the record
//!   does not count are removed at start and before an add reuses their numbers;
//! - ACLs and quotas are stored (fsynced) before the broker enforces them, under `admin`;
//! - a transactional id's state is stored (fsynced) before it enters the broker's table, one
//!   change at a time, each only over the version it was computed from;
//! - committed offsets of topics that do not exist (left by a deletion before deletions took
//!   them, or by a crash) are removed at start;
//! - every batch [`LocalWriter::write`] appended is completed by its answer future (fsynced
//!   per policy, high watermark advanced); the api layer awaits every one, even after its
//!   client went away.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::route::{Origin, Route};
use super::seam::{
    Acks, AlterTopic, ClusterView, ControlPlane, MoveView, NewTopic, PartitionMove, PartitionWriter, WriteAnswer,
};
use super::{Broker, PartitionSlot, Topic};
use crate::auth::{ChangeOutcome, SecurityChange, SecurityState};
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::layout;
use crate::log::{AppendBatch, LogError, RetentionOutcome};
use crate::meta::{StoredOffset, TopicRecord};
use crate::partition::compaction::{CleanStats, CleanerOptions, CompactionPolicy};
use crate::partition::Partition;
use crate::topic_config::TopicSettings;

/// A single node's control plane.
#[derive(Debug, Default)]
pub struct LocalControl {
    admin: tokio::sync::Mutex<()>,
    offsets_gate: tokio::sync::RwLock<()>,
    /// Serializes transaction state changes (compare, store, publish).
    txns: tokio::sync::Mutex<()>,
    /// The next topic incarnation id.
    next_topic_id: AtomicU64,
}

impl LocalControl {
    /// Loads every topic from the store (recovering its partition logs) into the broker's
    /// topic table and removes directories of topics that do not exist.
    pub fn start(broker: &Broker) -> Result<Arc<Self>, BrokerError> {
        let data_dir = &broker.options().data_dir;
        let topics_dir = layout::topics_dir(data_dir);
        std::fs::create_dir_all(&topics_dir)
            .map_err(|e| LogError::io(format!("creating {}", topics_dir.display()), e))?;
        let control = Self::default();
        let mut names = Vec::new();
        for record in broker.store().topics()? {
            names.push(record.name.clone());
            remove_stale_partitions(&topics_dir.join(&record.name), record.partitions);
            broker.publish_topic(Arc::new(control.open_topic(broker, record)?));
        }
        let entries =
            std::fs::read_dir(&topics_dir).map_err(|e| LogError::io(format!("listing {}", topics_dir.display()), e))?;
        for entry in entries.flatten() {
            if !names.iter().any(|n| *n == *entry.file_name().to_string_lossy()) {
                tracing::warn!(dir = %entry.path().display(), "removing directory of a topic that does not exist");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let store = broker.store();
        let orphans: Vec<String> = store.offset_topics()?.into_iter().filter(|t| !names.contains(t)).collect();
        for topic in &orphans {
            let n = store.remove_offsets_of(topic)?;
            tracing::warn!(topic, partitions = n, "removed committed offsets of a topic that does not exist");
        }
        if !orphans.is_empty() {
            store.flush()?;
        }
        if let Some(json) = store.security_state()? {
            let state: SecurityState = serde_json::from_slice(&json)
                .map_err(|e| crate::meta::MetaError::Corrupt(format!("stored ACLs and quotas: {e}")))?;
            broker.auth().replace_state(state);
        }
        broker.transactions().replace_all(store.transactions()?);
        Ok(Arc::new(control))
    }

    /// Opens a topic's partition logs (recovering them) as a new incarnation.
    fn open_topic(&self, broker: &Broker, record: TopicRecord) -> Result<Topic, BrokerError> {
        let slots = (0..record.partitions)
            .map(|p| open_slot(&broker.options().data_dir, broker.node_id(), &record, p))
            .collect::<Result<_, _>>()?;
        Ok(Topic { record, slots, topic_id: self.next_topic_id() })
    }

    fn next_topic_id(&self) -> u64 {
        self.next_topic_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Opens partitions `partitions` of a topic on a blocking thread, after removing what a
/// crashed create or add left in their directories. Opening is file I/O (each log recovered,
/// its index read): 10,000 partitions take seconds, and on a runtime thread that stalled the
/// connections the thread served — HTTP/2 pings went unanswered, so the client of a
/// 10,000-partition create gave up after 4 s and the create was dropped half done.
async fn open_fresh_slots(
    broker: &Broker,
    record: &TopicRecord,
    partitions: std::ops::Range<u32>,
) -> Result<Vec<PartitionSlot>, BrokerError> {
    let (data_dir, node, record) = (broker.options().data_dir.clone(), broker.node_id(), record.clone());
    let opening = tokio::task::spawn_blocking(move || {
        partitions
            .map(|p| {
                let dir = layout::topic_partition_dir(&data_dir, &record.name, p);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| LogError::io(format!("removing stale {}", dir.display()), e))?;
                }
                open_slot(&data_dir, node, &record, p)
            })
            .collect::<Result<Vec<_>, BrokerError>>()
    });
    opening.await.map_err(|e| LogError::io("opening partitions", std::io::Error::other(e)))?
}

/// The topic as it is now, if it is still the incarnation `topic` (else `TopicDeleted`).
fn still_current(broker: &Broker, topic: &Topic) -> Result<Arc<Topic>, BrokerError> {
    let current = broker.topic(&topic.record.name)?;
    if current.topic_id != topic.topic_id {
        return Err(BrokerError::TopicDeleted(topic.record.name.clone()));
    }
    Ok(current)
}

/// Removes partition directories at or above `partitions` (an add that crashed before its
/// commit point left them).
fn remove_stale_partitions(topic_dir: &std::path::Path, partitions: u32) {
    let Ok(entries) = std::fs::read_dir(topic_dir) else { return };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()).is_some_and(|p| p >= partitions);
        if stale {
            tracing::warn!(dir = %entry.path().display(), "removing a partition directory the topic does not have");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Opens (recovering) partition `p` of a topic.
fn open_slot(
    data_dir: &std::path::Path,
    node: u64,
    record: &TopicRecord,
    p: u32,
) -> Result<PartitionSlot, BrokerError> {
    let dir = layout::topic_partition_dir(data_dir, &record.name, p);
    let (partition, report) =
        Partition::open(&dir, &record.name, p, record.settings.log_config(), record.settings.fsync_policy())?;
    if report.truncated_bytes > 0 || report.indexes_rebuilt > 0 || report.segments_dropped > 0 {
        tracing::warn!(topic = %record.name, partition = p, ?report, "recovered partition log");
    }
    let log = Arc::new(partition);
    let writer = Arc::new(LocalWriter { log: Arc::clone(&log), node });
    Ok(PartitionSlot::Here { log, writer })
}

#[tonic::async_trait]
impl ControlPlane for LocalControl {
    fn replication_factor(&self, requested: u32) -> Result<u32, BrokerError> {
        match requested {
            0 | 1 => Ok(1),
            rf => Err(BrokerError::InvalidArgument(format!(
                "replication_factor {rf} is not possible: this broker runs as a single node (use 1)"
            ))),
        }
    }

    async fn create_topic(
        &self,
        broker: &Broker,
        new: &NewTopic,
        settings: TopicSettings,
        _replication_factor: u32,
        _origin: Origin,
    ) -> Result<Arc<Topic>, BrokerError> {
        let _admin = self.admin.lock().await;
        if broker.topic(&new.name).is_ok() {
            return Err(BrokerError::TopicExists(new.name.clone()));
        }
        let record = TopicRecord {
            name: new.name.clone(),
            partitions: new.partitions,
            created_at_ms: now_ms(),
            settings,
            replicas: Vec::new(),
            overrides: Some(crate::topic_config::keys_in(new.config.as_ref())),
            reassigning: Default::default(),
        };
        // Leftovers of a crashed create/delete of the same name would be recovered as data.
        let dir = layout::topics_dir(&broker.options().data_dir).join(&record.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| LogError::io(format!("removing stale {}", dir.display()), e))?;
        }
        let slots = open_fresh_slots(broker, &record, 0..record.partitions).await?;
        let topic = Arc::new(Topic { record, slots, topic_id: self.next_topic_id() });
        broker.store().put_topic(&topic.record).await?; // commit point
        broker.publish_topic(Arc::clone(&topic));
        tracing::info!(topic = %topic.record.name, partitions = topic.record.partitions, "topic created");
        Ok(topic)
    }

    async fn alter_topic(
        &self,
        broker: &Broker,
        topic: &Topic,
        request: &AlterTopic,
        _origin: Origin,
    ) -> Result<Arc<Topic>, BrokerError> {
        let _admin = self.admin.lock().await;
        let current = still_current(broker, topic)?;
        // From the topic as it is now, under the lock: concurrent alterations compose.
        let (settings, overrides) = broker
            .options()
            .topic_defaults
            .altered(&current.record.settings, &current.record.own_settings(), request.config.as_ref(), &request.reset)
            .map_err(BrokerError::InvalidArgument)?;
        let record = TopicRecord { settings, overrides: Some(overrides), ..current.record.clone() };
        broker.store().put_topic(&record).await?; // commit point
        broker.republish(&current, record)
    }

    async fn add_partitions(
        &self,
        broker: &Broker,
        topic: &Topic,
        partitions: u32,
        _origin: Origin,
    ) -> Result<Arc<Topic>, BrokerError> {
        let _admin = self.admin.lock().await;
        let name = &topic.record.name;
        let current = still_current(broker, topic)?;
        if current.record.partitions >= partitions {
            return Ok(current); // raised as far already, meanwhile
        }
        let record = TopicRecord { partitions, ..current.record.clone() };
        let mut slots = current.slots.clone();
        // Leftovers of an add that crashed before its commit point would be recovered as data.
        slots.extend(open_fresh_slots(broker, &record, current.record.partitions..partitions).await?);
        broker.store().put_topic(&record).await?; // commit point
        let grown = Arc::new(Topic { record, slots, topic_id: current.topic_id });
        broker.publish_topic(Arc::clone(&grown));
        tracing::info!(topic = %name, from = current.record.partitions, to = partitions, "partitions added");
        Ok(grown)
    }

    async fn delete_records(
        &self,
        _broker: &Broker,
        topic: &Topic,
        before: &[(u32, u64)],
        _origin: Origin,
    ) -> Result<Vec<(u32, u64)>, BrokerError> {
        let mut out = Vec::with_capacity(before.len());
        for (p, offset) in before {
            // Durable per partition (the floor file is fsynced): a crash midway keeps the
            // partitions done so far, and the request can be repeated.
            let start = topic.partition(*p)?.raise_log_start(*offset).await?;
            tracing::info!(topic = %topic.record.name, partition = p, log_start = start, "records deleted");
            out.push((*p, start));
        }
        Ok(out)
    }

    async fn delete_topic(&self, broker: &Broker, name: &str, _origin: Origin) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().await;
        broker.topic(name)?;
        {
            let _no_commits = self.offsets_gate.write().await;
            broker.store().delete_topic(name).await?; // commit point, with the topic's offsets
            broker.withdraw_topic(name);
        }
        let dir = layout::topics_dir(&broker.options().data_dir).join(name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            // The record is gone, so startup will remove the directory; nothing is lost.
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove deleted topic's files yet");
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    async fn commit_offsets(
        &self,
        broker: &Broker,
        group: &str,
        topic: &Topic,
        offsets: Vec<StoredOffset>,
    ) -> Result<(), BrokerError> {
        let _gate = self.offsets_gate.read().await;
        let name = &topic.record.name;
        match broker.topic(name) {
            Ok(current) if current.topic_id == topic.topic_id => {}
            _ => return Err(BrokerError::TopicDeleted(name.clone())),
        }
        Ok(broker.store().commit_offsets(group, name, &offsets).await?)
    }

    async fn delete_group(&self, broker: &Broker, group: &str) -> Result<usize, BrokerError> {
        Ok(broker.store().delete_group(group).await?)
    }

    async fn alter_security(
        &self,
        broker: &Broker,
        change: SecurityChange,
        _origin: Origin,
    ) -> Result<ChangeOutcome, BrokerError> {
        // Serialized with every other admin change; stored (fsynced) before it is enforced.
        let _admin = self.admin.lock().await;
        let mut state = (*broker.auth().state()).clone();
        let outcome = state.apply(&change);
        let json = serde_json::to_vec(&state)
            .map_err(|e| BrokerError::InvalidArgument(format!("encoding ACLs and quotas: {e}")))?;
        broker.store().put_security_state(&json).await?;
        broker.auth().replace_state(state);
        Ok(outcome)
    }

    async fn store_transaction(
        &self,
        broker: &Broker,
        id: &str,
        entry: crate::meta::txn::TxnEntry,
    ) -> Result<bool, BrokerError> {
        let _one_at_a_time = self.txns.lock().await;
        let current = broker.transactions().get(id).map_or(0, |e| e.version);
        if entry.version != current + 1 {
            return Ok(false);
        }
        broker.store().put_transaction(id, &entry).await?; // durable before it is visible
        Ok(broker.transactions().compare_and_set(id, entry))
    }

    async fn next_producer_id(&self, broker: &Broker) -> Result<i64, BrokerError> {
        Ok(broker.store().next_producer_id().await?)
    }

    async fn coordinator(&self, _origin: Origin) -> Result<Route, BrokerError> {
        Ok(Route::Here)
    }

    fn coordinator_lost(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    fn coordinator_moved_from(self: Arc<Self>, _id: u64) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    fn channel_to(&self, id: u64) -> Result<tonic::transport::Channel, BrokerError> {
        Err(BrokerError::InvalidArgument(format!("broker {id} is unknown: this broker runs as a single node")))
    }

    fn brokers(&self, broker: &Broker) -> BTreeMap<u64, String> {
        BTreeMap::from([(broker.node_id(), broker.options().advertised_address.clone())])
    }

    fn describe_cluster(&self, broker: &Broker) -> Result<ClusterView, BrokerError> {
        Ok(ClusterView {
            cluster_id: broker.store().cluster_id()?,
            controller: Some(broker.node_id()),
            brokers: self.brokers(broker),
            roles: BTreeMap::new(),
        })
    }

    async fn add_broker(
        &self,
        _broker: &Broker,
        _id: u64,
        _address: &str,
        _internal: Option<&str>,
        _origin: Origin,
    ) -> Result<(), BrokerError> {
        Err(single_node_membership())
    }

    async fn remove_broker(&self, _broker: &Broker, _id: u64, _origin: Origin) -> Result<(), BrokerError> {
        Err(single_node_membership())
    }

    async fn reassign_partitions(
        &self,
        _broker: &Broker,
        _moves: Vec<PartitionMove>,
        _throttle: u64,
        _origin: Origin,
    ) -> Result<(), BrokerError> {
        Err(BrokerError::MembershipRefused(
            "a single node has no other broker to move partitions to; reassignment needs a cluster".into(),
        ))
    }

    fn reassignments(&self, _broker: &Broker, _topic: Option<&str>) -> Vec<MoveView> {
        Vec::new()
    }

    fn metadata_ready(&self) -> bool {
        true
    }

    fn generation_base(&self) -> u32 {
        0
    }

    async fn hand_over(&self, _broker: &Broker, _wait: Duration) {}

    async fn stop(&self, _broker: &Broker) {}
}

/// A single node's partition writer: appends, then waits for durability per the fsync policy.
#[derive(Debug)]
pub struct LocalWriter {
    log: Arc<Partition>,
    node: u64,
}

#[tonic::async_trait]
impl PartitionWriter for LocalWriter {
    async fn write(&self, batch: AppendBatch<'_>, _payload: &Bytes, _acks: Acks) -> Result<WriteAnswer, BrokerError> {
        let pending = self.log.append(batch, now_ms())?;
        let log = Arc::clone(&self.log);
        Ok(Box::pin(async move { log.complete(&pending).await.map(|()| Ok(pending.appended)) }))
    }

    fn leader(&self) -> Option<u64> {
        Some(self.node)
    }

    fn in_sync(&self) -> Vec<u64> {
        vec![self.node]
    }

    async fn retain(&self, now_ms: i64) -> Result<RetentionOutcome, String> {
        self.log.apply_retention(now_ms, None).map_err(|e| e.to_string())
    }

    async fn compact(
        &self,
        now_ms: i64,
        policy: CompactionPolicy,
        options: &CleanerOptions,
        force: bool,
    ) -> Result<Option<CleanStats>, String> {
        self.log.compact(now_ms, policy, options, None, force).await.map_err(|e| e.to_string())
    }

    async fn stop(&self) {}
}

/// Membership changes need a cluster.
fn single_node_membership() -> BrokerError {
    BrokerError::MembershipRefused(
        "this broker runs as a single node: start brokers with --peers (or --join) to change membership".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerOptions;

    #[tokio::test]
    async fn offsets_of_topics_that_do_not_exist_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerOptions::for_test(dir.path())).unwrap();
        let control = LocalControl::start(&broker).unwrap();
        broker.set_control(control).unwrap();
        let new = NewTopic { name: "live".into(), partitions: 1, ..NewTopic::default() };
        broker.create_topic(new, Origin::Client).await.unwrap();
        let at = [StoredOffset { partition: 0, offset: 3, commit_time_ms: 1, metadata: String::new() }];
        // As a deletion before deletions took offsets along left them:
        broker.store().commit_offsets("g", "gone", &at).await.unwrap();
        broker.store().commit_offsets("g", "live", &at).await.unwrap();
        LocalControl::start(&broker).unwrap();
        assert!(broker.committed_offsets("g", "gone").unwrap().is_empty());
        assert_eq!(broker.committed_offsets("g", "live").unwrap().len(), 1);
    }
}
