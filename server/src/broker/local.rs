//! The single-node implementation of the seam: topics and offsets in the sled store, batches
//! appended straight to the partition log.
//!
//! Invariants:
//! - the store is the commit point of topic creation and deletion: a topic exists iff its
//!   record is in the store. Directories without a record (a crash mid-create or mid-delete)
//!   are removed at start;
//! - creates and deletes are serialized by `admin` (a write lock); commits hold it for reading,
//!   so a topic's deletion (which deletes its committed offsets in the same sled transaction)
//!   never interleaves with a commit for it, and a commit for a deleted incarnation stores
//!   nothing;
//! - every batch [`LocalWriter::write`] appended is completed by its answer future (fsynced
//!   per policy, high watermark advanced); the api layer awaits every one, even after its
//!   client went away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::route::{Origin, Route};
use super::seam::{Acks, ClusterView, ControlPlane, NewTopic, PartitionWriter, WriteAnswer};
use super::{Broker, PartitionSlot, Topic};
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::layout;
use crate::log::{AppendBatch, LogError, RetentionOutcome};
use crate::meta::{StoredOffset, TopicRecord};
use crate::partition::Partition;

/// A single node's control plane.
#[derive(Debug, Default)]
pub struct LocalControl {
    admin: tokio::sync::RwLock<()>,
}

impl LocalControl {
    /// Loads every topic from the store (recovering its partition logs) into the broker's
    /// topic table and removes directories of topics that do not exist.
    pub fn start(broker: &Broker) -> Result<Arc<Self>, BrokerError> {
        let data_dir = &broker.options().data_dir;
        let topics_dir = layout::topics_dir(data_dir);
        std::fs::create_dir_all(&topics_dir)
            .map_err(|e| LogError::io(format!("creating {}", topics_dir.display()), e))?;
        let mut names = Vec::new();
        for record in broker.store().topics()? {
            names.push(record.name.clone());
            broker.publish_topic(Arc::new(open_topic(broker, record)?));
        }
        let entries =
            std::fs::read_dir(&topics_dir).map_err(|e| LogError::io(format!("listing {}", topics_dir.display()), e))?;
        for entry in entries.flatten() {
            if !names.iter().any(|n| *n == *entry.file_name().to_string_lossy()) {
                tracing::warn!(dir = %entry.path().display(), "removing directory of a topic that does not exist");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Arc::new(Self::default()))
    }
}

fn open_topic(broker: &Broker, record: TopicRecord) -> Result<Topic, BrokerError> {
    let mut slots = Vec::with_capacity(record.partitions as usize);
    for p in 0..record.partitions {
        let dir = layout::topic_partition_dir(&broker.options().data_dir, &record.name, p);
        let (partition, report) =
            Partition::open(&dir, &record.name, p, record.settings.log_config(), record.settings.fsync_policy())?;
        if report.truncated_bytes > 0 || report.indexes_rebuilt > 0 || report.segments_dropped > 0 {
            tracing::warn!(topic = %record.name, partition = p, ?report, "recovered partition log");
        }
        let log = Arc::new(partition);
        let writer = Arc::new(LocalWriter { log: Arc::clone(&log), node: broker.node_id() });
        slots.push(PartitionSlot::Here { log, writer });
    }
    Ok(Topic { record, slots, topic_id: 0 })
}

#[tonic::async_trait]
impl ControlPlane for LocalControl {
    async fn create_topic(&self, broker: &Broker, new: NewTopic, _origin: Origin) -> Result<Arc<Topic>, BrokerError> {
        if new.replication_factor > 1 {
            return Err(BrokerError::InvalidArgument(format!(
                "replication_factor {} is not possible: this broker runs as a single node (use 1)",
                new.replication_factor
            )));
        }
        let _admin = self.admin.write().await;
        if broker.topic(&new.name).is_ok() {
            return Err(BrokerError::TopicExists(new.name));
        }
        let record = TopicRecord {
            name: new.name,
            partitions: new.partitions,
            created_at_ms: now_ms(),
            settings: new.settings,
            replicas: Vec::new(),
        };
        // Leftovers of a crashed create/delete of the same name would be recovered as data.
        let dir = layout::topics_dir(&broker.options().data_dir).join(&record.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| LogError::io(format!("removing stale {}", dir.display()), e))?;
        }
        let topic = Arc::new(open_topic(broker, record)?);
        broker.store().put_topic(&topic.record).await?; // commit point
        broker.publish_topic(Arc::clone(&topic));
        tracing::info!(topic = %topic.record.name, partitions = topic.record.partitions, "topic created");
        Ok(topic)
    }

    async fn delete_topic(&self, broker: &Broker, name: &str, _origin: Origin) -> Result<(), BrokerError> {
        let _admin = self.admin.write().await;
        broker.topic(name)?;
        broker.store().delete_topic(name).await?; // commit point, with the topic's offsets
        broker.withdraw_topic(name);
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
        let _admin = self.admin.read().await;
        let name = &topic.record.name;
        match broker.topic(name) {
            Ok(current) if std::ptr::eq(Arc::as_ptr(&current), topic) => {}
            _ => return Err(BrokerError::TopicDeleted(name.clone())),
        }
        Ok(broker.store().commit_offsets(group, name, &offsets).await?)
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

    fn describe_cluster(&self, broker: &Broker) -> Result<ClusterView, BrokerError> {
        let o = broker.options();
        Ok(ClusterView {
            cluster_id: broker.store().cluster_id()?,
            controller: Some(broker.node_id()),
            brokers: BTreeMap::from([(broker.node_id(), o.advertised_address.clone())]),
        })
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

    async fn stop(&self) {}
}
