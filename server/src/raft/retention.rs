//! Retention of a replicated partition. Deleting a segment must not take entries a follower
//! may still be sent, so retention goes through Raft (docs/RAFT_PLAN.md §2):
//! 1. find the Raft index up to which retention would delete ([`Partition::retention_point`]);
//! 2. make sure a snapshot covers it (a follower that needs those entries gets the snapshot,
//!    which is the retained segments, instead);
//! 3. purge the Raft log up to it; our log store records the purge point durably first;
//! 4. delete only segments wholly at or below that durable purge point.
//!
//! Each replica runs this on its own: segment boundaries are local, the purge point too.
//! Never delete above the durable purge point: openraft would then be asked for entries the
//! log no longer has.

use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;

use super::transport::PartitionRaft;
use super::PartitionLogStore;
use crate::error::BrokerError;
use crate::log::RetentionOutcome;
use crate::partition::Partition;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The group stopped, or the snapshot or purge did not happen in time (retried next pass).
    #[error("retention of a replicated partition: {0}")]
    Raft(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

fn raft_err(e: impl std::fmt::Display) -> RetentionError {
    RetentionError::Raft(e.to_string())
}

/// One retention pass of a replicated partition (see the module docs). `wait` bounds each of
/// the snapshot and the purge.
pub async fn apply_retention(
    raft: &PartitionRaft,
    log_store: &PartitionLogStore,
    partition: &Partition,
    now_ms: i64,
    wait: Duration,
) -> Result<RetentionOutcome, RetentionError> {
    let Some(upto) = partition.retention_point(now_ms) else { return Ok(RetentionOutcome::default()) };
    purge_through(raft, log_store, upto, wait).await?;
    // The durable purge point, as our log store recorded it (not openraft's view of it).
    Ok(partition.apply_retention(now_ms, log_store.purged_index())?)
}

/// Steps 2-3: a snapshot covers Raft index `upto` and the Raft log is purged up to it (also
/// the first step of compacting a replicated partition: `partition::compaction`). `wait`
/// bounds each of the snapshot and the purge.
pub async fn purge_through(
    raft: &PartitionRaft,
    log_store: &PartitionLogStore,
    upto: u64,
    wait: Duration,
) -> Result<(), RetentionError> {
    let covered = |m: &openraft::RaftMetrics<_>| m.snapshot.is_some_and(|s| s.index >= upto);
    if !covered(&raft.metrics().borrow_watched()) {
        raft.trigger().snapshot().await.map_err(raft_err)?;
        raft.wait(Some(wait)).metrics(covered, "a snapshot covers the expired segments").await.map_err(raft_err)?;
    }
    if log_store.purged_index().is_none_or(|p| p < upto) {
        raft.trigger().purge_log(upto).await.map_err(raft_err)?;
        raft.wait(Some(wait))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= upto), "the raft log is purged")
            .await
            .map_err(raft_err)?;
    }
    Ok(())
}
