//! The broker's metadata store: topic definitions and consumer-group committed offsets.
//!
//! Backed by sled, and only this module knows it: swapping the engine (redb, or the Raft
//! metadata group) touches nothing else.
//!
//! Key layout (every on-disk name of the store is here):
//! - tree `topics`:  key = topic name (UTF-8); value = JSON [`TopicRecord`].
//! - tree `offsets`: key = group `0x00` topic `0x00` partition (u32 big-endian, so a prefix
//!   scan of `group 0x00 topic 0x00` yields partitions in order); value = offset u64 LE |
//!   commit time ms i64 LE | metadata (UTF-8).
//! - tree `raft`: each Raft group's vote, purge point and checkpoints ([`raft_state`]).
//! - tree `transactions`: key = transactional id (UTF-8); value = JSON [`txn::TxnEntry`] (a
//!   single node's; a cluster keeps them in its metadata log).
//! - default tree, key `security`: a single node's ACLs and quotas, JSON (`auth::SecurityState`;
//!   a cluster keeps them in its metadata log instead).
//!
//! Durability: every mutating method flushes (fsyncs) sled before it returns, so a topic that
//! was created or an offset that was committed survives a crash once the call returned. The
//! one exception, [`MetaStore::apply_offsets`], is for cluster mode, where the metadata Raft
//! log is the durable copy and this store only its applied view.
//!
//! Failure: after an I/O error on a flush (a full disk, a failing device) sled refuses every
//! later write, even once the disk has space again: only a reopen clears it. The first one is
//! recorded in [`StoreHealth`], and the broker stops (`node.rs`) instead of answering every
//! commit and create with the same error: a restart, once the fault is fixed, reopens the store
//! with everything that was flushed (Kafka halts a broker whose metadata log directory fails).
//!
//! Group and topic names never contain `0x00` (validated by the API layer).

mod raft_state;
pub mod txn;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use raft_state::{RaftKey, RaftState};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::topic_config::TopicSettings;

const TOPICS_TREE: &str = "topics";
const OFFSETS_TREE: &str = "offsets";
const TXNS_TREE: &str = "transactions";
/// Default tree, key `cluster_id`: the id generated when the data directory was first used.
const CLUSTER_ID_KEY: &str = "cluster_id";
/// Default tree, key `security`: a single node's ACLs and quotas (JSON).
const SECURITY_KEY: &str = "security";

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store error: {0}")]
    Store(#[from] sled::Error),
    #[error("metadata record is corrupt: {0}")]
    Corrupt(String),
}

/// A topic as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub partitions: u32,
    pub created_at_ms: i64,
    pub settings: TopicSettings,
    /// Cluster mode: each partition's replicas (broker ids), its preferred leader first.
    /// Empty on a single node, and in cluster topics created before placement existed: then
    /// every broker holds every partition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Vec<u64>>,
    /// The settings given for this topic (`topic_config::KEYS` names); the others came from
    /// the broker's defaults. Absent in records written before it existed: then every setting
    /// counts as the topic's own (nothing a topic was created with is lost to a default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Vec<String>>,
    /// Cluster mode: the partitions being moved to other brokers (`cluster/reassign.rs`).
    /// `replicas` keeps each one's replicas from before the move until the move is done.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reassigning: BTreeMap<u32, Reassignment>,
}

/// A partition move in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The replicas it moves to, preferred leader first.
    pub target: Vec<u64>,
    /// Every broker that may be in the partition's Raft group until the move is done: the
    /// replicas before it and every target set since (a move redirected or cancelled midway
    /// may have made any of them a voter). They all keep their replica open until then.
    pub members: Vec<u64>,
    /// Bytes per second the leader sends to replicas catching up (0: its broker's default).
    #[serde(default)]
    pub throttle: u64,
}

impl TopicRecord {
    /// The settings that are this topic's own (see `overrides`).
    pub fn own_settings(&self) -> Vec<String> {
        match &self.overrides {
            Some(o) => o.clone(),
            None => crate::topic_config::KEYS.iter().map(|k| (*k).to_string()).collect(),
        }
    }

    /// Partition `p`'s replicas in a cluster of `brokers`, preferred leader first.
    pub fn replicas_in(&self, p: u32, brokers: impl Iterator<Item = u64>) -> Vec<u64> {
        match self.replicas.get(p as usize) {
            Some(r) => r.clone(),
            None => brokers.collect(),
        }
    }

    /// The brokers that hold a replica of partition `p` in a cluster of `brokers`: its
    /// replicas, and during a move every broker that may be in its Raft group.
    pub fn hosts_in(&self, p: u32, brokers: impl Iterator<Item = u64>) -> Vec<u64> {
        let mut hosts = self.replicas_in(p, brokers);
        if let Some(r) = self.reassigning.get(&p) {
            for b in &r.members {
                if !hosts.contains(b) {
                    hosts.push(*b);
                }
            }
        }
        hosts
    }

    /// Partition `p`'s replicas as recorded (empty: every broker).
    pub fn replicas_of(&self, p: u32) -> &[u64] {
        self.replicas.get(p as usize).map_or(&[], Vec::as_slice)
    }
}

/// A committed offset as stored (and, in cluster mode, as carried in the metadata log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOffset {
    pub partition: u32,
    pub offset: u64,
    pub commit_time_ms: i64,
    pub metadata: String,
}

#[derive(Debug, Clone)]
pub struct MetaStore {
    db: sled::Db,
    topics: sled::Tree,
    offsets: sled::Tree,
    txns: sled::Tree,
    flusher: Arc<raft_state::GroupFlush>,
    health: Arc<StoreHealth>,
}

/// Whether the store has failed (see the module docs): set once, at the first flush that
/// failed with an I/O error, and never cleared.
#[derive(Debug, Default)]
pub struct StoreHealth {
    failed: std::sync::OnceLock<String>,
    changed: tokio::sync::Notify,
}

impl StoreHealth {
    /// A flush's result, an I/O error recorded first (the store is dead from then on).
    fn check(&self, flushed: Result<usize, sled::Error>) -> Result<(), MetaError> {
        let e = match flushed {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if matches!(e, sled::Error::Io(_)) && self.failed.set(e.to_string()).is_ok() {
            tracing::error!(error = %e, "the metadata store failed: it refuses every write from now on; stopping the broker (restart it once the fault is fixed, e.g. the disk has space)");
            self.changed.notify_waiters();
        }
        Err(MetaError::Store(e))
    }

    /// The failure, once there is one.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Resolves with the failure when the store fails (at once if it has).
    pub async fn failed(&self) -> String {
        loop {
            let changed = self.changed.notified();
            if let Some(e) = self.failed.get() {
                return e.clone();
            }
            changed.await;
        }
    }
}

/// `group 0x00`: the prefix of every offsets key of a group.
fn group_prefix(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + 1);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k
}

fn offsets_prefix(group: &str, topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + topic.len() + 6);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k
}

/// The topic of an offsets key: group 0x00 topic 0x00 partition (4 bytes). Group and topic
/// names never contain 0x00; the partition's bytes may.
fn topic_of_offset_key(k: &[u8]) -> Option<&[u8]> {
    let group_end = k.iter().position(|b| *b == 0)?;
    k.get(group_end + 1..k.len().checked_sub(5)?)
}

impl MetaStore {
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::LowSpace).open()?;
        let topics = db.open_tree(TOPICS_TREE)?;
        let offsets = db.open_tree(OFFSETS_TREE)?;
        let txns = db.open_tree(TXNS_TREE)?;
        Ok(Self { db, topics, offsets, txns, flusher: Arc::default(), health: Arc::default() })
    }

    /// Whether the store has failed (the broker stops when it does: `node.rs`).
    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.health
    }

    /// fsyncs sled; an I/O error marks the store failed ([`StoreHealth`]).
    async fn durable(&self) -> Result<(), MetaError> {
        self.health.check(self.db.flush_async().await)
    }

    pub fn topics(&self) -> Result<Vec<TopicRecord>, MetaError> {
        self.topics
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| MetaError::Corrupt(format!("topic record: {e}")))
            })
            .collect()
    }

    /// Stores a topic definition. Durability: flushed before returning.
    pub async fn put_topic(&self, topic: &TopicRecord) -> Result<(), MetaError> {
        let v = serde_json::to_vec(topic).map_err(|e| MetaError::Corrupt(e.to_string()))?;
        self.topics.insert(topic.name.as_bytes(), v)?;
        self.durable().await?;
        Ok(())
    }

    /// Removes a topic definition and every group's committed offsets for it, in one
    /// transaction: a topic recreated under the same name must not start from the offsets of
    /// the one deleted (its consumers would skip records; Kafka deletes them too). The caller
    /// keeps commits for the topic out while this runs. Durability: flushed before returning.
    pub async fn delete_topic(&self, name: &str) -> Result<(), MetaError> {
        let keys = self.offset_keys_of(name)?;
        (&self.topics, &self.offsets)
            .transaction(|(topics, offsets)| {
                topics.remove(name.as_bytes())?;
                for k in &keys {
                    offsets.remove(k)?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => MetaError::Store(e),
                TransactionError::Abort(()) => MetaError::Corrupt("topic deletion aborted".into()),
            })?;
        self.durable().await?;
        Ok(())
    }

    /// Removes every group's committed offsets for `topic`, **without flushing** (cluster mode,
    /// applying a `DeleteTopic`: the metadata log is the durable copy, as for
    /// [`MetaStore::apply_offsets`]). Returns how many partitions' offsets went.
    pub fn remove_offsets_of(&self, topic: &str) -> Result<usize, MetaError> {
        let keys = self.offset_keys_of(topic)?;
        let mut batch = sled::Batch::default();
        for k in &keys {
            batch.remove(k.clone());
        }
        self.offsets.apply_batch(batch)?;
        Ok(keys.len())
    }

    /// Every group with committed offsets (a full scan).
    pub fn offset_groups(&self) -> Result<std::collections::BTreeSet<String>, MetaError> {
        let mut groups = std::collections::BTreeSet::new();
        for kv in self.offsets.iter() {
            let (k, _) = kv?;
            if let Some(end) = k.iter().position(|b| *b == 0) {
                groups.insert(String::from_utf8_lossy(&k[..end]).into_owned());
            }
        }
        Ok(groups)
    }

    /// How many committed offsets (topic partitions) `group` has.
    pub fn offset_count(&self, group: &str) -> Result<usize, MetaError> {
        Ok(self.offsets.scan_prefix(group_prefix(group)).count())
    }

    /// Whether `group` has any committed offset.
    pub fn has_offsets(&self, group: &str) -> Result<bool, MetaError> {
        Ok(self.offsets.scan_prefix(group_prefix(group)).next().transpose()?.is_some())
    }

    /// Deletes every committed offset of `group` (every topic). Durability: flushed before
    /// returning. Returns how many partitions' offsets went.
    pub async fn delete_group(&self, group: &str) -> Result<usize, MetaError> {
        let n = self.remove_group_offsets(group)?;
        self.durable().await?;
        Ok(n)
    }

    /// As [`MetaStore::delete_group`], **without flushing** (cluster mode, applying a
    /// `DeleteGroup`: the metadata log is the durable copy).
    pub fn remove_group_offsets(&self, group: &str) -> Result<usize, MetaError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.offsets.scan_prefix(group_prefix(group)) {
            let (k, _) = kv?;
            batch.remove(k);
            n += 1;
        }
        self.offsets.apply_batch(batch)?;
        Ok(n)
    }

    /// Every topic some group has committed offsets for (a full scan).
    pub fn offset_topics(&self) -> Result<std::collections::BTreeSet<String>, MetaError> {
        let mut topics = std::collections::BTreeSet::new();
        for kv in self.offsets.iter() {
            let (k, _) = kv?;
            if let Some(t) = topic_of_offset_key(&k) {
                topics.insert(String::from_utf8_lossy(t).into_owned());
            }
        }
        Ok(topics)
    }

    /// The keys of every committed offset for `topic`, whatever the group (a full scan: topic
    /// deletion is rare, commits are not, so the key leads with the group).
    fn offset_keys_of(&self, topic: &str) -> Result<Vec<sled::IVec>, MetaError> {
        let mut keys = Vec::new();
        for kv in self.offsets.iter() {
            let (k, _) = kv?;
            if topic_of_offset_key(&k) == Some(topic.as_bytes()) {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    /// Stores committed offsets for one group and topic atomically. Durability: flushed
    /// before returning.
    pub async fn commit_offsets(&self, group: &str, topic: &str, offsets: &[StoredOffset]) -> Result<(), MetaError> {
        self.apply_offsets(group, topic, offsets)?;
        self.durable().await?;
        Ok(())
    }

    /// Stores committed offsets for one group and topic atomically, **without flushing**.
    /// Only for cluster mode, where the durable copy is the metadata Raft log that carried the
    /// commit: it is fsynced by a majority before the commit is answered, and re-applied from
    /// the start on every restart, so an unflushed write lost here is written again.
    pub fn apply_offsets(&self, group: &str, topic: &str, offsets: &[StoredOffset]) -> Result<(), MetaError> {
        let prefix = offsets_prefix(group, topic);
        let mut batch = sled::Batch::default();
        for o in offsets {
            let mut k = prefix.clone();
            k.extend_from_slice(&o.partition.to_be_bytes());
            let mut v = Vec::with_capacity(16 + o.metadata.len());
            v.extend_from_slice(&o.offset.to_le_bytes());
            v.extend_from_slice(&o.commit_time_ms.to_le_bytes());
            v.extend_from_slice(o.metadata.as_bytes());
            batch.insert(k, v);
        }
        self.offsets.apply_batch(batch)?;
        Ok(())
    }

    /// Committed offsets of `group` for `topic`, in partition order.
    pub fn committed_offsets(&self, group: &str, topic: &str) -> Result<Vec<StoredOffset>, MetaError> {
        let prefix = offsets_prefix(group, topic);
        self.offsets
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let part = k
                    .get(prefix.len()..)
                    .filter(|p| p.len() == 4)
                    .ok_or_else(|| MetaError::Corrupt("offset key".into()))?;
                if v.len() < 16 {
                    return Err(MetaError::Corrupt("offset value shorter than 16 bytes".into()));
                }
                let mut off = [0u8; 8];
                off.copy_from_slice(&v[..8]);
                let mut time = [0u8; 8];
                time.copy_from_slice(&v[8..16]);
                Ok(StoredOffset {
                    partition: u32::from_be_bytes([part[0], part[1], part[2], part[3]]),
                    offset: u64::from_le_bytes(off),
                    commit_time_ms: i64::from_le_bytes(time),
                    metadata: String::from_utf8_lossy(&v[16..]).into_owned(),
                })
            })
            .collect()
    }

    /// A producer id never handed out before (ids start at 1; 0 means "not idempotent").
    /// Durability: sled's id generator is persisted before the id is returned.
    pub async fn next_producer_id(&self) -> Result<i64, MetaError> {
        let id = self.db.generate_id()?;
        self.durable().await?;
        i64::try_from(id + 1).map_err(|_| MetaError::Corrupt("producer ids exhausted".into()))
    }

    /// The cluster id, generated and stored the first time it is asked for.
    pub fn cluster_id(&self) -> Result<String, MetaError> {
        if let Some(v) = self.db.get(CLUSTER_ID_KEY)? {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = format!("{:016x}{:08x}", nanos as u64, std::process::id());
        // Two racing callers: the first write wins, both return the stored value.
        let _ = self.db.compare_and_swap(CLUSTER_ID_KEY, None as Option<&[u8]>, Some(id.as_bytes()))?;
        self.health.check(self.db.flush())?;
        Ok(self.db.get(CLUSTER_ID_KEY)?.map_or(id, |v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// A single node's stored ACLs and quotas (JSON), if any were ever set.
    pub fn security_state(&self) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.db.get(SECURITY_KEY)?.map(|v| v.to_vec()))
    }

    /// Stores a single node's ACLs and quotas, durably (fsynced) before it returns.
    pub async fn put_security_state(&self, json: &[u8]) -> Result<(), MetaError> {
        self.db.insert(SECURITY_KEY, json)?;
        self.durable().await?;
        Ok(())
    }

    /// Durability: flushes everything to disk (used at shutdown).
    pub fn flush(&self) -> Result<(), MetaError> {
        self.health.check(self.db.flush())
    }

    /// Bytes sled uses on disk (to watch its growth under commit churn).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Reopens a store whose previous instance was just dropped, polling (up to 10 s) until
/// sled's background flusher of that instance has released the file lock, as a restarted
/// process would find it. Tests only: a reopen right after a drop fails under load.
#[cfg(test)]
pub(crate) fn reopen(dir: &Path) -> MetaStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match MetaStore::open(dir) {
            Ok(m) => return m,
            Err(e) if std::time::Instant::now() > deadline => panic!("reopening {}: {e}", dir.display()),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn topics_and_offsets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let m = MetaStore::open(dir.path()).unwrap();
            let t = TopicRecord {
                name: "a".into(),
                partitions: 3,
                created_at_ms: 5,
                settings: TopicSettings::default(),
                replicas: Vec::new(),
                overrides: None,
                reassigning: Default::default(),
            };
            m.put_topic(&t).await.unwrap();
            let offs: Vec<_> = (0..3)
                .map(|p| StoredOffset {
                    partition: p,
                    offset: 10 * u64::from(p),
                    commit_time_ms: 9,
                    metadata: format!("m{p}"),
                })
                .collect();
            m.commit_offsets("g", "a", &offs).await.unwrap();
            // A group whose name is a prefix of another's must not see its offsets.
            m.commit_offsets("g2", "a", &offs[..1]).await.unwrap();
        }
        let m = reopen(dir.path());
        assert_eq!(m.topics().unwrap().len(), 1);
        let got = m.committed_offsets("g", "a").unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].offset, 20);
        assert_eq!(got[1].metadata, "m1");
        m.delete_topic("a").await.unwrap();
        assert!(m.topics().unwrap().is_empty());
    }

    #[test]
    fn a_record_from_before_overrides_existed_keeps_every_setting_as_its_own() {
        let old = br#"{"name":"t","partitions":1,"created_at_ms":1,"settings":{"retention_ms":5}}"#;
        let record: TopicRecord = serde_json::from_slice(old).unwrap();
        assert_eq!(record.overrides, None);
        assert_eq!(record.own_settings().len(), crate::topic_config::KEYS.len());
        assert_eq!(record.settings.retention_ms, 5);
    }

    #[tokio::test]
    async fn deleting_a_topic_deletes_its_offsets_in_every_group_and_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(dir.path()).unwrap();
        let record = |name: &str| TopicRecord {
            name: name.into(),
            partitions: 1,
            created_at_ms: 5,
            settings: TopicSettings::default(),
            replicas: Vec::new(),
            overrides: None,
            reassigning: Default::default(),
        };
        // Partition 256 has a 0x00 byte in its key (the parser must not split there).
        let offs =
            [0u32, 256].map(|p| StoredOffset { partition: p, offset: 3, commit_time_ms: 1, metadata: "x".into() });
        for topic in ["t", "tt", "t.2", "a"] {
            m.put_topic(&record(topic)).await.unwrap();
            for group in ["g", "g2", "t"] {
                m.commit_offsets(group, topic, &offs).await.unwrap();
            }
        }
        m.delete_topic("t").await.unwrap();
        for group in ["g", "g2", "t"] {
            assert!(m.committed_offsets(group, "t").unwrap().is_empty(), "group {group} kept offsets of t");
            for topic in ["tt", "t.2", "a"] {
                assert_eq!(m.committed_offsets(group, topic).unwrap().len(), 2, "{group}/{topic} lost offsets");
            }
        }
        assert_eq!(m.topics().unwrap().len(), 3);
        let named: Vec<String> = m.offset_topics().unwrap().into_iter().collect();
        assert_eq!(named, ["a", "t.2", "tt"]);
        let groups: Vec<String> = m.offset_groups().unwrap().into_iter().collect();
        assert_eq!(groups, ["g", "g2", "t"]);
        // Deleting group "g" keeps "g2" (a longer name with the same start).
        assert_eq!(m.delete_group("g").await.unwrap(), 6);
        assert!(!m.has_offsets("g").unwrap() && m.has_offsets("g2").unwrap());
        assert_eq!(m.committed_offsets("g2", "a").unwrap().len(), 2);
        assert_eq!(m.remove_offsets_of("tt").unwrap(), 4);
        assert!(m.committed_offsets("g2", "tt").unwrap().is_empty());
        assert_eq!(m.committed_offsets("g2", "a").unwrap().len(), 2);
        drop(m);
        let m = reopen(dir.path());
        assert!(m.committed_offsets("g2", "t").unwrap().is_empty(), "a deletion did not survive a reopen");
    }
}
