//! A topic as this broker holds it: its definition and, per partition, either the partition's
//! log here with the [`PartitionWriter`] that writes it, or, in a cluster whose replication
//! factor is below its size, where the partition lives instead.
//!
//! Invariants:
//! - `slots` has exactly `record.partitions` entries, indexed by partition;
//! - a single node holds every partition;
//! - in cluster mode a slot is `Here` iff this broker is among the partition's replicas
//!   (`TopicRecord::replicas_of`);
//! - nothing writes a partition's log except its writer (single node: appends; cluster: its
//!   Raft group).

use std::sync::Arc;

use super::seam::PartitionWriter;
use crate::error::BrokerError;
use crate::meta::TopicRecord;
use crate::partition::Partition;

/// One partition of a topic, from this broker's point of view.
#[derive(Clone, Debug)]
pub enum PartitionSlot {
    /// This broker holds a replica: the log, and what writes it.
    Here { log: Arc<Partition>, writer: Arc<dyn PartitionWriter> },
    /// Cluster mode: only other brokers hold the partition: its replicas (preferred leader
    /// first) with their addresses, where clients are sent.
    Elsewhere { replica_addrs: Vec<(u64, String)> },
}

#[derive(Debug)]
pub struct Topic {
    pub record: TopicRecord,
    pub slots: Vec<PartitionSlot>,
    /// The incarnation: in a cluster the id the metadata group gave it (its `CreateTopic`'s
    /// offset + 1), on a single node a number unique while the broker runs. A recreated topic
    /// never has the same id as the deleted one; an altered one keeps its id.
    pub topic_id: u64,
}

impl Topic {
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
        self.held(p).map(|(log, _)| log)
    }

    /// Partition `p`'s log and writer on this broker; held elsewhere: as [`Topic::partition`].
    pub fn held(&self, p: u32) -> Result<(&Arc<Partition>, &Arc<dyn PartitionWriter>), BrokerError> {
        match self.slot(p)? {
            PartitionSlot::Here { log, writer } => Ok((log, writer)),
            PartitionSlot::Elsewhere { replica_addrs } => Err(BrokerError::NotLeader {
                what: format!(
                    "partition {p} of topic '{}' here: this broker holds no replica of it (replicas: brokers {:?})",
                    self.record.name,
                    self.record.replicas_of(p)
                ),
                // This broker does not know the leader. The preferred one usually is; after
                // that a random replica, so a client retrying past a dead one reaches a live
                // replica, which knows the leader.
                leader: pick_replica(replica_addrs),
            }),
        }
    }

    /// Cluster mode: the replicas of partition `p` if only other brokers hold it.
    pub fn elsewhere(&self, p: u32) -> Option<&[(u64, String)]> {
        match self.slots.get(p as usize)? {
            PartitionSlot::Elsewhere { replica_addrs } => Some(replica_addrs),
            PartitionSlot::Here { .. } => None,
        }
    }

    /// Every partition held here, with its writer.
    pub fn local(&self) -> impl Iterator<Item = (&Arc<Partition>, &Arc<dyn PartitionWriter>)> {
        self.slots.iter().filter_map(|s| match s {
            PartitionSlot::Here { log, writer } => Some((log, writer)),
            PartitionSlot::Elsewhere { .. } => None,
        })
    }
}

/// The preferred replica half the time, else a random one.
fn pick_replica(replicas: &[(u64, String)]) -> Option<(u64, String)> {
    let i = if rand::random::<bool>() { 0 } else { rand::random::<u32>() as usize % replicas.len().max(1) };
    replicas.get(i).cloned()
}
