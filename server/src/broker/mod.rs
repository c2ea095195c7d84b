//! The broker: topics, their partitions, and the background work that keeps them (retention,
//! interval fsync). Everything a request needs goes through here; the gRPC layer above only
//! validates, routes and maps errors.
//!
//! On-disk layout under the data directory (see docs/LOG_FORMAT.md):
//!
//! ```text
//! <data_dir>/meta/                    sled: topic definitions, committed offsets, Raft state
//! <data_dir>/topics/<topic>/<p>/      one partition log (segments + indexes), single node
//! <data_dir>/cluster-meta/            the metadata group's log (cluster mode, `cluster/`)
//! <data_dir>/replicas/<topic id>/<p>/ one replicated partition log (cluster mode)
//! ```
//!
//! In cluster mode topics come from the metadata group (`cluster::metadata`), not from the
//! sled topic records, and each partition held here has a Raft group (`broker/topic.rs`).
//!
//! Invariants:
//! - the metadata store is the commit point of topic creation and deletion: a topic exists iff
//!   its record is in `meta`. Directories without a record (a crash mid-create or mid-delete)
//!   are removed at startup;
//! - create and delete are serialized by `admin_lock`;
//! - a deleted topic's partitions are closed before its files go, so its subscribers end with
//!   a clear status instead of reading vanished files.

pub mod batch;
pub mod error;
pub mod partition;
pub mod producer_state;
pub mod tasks;
pub mod topic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use error::BrokerError;
use partition::{Closed, Partition};
use tokio::sync::watch;
pub use topic::{PartitionSlot, Topic};

use crate::meta::{MetaStore, TopicRecord};
use crate::topic_config::TopicSettings;

const META_DIR: &str = "meta";
const TOPICS_DIR: &str = "topics";
/// Longest topic name (Kafka's limit).
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Most partitions one topic may have on this broker.
pub const MAX_PARTITIONS: u32 = 10_000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What the broker needs from the configuration.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    pub data_dir: PathBuf,
    pub node_id: u32,
    /// The address clients reach this broker at (for DescribeCluster).
    pub advertised_address: String,
    pub topic_defaults: TopicSettings,
    pub retention_check_interval: Duration,
    /// Cluster mode: topics are defined by the metadata Raft group, not by `meta`.
    pub clustered: bool,
}

#[derive(Debug)]
pub struct Broker {
    options: BrokerOptions,
    meta: MetaStore,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    admin_lock: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
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
    /// Opens the data directory: loads topics from the metadata store, recovers every partition
    /// log, and removes directories of topics that do not exist.
    pub fn open(options: BrokerOptions) -> Result<Arc<Self>, BrokerError> {
        options.topic_defaults.validate().map_err(|e| BrokerError::InvalidArgument(format!("topic_defaults: {e}")))?;
        let topics_dir = options.data_dir.join(TOPICS_DIR);
        std::fs::create_dir_all(&topics_dir)
            .map_err(|e| crate::log::LogError::io(format!("creating {}", topics_dir.display()), e))?;
        let meta = MetaStore::open(&options.data_dir.join(META_DIR))?;
        let mut topics = BTreeMap::new();
        let records = if options.clustered { Vec::new() } else { meta.topics()? };
        for record in records {
            let topic = open_topic(&topics_dir, record)?;
            topics.insert(topic.record.name.clone(), Arc::new(topic));
        }
        remove_orphan_dirs(&topics_dir, &topics)?;
        let (shutdown, _) = watch::channel(false);
        Ok(Arc::new(Self {
            options,
            meta,
            topics: RwLock::new(topics),
            admin_lock: tokio::sync::Mutex::new(()),
            shutdown,
            cluster: std::sync::OnceLock::new(),
        }))
    }

    /// The cluster this broker is part of; `None` on a single node.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    pub(crate) fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Cluster mode: publishes a topic the metadata group created.
    pub(crate) fn insert_topic(&self, topic: Arc<Topic>) {
        self.topics.write().unwrap_or_else(PoisonError::into_inner).insert(topic.record.name.clone(), topic);
    }

    /// Cluster mode: withdraws a topic the metadata group deleted.
    pub(crate) fn remove_topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.write().unwrap_or_else(PoisonError::into_inner).remove(name)
    }

    pub fn options(&self) -> &BrokerOptions {
        &self.options
    }

    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// A topic by name. In cluster mode, while this broker's metadata is not current (see
    /// `Cluster::metadata_ready`), a missing topic is a retryable `NotLeader`, not
    /// `UnknownTopic`: it may exist and just not be applied here yet.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        let found = self.topics.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned();
        found.ok_or_else(|| match self.cluster() {
            Some(c) if !c.metadata_ready() => BrokerError::NotLeader {
                what: format!("metadata for topic '{name}' yet (this broker is catching up on cluster metadata)"),
                leader: None,
            },
            _ => BrokerError::UnknownTopic(name.to_string()),
        })
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// Cluster mode: the Raft group of every partition held here.
    pub(crate) fn partition_replicas(&self) -> Vec<crate::cluster::Replica> {
        self.topics().iter().flat_map(|t| t.replicas().cloned().collect::<Vec<_>>()).collect()
    }

    pub(crate) fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics().iter().flat_map(|t| t.local().map(|(p, _)| Arc::clone(p)).collect::<Vec<_>>()).collect()
    }

    /// Checks a topic to be created: its name, partition count and (complete) settings. The
    /// single-node create and the cluster's `CreateTopic` proposal both start here.
    pub fn check_new_topic(&self, name: &str, partitions: u32, settings: &TopicSettings) -> Result<(), BrokerError> {
        validate_topic_name(name)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(BrokerError::InvalidArgument(format!(
                "partitions must be 1..={MAX_PARTITIONS}, got {partitions}"
            )));
        }
        settings.validate().map_err(BrokerError::InvalidArgument)
    }

    /// Creates a topic. `settings` are complete (defaults already merged in).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        settings: TopicSettings,
    ) -> Result<Arc<Topic>, BrokerError> {
        self.check_new_topic(name, partitions, &settings)?;
        self.check_running()?;
        let _admin = self.admin_lock.lock().await;
        if self.topic(name).is_ok() {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        let record =
            TopicRecord { name: name.to_string(), partitions, created_at_ms: now_ms(), settings, replicas: Vec::new() };
        let topics_dir = self.options.data_dir.join(TOPICS_DIR);
        // Leftovers of a crashed create/delete of the same name would be recovered as data.
        let dir = topics_dir.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| crate::log::LogError::io(format!("removing stale {}", dir.display()), e))?;
        }
        let topic = Arc::new(open_topic(&topics_dir, record)?);
        self.meta.put_topic(&topic.record).await?; // commit point
        self.topics.write().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), Arc::clone(&topic));
        tracing::info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// Deletes a topic and its data. Its subscribers end with "topic deleted".
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        let _admin = self.admin_lock.lock().await;
        let topic = self.topic(name)?;
        self.meta.delete_topic(name).await?; // commit point
        self.topics.write().unwrap_or_else(PoisonError::into_inner).remove(name);
        for (p, _) in topic.local() {
            p.close(Closed::TopicDeleted);
        }
        let dir = self.options.data_dir.join(TOPICS_DIR).join(name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            // The record is gone, so startup will remove the directory; nothing is lost.
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove deleted topic's files yet");
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
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
        if let Err(e) = self.meta.flush() {
            tracing::error!(error = %e, "metadata flush at shutdown failed");
        }
    }
}

fn open_topic(topics_dir: &Path, record: TopicRecord) -> Result<Topic, BrokerError> {
    let mut partitions = Vec::with_capacity(record.partitions as usize);
    for p in 0..record.partitions {
        let dir = topics_dir.join(&record.name).join(p.to_string());
        let (partition, report) =
            Partition::open(&dir, &record.name, p, record.settings.log_config(), record.settings.fsync_policy())?;
        if report.truncated_bytes > 0 || report.indexes_rebuilt > 0 || report.segments_dropped > 0 {
            tracing::warn!(topic = %record.name, partition = p, ?report, "recovered partition log");
        }
        partitions.push(Arc::new(partition));
    }
    Ok(Topic::single_node(record, partitions))
}

fn remove_orphan_dirs(topics_dir: &Path, topics: &BTreeMap<String, Arc<Topic>>) -> Result<(), BrokerError> {
    let entries = std::fs::read_dir(topics_dir)
        .map_err(|e| crate::log::LogError::io(format!("listing {}", topics_dir.display()), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !topics.contains_key(&name) {
            tracing::warn!(dir = %entry.path().display(), "removing directory of a topic that does not exist");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}
