//! The partition log as openraft's log storage: [`RaftLogStorage`] and [`RaftLogReader`] over a
//! [`Partition`]. The partition log IS the Raft log: an entry is written once, as the batch
//! consumers will later read — no write-ahead log in front of it (DESIGN.md §3).
//!
//! Mapping (docs/RAFT_PLAN.md §2):
//! - entry (term, index) ↔ the batch whose header holds `raft_term`, `raft_index`;
//! - a proposed batch gets its offset and append time here, at append, from the log end: offsets
//!   are a function of the Raft log prefix, the same on every replica and gap-free even when
//!   proposals fail or suffixes are truncated;
//! - a replicated batch is stored verbatim (header and payload), so replicas hold equal bytes;
//! - blank and membership entries are control batches (no offset, never served to consumers);
//! - the vote and the purge point live in sled ([`RaftState`]);
//! - the entries appended are also kept in memory for a moment ([`RecentEntries`]), so a leader
//!   replicates them, and every replica applies them, without reading back what was just
//!   written; every change to the log below keeps that cache equal to the log
//!   (`raft/recent.rs`).
//!
//! Durability duties, at the call sites below:
//! - `append` reports the entries flushed through [`IOFlushed`] only once they are as durable
//!   as the partition's fsync policy promises: after an fsync for `PerBatch`, at once for
//!   `Interval`/`Never` (the page cache of a majority; see docs/RAFT_PLAN.md §2 for what that
//!   does and does not survive). openraft counts a replica's acknowledgement only after it;
//! - `save_vote` fsyncs the log first (no earlier append may be less durable than the vote)
//!   and then the vote, before returning;
//! - `purge` is logical: it records the purge point durably and hides entries at or below it.
//!   Files are deleted only by retention, below a durable purge point.
//!
//! Never: hand out an entry at or below the purge point, or report an append flushed before
//! the fsync that covers it.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use super::codec::{self, decode_control, encode_control, ProduceVerdict};
use super::recent::{entry_size, RecentEntries};
use super::types::{log_id, BatchData, Entry, EntryPayload, LogId, PartitionTc, ProduceOutcome, Rejection, Vote};
use crate::clock::now_ms;
use crate::error::error_code;
use crate::error::BrokerError;
use crate::log::format::{BatchHeader, FLAG_CONTROL};
use crate::log::{AppendBatch, Appended, FsyncPolicy, LogError, StoredBatch};
use crate::meta::{MetaError, RaftKey, RaftState};
use crate::partition::producer_state::SequenceCheck;
use crate::partition::{LogWrite, Partition, WriteMark};

/// Bytes read per replication request (openraft asks for ranges; we return a prefix).
const READ_CHUNK_BYTES: usize = 1 << 20;

/// The log store and its readers: cheap handles on one shared state.
#[derive(Clone, Debug)]
pub struct PartitionLogStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    partition: Arc<Partition>,
    state: RaftState,
    /// Cached purge point (the durable copy is in `state`).
    purged: Mutex<Option<LogId>>,
    /// The last entries appended here (shared with the state machine, whose snapshot install
    /// replaces the log).
    recent: Arc<RecentEntries>,
}

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

fn meta_err(e: MetaError) -> io::Error {
    io_err(e)
}

fn broker_err(e: BrokerError) -> io::Error {
    io_err(e)
}

impl PartitionLogStore {
    /// Opens the log store of `partition`, whose Raft state is `state`.
    pub fn open(partition: Arc<Partition>, state: RaftState, recent: Arc<RecentEntries>) -> io::Result<Self> {
        let purged = match state.get(RaftKey::Purged).map_err(meta_err)? {
            Some(b) => codec::decode_log_id(&b)?,
            None => None,
        };
        Ok(Self { shared: Arc::new(Shared { partition, state, purged: Mutex::new(purged), recent }) })
    }

    fn purged(&self) -> Option<LogId> {
        *self.shared.purged.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The durable purge point's index: entries at or below it may be deleted from disk.
    pub fn purged_index(&self) -> Option<u64> {
        self.purged().map(|p| p.index)
    }

    /// Drops the entries kept in memory for replication (the group fell asleep: nothing is
    /// being sent).
    pub fn forget_recent(&self) {
        self.shared.recent.clear();
    }

    /// Entries kept in memory (tests).
    #[cfg(test)]
    pub fn recent_len(&self) -> usize {
        self.shared.recent.len()
    }

    /// Entries with index in `[start, end)`, at most about `max_bytes` (at least one entry when
    /// any exists at `start`), skipping purged ones: from memory while the recent entries hold
    /// them, else from the log.
    fn read(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<Entry>> {
        let start = match self.purged() {
            Some(p) => start.max(p.index + 1),
            None => start,
        };
        let mut out = Vec::new();
        let mut next = start;
        let mut bytes = 0usize;
        let (mut from_memory, mut from_disk) = (0, 0);
        while next < end && (out.is_empty() || bytes < max_bytes) {
            let before = out.len();
            if let Some(after) = self.shared.recent.read(next, end, max_bytes, &mut out, &mut bytes) {
                from_memory += out.len() - before;
                next = after;
                continue;
            }
            let batches = self.shared.partition.read_raft(next, READ_CHUNK_BYTES).map_err(broker_err)?;
            if batches.is_empty() {
                break;
            }
            let mut past_end = false;
            for b in batches {
                if b.header.raft_index >= end {
                    past_end = true;
                    break;
                }
                next = b.header.raft_index + 1;
                bytes += b.header.batch_len as usize;
                out.push(entry_from_batch(b)?);
            }
            from_disk += out.len() - before;
            if past_end {
                break;
            }
        }
        count_reads(from_memory, from_disk);
        Ok(out)
    }
}

/// Counts entries read back (to replicate or apply them), by where they came from.
fn count_reads(from_memory: usize, from_disk: usize) {
    let reads = &crate::telemetry::metrics::instruments().raft_entry_reads;
    let label = |source| crate::telemetry::metrics::SourceLabel { source };
    if from_memory > 0 {
        reads.get_or_create(&label("memory")).inc_by(from_memory as u64);
    }
    if from_disk > 0 {
        reads.get_or_create(&label("disk")).inc_by(from_disk as u64);
    }
}

/// The Raft entry a stored batch holds.
pub fn entry_from_batch(b: StoredBatch) -> io::Result<Entry> {
    let id = log_id(b.header.raft_term, b.header.raft_index);
    // An outcome control batch is a normal entry for openraft (the proposer's answer).
    let payload = if b.header.flags & FLAG_CONTROL != 0 && !codec::is_outcome(&b.payload) {
        decode_control(&b.payload)?
    } else {
        EntryPayload::Normal(BatchData::Stored(b))
    };
    Ok(Entry { log_id: id, payload })
}

fn range_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<PartitionTc> for PartitionLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_bounds(&range);
        self.read(start, end, usize::MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.shared.state.get(RaftKey::Vote).map_err(meta_err)? {
            Some(b) => Ok(Some(codec::decode_vote(&b)?)),
            None => Ok(None),
        }
    }

    /// Replication reads: about one chunk of entries from `start`, never empty while entries
    /// remain below `end`.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        self.read(start, end, READ_CHUNK_BYTES)
    }
}

impl RaftLogStorage<PartitionTc> for PartitionLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<PartitionTc>, io::Error> {
        let purged = self.purged();
        let last = self.shared.partition.last_raft_entry().map(|(term, index)| log_id(term, index));
        // After a purge past the end (a snapshot install) the purge point is the last entry.
        let last = match (last, purged) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (None, p) => p,
            (l, _) => l,
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Durability: the log is fsynced first, then the vote; both before returning. A new vote
    /// ends what the recent entries held: a new leadership starts a new run.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.shared.recent.clear();
        let p = &self.shared.partition;
        p.sync_through(p.written()).await.map_err(broker_err)?;
        self.shared.state.put_durable(RaftKey::Vote, &codec::encode_vote(vote)).await.map_err(meta_err)
    }

    /// A hint that speeds up restarts (entries up to it are re-applied without waiting for a
    /// leader); not flushed, since Raft re-learns it from the leader anyway.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        if let Some(c) = committed {
            self.shared.state.put(RaftKey::Committed, &codec::encode_log_id(&c)).map_err(meta_err)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        match self.shared.state.get(RaftKey::Committed).map_err(meta_err)? {
            Some(b) => Ok(codec::decode_log_id(&b)?),
            None => Ok(None),
        }
    }

    /// Writes the entries to the log (readable at once), then reports them flushed per the
    /// fsync policy (see the module docs). acks=leader hooks fire after that, with the outcome.
    async fn append<I>(&mut self, entries: I, callback: IOFlushed<PartitionTc>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let p = &self.shared.partition;
        let mut mark = None;
        let mut hooks = Vec::new();
        let now = std::time::Instant::now();
        for entry in entries {
            let Written { mark: written, outcome, kept } = match write_entry(p, &entry) {
                Ok(w) => w,
                Err(e) => {
                    // The entry is not in the log (a failed append leaves no partial batch);
                    // openraft stops this group's writes after a storage error.
                    self.shared.recent.clear();
                    return Err(broker_err(e));
                }
            };
            self.shared.recent.push(kept, now);
            mark = Some(written);
            if let (EntryPayload::Normal(BatchData::Proposed(b)), Some(outcome)) = (&entry.payload, outcome) {
                if b.on_append.is_set() {
                    hooks.push((b.on_append.clone(), outcome));
                }
            }
        }
        let Some(mark) = mark else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        match p.fsync_policy() {
            // Durable before it counts: openraft's quorum of acks is a quorum of fsyncs.
            FsyncPolicy::PerBatch => {
                let synced = p.sync_through(mark).await.map_err(broker_err);
                let failed = synced.as_ref().err().map(|e| io::Error::new(e.kind(), e.to_string()));
                callback.io_completed(synced);
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => callback.io_completed(Ok(())),
        }
        for (hook, outcome) in hooks {
            hook.fire(outcome);
        }
        Ok(())
    }

    /// Removes entries after `last_log_id` (all for `None`). Durability: fsynced on return.
    /// From memory first: a read meanwhile finds them in the log, as before the truncation.
    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let index = last_log_id.map(|l| l.index);
        self.shared.recent.truncate_after(index);
        self.shared.partition.truncate_after_raft(index).map_err(broker_err)
    }

    /// Logical purge: records the purge point durably, then hides entries at or below it.
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        if self.purged().is_some_and(|p| p >= log_id) {
            return Ok(());
        }
        self.shared.state.put_durable(RaftKey::Purged, &codec::encode_log_id(&log_id)).await.map_err(meta_err)?;
        let mut purged = self.shared.purged.lock().unwrap_or_else(PoisonError::into_inner);
        *purged = (*purged).max(Some(log_id));
        self.shared.recent.purge_through(log_id.index);
        Ok(())
    }
}

/// What storing one entry did: the mark to sync through, for a proposed batch what its
/// proposer will be told, and the entry as a read of the log would return it with its size,
/// for the recent entries.
struct Written {
    mark: WriteMark,
    outcome: Option<ProduceOutcome>,
    kept: Option<(Entry, usize)>,
}

/// `payload` under the header the log wrote for it, as an entry (see [`entry_from_batch`]).
fn stored_entry(id: LogId, header: Option<BatchHeader>, payload: Bytes) -> Option<(Entry, usize)> {
    let size = entry_size(payload.len());
    let batch = StoredBatch { header: header?, payload };
    Some((Entry { log_id: id, payload: EntryPayload::Normal(BatchData::Stored(batch)) }, size))
}

/// Stores one entry.
///
/// A proposed batch of an idempotent producer is checked against the producer state here, at
/// the leader's append: appends of one group are serialised (openraft calls `append` from one
/// task, and nothing else writes a replicated partition), and the producer state covers every
/// entry in this log, committed or not — so the check sees exactly the batches before this
/// one. A resend of a stored batch or a refused one is stored as an outcome control batch
/// instead (no offset), so every replica answers the proposer the same way at apply.
fn write_entry(p: &Partition, entry: &Entry) -> Result<Written, BrokerError> {
    let (term, index) = (entry.log_id.leader_id.term, entry.log_id.index);
    let write = match &entry.payload {
        EntryPayload::Normal(BatchData::Proposed(b)) => {
            let verdict = if b.producer_id > 0 {
                match p.check_producer(b.producer_id, b.producer_epoch, b.base_sequence, b.record_count, b.flags) {
                    Ok(SequenceCheck::Append) => None,
                    Ok(SequenceCheck::Duplicate(d)) => Some(ProduceVerdict::Duplicate {
                        base_offset: d.base_offset,
                        record_count: d.record_count,
                        append_time_ms: d.append_time_ms,
                    }),
                    Err(e) => Some(ProduceVerdict::Rejected { code: error_code(&e) as i32, message: e.to_string() }),
                }
            } else {
                None
            };
            if let Some(v) = verdict {
                let payload = codec::encode_outcome(&v);
                let written = p.write_raft(LogWrite::Control { payload: &payload, term, index }, now_ms())?;
                return Ok(Written {
                    mark: written.pending.mark,
                    outcome: Some(verdict_outcome(v, index)),
                    kept: stored_entry(entry.log_id, written.header, Bytes::from(payload)),
                });
            }
            LogWrite::Batch(AppendBatch {
                payload: &b.payload,
                record_count: b.record_count,
                compression: b.compression,
                payload_crc: b.payload_crc,
                raft: Some((term, index)),
                producer_id: b.producer_id,
                producer_epoch: b.producer_epoch,
                base_sequence: b.base_sequence,
                flags: b.flags,
            })
        }
        EntryPayload::Normal(BatchData::Stored(b)) => {
            if (b.header.raft_term, b.header.raft_index) != (term, index) {
                return Err(BrokerError::Log(LogError::RaftOrder(format!(
                    "replicated batch carries raft entry ({}, {}) but arrived as ({term}, {index})",
                    b.header.raft_term, b.header.raft_index
                ))));
            }
            LogWrite::Replicated(&b.header, &b.payload)
        }
        EntryPayload::Blank | EntryPayload::Membership(_) => {
            let payload = encode_control(&entry.payload).unwrap_or_default();
            let mark = p.write_raft(LogWrite::Control { payload: &payload, term, index }, now_ms())?.pending.mark;
            return Ok(Written { mark, outcome: None, kept: Some((entry.clone(), entry_size(payload.len()))) });
        }
    };
    let written = p.write_raft(write, now_ms())?;
    let kept = match &entry.payload {
        EntryPayload::Normal(BatchData::Proposed(b)) => stored_entry(entry.log_id, written.header, b.payload.clone()),
        // Stored verbatim: the entry is what a read returns (its payload shares the request).
        EntryPayload::Normal(BatchData::Stored(b)) => Some((entry.clone(), entry_size(b.payload.len()))),
        _ => None,
    };
    Ok(Written { mark: written.pending.mark, outcome: Some(Ok(written.pending.appended)), kept })
}

/// The answer a verdict stands for; `raft_index` is the verdict's own entry.
pub fn verdict_outcome(v: ProduceVerdict, raft_index: u64) -> ProduceOutcome {
    match v {
        ProduceVerdict::Duplicate { base_offset, record_count, append_time_ms } => {
            Ok(Appended { base_offset, next_offset: base_offset + u64::from(record_count), append_time_ms, raft_index })
        }
        ProduceVerdict::Rejected { code, message } => Err(Rejection { code, message }),
    }
}
