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
//! Persistence: the producer id, epoch and base sequence of every batch are in its stored
//! header, so the state is rebuilt from the log: a snapshot (written when the log rolls and at
//! shutdown) plus a replay of the batch headers after it — at most the active segment.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::log::format::{BatchHeader, PRODUCER_SNAPSHOT_FILE};

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
}

/// The snapshot file: the state as of `as_of` (a log end offset).
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    as_of: u64,
    state: ProducerState,
}

impl ProducerState {
    /// Checks a batch from producer `pid` (non-zero) before it is appended.
    pub fn check(
        &self,
        pid: i64,
        epoch: i16,
        base_sequence: i32,
        record_count: u32,
    ) -> Result<SequenceCheck, BrokerError> {
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

    /// Records an appended batch of producer `pid`.
    pub fn record_batch(&mut self, pid: i64, epoch: i16, batch: RecentBatch) {
        let entry = self.producers.entry(pid).or_default();
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.recent.clear();
        }
        if entry.recent.len() == RECENT_BATCHES {
            entry.recent.pop_front();
        }
        entry.recent.push_back(batch);
    }

    /// Records a stored batch by its header (replaying the log at startup).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id > 0 {
            let batch = RecentBatch {
                base_sequence: h.base_sequence,
                record_count: h.record_count,
                base_offset: h.base_offset,
                append_time_ms: h.append_time_ms,
            };
            self.record_batch(h.producer_id, h.producer_epoch, batch);
        }
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
        }
    }

    #[test]
    fn duplicates_gaps_and_fencing() {
        let mut s = ProducerState::default();
        assert_eq!(s.check(1, 0, 0, 10).unwrap(), SequenceCheck::Append);
        assert!(matches!(s.check(1, 0, 5, 10), Err(BrokerError::UnknownProducer { .. })));
        s.record(&header(1, 0, 0, 10, 100));
        s.record(&header(1, 0, 10, 5, 110));
        // A resend of either batch is a duplicate with its original offset.
        assert!(matches!(s.check(1, 0, 0, 10).unwrap(), SequenceCheck::Duplicate(b) if b.base_offset == 100));
        assert!(matches!(s.check(1, 0, 10, 5).unwrap(), SequenceCheck::Duplicate(b) if b.base_offset == 110));
        assert_eq!(s.check(1, 0, 15, 3).unwrap(), SequenceCheck::Append);
        assert!(matches!(s.check(1, 0, 16, 3), Err(BrokerError::OutOfOrderSequence { expected: 15, .. })));
        // A new epoch restarts at 0 and fences the old one.
        assert!(matches!(s.check(1, 1, 15, 3), Err(BrokerError::OutOfOrderSequence { expected: 0, .. })));
        s.record(&header(1, 1, 0, 1, 120));
        assert!(matches!(s.check(1, 0, 15, 3), Err(BrokerError::ProducerFenced { .. })));
        // Only the last RECENT_BATCHES are remembered.
        for i in 1..=RECENT_BATCHES as i32 {
            s.record(&header(1, 1, i, 1, 120 + i as u64));
        }
        assert!(matches!(s.check(1, 1, 0, 1), Err(BrokerError::OutOfOrderSequence { .. })));
    }

    #[test]
    fn snapshot_round_trips_and_is_ignored_when_ahead_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProducerState::default();
        s.record(&header(9, 2, 0, 4, 50));
        s.save(dir.path(), 54).unwrap();
        assert_eq!(ProducerState::load(dir.path(), 60), (s.clone(), 54));
        assert_eq!(ProducerState::load(dir.path(), 40), (ProducerState::default(), 0));
    }
}
