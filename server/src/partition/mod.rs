//! One partition on this broker: its log, its producer state (idempotence), its durability
//! policy, and the high watermark that wakes subscribers. Also the validation of a produced
//! batch (`batch`) and what a write is answered with ([`ProduceOutcome`]).
//!
//! This layer sits below both the broker and Raft: a single node appends to a partition
//! directly, a Raft group uses it as its log (`raft::log_store`). It must never import
//! `broker`, `raft`, `cluster` or `api`.
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
//! - with `FsyncPolicy::Never` nothing is fsynced, but the same flusher starts writeback
//!   (`log::start_writeback`, which waits for nothing) every `EARLY_SYNC_BYTES`, so dirty
//!   pages never pile up to the kernel's threshold and stall every writer at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::watch;

pub mod batch;
pub mod compaction;
pub mod producer_state;

use producer_state::{ProducerState, RecentBatch, SequenceCheck};

use crate::error::BrokerError;
use crate::log::format::{BatchHeader, BATCH_HEADER_LEN};
use crate::log::{
    AppendBatch, Appended, FsyncPolicy, HighWatermark, Log, LogConfig, LogEndOffset, LogError, PartitionOffsets,
    RecoveryReport, RetentionOutcome, SegmentSlice, StoredBatch,
};

/// Unsynced bytes after which the interval flusher fsyncs before the interval is up.
const EARLY_SYNC_BYTES: u64 = 1 << 20;

/// Bytes appended after which the producer state is snapshotted even if the log did not roll,
/// so a restart after a crash replays at most this much of batch headers per partition (not
/// the whole active segment): restart time stays bounded by the partition count
/// (docs/PERFORMANCE.md, "Restart after kill -9").
const PRODUCER_SNAPSHOT_BYTES: u64 = 64 << 20;

/// [`FsyncPolicy`] as one u64: 0 = per batch, `u64::MAX` = never, else the interval in ms
/// (at least 1).
fn encode_fsync(f: FsyncPolicy) -> u64 {
    match f {
        FsyncPolicy::PerBatch => 0,
        FsyncPolicy::Never => u64::MAX,
        FsyncPolicy::Interval(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1).clamp(1, u64::MAX - 1),
    }
}

fn decode_fsync(v: u64) -> FsyncPolicy {
    match v {
        0 => FsyncPolicy::PerBatch,
        u64::MAX => FsyncPolicy::Never,
        ms => FsyncPolicy::Interval(std::time::Duration::from_millis(ms)),
    }
}

/// What the writer of a batch is answered with: where it landed (for a resend of a stored
/// batch, where the original landed), or why it was refused at append.
pub type ProduceOutcome = Result<Appended, Rejection>;

/// A batch refused at append on a Raft leader (an idempotent producer's sequence or epoch
/// error). `code` is the stable `ErrorCode` (`crate::error`), `message` says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: i32,
    pub message: String,
}

/// Why a partition stopped serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    TopicDeleted,
    ShuttingDown,
    /// An fsync failed. The kernel may then have dropped the dirty pages, so the page cache
    /// can differ from the disk: the partition stops serving until a restart, whose recovery
    /// reads what is really on disk.
    StorageFailed,
    /// Cluster mode: this broker's replica moved to another broker (a partition reassignment).
    Moved,
}

#[derive(Debug)]
pub struct Partition {
    topic: String,
    index: u32,
    /// The log and the producer state change together, under one lock.
    state: Mutex<PartitionState>,
    dir: PathBuf,
    /// The fsync policy, encoded by [`encode_fsync`] so a topic's config can change it while
    /// appends run (read once per batch, lock-free).
    fsync: AtomicU64,
    /// Set by a switch to `PerBatch`: the flusher fsyncs what earlier policies left unsynced.
    catch_up_sync: AtomicBool,
    /// Bytes written to the log since open (headers included; bumped under the log lock), and
    /// how many of them the last fsync covered. A byte count, not an offset, because Raft
    /// control batches occupy no offset but must be made durable too: a position in this count
    /// (a [`WriteMark`]) names "everything written so far".
    written_bytes: AtomicU64,
    synced_bytes: AtomicU64,
    /// Under `FsyncPolicy::Never`: bytes written when writeback was last started
    /// (`log::start_writeback`), which promises nothing and only keeps dirty pages few.
    writeback_bytes: AtomicU64,
    sync_lock: tokio::sync::Mutex<()>,
    /// When the interval flusher should next fsync (ms since `epoch`).
    next_interval_sync_ms: AtomicI64,
    epoch: Instant,
    hw: watch::Sender<u64>,
    closed: AtomicBool,
    closed_reason: Mutex<Option<Closed>>,
    /// Traffic since open, for metrics.
    pub traffic: Traffic,
    /// Held by a cleaning for its whole run (`compaction`): one at a time per partition.
    cleaning: Mutex<()>,
    /// When a cleaning last finished here (ms since the epoch; 0 = not since open).
    last_cleaned_ms: AtomicI64,
    /// The earliest delete horizon (s since the epoch) the last cleaning kept: a cleaning is
    /// due then even without new writes. Unknown after a restart (`u32::MAX`): the next
    /// cleaning that new writes start finds them.
    next_horizon_s: std::sync::atomic::AtomicU32,
    /// Raft snapshots installed since open: a reader that follows the log by offset (the
    /// metadata applier) rebuilds its state when this changes under it.
    snapshots_installed: AtomicU64,
}

/// Records and bytes produced to (acknowledged by this broker as leader) and served from a
/// partition since it was opened. Relaxed atomics: counters, read at scrape time.
#[derive(Debug, Default)]
pub struct Traffic {
    pub records_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub records_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Traffic {
    pub fn produced(&self, records: u64, bytes: u64) {
        self.records_in.fetch_add(records, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn served(&self, records: u64, bytes: u64) {
        self.records_out.fetch_add(records, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Bumped after every write to any partition's log in this process, and when a partition
/// needs a catch-up fsync: whatever [`Partition::may_need_sync`] says of a partition can only
/// turn true with a bump. The interval flusher looks for unsynced partitions again only when
/// it moved, so idle partitions cost it nothing (a spurious bump costs one pass).
static WRITES: AtomicU64 = AtomicU64::new(0);

/// The current value of the process-wide write counter ([`WRITES`]).
pub fn writes_so_far() -> u64 {
    WRITES.load(Ordering::Acquire)
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
        let producers = load_producers(dir, &log)?;
        let (hw, _) = watch::channel(end);
        Ok((
            Self {
                topic: topic.to_string(),
                index,
                state: Mutex::new(PartitionState { log, producers, since_snapshot: 0 }),
                dir: dir.to_path_buf(),
                fsync: AtomicU64::new(encode_fsync(fsync)),
                catch_up_sync: AtomicBool::new(false),
                written_bytes: AtomicU64::new(0),
                synced_bytes: AtomicU64::new(0),
                writeback_bytes: AtomicU64::new(0),
                sync_lock: tokio::sync::Mutex::new(()),
                next_interval_sync_ms: AtomicI64::new(0),
                epoch: Instant::now(),
                hw,
                closed: AtomicBool::new(false),
                closed_reason: Mutex::new(None),
                traffic: Traffic::default(),
                cleaning: Mutex::new(()),
                last_cleaned_ms: AtomicI64::new(0),
                next_horizon_s: std::sync::atomic::AtomicU32::new(u32::MAX),
                snapshots_installed: AtomicU64::new(0),
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
    pub fn append(&self, batch: AppendBatch<'_>, now_ms: i64) -> Result<PendingAppend, BrokerError> {
        self.check_open()?;
        let mut state = self.state();
        if batch.producer_id > 0 {
            let check = state.producers.check(
                batch.producer_id,
                batch.producer_epoch,
                batch.base_sequence,
                batch.record_count,
                batch.flags,
            )?;
            if let SequenceCheck::Duplicate(b) = check {
                // The original may not be durable yet: wait for everything written so far.
                let mark = WriteMark(self.written_bytes.load(Ordering::Relaxed));
                let appended = Appended {
                    base_offset: b.base_offset,
                    next_offset: b.base_offset + u64::from(b.record_count),
                    append_time_ms: b.append_time_ms,
                    raft_index: 0,
                };
                return Ok(PendingAppend { appended, mark });
            }
        }
        self.write_locked(&mut state, LogWrite::Batch(batch), now_ms)
    }

    /// Writes one batch under the log lock: the log, the write count, the producer state and,
    /// when the log rolled, the producer snapshot. An unrecoverable error closes the partition.
    fn write_locked(
        &self,
        state: &mut PartitionState,
        write: LogWrite<'_>,
        now_ms: i64,
    ) -> Result<PendingAppend, BrokerError> {
        let segments = state.log.segment_count();
        let (result, bytes) = match write {
            LogWrite::Batch(b) => (state.log.append(b, now_ms), b.payload.len()),
            LogWrite::Replicated(h, payload) => (state.log.append_replicated(h, payload), payload.len()),
            LogWrite::Control { payload, term, index } => {
                (state.log.append_control(payload, (term, index), now_ms), payload.len())
            }
        };
        let appended = match result {
            Ok(a) => a,
            Err(e) if e.is_unrecoverable() => {
                tracing::error!(topic = %self.topic, partition = self.index, error = %e, "partition stops serving until restart");
                self.close(Closed::StorageFailed);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        // Under the log lock, so a fsync that reads the count covers exactly these bytes.
        let total = (BATCH_HEADER_LEN + bytes) as u64;
        let mark = WriteMark(self.written_bytes.fetch_add(total, Ordering::Relaxed) + total);
        WRITES.fetch_add(1, Ordering::Release);
        let recent = |base_sequence, record_count| RecentBatch {
            base_sequence,
            record_count,
            base_offset: appended.base_offset,
            append_time_ms: appended.append_time_ms,
        };
        match write {
            LogWrite::Batch(b) if b.producer_id > 0 => {
                let batch = recent(b.base_sequence, b.record_count);
                state.producers.record_batch(b.producer_id, b.producer_epoch, batch, b.flags);
            }
            LogWrite::Replicated(h, _) if h.producer_id > 0 && !h.is_control() => {
                // The leader's time may have been clamped here (see `Log::append_replicated`).
                let batch = recent(h.base_sequence, h.record_count);
                state.producers.record_batch(h.producer_id, h.producer_epoch, batch, h.flags);
            }
            _ => {}
        }
        state.since_snapshot += total;
        if state.log.segment_count() != segments || state.since_snapshot >= PRODUCER_SNAPSHOT_BYTES {
            // The log rolled, or much was appended since the last snapshot: snapshot the
            // producer state so a restart replays only the headers after it.
            state.since_snapshot = 0;
            let log_start = state.log.log_start().0;
            state.producers.prune_aborted(log_start);
            if let Err(e) = state.producers.save(&self.dir, appended.next_offset) {
                tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "producer snapshot not written");
            }
        }
        Ok(PendingAppend { appended, mark })
    }

    /// Step 2 of an append: waits for durability per the fsync policy, then publishes the batch
    /// to subscribers by advancing the high watermark.
    pub async fn complete(&self, pending: &PendingAppend) -> Result<(), BrokerError> {
        if self.fsync_policy() == FsyncPolicy::PerBatch {
            self.sync_through(pending.mark).await?;
        }
        // After a failed fsync nothing more may become visible (see `Closed::StorageFailed`).
        if self.closed_reason() == Some(Closed::StorageFailed) {
            return self.check_open();
        }
        self.advance_hw(pending.appended.next_offset);
        Ok(())
    }

    pub(crate) fn advance_hw(&self, to: u64) {
        self.hw.send_if_modified(|hw| {
            if to > *hw {
                *hw = to;
                true
            } else {
                false
            }
        });
    }

    /// Durability: returns once every byte written up to `mark` is fsynced. Concurrent callers
    /// share one fsync (group commit).
    pub async fn sync_through(&self, mark: WriteMark) -> Result<(), BrokerError> {
        if self.synced_bytes.load(Ordering::Acquire) >= mark.0 {
            return Ok(());
        }
        let _turn = self.sync_lock.lock().await;
        if self.synced_bytes.load(Ordering::Acquire) >= mark.0 {
            return Ok(());
        }
        // Taken together under the log lock: this file holds every byte counted in `written`
        // that is not in a sealed (already fsynced) segment.
        let (file, written) = {
            let state = self.state();
            (state.log.active_file(), self.written_bytes.load(Ordering::Relaxed))
        };
        let started = Instant::now();
        let synced = match tokio::task::spawn_blocking(move || file.sync_data()).await {
            Ok(r) => r,
            Err(join) => Err(std::io::Error::other(join)),
        };
        crate::telemetry::metrics::instruments().fsync_latency.observe(started.elapsed().as_secs_f64());
        if let Err(e) = synced {
            tracing::error!(topic = %self.topic, partition = self.index, error = %e, "fsync failed; partition stops serving until restart");
            self.close(Closed::StorageFailed);
            return Err(LogError::io(format!("fsync of {}/{}", self.topic, self.index), e).into());
        }
        self.synced_bytes.fetch_max(written, Ordering::AcqRel);
        Ok(())
    }

    /// Everything written so far, as a mark to [`Partition::sync_through`].
    pub fn written(&self) -> WriteMark {
        WriteMark(self.written_bytes.load(Ordering::Relaxed))
    }

    pub fn fsync_policy(&self) -> FsyncPolicy {
        decode_fsync(self.fsync.load(Ordering::Relaxed))
    }

    /// Applies a topic's changed settings: the log's (segment size and age, retention, from
    /// the next roll or retention pass) and the fsync policy (from the next batch; after a
    /// switch to `PerBatch` the interval flusher fsyncs what was written before, within a
    /// tick, whether or not another batch comes).
    pub fn reconfigure(&self, config: LogConfig, fsync: FsyncPolicy) -> Result<(), BrokerError> {
        self.state().log.set_config(config)?;
        let before = self.fsync.swap(encode_fsync(fsync), Ordering::Relaxed);
        if fsync == FsyncPolicy::PerBatch && decode_fsync(before) != FsyncPolicy::PerBatch {
            self.catch_up_sync.store(true, Ordering::Relaxed);
            WRITES.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// Whether [`Partition::sync_if_due`] could have work: bytes written and not yet fsynced
    /// under an interval policy, or a catch-up after a switch to `PerBatch`. A few atomic
    /// loads, no clock (the flusher asks it of every partition after any write).
    pub fn may_need_sync(&self) -> bool {
        match self.fsync_policy() {
            FsyncPolicy::Never => self.writeback_due().is_some(),
            FsyncPolicy::PerBatch => self.catch_up_sync.load(Ordering::Relaxed),
            FsyncPolicy::Interval(_) => self.written().0 > self.synced_bytes.load(Ordering::Relaxed),
        }
    }

    /// For the interval flusher: fsyncs if the interval elapsed and there is unsynced data, or
    /// early once `EARLY_SYNC_BYTES` are unsynced. Under `Never` it fsyncs nothing but starts
    /// writeback every `EARLY_SYNC_BYTES` ([`Partition::start_writeback_if_due`]).
    pub async fn sync_if_due(&self) -> Result<(), BrokerError> {
        let every = match self.fsync_policy() {
            FsyncPolicy::Interval(every) => every,
            FsyncPolicy::Never => {
                self.start_writeback_if_due().await;
                return Ok(());
            }
            // Every batch's own fsync covers it; once, after a switch to `always`, what was
            // acknowledged before under `interval` or `never` (a next batch may never come).
            FsyncPolicy::PerBatch => {
                if self.catch_up_sync.swap(false, Ordering::Relaxed) {
                    return self.sync_through(self.written()).await;
                }
                return Ok(());
            }
        };
        let written = self.written();
        let unsynced = written.0.saturating_sub(self.synced_bytes.load(Ordering::Relaxed));
        if unsynced == 0 {
            return Ok(());
        }
        let now = self.epoch.elapsed().as_millis() as i64;
        if now < self.next_interval_sync_ms.load(Ordering::Relaxed) && unsynced < EARLY_SYNC_BYTES {
            return Ok(());
        }
        self.next_interval_sync_ms.store(now + every.as_millis() as i64, Ordering::Relaxed);
        self.sync_through(written).await
    }

    /// Under `Never`, once `EARLY_SYNC_BYTES` were written since the last time: starts writing
    /// the active segment back without waiting. Left alone, the kernel lets dirty pages grow to
    /// its background threshold (10 % of memory) and then stalls every writer while it writes
    /// them out: produce p99 over a second at 180 MB/s on three brokers (docs/PERFORMANCE.md,
    /// "fsync=never under sustained load"). A failure is logged and changes nothing: `never`
    /// promises no durability.
    async fn start_writeback_if_due(&self) {
        let Some(written) = self.writeback_due() else { return };
        self.writeback_bytes.store(written, Ordering::Relaxed);
        let file = self.state().log.active_file();
        let started = tokio::task::spawn_blocking(move || crate::log::start_writeback(&file)).await;
        if let Ok(Err(e)) | Err(e) = started.map_err(std::io::Error::other) {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "starting writeback failed");
        }
    }

    /// Bytes written so far, if `EARLY_SYNC_BYTES` of them came since writeback last started.
    fn writeback_due(&self) -> Option<u64> {
        let written = self.written().0;
        (written >= self.writeback_bytes.load(Ordering::Relaxed) + EARLY_SYNC_BYTES).then_some(written)
    }

    pub fn offsets(&self) -> PartitionOffsets {
        let state = self.state();
        let log = &state.log;
        let hw = *self.hw.borrow();
        // A replica may hold records up to a DeleteRecords floor before it learns they are
        // committed: the start it reports never passes its high watermark.
        let start = crate::log::LogStartOffset(log.log_start().0.min(hw));
        PartitionOffsets::new(start, HighWatermark(hw), LogEndOffset(log.log_end().0))
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
    /// `max_bytes`. The index lookup happens under the log lock, the read itself (`pread`, or
    /// a mapping) outside it, so readers never block appends for the duration of an I/O.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<StoredBatch>, BrokerError> {
        self.check_open()?;
        let hw = *self.hw.borrow();
        let located = self.state().log.locate(offset)?;
        let mut batches = self.read_located(located, offset, hw, max_bytes)?;
        batches.retain(|b| b.header.is_served());
        Ok(batches)
    }

    /// Whole batches from `located` (the log's answer for `offset`) below `bound`, about
    /// `max_bytes`; the read happens here, outside the log lock. `bound` is committed (the
    /// high watermark or the last stable offset), so a large read may hand out a mapping of
    /// the segment instead of a copy (`SegmentReader::read_committed`).
    fn read_located(
        &self,
        located: Option<(crate::log::SegmentReader, u64)>,
        offset: u64,
        bound: u64,
        max_bytes: usize,
    ) -> Result<Vec<StoredBatch>, BrokerError> {
        let Some((reader, pos)) = located else { return Ok(Vec::new()) };
        if offset >= bound {
            return Ok(Vec::new());
        }
        // Every stored batch, control and empty ones included, so the caller can tell where
        // the read ended even when nothing in it is served.
        let (batches, _) = reader
            .read_committed(pos, bound, max_bytes)
            .map_err(|e| LogError::io(format!("reading {}/{}", self.topic, self.index), e))?;
        Ok(batches)
    }

    /// Reads for a consumer from `offset`, about `max_bytes`: whole batches below the high
    /// watermark (read_uncommitted) or below the last stable offset (read_committed). Markers
    /// are never served; read_committed also leaves out the batches of aborted transactions.
    /// `next` is where the next read goes on (past what was left out, too), `bound` the high
    /// watermark or last stable offset the read stopped at.
    pub fn read_for_consumer(
        &self,
        offset: u64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ConsumerRead, BrokerError> {
        self.check_open()?;
        let hw = *self.hw.borrow();
        let (located, bound, aborted) = {
            let state = self.state();
            let located = state.log.locate(offset)?;
            match isolation {
                Isolation::ReadUncommitted => (located, hw, Vec::new()),
                Isolation::ReadCommitted => {
                    let lso = state.producers.last_stable(hw);
                    (located, lso, state.producers.aborted_between(offset, lso))
                }
            }
        };
        let mut batches = self.read_located(located, offset, bound, max_bytes)?;
        let next = batches.last().map_or(offset, |b| b.header.next_offset());
        // Free for a partition without transactions: one flag test per batch.
        batches.retain(|b| {
            let h = &b.header;
            let aborted = || h.is_transactional() && aborted.iter().any(|a| a.covers(h.producer_id, h.base_offset));
            h.is_served() && !h.is_txn_marker() && !aborted()
        });
        Ok(ConsumerRead { batches, next, bound })
    }

    /// The last stable offset: below every open transaction's first offset, at most the high
    /// watermark (equal to it on a partition without open transactions).
    pub fn last_stable_offset(&self) -> u64 {
        let hw = *self.hw.borrow();
        self.state().producers.last_stable(hw)
    }

    /// The open transactions on this partition: (producer id, epoch, first offset).
    pub fn open_transactions(&self) -> Vec<(i64, i16, u64)> {
        self.state().producers.open_transactions()
    }

    /// Checks that `offset` is a valid start position: within [log start, log end].
    pub fn check_offset(&self, offset: u64) -> Result<(), BrokerError> {
        Ok(self.state().log.check_offset(offset)?)
    }

    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<(u64, i64)>, BrokerError> {
        Ok(self.state().log.offset_for_time(timestamp_ms)?)
    }

    /// Deletes the records below `offset` (DeleteRecords): moves the log start up to it, never
    /// down, durably. `offset` must be at most the high watermark of the partition's leader
    /// (the control plane checked; below it everywhere once committed). Returns the log start.
    ///
    /// Everything written so far is fsynced first, whatever the fsync policy: a floor must
    /// never be durable while the records below it are not, or a power loss could leave the
    /// log end below the floor and hide the records appended after the restart.
    pub async fn raise_log_start(&self, offset: u64) -> Result<u64, BrokerError> {
        self.check_open()?;
        self.sync_through(self.written()).await?;
        Ok(self.state().log.raise_start(offset)?.0)
    }

    /// Deletes the segments retention no longer keeps (see [`Log::apply_retention`]); a Raft
    /// replica passes its durable purge point as `raft_limit`.
    pub fn apply_retention(&self, now_ms: i64, raft_limit: Option<u64>) -> Result<RetentionOutcome, BrokerError> {
        let hw = *self.hw.borrow();
        Ok(self.state().log.apply_retention(now_ms, hw, raft_limit)?)
    }

    /// The Raft index up to which retention would delete now (see [`Log::retention_point`]).
    pub fn retention_point(&self, now_ms: i64) -> Option<u64> {
        let hw = *self.hw.borrow();
        self.state().log.retention_point(now_ms, hw)
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
            Some(Closed::Moved) => Err(BrokerError::NotLeader {
                what: format!(
                    "{}/{} any more (its replica moved off this broker; ask another)",
                    self.topic, self.index
                ),
                leader: None,
            }),
            _ => Err(BrokerError::ShuttingDown),
        }
    }

    fn closed_reason(&self) -> Option<Closed> {
        *self.closed_reason.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // --- The partition as a Raft log (used by `raft::log_store` and `raft::state_machine`) ---

    /// Writes one Raft entry (see [`LogWrite`]). Durability: page cache only; sync through the
    /// returned mark. Readable by [`Partition::read_raft`] at once, visible to consumers only
    /// once the high watermark passes it.
    pub fn write_raft(&self, write: LogWrite<'_>, now_ms: i64) -> Result<RaftAppend, BrokerError> {
        self.check_open()?;
        let mut state = self.state();
        let pending = self.write_locked(&mut state, write, now_ms)?;
        Ok(RaftAppend { pending, header: state.log.last_header().copied() })
    }

    /// Checks an idempotent producer's batch against the producer state, which covers every
    /// batch in the log (committed or not). The Raft log store calls it right before it
    /// appends, and it alone appends to a replicated partition, so nothing can come between.
    pub fn check_producer(
        &self,
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        record_count: u32,
        flags: u16,
    ) -> Result<SequenceCheck, BrokerError> {
        self.state().producers.check(producer_id, epoch, base_sequence, record_count, flags)
    }

    /// Stored batches (control batches included) from the first whose Raft index is
    /// `from_index` or more, about `max_bytes` (at least one batch); empty if none is.
    pub fn read_raft(&self, from_index: u64, max_bytes: usize) -> Result<Vec<StoredBatch>, BrokerError> {
        Ok(self.state().log.read_raft(from_index, max_bytes)?)
    }

    /// Term and index of the last stored batch.
    pub fn last_raft_entry(&self) -> Option<(u64, u64)> {
        self.state().log.last_raft_entry()
    }

    /// Drops every batch above Raft index `index` (all of them for `None`) and rebuilds the
    /// producer state without them. Durability: fsynced before returning. Raft never truncates
    /// committed entries, so the high watermark is unaffected.
    pub fn truncate_after_raft(&self, index: Option<u64>) -> Result<(), BrokerError> {
        let mut state = self.state();
        state.log.truncate_after_raft(index)?;
        debug_assert!(*self.hw.borrow() <= state.log.log_end().0, "truncated below the high watermark");
        state.producers = load_producers(&self.dir, &state.log)?;
        Ok(())
    }

    /// The stored batches up to Raft index `index`, as file slices: a snapshot's data.
    pub fn raft_prefix(&self, index: Option<u64>) -> Result<Vec<SegmentSlice>, BrokerError> {
        Ok(self.state().log.raft_prefix(index)?)
    }

    /// Replaces the log with another replica's [`Partition::raft_prefix`] (a snapshot install),
    /// rebuilds the producer state from it and sets the high watermark to its end: a snapshot
    /// holds committed entries only. Durability: durable on return.
    pub fn install_snapshot(&self, slices: &[SegmentSlice]) -> Result<(), BrokerError> {
        let mut state = self.state();
        if let Err(e) = state.log.install_snapshot(slices) {
            if e.is_unrecoverable() {
                drop(state);
                self.close(Closed::StorageFailed);
            }
            return Err(e.into());
        }
        state.producers = load_producers(&self.dir, &state.log)?;
        let end = state.log.log_end().0;
        self.synced_bytes.fetch_max(self.written_bytes.load(Ordering::Relaxed), Ordering::AcqRel);
        self.snapshots_installed.fetch_add(1, Ordering::AcqRel);
        self.hw.send_modify(|hw| *hw = end);
        Ok(())
    }

    /// How many Raft snapshots replaced this log since it was opened.
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed.load(Ordering::Acquire)
    }

    /// Sets the high watermark after a restart, when Raft (not the log end) knows what is
    /// committed. The only way it may move down.
    pub fn restore_hw(&self, hw: u64) {
        let end = self.state().log.log_end().0;
        self.hw.send_modify(|v| *v = hw.min(end));
    }

    /// Durability: fsyncs all appended data and writes the producer snapshot (at shutdown).
    pub fn flush(&self) -> Result<(), BrokerError> {
        let state = self.state();
        state.log.sync()?;
        let end = state.log.log_end().0;
        self.synced_bytes.fetch_max(self.written_bytes.load(Ordering::Relaxed), Ordering::AcqRel);
        if let Err(e) = state.producers.save(&self.dir, end) {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "producer snapshot not written");
        }
        Ok(())
    }
}

/// Producer state: the snapshot, then the batch headers after it (normally the active segment;
/// the whole log when the snapshot is missing or lies beyond a truncation).
fn load_producers(dir: &std::path::Path, log: &Log) -> Result<ProducerState, LogError> {
    let (mut producers, replay_from) = ProducerState::load(dir, log.log_end().0);
    log.scan_headers(replay_from, |h| {
        if h.base_offset >= replay_from {
            producers.record(h);
        }
    })?;
    Ok(producers)
}

/// A position in the partition's count of written bytes (see [`Partition::sync_through`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteMark(pub u64);

/// A batch written to the log (step 1 of an append) that is not yet durable or visible.
#[derive(Clone, Copy, Debug)]
pub struct PendingAppend {
    pub appended: Appended,
    /// Sync through this mark to make the batch durable.
    pub mark: WriteMark,
}

/// What [`Partition::write_raft`] stored.
#[derive(Debug)]
pub struct RaftAppend {
    pub pending: PendingAppend,
    /// The batch's header as written: with the payload, the entry exactly as a read of the
    /// log returns it. Always `Some` after a write (the log then ends with this batch).
    pub header: Option<BatchHeader>,
}

/// One write to the log: a new batch (the log assigns its offset and time), a batch exactly as
/// a Raft leader stored it, or a Raft control batch.
#[derive(Clone, Copy, Debug)]
pub enum LogWrite<'a> {
    Batch(AppendBatch<'a>),
    Replicated(&'a BatchHeader, &'a [u8]),
    Control { payload: &'a [u8], term: u64, index: u64 },
}

/// Which records a consumer is served (Kafka's `isolation.level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Everything below the high watermark, aborted transactions included (the default).
    #[default]
    ReadUncommitted,
    /// Only below the last stable offset, without aborted transactions' records.
    ReadCommitted,
}

/// What [`Partition::read_for_consumer`] read.
#[derive(Debug)]
pub struct ConsumerRead {
    pub batches: Vec<StoredBatch>,
    /// Where the next read goes on.
    pub next: u64,
    /// The high watermark (read_uncommitted) or last stable offset (read_committed).
    pub bound: u64,
}

/// What the partition's lock protects.
#[derive(Debug)]
struct PartitionState {
    log: Log,
    producers: ProducerState,
    /// Bytes appended since the producer state was last snapshotted.
    since_snapshot: u64,
}

#[cfg(test)]
mod fsync_encoding_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_fsync_policy_survives_its_encoding() {
        for f in [
            FsyncPolicy::PerBatch,
            FsyncPolicy::Never,
            FsyncPolicy::Interval(Duration::from_millis(1)),
            FsyncPolicy::Interval(Duration::from_secs(86_400)),
        ] {
            assert_eq!(decode_fsync(encode_fsync(f)), f);
        }
        // Below a millisecond is the shortest interval, never "per batch".
        assert_eq!(
            decode_fsync(encode_fsync(FsyncPolicy::Interval(Duration::ZERO))),
            FsyncPolicy::Interval(Duration::from_millis(1))
        );
    }
}

#[cfg(test)]
mod producer_snapshot_tests {
    use super::*;
    use crate::log::format::PRODUCER_SNAPSHOT_FILE;

    #[test]
    fn the_producer_state_is_snapshotted_every_so_many_bytes_without_a_roll() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), "t", 0, LogConfig::default(), FsyncPolicy::Never).unwrap();
        let payload = vec![7u8; 1 << 20];
        let batches = (PRODUCER_SNAPSHOT_BYTES >> 20) as i32 + 2;
        for seq in 0..batches {
            let b = AppendBatch {
                payload: &payload,
                record_count: 1,
                compression: 0,
                payload_crc: tidelog_proto::checksum::crc32c(&payload),
                raft: None,
                producer_id: 5,
                producer_epoch: 0,
                base_sequence: seq,
                flags: 0,
            };
            p.append(b, 1).unwrap();
        }
        assert_eq!(p.size_bytes().1, 1, "no roll: one 1 GiB segment");
        assert!(dir.path().join(PRODUCER_SNAPSHOT_FILE).exists(), "snapshotted without a roll");
        drop(p);
        let (p, _) = Partition::open(dir.path(), "t", 0, LogConfig::default(), FsyncPolicy::Never).unwrap();
        let next = p.state().producers.check(5, 0, batches, 1, 0).unwrap();
        assert_eq!(next, producer_state::SequenceCheck::Append, "the state after the snapshot and the replay");
    }
}
