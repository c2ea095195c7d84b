//! One partition on this broker: its log, its durability policy, and the high watermark that
//! wakes subscribers.
//!
//! An append is two steps, so a produce stream can pipeline many batches while appending them
//! strictly in request order:
//! 1. [`Partition::append`] writes the batch to the log (page cache) under the log's mutex and
//!    returns its offsets — synchronous and short;
//! 2. [`Partition::complete`] makes it durable per the fsync policy and then advances the high
//!    watermark, which wakes every subscriber waiting on it (no polling).
//!
//! Invariants:
//! - the high watermark only moves up, and never past the log end;
//! - with `FsyncPolicy::PerBatch`, the high watermark never exceeds the fsynced end, so a
//!   consumer never sees a batch that a power loss could take back;
//! - a failed fsync closes the partition (`Closed::StorageFailed`): the batches it covered
//!   were answered with an error and must never become visible through a later fsync;
//! - fsyncs run outside the log mutex; one fsync covers every batch appended before it started
//!   (group commit), so concurrent producers share fsyncs instead of queueing one each.
//! - with `FsyncPolicy::Interval`, the background flusher also fsyncs early once
//!   `EARLY_SYNC_BYTES` are unsynced: more, smaller fsyncs (never fewer than the interval
//!   asks), because one fsync of a whole interval's data stalls the machine for tens of ms and
//!   showed up as the p99.9 of end-to-end latency (docs/PERFORMANCE.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::watch;

use super::error::BrokerError;
use super::producer_state::{ProducerState, RecentBatch, SequenceCheck};
use crate::log::{
    AppendBatch, Appended, FsyncPolicy, HighWatermark, Log, LogConfig, LogEndOffset, LogError, PartitionOffsets,
    RecoveryReport, RetentionOutcome, StoredBatch,
};

/// Unsynced bytes after which the interval flusher fsyncs before the interval is up.
const EARLY_SYNC_BYTES: u64 = 1 << 20;

/// Why a partition stopped serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    TopicDeleted,
    ShuttingDown,
    /// An fsync failed. The kernel may then have dropped the dirty pages, so the page cache
    /// can differ from the disk: the partition stops serving until a restart, whose recovery
    /// reads what is really on disk.
    StorageFailed,
}

#[derive(Debug)]
pub struct Partition {
    topic: String,
    index: u32,
    /// The log and the producer state change together, under one lock.
    state: Mutex<PartitionState>,
    dir: PathBuf,
    fsync: FsyncPolicy,
    /// Everything below this offset has been fsynced.
    synced_to: AtomicU64,
    /// Bytes appended since open, and how many of them the last fsync covered (for the early
    /// interval fsync).
    appended_bytes: AtomicU64,
    synced_bytes: AtomicU64,
    sync_lock: tokio::sync::Mutex<()>,
    /// When the interval flusher should next fsync (ms since `epoch`).
    next_interval_sync_ms: AtomicI64,
    epoch: Instant,
    hw: watch::Sender<u64>,
    closed: AtomicBool,
    closed_reason: Mutex<Option<Closed>>,
}

impl Partition {
    /// Opens (and recovers) the partition's log in `dir`. Everything recovered counts as
    /// durable and visible.
    pub fn open(
        dir: &std::path::Path,
        topic: &str,
        index: u32,
        config: LogConfig,
        fsync: FsyncPolicy,
    ) -> Result<(Self, RecoveryReport), BrokerError> {
        let (log, report) = Log::open(dir, config)?;
        let end = log.log_end().0;
        // Producer state: the snapshot, then the batch headers after it (the active segment).
        let (mut producers, replay_from) = ProducerState::load(dir, end);
        log.scan_headers(replay_from, |h| {
            if h.base_offset >= replay_from {
                producers.record(h);
            }
        })?;
        let (hw, _) = watch::channel(end);
        Ok((
            Self {
                topic: topic.to_string(),
                index,
                state: Mutex::new(PartitionState { log, producers }),
                dir: dir.to_path_buf(),
                fsync,
                synced_to: AtomicU64::new(end),
                appended_bytes: AtomicU64::new(0),
                synced_bytes: AtomicU64::new(0),
                sync_lock: tokio::sync::Mutex::new(()),
                next_interval_sync_ms: AtomicI64::new(0),
                epoch: Instant::now(),
                hw,
                closed: AtomicBool::new(false),
                closed_reason: Mutex::new(None),
            },
            report,
        ))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    fn state(&self) -> MutexGuard<'_, PartitionState> {
        // A panic while holding the lock cannot leave the log half-updated in memory (each
        // append updates its state only after the write succeeded), so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Step 1 of an append: checks an idempotent producer's sequence, then writes the batch to
    /// the log (see the module docs). A resent batch that is already stored is not written
    /// again: its original position is returned.
    pub fn append(&self, batch: AppendBatch<'_>, now_ms: i64) -> Result<Appended, BrokerError> {
        self.check_open()?;
        let mut state = self.state();
        let idempotent = batch.producer_id > 0;
        if idempotent {
            let check = state.producers.check(
                batch.producer_id,
                batch.producer_epoch,
                batch.base_sequence,
                batch.record_count,
            )?;
            if let SequenceCheck::Duplicate(b) = check {
                return Ok(Appended {
                    base_offset: b.base_offset,
                    next_offset: b.base_offset + u64::from(b.record_count),
                    append_time_ms: b.append_time_ms,
                    raft_index: 0,
                });
            }
        }
        let segments = state.log.segment_count();
        let bytes = batch.payload.len() as u64;
        let appended = match state.log.append(batch, now_ms) {
            Ok(a) => a,
            Err(e) if e.is_unrecoverable() => {
                drop(state);
                tracing::error!(topic = %self.topic, partition = self.index, error = %e, "partition stops serving until restart");
                self.close(Closed::StorageFailed);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        // Under the log lock, so `sync_to` reads a count that matches its target offset.
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        if idempotent {
            state.producers.record_batch(
                batch.producer_id,
                batch.producer_epoch,
                RecentBatch {
                    base_sequence: batch.base_sequence,
                    record_count: batch.record_count,
                    base_offset: appended.base_offset,
                    append_time_ms: appended.append_time_ms,
                },
            );
        }
        if state.log.segment_count() != segments {
            // The log rolled: snapshot the producer state so a restart replays only the new
            // active segment.
            if let Err(e) = state.producers.save(&self.dir, appended.next_offset) {
                tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "producer snapshot not written");
            }
        }
        Ok(appended)
    }

    /// Step 2 of an append: waits for durability per the fsync policy, then publishes the batch
    /// to subscribers by advancing the high watermark.
    pub async fn complete(&self, appended: &Appended) -> Result<(), BrokerError> {
        if self.fsync == FsyncPolicy::PerBatch {
            self.sync_to(appended.next_offset).await?;
        }
        // After a failed fsync nothing more may become visible (see `Closed::StorageFailed`).
        if self.closed_reason() == Some(Closed::StorageFailed) {
            return self.check_open();
        }
        self.advance_hw(appended.next_offset);
        Ok(())
    }

    fn advance_hw(&self, to: u64) {
        self.hw.send_if_modified(|hw| {
            if to > *hw {
                *hw = to;
                true
            } else {
                false
            }
        });
    }

    /// Durability: returns once every batch below `end` is fsynced. Concurrent callers share
    /// one fsync.
    pub async fn sync_to(&self, end: u64) -> Result<(), BrokerError> {
        if self.synced_to.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let _turn = self.sync_lock.lock().await;
        if self.synced_to.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        // Taken together under the log lock: this file holds every byte below `target`
        // that is not in a sealed (already fsynced) segment.
        let (file, target, bytes) = {
            let state = self.state();
            let log = &state.log;
            (log.active_file(), log.log_end().0, self.appended_bytes.load(Ordering::Relaxed))
        };
        let synced = match tokio::task::spawn_blocking(move || file.sync_data()).await {
            Ok(r) => r,
            Err(join) => Err(std::io::Error::other(join)),
        };
        if let Err(e) = synced {
            tracing::error!(topic = %self.topic, partition = self.index, error = %e, "fsync failed; partition stops serving until restart");
            self.close(Closed::StorageFailed);
            return Err(LogError::io(format!("fsync of {}/{}", self.topic, self.index), e).into());
        }
        self.synced_to.fetch_max(target, Ordering::AcqRel);
        self.synced_bytes.fetch_max(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// For the interval flusher: fsyncs if the interval elapsed and there is unsynced data, or
    /// early once `EARLY_SYNC_BYTES` are unsynced.
    pub async fn sync_if_due(&self) -> Result<(), BrokerError> {
        let FsyncPolicy::Interval(every) = self.fsync else {
            return Ok(());
        };
        let now = self.epoch.elapsed().as_millis() as i64;
        let unsynced =
            self.appended_bytes.load(Ordering::Relaxed).saturating_sub(self.synced_bytes.load(Ordering::Relaxed));
        if now < self.next_interval_sync_ms.load(Ordering::Relaxed) && unsynced < EARLY_SYNC_BYTES {
            return Ok(());
        }
        self.next_interval_sync_ms.store(now + every.as_millis() as i64, Ordering::Relaxed);
        let end = self.state().log.log_end().0;
        self.sync_to(end).await
    }

    pub fn offsets(&self) -> PartitionOffsets {
        let state = self.state();
        let log = &state.log;
        PartitionOffsets::new(log.log_start(), HighWatermark(*self.hw.borrow()), LogEndOffset(log.log_end().0))
    }

    pub fn size_bytes(&self) -> (u64, usize) {
        let state = self.state();
        let log = &state.log;
        (log.size_bytes(), log.segment_count())
    }

    /// A receiver that changes whenever the high watermark moves (or the partition closes).
    pub fn watch_hw(&self) -> watch::Receiver<u64> {
        self.hw.subscribe()
    }

    /// Reads whole committed batches from `offset` (below the high watermark), about
    /// `max_bytes`. The index lookup happens under the log lock, the read itself (`pread`)
    /// outside it, so readers never block appends for the duration of an I/O.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<StoredBatch>, BrokerError> {
        self.check_open()?;
        let hw = *self.hw.borrow();
        let located = self.state().log.locate(offset)?;
        let Some((reader, pos)) = located else {
            return Ok(Vec::new());
        };
        if offset >= hw {
            return Ok(Vec::new());
        }
        let batches = reader
            .read_records(pos, hw, max_bytes)
            .map_err(|e| LogError::io(format!("reading {}/{}", self.topic, self.index), e))?;
        Ok(batches)
    }

    /// Checks that `offset` is a valid start position: within [log start, log end].
    pub fn check_offset(&self, offset: u64) -> Result<(), BrokerError> {
        Ok(self.state().log.check_offset(offset)?)
    }

    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<(u64, i64)>, BrokerError> {
        Ok(self.state().log.offset_for_time(timestamp_ms)?)
    }

    pub fn apply_retention(&self, now_ms: i64) -> Result<RetentionOutcome, BrokerError> {
        let hw = *self.hw.borrow();
        Ok(self.state().log.apply_retention(now_ms, hw)?)
    }

    /// Stops serving: pending and future reads and appends fail with `reason`, and waiting
    /// subscribers are woken to see it.
    pub fn close(&self, reason: Closed) {
        *self.closed_reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        self.closed.store(true, Ordering::Release);
        self.hw.send_modify(|_| {});
    }

    pub fn check_open(&self) -> Result<(), BrokerError> {
        if !self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.closed_reason() {
            Some(Closed::TopicDeleted) => Err(BrokerError::TopicDeleted(self.topic.clone())),
            Some(Closed::StorageFailed) => {
                Err(BrokerError::PartitionFailed { topic: self.topic.clone(), partition: self.index })
            }
            _ => Err(BrokerError::ShuttingDown),
        }
    }

    fn closed_reason(&self) -> Option<Closed> {
        *self.closed_reason.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Durability: fsyncs all appended data and writes the producer snapshot (at shutdown).
    pub fn flush(&self) -> Result<(), BrokerError> {
        let state = self.state();
        state.log.sync()?;
        let end = state.log.log_end().0;
        self.synced_to.fetch_max(end, Ordering::AcqRel);
        self.synced_bytes.fetch_max(self.appended_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Err(e) = state.producers.save(&self.dir, end) {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "producer snapshot not written");
        }
        Ok(())
    }
}

/// What the partition's lock protects.
#[derive(Debug)]
struct PartitionState {
    log: Log,
    producers: ProducerState,
}
