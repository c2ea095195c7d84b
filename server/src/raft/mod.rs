//! Raft replication of partitions (openraft), over the partition log itself.
//!
//! ```text
//! openraft::Raft<PartitionTc>
//!   ├─ log_store::PartitionLogStore      RaftLogStorage + RaftLogReader over partition::Partition
//!   │     (the partition log IS the Raft log; vote/purge point in sled via meta::RaftState)
//!   └─ state_machine::PartitionStateMachine   apply = move the high watermark; snapshot =
//!         the retained segments (log::snapshot)
//! ```
//!
//! `types` declares the type configuration (log id = (term, index), the two numbers every batch
//! header stores), `codec` the byte formats of Raft state and `rpc_codec` those of the RPCs.
//! Between brokers: `network` (openraft's client side over gRPC) and `transport` (the
//! `tidelog.internal.v1.RaftTransport` service and the registry of hosted groups), and
//! `append_stream` (pipelined replication framed by hand at both ends, so stored batches
//! travel from the leader's log to the follower's without a user-space copy); `quiesce`
//! lets idle groups stop ticking; `recent` keeps each replica's last appended entries in
//! memory for replication and apply; `retention` deletes segments through snapshot and purge;
//! `throttle` paces what leaders send to replicas catching up for a partition move.
//! The groups themselves — one per partition plus the metadata group — are opened and driven
//! by `cluster/` (docs/CLUSTER.md; the design is docs/RAFT_PLAN.md).
//!
//! This module must never decode or re-encode record payloads (entries carry batches as
//! bytes), and never import `broker`, `cluster` or `api`: it knows partitions, not topics.

pub mod append_stream;
pub mod codec;
pub mod log_store;
pub mod network;
pub mod quiesce;
pub mod recent;
pub mod retention;
pub mod rpc_codec;
#[cfg(test)]
mod sim_tests;
pub mod state_machine;
#[cfg(test)]
mod store_tests;
pub mod throttle;
pub mod transport;
pub mod types;

use std::io;
use std::sync::Arc;

pub use log_store::PartitionLogStore;
pub use state_machine::{PartitionSnapshot, PartitionStateMachine};
pub use types::{BatchData, PartitionTc, ProposedBatch};

use crate::meta::RaftState;
use crate::partition::Partition;

/// Opens the Raft storage of one partition: its log store and state machine, sharing the
/// partition, its Raft state and its recent entries (a snapshot install replaces the log).
pub fn open_storage(
    partition: Arc<Partition>,
    state: RaftState,
) -> io::Result<(PartitionLogStore, PartitionStateMachine)> {
    let recent = Arc::new(recent::RecentEntries::default());
    let log = PartitionLogStore::open(Arc::clone(&partition), state.clone(), Arc::clone(&recent))?;
    let sm = PartitionStateMachine::open(partition, state, recent)?;
    Ok((log, sm))
}
