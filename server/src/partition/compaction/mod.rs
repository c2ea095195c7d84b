//! Log compaction of one partition: keep the latest record per key (Kafka's log cleaner), so a
//! compacted topic holds a table's current state forever in bounded space. Design and on-disk
//! rules: docs/COMPACTION.md and docs/LOG_FORMAT.md.
//!
//! ```text
//! cleaner loop (broker/tasks.rs) ── PartitionWriter::compact (single node, or Raft: purge first)
//!    └─ Partition::compact ── choose the cleanable segments (under the lock, short)
//!         ├─ pass::run     ── map + rewrite into the staging directory (no lock; throttled)
//!         └─ Log::swap_cleaned ── crash-safe swap (under the lock, short)
//! ```
//!
//! Invariants:
//! - only sealed segments wholly below the high watermark and the last stable offset are
//!   cleaned (never the active segment, never an open transaction), and in a cluster only those
//!   wholly at or below the durable Raft purge point: Raft never needs a compacted entry again;
//! - offsets, append times, headers and record bytes of kept records are unchanged; offsets
//!   only gain gaps;
//! - for every key, the record with the highest offset below the cleaned point is kept, unless
//!   it is a tombstone whose delete horizon (set when a pass first kept it, plus
//!   `delete_retention_ms`) has passed;
//! - a kill -9 at any moment leaves the old segments or the new ones (`log/swap.rs`).
//!
//! Never: hold the partition's lock while reading or writing segment data.

mod offset_map;
mod pass;
mod records;
mod throttle;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use offset_map::SLOT_BYTES;
pub use records::require_keys;

use super::Partition;
use crate::error::BrokerError;
use crate::log::format::BatchHeader;
use crate::log::{Log, SealedSegment};

pub use crate::topic_config::CompactionPolicy;

/// The broker's cleaner settings (`[cleaner]` in the broker config).
#[derive(Clone, Debug, PartialEq)]
pub struct CleanerOptions {
    /// Memory of the key → offset map of one cleaning (one cleaning runs at a time).
    pub map_bytes: usize,
    /// Read rate limit of a cleaning, bytes per second; `None` = unlimited.
    pub io_bytes_per_sec: Option<u64>,
    /// How often the cleaner looks for partitions to clean.
    pub interval: Duration,
}

impl Default for CleanerOptions {
    fn default() -> Self {
        Self { map_bytes: 64 << 20, io_bytes_per_sec: None, interval: Duration::from_secs(15) }
    }
}

/// What one cleaning did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub segments: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    /// The new cleaner checkpoint.
    pub cleaned_offset: u64,
    pub elapsed_ms: u64,
}

/// A partition's compaction state for `topic describe`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CleanerStatus {
    /// Bytes of sealed segments above the checkpoint over all sealed bytes.
    pub dirty_ratio: f64,
    pub last_cleaned_ms: i64,
    pub cleaned_offset: u64,
}

/// The cleanable sealed segments: the longest prefix wholly below `bound`, old enough, and
/// (with `raft_limit`) wholly at or below the purge point.
fn cleanable(
    segments: Vec<SealedSegment>,
    bound: u64,
    now_ms: i64,
    lag_ms: i64,
    raft_limit: Option<u64>,
) -> Vec<SealedSegment> {
    segments
        .into_iter()
        .take_while(|s| {
            s.end_offset <= bound
                && s.max_append_time_ms.is_none_or(|t| now_ms.saturating_sub(t) >= lag_ms)
                && raft_limit.is_none_or(|l| s.last_raft_index.is_none_or(|i| i <= l))
        })
        .collect()
}

/// The fraction of `segments`' bytes in segments ending above `checkpoint` (0 for none), and
/// whether any are.
fn dirty_ratio(segments: &[SealedSegment], checkpoint: u64) -> (f64, bool) {
    let dirty: u64 = segments.iter().filter(|s| s.end_offset > checkpoint).map(|s| s.size).sum();
    let total: u64 = segments.iter().map(|s| s.size).sum();
    (if total == 0 { 0.0 } else { dirty as f64 / total as f64 }, dirty > 0)
}

impl Partition {
    /// The cleanable segments now (see [`cleanable`]) if they are dirty enough for `policy`
    /// (or `force`), with the checkpoint.
    fn cleanable_now(
        &self,
        now_ms: i64,
        policy: &CompactionPolicy,
        raft_limit: Option<u64>,
        force: bool,
    ) -> Option<(u64, Vec<SealedSegment>, u64)> {
        let hw = *self.hw.borrow();
        let state = self.state();
        let bound = state.producers.last_stable(hw);
        let (generation, sealed) = state.log.sealed_segments();
        let checkpoint = state.log.cleaner_checkpoint();
        drop(state);
        let segments = cleanable(sealed, bound, now_ms, policy.min_compaction_lag_ms, raft_limit);
        let (ratio, dirty) = dirty_ratio(&segments, checkpoint);
        // Due: dirty enough, or a kept tombstone's or marker's horizon passed (a pass removes
        // it even without new writes).
        let horizon_due = now_ms / 1000 >= self.next_horizon_s.load(Ordering::Relaxed) as i64;
        let due = (dirty && (force || ratio >= policy.min_cleanable_dirty_ratio)) || horizon_due;
        (due && !segments.is_empty()).then_some((generation, segments, checkpoint))
    }

    /// The Raft index of the last batch a cleaning would compact now, if one is due: a
    /// replicated partition purges its Raft log up to it first.
    pub fn clean_point(&self, now_ms: i64, policy: &CompactionPolicy, force: bool) -> Option<u64> {
        let (_, segments, _) = self.cleanable_now(now_ms, policy, None, force)?;
        segments.iter().rev().find_map(|s| s.last_raft_index)
    }

    /// One cleaning, if one is due (or `force`): compacts the cleanable segments (at or below
    /// `raft_limit`, the durable Raft purge point, when replicated) and swaps them in. The work
    /// runs on a blocking thread; the partition's lock is held only to choose and to swap.
    /// Durability: the swap is durable on return.
    pub async fn compact(
        self: &Arc<Self>,
        now_ms: i64,
        policy: CompactionPolicy,
        options: &CleanerOptions,
        raft_limit: Option<u64>,
        force: bool,
    ) -> Result<Option<CleanStats>, BrokerError> {
        self.check_open()?;
        let me = Arc::clone(self);
        let options = options.clone();
        tokio::task::spawn_blocking(move || me.compact_blocking(now_ms, &policy, &options, raft_limit, force))
            .await
            .map_err(|e| BrokerError::InvalidArgument(format!("the cleaner task failed: {e}")))?
    }

    fn compact_blocking(
        &self,
        now_ms: i64,
        policy: &CompactionPolicy,
        options: &CleanerOptions,
        raft_limit: Option<u64>,
        force: bool,
    ) -> Result<Option<CleanStats>, BrokerError> {
        let _one_at_a_time = self.cleaning.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let started = std::time::Instant::now();
        let Some((generation, segments, checkpoint)) = self.cleanable_now(now_ms, policy, raft_limit, force) else {
            return Ok(None);
        };
        let (staging, aborted, tails, config) = {
            let state = self.state();
            let end = segments.last().map_or(0, |s| s.end_offset);
            (
                state.log.clean_staging()?,
                state.producers.aborted_between(0, end),
                state.producers.last_batches(),
                *state.log.config(),
            )
        };
        let is_aborted = |h: &BatchHeader| aborted.iter().any(|a| a.covers(h.producer_id, h.base_offset));
        // A producer's last batch keeps its header even when every record goes, so a replay
        // of the headers still knows the producer's next sequence.
        // The batch (or what an earlier pass left of it: runs, an empty batch at its last
        // offset) lies within the producer's latest batch's offsets.
        let is_producer_tail = |h: &BatchHeader| {
            h.producer_id > 0
                && tails
                    .get(&h.producer_id)
                    .is_some_and(|(base, next)| (*base..(*next).max(base + 1)).contains(&h.base_offset))
        };
        let mut throttle = throttle::Throttle::new(options.io_bytes_per_sec);
        let result = pass::run(pass::PassInput {
            segments: &segments,
            checkpoint,
            staging: &staging,
            now_ms,
            delete_retention_ms: policy.delete_retention_ms,
            segment_bytes: config.segment_bytes,
            is_aborted: &is_aborted,
            is_producer_tail: &is_producer_tail,
            map_bytes: options.map_bytes,
            throttle: &mut throttle,
        });
        let result = result.and_then(|o| Ok(Log::index_staged(&staging, config.index_interval_bytes).map(|()| o)?));
        let mut state = self.state();
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                state.log.abandon_clean()?;
                return Err(e);
            }
        };
        let swapped = match state.log.swap_cleaned(generation, &outcome.replaced, outcome.map_end) {
            Ok(s) => s,
            Err(e) => {
                if e.is_unrecoverable() {
                    drop(state);
                    self.close(super::Closed::StorageFailed);
                }
                return Err(e.into());
            }
        };
        if !swapped {
            return Ok(None);
        }
        // The aborted transactions below the cleaned point have no batches left.
        state.producers.prune_aborted(outcome.map_end);
        drop(state);
        self.next_horizon_s.store(outcome.next_horizon_s.map_or(u32::MAX, |h| h.max(1)), Ordering::Relaxed);
        self.last_cleaned_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        Ok(Some(CleanStats {
            segments: outcome.replaced.len(),
            bytes_read: outcome.bytes_read,
            bytes_written: outcome.bytes_written,
            records_removed: outcome.records_removed,
            cleaned_offset: outcome.map_end,
            elapsed_ms: started.elapsed().as_millis() as u64,
        }))
    }

    /// The sealed prefix a rewrite of the whole prefix ([`Partition::rewrite_prefix`]) would
    /// replace now, if the bytes of its segments ending above the cleaner checkpoint reach
    /// `min_dirty_bytes`: the Raft index of its last batch (a replicated log purges its Raft
    /// log up to it first).
    pub fn rewrite_point(&self, bound: u64, min_dirty_bytes: u64) -> Option<u64> {
        let (_, segments, _) = self.rewritable(bound, None, min_dirty_bytes)?;
        segments.iter().rev().find_map(|s| s.last_raft_index)
    }

    fn rewritable(
        &self,
        bound: u64,
        raft_limit: Option<u64>,
        min_dirty_bytes: u64,
    ) -> Option<(u64, Vec<SealedSegment>, u64)> {
        let state = self.state();
        let (generation, sealed) = state.log.sealed_segments();
        let checkpoint = state.log.cleaner_checkpoint();
        drop(state);
        let segments = cleanable(sealed, bound, i64::MAX, 0, raft_limit);
        let dirty: u64 = segments.iter().filter(|s| s.end_offset > checkpoint).map(|s| s.size).sum();
        (dirty > 0 && dirty >= min_dirty_bytes).then_some((generation, segments, checkpoint))
    }

    /// Replaces the sealed prefix (as [`Partition::rewrite_point`] chooses it, at or below
    /// `raft_limit` when replicated) by what `rewrite` writes into the staging directory it is
    /// given (one segment named by the prefix's base, ending at the prefix's end: see
    /// `log::StagedSegment`), crash-safely, and moves the cleaner checkpoint to the prefix's
    /// end. This is how another kind of cleaner (the cluster's metadata snapshot) compacts a
    /// log whose payloads only it understands. Blocking; the partition's lock is held only to
    /// choose and to swap. Durability: the swap is durable on return.
    pub fn rewrite_prefix(
        &self,
        bound: u64,
        raft_limit: Option<u64>,
        min_dirty_bytes: u64,
        rewrite: impl FnOnce(&[SealedSegment], &std::path::Path) -> Result<u64, BrokerError>,
    ) -> Result<Option<CleanStats>, BrokerError> {
        let _one_at_a_time = self.cleaning.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let started = std::time::Instant::now();
        let Some((generation, segments, _)) = self.rewritable(bound, raft_limit, min_dirty_bytes) else {
            return Ok(None);
        };
        let (staging, config) = {
            let state = self.state();
            (state.log.clean_staging()?, *state.log.config())
        };
        let written = rewrite(&segments, &staging)
            .and_then(|w| Ok(Log::index_staged(&staging, config.index_interval_bytes).map(|()| w)?));
        let mut state = self.state();
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                state.log.abandon_clean()?;
                return Err(e);
            }
        };
        let replaced: Vec<(u64, u64)> = segments.iter().map(|s| (s.base_offset, s.size)).collect();
        let end = segments.last().map_or(0, |s| s.end_offset);
        match state.log.swap_cleaned(generation, &replaced, end) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => {
                if e.is_unrecoverable() {
                    drop(state);
                    self.close(super::Closed::StorageFailed);
                }
                return Err(e.into());
            }
        }
        drop(state);
        self.last_cleaned_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        Ok(Some(CleanStats {
            segments: segments.len(),
            bytes_read: segments.iter().map(|s| s.size).sum(),
            bytes_written: written,
            records_removed: 0,
            cleaned_offset: end,
            elapsed_ms: started.elapsed().as_millis() as u64,
        }))
    }

    /// The compaction state for `topic describe`. The dirty ratio is the cleaner's: over the
    /// sealed segments (the active one is never cleanable).
    pub fn cleaner_status(&self) -> CleanerStatus {
        let state = self.state();
        let checkpoint = state.log.cleaner_checkpoint();
        let (_, sealed) = state.log.sealed_segments();
        drop(state);
        CleanerStatus {
            dirty_ratio: dirty_ratio(&sealed, checkpoint).0,
            last_cleaned_ms: self.last_cleaned_ms.load(Ordering::Relaxed),
            cleaned_offset: checkpoint,
        }
    }
}

#[cfg(test)]
mod tests;
