//! A topic as this broker holds it: its definition and, per partition, either the partition's
//! log here with the [`PartitionWriter`] that writes it, or, in a cluster whose replication
//! factor is below its size, where the partition lives instead.
//!
//! Invariants:
//! - `slots` has exactly `record.partitions` entries, indexed by partition;
//! - a single node holds every partition;
//! - in cluster mode a slot is `Here` iff this broker is among the partition's replicas
//!   (`TopicRecord::replicas_of`), or `Opening` while that replica is being opened;
//! - an `Opening` slot is set once, to `Here` or (the replica could not open) `Elsewhere`, and
//!   then behaves as that slot; the topic is republished without it once every replica is
//!   open (`cluster/opening.rs`), so no `Opening` slot outlives its topic's opening;
//! - nothing writes a partition's log except its writer (single node: appends; cluster: its
//!   Raft group).

use std::sync::{Arc, OnceLock};

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
    /// Cluster mode: this broker holds a replica whose group is still being opened (a broker
    /// reopening its replicas at start, a topic being created). Until it is open clients are
    /// answered as for `Elsewhere`, and asking for it moves it to the front of the opening.
    Opening(Arc<PendingSlot>),
}

impl PartitionSlot {
    /// The slot as it stands: an opening replica's, once open, is the slot it opened as.
    pub fn current(&self) -> &PartitionSlot {
        match self {
            PartitionSlot::Opening(pending) => pending.opened.get().unwrap_or(self),
            slot => slot,
        }
    }
}

/// Who opens pending replicas: asked to open one sooner because a client wants it.
pub trait OpenQueue: Send + Sync + std::fmt::Debug {
    /// Opens partition `partition`'s replica next, if it is not open or opening already.
    fn hurry(&self, partition: u32);
}

/// A replica held here that is being opened (see [`PartitionSlot::Opening`]).
#[derive(Debug)]
pub struct PendingSlot {
    partition: u32,
    /// The partition's other replicas, where clients are sent meanwhile.
    others: Vec<(u64, String)>,
    /// Set once, when the replica opened (`Here`) or could not (`Elsewhere`).
    opened: OnceLock<PartitionSlot>,
    queue: Arc<dyn OpenQueue>,
}

impl PendingSlot {
    pub fn new(partition: u32, others: Vec<(u64, String)>, queue: Arc<dyn OpenQueue>) -> Self {
        Self { partition, others, opened: OnceLock::new(), queue }
    }

    /// Settles the slot (once; a second call, or an `Opening` slot, is ignored).
    pub fn settle(&self, slot: PartitionSlot) {
        if !matches!(slot, PartitionSlot::Opening(_)) {
            let _ = self.opened.set(slot);
        }
    }

    /// The slot it settled to, if it did.
    pub fn settled(&self) -> Option<&PartitionSlot> {
        self.opened.get()
    }
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
    /// A replica still opening here is asked to open next, and answered as held elsewhere.
    pub fn held(&self, p: u32) -> Result<(&Arc<Partition>, &Arc<dyn PartitionWriter>), BrokerError> {
        match self.slot(p)?.current() {
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
            PartitionSlot::Opening(pending) => {
                pending.queue.hurry(pending.partition);
                Err(BrokerError::NotLeader {
                    what: format!(
                        "partition {p} of topic '{}' here yet: this broker is still opening its replica (retry shortly)",
                        self.record.name
                    ),
                    // It may have led before it restarted; another replica knows who leads now.
                    leader: pick_replica(&pending.others),
                })
            }
        }
    }

    /// Partition `p`'s log and writer if its replica here is open; unlike [`Topic::held`] it
    /// never hurries an opening one (for describing, not serving).
    pub fn here(&self, p: u32) -> Option<(&Arc<Partition>, &Arc<dyn PartitionWriter>)> {
        match self.slots.get(p as usize)?.current() {
            PartitionSlot::Here { log, writer } => Some((log, writer)),
            PartitionSlot::Elsewhere { .. } | PartitionSlot::Opening(_) => None,
        }
    }

    /// Cluster mode: the replicas of partition `p` if only other brokers hold it, or the
    /// other replicas while the one here is opening. `None` for an opening replica that has
    /// no other (one replica): callers then ask [`Topic::held`], which hurries it and answers
    /// a retryable NOT_LEADER, rather than asking nobody.
    pub fn elsewhere(&self, p: u32) -> Option<&[(u64, String)]> {
        match self.slots.get(p as usize)?.current() {
            PartitionSlot::Elsewhere { replica_addrs } => Some(replica_addrs),
            PartitionSlot::Opening(pending) if !pending.others.is_empty() => Some(&pending.others),
            PartitionSlot::Opening(_) | PartitionSlot::Here { .. } => None,
        }
    }

    /// Every partition held here and open, with its writer.
    pub fn local(&self) -> impl Iterator<Item = (&Arc<Partition>, &Arc<dyn PartitionWriter>)> {
        self.slots.iter().filter_map(|s| match s.current() {
            PartitionSlot::Here { log, writer } => Some((log, writer)),
            PartitionSlot::Elsewhere { .. } | PartitionSlot::Opening(_) => None,
        })
    }

    /// Whether every replica held here is open (no slot is still `Opening`).
    pub fn settled(&self) -> bool {
        !self.slots.iter().any(|s| matches!(s.current(), PartitionSlot::Opening(_)))
    }
}

/// The preferred replica half the time, else a random one.
fn pick_replica(replicas: &[(u64, String)]) -> Option<(u64, String)> {
    let i = if rand::random::<bool>() { 0 } else { rand::random::<u32>() as usize % replicas.len().max(1) };
    replicas.get(i).cloned()
}
