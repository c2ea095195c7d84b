//! The partition state machine. The records are already in the log (the log IS the Raft log),
//! so applying an entry moves pointers only: the last applied log id, the membership, and the
//! high watermark — the committed offset below which consumers may read. It never reads or
//! rewrites a payload.
//!
//! Snapshots are the retained segments up to the last applied entry (docs/RAFT_PLAN.md §3):
//! building one records metadata only; the data is [`PartitionSnapshot`], slices of the segment
//! files taken when the snapshot is requested. Only a follower that needs entries the leader's
//! retention already deleted is sent one; everyone else catches up from the log.
//!
//! Invariants:
//! - the high watermark is the end offset of the last applied data batch, and only moves up
//!   (except when a snapshot install replaces the log);
//! - the checkpoint (applied, membership, high watermark) in sled never runs ahead of what
//!   this state machine applied. It is written after each applied run without a flush: a lost
//!   checkpoint only means re-applying entries, which is idempotent (pointers move to the
//!   same place);
//! - after an install, the applied state and snapshot metadata are flushed before returning,
//!   so a restart never re-applies entries the replaced log no longer has.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::OptionalSend;

use super::codec::{self, Applied};
use super::log_store::verdict_outcome;
use super::recent::RecentEntries;
use super::types::{BatchData, EntryPayload, LogId, PartitionTc, ProduceOutcome, SnapshotMeta, StoredMembership};
use crate::log::format::FLAG_CONTROL;
use crate::log::{Appended, SegmentSlice};
use crate::meta::{MetaError, RaftKey, RaftState};
use crate::partition::Partition;

/// A partition snapshot's data: the segment slices holding every entry up to its last log id.
#[derive(Clone, Debug)]
pub struct PartitionSnapshot {
    pub slices: Vec<SegmentSlice>,
}

pub type PartitionSnapshotOf =
    Snapshot<openraft::vote::leader_id_std::CommittedLeaderId<u64>, u64, openraft::EmptyNode, PartitionSnapshot>;

#[derive(Debug)]
pub struct PartitionStateMachine {
    partition: Arc<Partition>,
    state: RaftState,
    /// The log store's cache of the log's last entries: emptied when a snapshot replaces the
    /// log.
    recent: Arc<RecentEntries>,
    applied: Applied,
    /// Metadata of the last snapshot built or installed (shared with the builders).
    snapshot: Arc<Mutex<Option<SnapshotMeta>>>,
}

fn meta_err(e: MetaError) -> io::Error {
    io::Error::other(e)
}

impl PartitionStateMachine {
    /// Opens the state machine from its checkpoint and restores the partition's high watermark
    /// to it (openraft then re-applies the committed entries after it).
    pub fn open(partition: Arc<Partition>, state: RaftState, recent: Arc<RecentEntries>) -> io::Result<Self> {
        let applied = match state.get(RaftKey::Applied).map_err(meta_err)? {
            Some(b) => codec::decode_applied(&b)?,
            None => Applied::default(),
        };
        let snapshot = match state.get(RaftKey::Snapshot).map_err(meta_err)? {
            Some(b) => Some(codec::decode_snapshot_meta(&b)?),
            None => None,
        };
        partition.restore_hw(applied.high_watermark);
        Ok(Self { partition, state, recent, applied, snapshot: Arc::new(Mutex::new(snapshot)) })
    }

    fn checkpoint(&self) -> io::Result<()> {
        self.state.put(RaftKey::Applied, &codec::encode_applied(&self.applied)).map_err(meta_err)
    }

    fn current_meta(&self) -> SnapshotMeta {
        SnapshotMeta { last_log_id: self.applied.last_applied, last_membership: self.applied.membership.clone() }
    }

    fn set_snapshot(&self, meta: &SnapshotMeta) -> io::Result<()> {
        set_snapshot(&self.state, &self.snapshot, meta)
    }
}

impl RaftStateMachine<PartitionTc> for PartitionStateMachine {
    type SnapshotData = PartitionSnapshot;
    type SnapshotBuilder = PartitionSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    /// Moves the pointers for each committed entry and answers its proposer with the batch's
    /// position (acks=all answers here), then publishes the new high watermark once.
    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<PartitionTc>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let id = entry.log_id;
            let mut result: ProduceOutcome =
                Ok(Appended { base_offset: 0, next_offset: 0, append_time_ms: 0, raft_index: id.index });
            match entry.payload {
                EntryPayload::Normal(BatchData::Stored(b)) if b.header.flags & FLAG_CONTROL != 0 => {
                    // The leader's verdict on a proposed batch it did not store as data.
                    result = verdict_outcome(codec::decode_outcome(&b.payload)?, id.index);
                }
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => self.applied.membership = StoredMembership::new(Some(id), m),
                EntryPayload::Normal(BatchData::Stored(b)) => {
                    let h = b.header;
                    self.applied.high_watermark = self.applied.high_watermark.max(h.next_offset());
                    result = Ok(Appended {
                        base_offset: h.base_offset,
                        next_offset: h.next_offset(),
                        append_time_ms: h.append_time_ms,
                        raft_index: h.raft_index,
                    });
                }
                EntryPayload::Normal(BatchData::Proposed(_)) => {
                    // Committed entries are read back from the log, which stores placed batches.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("entry {id} reached apply without a stored position"),
                    ));
                }
            }
            self.applied.last_applied = Some(id);
            if let Some(r) = responder {
                r.send(result);
            }
        }
        self.partition.advance_hw(self.applied.high_watermark);
        self.checkpoint()
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        PartitionSnapshotBuilder {
            partition: Arc::clone(&self.partition),
            state: self.state.clone(),
            meta: self.current_meta(),
            current: Arc::clone(&self.snapshot),
        }
    }

    /// Installs a snapshot from the leader. If this log already holds the snapshot's last entry
    /// it is kept (only pointers move); otherwise the snapshot's segments replace the log.
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: PartitionSnapshot) -> Result<(), io::Error> {
        let held = match meta.last_log_id {
            None => None,
            Some(last) => self
                .partition
                .read_raft(last.index, 1)
                .map_err(io::Error::other)?
                .into_iter()
                .next()
                .filter(|b| b.header.raft_index == last.index && b.header.raft_term == last.leader_id.term),
        };
        // The end offset of the entries up to the snapshot's last one. A control batch's base
        // offset is the end of the data before it, so `next_offset` fits both kinds.
        let high_watermark = match (meta.last_log_id, held) {
            (None, _) => self.applied.high_watermark,
            (Some(_), Some(b)) => b.header.next_offset(),
            (Some(last), None) => {
                self.recent.clear();
                self.partition.install_snapshot(&snapshot.slices).map_err(io::Error::other)?;
                let end = self.partition.offsets().log_end.0;
                tracing::info!(
                    topic = self.partition.topic(),
                    partition = self.partition.index(),
                    last_index = last.index,
                    log_end = end,
                    "installed a snapshot of the leader's segments"
                );
                end
            }
        };
        self.applied =
            Applied { last_applied: meta.last_log_id, high_watermark, membership: meta.last_membership.clone() };
        self.partition.advance_hw(self.applied.high_watermark);
        self.set_snapshot(meta)?;
        self.state.put_durable(RaftKey::Applied, &codec::encode_applied(&self.applied)).await.map_err(meta_err)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<PartitionSnapshotOf>, io::Error> {
        let meta = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(meta) = meta else { return Ok(None) };
        let slices = self.partition.raft_prefix(meta.last_log_id.map(|l| l.index)).map_err(io::Error::other)?;
        Ok(Some(Snapshot { meta, snapshot: PartitionSnapshot { slices } }))
    }
}

/// Records `meta` as the current snapshot (in memory and in sled).
fn set_snapshot(state: &RaftState, current: &Mutex<Option<SnapshotMeta>>, meta: &SnapshotMeta) -> io::Result<()> {
    state.put(RaftKey::Snapshot, &codec::encode_snapshot_meta(meta)).map_err(meta_err)?;
    *current.lock().unwrap_or_else(PoisonError::into_inner) = Some(meta.clone());
    Ok(())
}

/// Builds a snapshot: records its metadata; the data is taken from the log on request.
#[derive(Debug)]
pub struct PartitionSnapshotBuilder {
    partition: Arc<Partition>,
    state: RaftState,
    meta: SnapshotMeta,
    current: Arc<Mutex<Option<SnapshotMeta>>>,
}

impl RaftSnapshotBuilder<PartitionTc> for PartitionSnapshotBuilder {
    type SnapshotData = PartitionSnapshot;

    async fn build_snapshot(&mut self) -> Result<PartitionSnapshotOf, io::Error> {
        let slices = self.partition.raft_prefix(self.meta.last_log_id.map(|l| l.index)).map_err(io::Error::other)?;
        set_snapshot(&self.state, &self.current, &self.meta)?;
        Ok(Snapshot { meta: self.meta.clone(), snapshot: PartitionSnapshot { slices } })
    }
}
