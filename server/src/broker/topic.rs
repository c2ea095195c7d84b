//! A topic as this broker holds it: its definition and, per partition, either the partition's
//! log here (with its Raft group in cluster mode) or, in a cluster whose replication factor is
//! below its size, where the partition lives instead.
//!
//! Invariants:
//! - `slots` has exactly `record.partitions` entries, indexed by partition;
//! - a single node holds every partition (`Here` without a Raft group);
//! - in cluster mode a slot is `Here` iff this broker is among the partition's replicas
//!   (`TopicRecord::replicas_of`), and then it always has its Raft group: nothing writes a
//!   replicated log except its group.

use std::sync::Arc;

use super::partition::Partition;
use super::BrokerError;
use crate::cluster::Replica;
use crate::meta::TopicRecord;

/// One partition of a topic, from this broker's point of view.
#[derive(Debug)]
pub enum PartitionSlot {
    /// This broker holds a replica: the log, and in cluster mode the partition's Raft group.
    Here { log: Arc<Partition>, raft: Option<Replica> },
    /// Cluster mode: only other brokers hold the partition: its replicas (preferred leader
    /// first) with their addresses, where clients are sent.
    Elsewhere { replicas: Vec<(u64, String)> },
}

#[derive(Debug)]
pub struct Topic {
    pub record: TopicRecord,
    pub slots: Vec<PartitionSlot>,
    /// Cluster mode: the id the metadata group gave this incarnation of the topic; 0 on a
    /// single node.
    pub topic_id: u64,
}

impl Topic {
    /// A single node's topic: every partition here, appended to directly.
    pub fn single_node(record: TopicRecord, logs: Vec<Arc<Partition>>) -> Self {
        let slots = logs.into_iter().map(|log| PartitionSlot::Here { log, raft: None }).collect();
        Self { record, slots, topic_id: 0 }
    }

    fn slot(&self, p: u32) -> Result<&PartitionSlot, BrokerError> {
        self.slots.get(p as usize).ok_or_else(|| BrokerError::UnknownPartition {
            topic: self.record.name.clone(),
            partition: p,
            count: self.record.partitions,
        })
    }

    /// Whether partition `p` exists (wherever it is held).
    pub fn check_partition(&self, p: u32) -> Result<(), BrokerError> {
        self.slot(p).map(|_| ())
    }

    /// Partition `p`'s log on this broker. Held elsewhere: a retryable `NotLeader` naming
    /// the broker to ask, so producers re-route as they do after a leader change.
    pub fn partition(&self, p: u32) -> Result<&Arc<Partition>, BrokerError> {
        match self.slot(p)? {
            PartitionSlot::Here { log, .. } => Ok(log),
            PartitionSlot::Elsewhere { replicas } => Err(BrokerError::NotLeader {
                what: format!(
                    "partition {p} of topic '{}' here: this broker holds no replica of it (replicas: brokers {:?})",
                    self.record.name,
                    self.record.replicas_of(p)
                ),
                // This broker does not know the leader. The preferred one usually is; after
                // that a random replica, so a client retrying past a dead one reaches a live
                // replica, which knows the leader.
                leader: pick_replica(replicas),
            }),
        }
    }

    /// Cluster mode: the replicas of partition `p` if only other brokers hold it.
    pub fn elsewhere(&self, p: u32) -> Option<&[(u64, String)]> {
        match self.slots.get(p as usize)? {
            PartitionSlot::Elsewhere { replicas } => Some(replicas),
            PartitionSlot::Here { .. } => None,
        }
    }

    /// Partition `p`'s Raft group, if this broker holds a replica of it in a cluster.
    pub fn replica(&self, p: u32) -> Option<&Replica> {
        match self.slots.get(p as usize)? {
            PartitionSlot::Here { raft, .. } => raft.as_ref(),
            PartitionSlot::Elsewhere { .. } => None,
        }
    }

    /// Every partition held here, with its Raft group in cluster mode.
    pub fn local(&self) -> impl Iterator<Item = (&Arc<Partition>, Option<&Replica>)> {
        self.slots.iter().filter_map(|s| match s {
            PartitionSlot::Here { log, raft } => Some((log, raft.as_ref())),
            PartitionSlot::Elsewhere { .. } => None,
        })
    }

    /// Every Raft group held here.
    pub fn replicas(&self) -> impl Iterator<Item = &Replica> {
        self.local().filter_map(|(_, r)| r)
    }
}

/// The preferred replica half the time, else a random one.
fn pick_replica(replicas: &[(u64, String)]) -> Option<(u64, String)> {
    let i = if rand::random::<bool>() { 0 } else { rand::random::<u32>() as usize % replicas.len().max(1) };
    replicas.get(i).cloned()
}
