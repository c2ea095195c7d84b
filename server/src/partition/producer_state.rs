//! Idempotent producers: per partition, the recent batches of every producer id, so a resent
//! batch is answered with its original offset instead of being appended twice, and a gap in
//! sequence numbers is refused instead of silently reordering records.
//!
//! Rules (Kafka's), checked under the partition's log lock together with the append:
//! - a producer numbers its records per partition from 0; a batch of n records starting at
//!   sequence s is followed by one starting at s + n;
//! - a batch whose (base sequence, record count) equals one of the last `RECENT_BATCHES` of its
//!   producer is a duplicate: answer with the stored batch's offset, append nothing;
//! - otherwise the batch must start exactly where the producer's last batch ended
//!   (`OutOfOrderSequence` if not); an epoch older than the partition's is fenced; a newer
//!   epoch must start at sequence 0; an unknown producer must start at 0.
//!
//! Transactions (docs/TRANSACTIONS.md): a producer's first transactional batch on this
//! partition opens its transaction here (`txn_first`); the coordinator's marker closes it, and
//! an abort marker adds the range to `aborted`, the partition's aborted-transaction index that
//! read_committed readers filter with. Markers are epoch-checked only (no sequence): one with
//! an older epoch than the producer's is fenced; one with a newer epoch (the coordinator bumps
//! it when it aborts on its own) fences every later batch of the older epoch.
//!
//! Invariants:
//! - the last stable offset ([`ProducerState::last_stable`]) is never above the first offset of
//!   an open transaction, nor above the high watermark it is given;
//! - `aborted` is ordered by marker offset and holds every aborted range whose marker is at or
//!   above the log start (older ones are pruned when the snapshot is written) and, on a
//!   compacted topic, at or above the cleaner checkpoint (the cleaner dropped their batches).
//!
//! Persistence: the producer id, epoch, base sequence and transaction flags of every batch are
//! in its stored header, so the state is rebuilt from the log: a snapshot (written when the log
//! rolls, every `PRODUCER_SNAPSHOT_BYTES` appended, and at shutdown) plus a replay of the batch
//! headers after it — at most that many bytes of the active segment.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::log::format::{BatchHeader, FLAG_TRANSACTIONAL, FLAG_TXN_ABORT, FLAG_TXN_MARKER, PRODUCER_SNAPSHOT_FILE};

/// Batches remembered per producer and partition (Kafka keeps 5: the most a producer may have
/// in flight per partition).
pub const RECENT_BATCHES: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentBatch {
    pub base_sequence: i32,
    pub record_count: u32,
    pub base_offset: u64,
    pub append_time_ms: i64,
}

impl RecentBatch {
    fn next_sequence(&self) -> i32 {
        tidelog_proto::sequence::increment(self.base_sequence, self.record_count)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerEntry {
    epoch: i16,
    recent: VecDeque<RecentBatch>,
    /// The first offset of this producer's open transaction on this partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    txn_first: Option<u64>,
}

/// An aborted transaction's range on this partition: the batches of `producer_id` flagged
/// transactional in `[first_offset, marker_offset)` are aborted (Kafka's `AbortedTxn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    pub marker_offset: u64,
}

impl AbortedTxn {
    /// Whether a transactional batch of `producer_id` at `offset` belongs to this range.
    pub fn covers(&self, producer_id: i64, offset: u64) -> bool {
        self.producer_id == producer_id && (self.first_offset..self.marker_offset).contains(&offset)
    }
}

/// What to do with an incoming idempotent batch.
#[derive(Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    Append,
    /// Already stored: answer with this.
    Duplicate(RecentBatch),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    producers: HashMap<i64, ProducerEntry>,
    /// Aborted transactions, by marker offset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    aborted: Vec<AbortedTxn>,
}

/// The snapshot file: the state as of `as_of` (a log end offset).
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    as_of: u64,
    state: ProducerState,
}

impl ProducerState {
    /// Checks a batch from producer `pid` (non-zero) before it is appended; `flags` are its
    /// header's transaction bits (a marker is checked by epoch only).
    pub fn check(
        &self,
        pid: i64,
        epoch: i16,
        base_sequence: i32,
        record_count: u32,
        flags: u16,
    ) -> Result<SequenceCheck, BrokerError> {
        if flags & FLAG_TXN_MARKER != 0 {
            return match self.producers.get(&pid) {
                Some(entry) if epoch < entry.epoch => {
                    Err(BrokerError::ProducerFenced { producer_id: pid, epoch, current: entry.epoch })
                }
                _ => Ok(SequenceCheck::Append),
            };
        }
        if base_sequence < 0 {
            return Err(BrokerError::InvalidArgument(format!(
                "base_sequence must not be negative, got {base_sequence}"
            )));
        }
        let Some(entry) = self.producers.get(&pid) else {
            return if base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(BrokerError::UnknownProducer { producer_id: pid, base_sequence })
            };
        };
        if epoch < entry.epoch {
            return Err(BrokerError::ProducerFenced { producer_id: pid, epoch, current: entry.epoch });
        }
        if epoch > entry.epoch {
            return if base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(BrokerError::OutOfOrderSequence { producer_id: pid, expected: 0, got: base_sequence })
            };
        }
        if let Some(dup) =
            entry.recent.iter().find(|b| b.base_sequence == base_sequence && b.record_count == record_count)
        {
            return Ok(SequenceCheck::Duplicate(*dup));
        }
        let expected = entry.recent.back().map_or(0, RecentBatch::next_sequence);
        if base_sequence != expected {
            return Err(BrokerError::OutOfOrderSequence { producer_id: pid, expected, got: base_sequence });
        }
        Ok(SequenceCheck::Append)
    }

    /// Records an appended batch of producer `pid` with header flags `flags`: a data batch
    /// (transactional or not), or a transaction marker at `batch.base_offset`.
    pub fn record_batch(&mut self, pid: i64, epoch: i16, batch: RecentBatch, flags: u16) {
        let entry = self.producers.entry(pid).or_default();
        if flags & FLAG_TXN_MARKER != 0 {
            if epoch > entry.epoch {
                // A coordinator's abort with a bumped epoch: the older epoch is fenced, and the
                // producer's next epoch numbers from 0.
                entry.epoch = epoch;
                entry.recent.clear();
            }
            if let Some(first_offset) = entry.txn_first.take() {
                if flags & FLAG_TXN_ABORT != 0 {
                    self.aborted.push(AbortedTxn { producer_id: pid, first_offset, marker_offset: batch.base_offset });
                }
            }
            return;
        }
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.recent.clear();
        }
        if flags & FLAG_TRANSACTIONAL != 0 && entry.txn_first.is_none() {
            entry.txn_first = Some(batch.base_offset);
        }
        if entry.recent.len() == RECENT_BATCHES {
            entry.recent.pop_front();
        }
        entry.recent.push_back(batch);
    }

    /// The offsets `[base, next)` of every producer's latest data batch, by producer id.
    pub fn last_batches(&self) -> HashMap<i64, (u64, u64)> {
        self.producers
            .iter()
            .filter_map(|(pid, e)| {
                let b = e.recent.back()?;
                Some((*pid, (b.base_offset, b.base_offset + u64::from(b.record_count))))
            })
            .collect()
    }

    /// Records a stored batch by its header (replaying the log at startup).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id > 0 && !h.is_control() {
            let batch = RecentBatch {
                base_sequence: h.base_sequence,
                record_count: h.record_count,
                base_offset: h.base_offset,
                append_time_ms: h.append_time_ms,
            };
            self.record_batch(h.producer_id, h.producer_epoch, batch, h.flags);
        }
    }

    /// The last stable offset given the high watermark `hw`: below every open transaction's
    /// first offset, and at most `hw`.
    pub fn last_stable(&self, hw: u64) -> u64 {
        self.producers.values().filter_map(|e| e.txn_first).fold(hw, u64::min)
    }

    /// The open transactions on this partition: (producer id, epoch, first offset).
    pub fn open_transactions(&self) -> Vec<(i64, i16, u64)> {
        let mut open: Vec<_> =
            self.producers.iter().filter_map(|(pid, e)| e.txn_first.map(|f| (*pid, e.epoch, f))).collect();
        open.sort_by_key(|t| t.2);
        open
    }

    /// The aborted ranges that may cover a batch in `[from, to)`.
    pub fn aborted_between(&self, from: u64, to: u64) -> Vec<AbortedTxn> {
        // Ordered by marker offset: skip those that end at or before `from`.
        let start = self.aborted.partition_point(|a| a.marker_offset <= from);
        self.aborted[start..].iter().filter(|a| a.first_offset < to).copied().collect()
    }

    /// Forgets aborted ranges wholly below `log_start` (deleted by retention).
    pub fn prune_aborted(&mut self, log_start: u64) {
        self.aborted.retain(|a| a.marker_offset >= log_start);
    }

    /// Loads the snapshot in `dir` if it is not ahead of `log_end`; returns the state and the
    /// offset from which the log must be replayed (0 without a usable snapshot).
    pub fn load(dir: &Path, log_end: u64) -> (Self, u64) {
        let path = dir.join(PRODUCER_SNAPSHOT_FILE);
        let Ok(raw) = std::fs::read(&path) else { return (Self::default(), 0) };
        match serde_json::from_slice::<Snapshot>(&raw) {
            Ok(s) if s.as_of <= log_end => (s.state, s.as_of),
            Ok(_) => (Self::default(), 0), // the log was truncated below the snapshot
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable producer snapshot; rebuilding from the log");
                (Self::default(), 0)
            }
        }
    }

    /// Writes the snapshot (to a temporary file, then renamed over the old one). Durability:
    /// not fsynced — a lost snapshot only means a longer replay at startup.
    pub fn save(&self, dir: &Path, as_of: u64) -> std::io::Result<()> {
        let tmp = dir.join(format!("{PRODUCER_SNAPSHOT_FILE}.tmp"));
        let body = serde_json::to_vec(&Snapshot { as_of, state: self.clone() }).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, body)?;
        std::fs::rename(tmp, dir.join(PRODUCER_SNAPSHOT_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: u32, offset: u64) -> BatchHeader {
        BatchHeader {
            batch_len: 100,
            flags: 0,
            compression: 0,
            record_count: count,
            base_offset: offset,
            raft_term: 0,
            raft_index: 0,
            append_time_ms: 7,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            payload_crc: 0,
            delete_horizon_s: 0,
        }
    }

    #[test]
    fn duplicates_gaps_and_fencing() {
        let mut s = ProducerState::default();
        assert_eq!(s.check(1, 0, 0, 10, 0).unwrap(), SequenceCheck::Append);
        assert!(matches!(s.check(1, 0, 5, 10, 0), Err(BrokerError::UnknownProducer { .. })));
        s.record(&header(1, 0, 0, 10, 100));
        s.record(&header(1, 0, 10, 5, 110));
        // A resend of either batch is a duplicate with its original offset.
        assert!(matches!(s.check(1, 0, 0, 10, 0).unwrap(), SequenceCheck::Duplicate(b) if b.base_offset == 100));
        assert!(matches!(s.check(1, 0, 10, 5, 0).unwrap(), SequenceCheck::Duplicate(b) if b.base_offset == 110));
        assert_eq!(s.check(1, 0, 15, 3, 0).unwrap(), SequenceCheck::Append);
        assert!(matches!(s.check(1, 0, 16, 3, 0), Err(BrokerError::OutOfOrderSequence { expected: 15, .. })));
        // A new epoch restarts at 0 and fences the old one.
        assert!(matches!(s.check(1, 1, 15, 3, 0), Err(BrokerError::OutOfOrderSequence { expected: 0, .. })));
        s.record(&header(1, 1, 0, 1, 120));
        assert!(matches!(s.check(1, 0, 15, 3, 0), Err(BrokerError::ProducerFenced { .. })));
        // Only the last RECENT_BATCHES are remembered.
        for i in 1..=RECENT_BATCHES as i32 {
            s.record(&header(1, 1, i, 1, 120 + i as u64));
        }
        assert!(matches!(s.check(1, 1, 0, 1, 0), Err(BrokerError::OutOfOrderSequence { .. })));
    }

    fn flagged(pid: i64, epoch: i16, seq: i32, offset: u64, flags: u16) -> BatchHeader {
        BatchHeader { flags, ..header(pid, epoch, seq, 1, offset) }
    }

    #[test]
    fn transactions_open_close_and_bound_the_last_stable_offset() {
        let mut s = ProducerState::default();
        assert_eq!(s.last_stable(10), 10);
        s.record(&flagged(1, 0, 0, 10, FLAG_TRANSACTIONAL));
        s.record(&flagged(2, 0, 0, 11, FLAG_TRANSACTIONAL));
        s.record(&flagged(1, 0, 1, 12, FLAG_TRANSACTIONAL));
        assert_eq!(s.last_stable(20), 10);
        assert_eq!(s.last_stable(5), 5, "never above the high watermark");
        assert_eq!(s.open_transactions(), vec![(1, 0, 10), (2, 0, 11)]);
        // Producer 1 commits: producer 2's transaction still holds the LSO.
        s.record(&flagged(1, 0, -1, 13, FLAG_TXN_MARKER));
        assert_eq!(s.last_stable(20), 11);
        // Producer 2 is aborted by its coordinator with a bumped epoch: its range is indexed
        // and its old epoch fenced, for data and markers alike.
        assert_eq!(s.check(2, 1, -1, 1, FLAG_TXN_MARKER | FLAG_TXN_ABORT).unwrap(), SequenceCheck::Append);
        s.record(&flagged(2, 1, -1, 14, FLAG_TXN_MARKER | FLAG_TXN_ABORT));
        assert_eq!(s.last_stable(20), 20);
        assert!(matches!(s.check(2, 0, 1, 1, FLAG_TRANSACTIONAL), Err(BrokerError::ProducerFenced { .. })));
        assert!(matches!(s.check(2, 0, -1, 1, FLAG_TXN_MARKER), Err(BrokerError::ProducerFenced { .. })));
        assert_eq!(s.check(2, 1, 0, 1, FLAG_TRANSACTIONAL).unwrap(), SequenceCheck::Append);
        let aborted = s.aborted_between(0, 20);
        assert_eq!(aborted, vec![AbortedTxn { producer_id: 2, first_offset: 11, marker_offset: 14 }]);
        assert!(aborted[0].covers(2, 11) && !aborted[0].covers(2, 14) && !aborted[0].covers(1, 12));
        assert!(s.aborted_between(14, 20).is_empty());
        // A marker without an open transaction (a retried marker) changes nothing.
        s.record(&flagged(1, 0, -1, 15, FLAG_TXN_MARKER | FLAG_TXN_ABORT));
        assert_eq!(s.aborted_between(0, 20).len(), 1);
        s.prune_aborted(14);
        assert_eq!(s.aborted_between(0, 20).len(), 1);
        s.prune_aborted(15);
        assert!(s.aborted_between(0, 20).is_empty());
    }

    #[test]
    fn snapshot_round_trips_and_is_ignored_when_ahead_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProducerState::default();
        s.record(&header(9, 2, 0, 4, 50));
        s.record(&flagged(9, 2, 4, 54, FLAG_TRANSACTIONAL));
        s.save(dir.path(), 54).unwrap();
        assert_eq!(ProducerState::load(dir.path(), 60), (s.clone(), 54));
        assert_eq!(ProducerState::load(dir.path(), 40), (ProducerState::default(), 0));
    }
}
