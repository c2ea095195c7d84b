//! The partition log: an ordered, append-only sequence of record batches with increasing
//! offsets, stored as segments on disk. It is a library: it knows nothing of gRPC, Raft or the
//! metadata store, so it can be tested, benchmarked and fuzzed alone.
//!
//! ```text
//! Log ── segments (BTreeMap by base offset) ── the last one is active (appended to)
//!         └─ Segment = .log (batches) + .index (offset → position) + .timeindex (time → offset)
//! ```
//!
//! Invariants (checked by the tests in `log/tests.rs`):
//! - offsets increase: a batch's base offset is at least the previous batch's next offset,
//!   across segments too, and equal to it except in compacted segments (`clean.rs`), whose
//!   cleaner removed records;
//! - `log start <= high watermark <= log end` (see [`offset`]);
//! - append times never go backwards (a clock step back reuses the previous time), so the time
//!   index is monotonic;
//! - only the active segment is written or truncated; sealed segments were fsynced when the log
//!   rolled past them, so crash recovery ([`recovery`]) only scans the active segment's tail;
//! - every batch records the Raft term and index it was appended with; Raft indexes strictly
//!   increase through the log (in a compacted segment, below the Raft purge point, they only
//!   never decrease: the runs cut from one batch share its index), so an entry is found by index ([`Log::read_raft`]) and an
//!   uncommitted suffix is dropped by index ([`Log::truncate_after_raft`]): the same log serves
//!   as the Raft log (docs/RAFT_PLAN.md);
//! - Raft entries that are not record batches are stored as control batches
//!   ([`format::FLAG_CONTROL`]): no records, no offset of their own, never indexed, never
//!   served to consumers by [`Log::read`].
//!
//! The log must never decode or re-encode the producer's payload: it stores and serves bytes.

mod clean;
pub mod config;
pub mod error;
pub mod format;
pub mod index;
mod mapped;
pub mod offset;
#[cfg(test)]
mod raft_tests;
pub mod recovery;
pub mod segment;
pub mod snapshot;
pub mod start_floor;
mod swap;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use clean::{sync_staging, SealedSegment, StagedSegment};
pub use config::{FsyncPolicy, LogConfig, Retention};
pub use error::LogError;
use error::{FatalContext, IoContext};
use format::{parse_log_file_name, BatchHeader, CompressionCodec, BATCH_HEADER_LEN, INDEX_EXT, TIME_INDEX_EXT};
pub use offset::{HighWatermark, LogEndOffset, LogStartOffset, PartitionOffsets};
use segment::Segment;
pub use segment::{SegmentReader, StoredBatch};
pub use snapshot::SegmentSlice;

/// A batch to append: the producer's payload plus what the broker knows about it.
#[derive(Clone, Copy, Debug)]
pub struct AppendBatch<'a> {
    pub payload: &'a [u8],
    pub record_count: u32,
    pub compression: CompressionCodec,
    /// CRC32C of `payload`, already checked by the caller.
    pub payload_crc: u32,
    /// Raft term and index to record; `None` continues the log's own sequence (single node).
    pub raft: Option<(u64, u64)>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// Header flags of a record batch: 0, or the transaction bits (`format::FLAG_TRANSACTIONAL`,
    /// `FLAG_TXN_MARKER`, `FLAG_TXN_ABORT`). Never `FLAG_CONTROL` (see [`Log::append_control`]).
    pub flags: u16,
}

/// Where an appended batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub next_offset: u64,
    pub append_time_ms: i64,
    pub raft_index: u64,
}

/// What opening a log found and repaired.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Batches whose CRCs were checked during recovery (the bounded tail scans).
    pub batches_checked: u64,
    pub truncated_bytes: u64,
    pub indexes_rebuilt: usize,
    /// Sealed segments dropped because an earlier segment was damaged (no gap from lost data).
    pub segments_dropped: usize,
}

/// Outcome of one retention pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Never empty; the last entry is the active segment.
    segments: BTreeMap<u64, Segment>,
    last_append_time_ms: i64,
    /// Term and index of the last stored batch; `None` for an empty log.
    last_raft: Option<(u64, u64)>,
    /// Records below this were deleted on request (`start_floor.rs`); 0 = none.
    start_floor: u64,
    /// Records below this were compacted (`clean.rs`); 0 = never.
    cleaner_checkpoint: u64,
    /// Bumped whenever segments are replaced wholesale (a snapshot install, a truncation), so
    /// a cleaning started before cannot swap its result in (`clean.rs`).
    generation: u64,
}

impl Log {
    /// Opens the log in `dir` (creating it if needed) and recovers it after a crash: sealed
    /// segments are opened as they are (each checks the batches after its last index entry),
    /// the active segment's torn or corrupt tail is cut off, missing indexes are rebuilt.
    /// Cost: proportional to the number of segments and the index interval, not to the data.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Self, RecoveryReport), LogError> {
        config.validate().map_err(LogError::Config)?;
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        // A snapshot install interrupted by a crash is finished (or discarded) first.
        snapshot::finish_staged(dir).fatal(|| format!("finishing a staged snapshot in {}", dir.display()))?;
        // So is a compaction swap (`swap.rs`): it completes if committed, else is discarded.
        swap::finish_staged(dir).fatal(|| format!("finishing a compaction swap in {}", dir.display()))?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = parse_log_file_name(&name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        remove_orphan_indexes(dir, &bases)?;

        let mut report = RecoveryReport::default();
        let mut segments = BTreeMap::new();
        let mut expected_base: Option<u64> = None;
        let mut iter = bases.into_iter();
        for base in iter.by_ref() {
            // Segments are contiguous, compacted ones too (the cleaner ends a segment whose last
            // records went with an end batch at the next one's base).
            if expected_base.is_some_and(|e| e != base) {
                // An earlier segment lost its tail: later data would leave a gap. Keep the log
                // contiguous (Kafka does the same); this only happens on real disk damage,
                // since sealed segments are fsynced.
                tracing::error!(dir = %dir.display(), base, expected = ?expected_base, "offset gap between segments; dropping this and later segments");
                Self::drop_segment_files(dir, base, &mut report)?;
                break;
            }
            let (seg, r) = Segment::open(dir, base, config.index_interval_bytes)
                .ctx(|| format!("recovering segment {base} in {}", dir.display()))?;
            if r.truncated_bytes > 0 {
                tracing::warn!(dir = %dir.display(), base, bytes = r.truncated_bytes, why = ?r.stopped_by, "truncated damaged segment tail");
            }
            report.batches_checked += r.batches_checked;
            report.truncated_bytes += r.truncated_bytes;
            report.indexes_rebuilt += usize::from(r.index_rebuilt);
            expected_base = Some(seg.next_offset());
            segments.insert(base, seg);
        }
        for base in iter {
            Self::drop_segment_files(dir, base, &mut report)?;
        }
        if segments.is_empty() {
            let seg = Segment::create(dir, 0, config.index_interval_bytes)
                .ctx(|| format!("creating first segment in {}", dir.display()))?;
            segments.insert(0, seg);
            sync_dir(dir).ctx(|| format!("fsync of directory {}", dir.display()))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).ctx(|| format!("fsync of directory {}", parent.display()))?;
            }
        }
        report.segments = segments.len();
        let last = segments.values().rev().find_map(|s| s.last_header().copied());
        let log = Self {
            dir: dir.to_path_buf(),
            config,
            segments,
            last_append_time_ms: last.map_or(i64::MIN, |h| h.append_time_ms),
            last_raft: last.map(|h| (h.raft_term, h.raft_index)),
            start_floor: start_floor::load(dir),
            cleaner_checkpoint: start_floor::load_u64(dir, format::CLEANER_CHECKPOINT_FILE),
            generation: 0,
        };
        Ok((log, report))
    }

    fn drop_segment_files(dir: &Path, base: u64, report: &mut RecoveryReport) -> Result<(), LogError> {
        for ext in [format::LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
            let p = dir.join(format::segment_file_name(base, ext));
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(LogError::io(format!("removing {}", p.display()), e))
                }
                _ => {}
            }
        }
        report.segments_dropped += 1;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings (segment size, retention); takes effect at the next append or
    /// retention pass.
    pub fn set_config(&mut self, config: LogConfig) -> Result<(), LogError> {
        config.validate().map_err(LogError::Config)?;
        self.config = config;
        Ok(())
    }

    fn active(&self) -> &Segment {
        // Invariant: never empty.
        self.segments.values().next_back().unwrap_or_else(|| unreachable!("log has no segment"))
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().unwrap_or_else(|| unreachable!("log has no segment"))
    }

    /// The first segment's base, or the start floor if records above it were deleted on
    /// request (capped at the log end: a lagging replica starts where its log ends).
    pub fn log_start(&self) -> LogStartOffset {
        let base = self.segments.keys().next().copied().unwrap_or(0);
        LogStartOffset(base.max(self.start_floor.min(self.log_end().0)))
    }

    /// Deletes the records below `offset` by moving the log start up to it (never down):
    /// reads below it are out of range from now on, and the next retention pass deletes the
    /// whole segments below it. The caller checked `offset` against the high watermark.
    /// Durability: the new floor is fsynced before this returns. Returns the log start.
    pub fn raise_start(&mut self, offset: u64) -> Result<LogStartOffset, LogError> {
        if offset > self.start_floor {
            start_floor::store(&self.dir, offset).ctx(|| format!("storing the log start in {}", self.dir.display()))?;
            self.start_floor = offset;
        }
        Ok(self.log_start())
    }

    pub fn log_end(&self) -> LogEndOffset {
        LogEndOffset(self.active().next_offset())
    }

    /// Term and index of the last stored batch (`None` for an empty log: Raft index 0 is a
    /// real entry).
    pub fn last_raft_entry(&self) -> Option<(u64, u64)> {
        self.last_raft
    }

    /// The header of the last stored batch, as written (`None` for an empty log). Right after
    /// an append, the header of the batch it wrote.
    pub fn last_header(&self) -> Option<&BatchHeader> {
        self.segments.values().rev().find_map(|s| s.last_header())
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends one batch; returns where it landed. Durability: written to the OS page cache
    /// only — call [`Log::sync`] (or fsync [`Log::active_file`]) to make it durable. Rolls to a
    /// new segment first if the batch would overflow the active one or it is too old; the
    /// sealed segment is fsynced then.
    pub fn append(&mut self, batch: AppendBatch<'_>, now_ms: i64) -> Result<Appended, LogError> {
        let flags = batch.flags & !format::FLAG_CONTROL;
        self.append_with_flags(batch, flags, now_ms)
    }

    /// Appends a control batch (a Raft entry that is not a record batch: see
    /// [`format::FLAG_CONTROL`]) at `raft` = (term, index). It takes no offset: its base offset
    /// is the log end, which the next data batch shares. Nor does it take a time of its own: its
    /// append time is the previous batch's (0 in an empty log), so every replica stores the same
    /// bytes for it and data batch times stay the leader's (`now_ms` only decides whether the
    /// active segment is old enough to roll). Durability as
    /// [`Log::append`].
    pub fn append_control(&mut self, payload: &[u8], raft: (u64, u64), now_ms: i64) -> Result<Appended, LogError> {
        let batch = AppendBatch {
            payload,
            record_count: 0,
            compression: 0,
            payload_crc: tidelog_proto::checksum::crc32c(payload),
            raft: Some(raft),
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            flags: format::FLAG_CONTROL,
        };
        self.append_with_flags(batch, format::FLAG_CONTROL, now_ms)
    }

    /// Appends a batch as its leader stored it (a Raft follower): the header's offset, Raft
    /// term and index, flags and producer fields are kept; the payload must match the header's
    /// CRC and the batch must continue this log (its base offset is the log end, its Raft index
    /// follows). The append time is kept unless it would go backwards here (after a leader
    /// change between clocks), in which case the previous time is reused, as on a leader.
    /// Durability as [`Log::append`].
    pub fn append_replicated(&mut self, header: &BatchHeader, payload: &[u8]) -> Result<Appended, LogError> {
        if header.payload_len() != payload.len() || tidelog_proto::checksum::crc32c(payload) != header.payload_crc {
            return Err(LogError::RaftOrder(format!(
                "replicated entry {} does not match its payload (length or CRC)",
                header.raft_index
            )));
        }
        let end = self.log_end().0;
        if header.base_offset != end {
            return Err(LogError::RaftOrder(format!(
                "replicated entry {} starts at offset {}, but this log ends at {end}",
                header.raft_index, header.base_offset
            )));
        }
        let batch = AppendBatch {
            payload,
            record_count: header.record_count,
            compression: header.compression,
            payload_crc: header.payload_crc,
            raft: Some((header.raft_term, header.raft_index)),
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
            flags: header.flags,
        };
        self.append_with_flags(batch, header.flags, header.append_time_ms)
    }

    fn append_with_flags(&mut self, batch: AppendBatch<'_>, flags: u16, now_ms: i64) -> Result<Appended, LogError> {
        let batch_len = BATCH_HEADER_LEN + batch.payload.len();
        // Positions in a segment are u32: a batch may be at most half of that (the largest
        // `segment_bytes`), so a segment rolled at `segment_bytes` plus one batch still fits.
        // Not the configured `segment_bytes`: it may shrink while older, larger batches are
        // still replicated to this log (a larger batch then starts a segment of its own).
        let batch_len32 = u32::try_from(batch_len)
            .ok()
            .filter(|l| u64::from(*l) <= format::MAX_SEGMENT_BYTES / 2)
            .ok_or_else(|| LogError::Config(format!("batch of {batch_len} bytes is larger than any segment")))?;
        let (raft_term, raft_index) = batch.raft.unwrap_or(self.last_raft.map_or((0, 1), |(t, i)| (t, i + 1)));
        // Raft indexes strictly increase through the file (lookups by index rely on it); terms
        // never go back. The first entry of an empty log may start anywhere (after a purge).
        if let Some((last_term, last_index)) = self.last_raft {
            if raft_index <= last_index || raft_term < last_term {
                return Err(LogError::RaftOrder(format!(
                    "entry (term {raft_term}, index {raft_index}) after (term {last_term}, index {last_index})"
                )));
            }
        }
        self.maybe_roll(batch_len as u64, batch.record_count, now_ms)?;
        // A control batch takes the time of the batch before it (0 in an empty log), never a
        // clock reading: replicas append it at different moments, and its time must neither
        // differ between them nor hold back the next data batch's time (see `append_control`).
        let control = flags & format::FLAG_CONTROL != 0;
        let append_time_ms =
            if control { self.last_append_time_ms.max(0) } else { now_ms.max(self.last_append_time_ms) };
        let base_offset = self.active().next_offset();
        let header = BatchHeader {
            batch_len: batch_len32,
            compression: batch.compression,
            flags,
            record_count: batch.record_count,
            base_offset,
            raft_term,
            raft_index,
            append_time_ms,
            producer_id: batch.producer_id,
            producer_epoch: batch.producer_epoch,
            base_sequence: batch.base_sequence,
            payload_crc: batch.payload_crc,
            delete_horizon_s: 0,
        };
        let dir = &self.dir;
        let seg = self.segments.values_mut().next_back().unwrap_or_else(|| unreachable!("log has no segment"));
        seg.append(&header, batch.payload).map_err(|e| match e {
            segment::AppendError::Write(e) => LogError::io(format!("appending to {}", dir.display()), e),
            segment::AppendError::RollbackFailed(source) => {
                LogError::Unrecoverable { context: format!("appending to {}", dir.display()), source }
            }
        })?;
        self.last_append_time_ms = append_time_ms;
        self.last_raft = Some((raft_term, raft_index));
        Ok(Appended { base_offset, next_offset: header.next_offset(), append_time_ms, raft_index })
    }

    fn maybe_roll(&mut self, incoming: u64, incoming_records: u32, now_ms: i64) -> Result<(), LogError> {
        let active = self.active();
        // A segment is named by its base offset: one holding no records (only control batches)
        // must not roll, or the next segment would get the same name.
        if active.next_offset() == active.base_offset() {
            return Ok(());
        }
        let too_big = active.size() + incoming > self.config.segment_bytes
            // Index entries store offsets relative to the segment base as u32.
            || active.next_offset() + u64::from(incoming_records) - active.base_offset() > u64::from(u32::MAX);
        let age_limit = i64::try_from(self.config.segment_max_age.as_millis()).unwrap_or(i64::MAX);
        let too_old = active.first_append_time_ms().is_some_and(|t| now_ms.saturating_sub(t) >= age_limit);
        if !(too_big || too_old) {
            return Ok(());
        }
        let base = active.next_offset();
        active.seal().fatal(|| format!("fsync of sealed segment in {}", self.dir.display()))?;
        let seg = Segment::create(&self.dir, base, self.config.index_interval_bytes)
            .ctx(|| format!("creating segment {base} in {}", self.dir.display()))?;
        // The new files' directory entries must survive a power loss too.
        sync_dir(&self.dir).fatal(|| format!("fsync of directory {}", self.dir.display()))?;
        self.segments.insert(base, seg);
        Ok(())
    }

    /// Durability: fsyncs the active segment (sealed ones already are).
    pub fn sync(&self) -> Result<(), LogError> {
        self.active().sync().fatal(|| format!("fsync of {}", self.dir.display()))
    }

    /// The active segment's file, to fsync without holding the log. Everything appended before
    /// this call is durable once that fsync returns (sealed segments were fsynced at roll).
    pub fn active_file(&self) -> Arc<File> {
        self.active().file_handle()
    }

    /// Checks that `offset` is a valid read position: within [log start, log end].
    pub fn check_offset(&self, offset: u64) -> Result<(), LogError> {
        let (start, end) = (self.log_start().0, self.log_end().0);
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange { requested: offset, log_start: start, log_end: end });
        }
        Ok(())
    }

    /// A reader positioned at the batch containing `offset` (or the first batch after it).
    /// `Ok(None)` when `offset` is the log end (nothing to read yet).
    pub fn locate(&self, offset: u64) -> Result<Option<(SegmentReader, u64)>, LogError> {
        self.check_offset(offset)?;
        for (_, seg) in self.segments.range(..=offset).next_back().into_iter().chain(self.segments.range(offset + 1..))
        {
            let target = offset.max(seg.base_offset());
            if let Some(pos) = seg.position_for(target).ctx(|| format!("reading {}", seg.log_path().display()))? {
                return Ok(Some((seg.reader(), pos)));
            }
        }
        Ok(None)
    }

    /// Reads whole record batches from `offset` (see [`SegmentReader::read`]), up to
    /// `max_offset` (exclusive; the high watermark) and about `max_bytes`, from one segment.
    /// Control batches are left out: consumers never see them.
    pub fn read(&self, offset: u64, max_offset: u64, max_bytes: usize) -> Result<Vec<StoredBatch>, LogError> {
        match self.locate(offset)? {
            None => Ok(Vec::new()),
            Some((reader, pos)) => {
                Ok(reader.read_records(pos, max_offset, max_bytes).ctx(|| format!("reading {}", self.dir.display()))?)
            }
        }
    }

    /// The last segment whose first Raft entry is at or below `index`: the only one that can
    /// hold `index`. Raft indexes increase through segments in offset order, so the first
    /// segment whose (cached) last entry reaches `index` holds it if it starts at or below it;
    /// otherwise the segment before it ends just below `index`. One header read at most.
    fn segment_for_raft(&self, index: u64) -> Result<Option<&Segment>, LogError> {
        let mut before = None;
        for seg in self.segments.values() {
            let Some(last) = seg.last_header() else { continue };
            if last.raft_index >= index {
                let first = seg.first_raft_index().ctx(|| format!("reading {}", seg.log_path().display()))?;
                return Ok(if first.is_some_and(|f| f <= index) { Some(seg) } else { before });
            }
            before = Some(seg);
        }
        Ok(before)
    }

    /// The first batch whose Raft index is `index` or more: its segment and position; `None`
    /// if every batch is below `index`.
    fn locate_raft(&self, index: u64) -> Result<Option<(&Segment, u64)>, LogError> {
        let first = self.segment_for_raft(index)?.map_or(0, Segment::base_offset);
        for seg in self.segments.range(first..).map(|(_, s)| s) {
            let found = seg.first_at_or_after_raft(index).ctx(|| format!("reading {}", seg.log_path().display()))?;
            if let Some((pos, _)) = found {
                return Ok(Some((seg, pos)));
            }
        }
        Ok(None)
    }

    /// Reads every stored batch, control batches included, from the first one whose Raft index
    /// is `from_index` or more, about `max_bytes` at most (at least one batch) and from one
    /// segment, for replication. Empty if every batch is below `from_index`.
    pub fn read_raft(&self, from_index: u64, max_bytes: usize) -> Result<Vec<StoredBatch>, LogError> {
        match self.locate_raft(from_index)? {
            None => Ok(Vec::new()),
            Some((seg, pos)) => {
                Ok(seg.reader().read(pos, u64::MAX, max_bytes).ctx(|| format!("reading {}", self.dir.display()))?.0)
            }
        }
    }

    /// Removes every batch whose Raft index is above `index`, or every batch for `None` (a
    /// follower dropping the suffix its leader's log disagrees with). Unlike
    /// [`Log::truncate_suffix`], this separates a control batch from the data batch that shares
    /// its base offset. Durability: fsynced before returning.
    pub fn truncate_after_raft(&mut self, index: Option<u64>) -> Result<(), LogError> {
        let Some((_, last)) = self.last_raft else { return Ok(()) };
        let Some(index) = index else { return self.truncate_at(self.log_start().0, 0) };
        if index >= last {
            return Ok(());
        }
        // Kept: everything up to `index`, which ends in the segment that starts at or below it
        // (at its first entry above `index`, or its end). With no such segment nothing is kept.
        let (base, pos) = match self.segment_for_raft(index)? {
            Some(seg) => {
                let above =
                    seg.first_at_or_after_raft(index + 1).ctx(|| format!("reading {}", seg.log_path().display()))?;
                (seg.base_offset(), above.map_or(seg.size(), |(pos, _)| pos))
            }
            None => (self.log_start().0, 0),
        };
        self.truncate_at(base, pos)
    }

    /// The stored batches with Raft index `index` or below (none for `None`), as slices of the
    /// segment files in offset order: a Raft snapshot's data (see [`snapshot`]). Every segment
    /// up to the cut is listed, a zero-length one included: with no such batch the first
    /// segment's empty prefix still tells the log start, and a cut at a segment's start still
    /// tells that segment's base. So the installing replica gets this log's segment bases and
    /// rolls, and compacts, at the same offsets as this one (replicas clean on their own; only
    /// equal segments give equal compacted records).
    pub fn raft_prefix(&self, index: Option<u64>) -> Result<Vec<SegmentSlice>, LogError> {
        let mut out = Vec::new();
        for seg in self.segments.values() {
            let cut = match (seg.last_header(), index) {
                (Some(_), None) => 0,
                (Some(last), Some(index)) if last.raft_index > index => seg
                    .first_at_or_after_raft(index.saturating_add(1))
                    .ctx(|| format!("reading {}", seg.log_path().display()))?
                    .map_or(seg.size(), |(pos, _)| pos),
                _ => seg.size(),
            };
            out.push(SegmentSlice { base_offset: seg.base_offset(), file: seg.file_handle(), len: cut });
            if cut < seg.size() {
                break;
            }
        }
        Ok(out)
    }

    /// Replaces the whole log with `slices` (another replica's [`Log::raft_prefix`]): a Raft
    /// snapshot install. Crash-safe (see [`snapshot`]); durable on return. The producer snapshot
    /// file is removed with the old segments, since it describes them.
    pub fn install_snapshot(&mut self, slices: &[SegmentSlice]) -> Result<(), LogError> {
        let dir = self.dir.clone();
        // A cleaning of the old log must never finish over the new one.
        swap::discard(&dir).ctx(|| format!("discarding a compaction in {}", dir.display()))?;
        let generation = self.generation + 1;
        snapshot::stage(&dir, slices).ctx(|| format!("staging a snapshot in {}", dir.display()))?;
        snapshot::finish_staged(&dir).fatal(|| format!("installing a snapshot in {}", dir.display()))?;
        let (log, _) = Self::open(&dir, self.config)?;
        *self = Self { generation, ..log };
        Ok(())
    }

    /// Cuts the log at byte `pos` of segment `base`: later segments are deleted, that one is
    /// truncated (and fsynced) and becomes the active segment.
    fn truncate_at(&mut self, base: u64, pos: u64) -> Result<(), LogError> {
        self.generation += 1;
        let doomed: Vec<u64> = self.segments.range(base + 1..).map(|(b, _)| *b).collect();
        for b in doomed.into_iter().rev() {
            if let Some(seg) = self.segments.remove(&b) {
                seg.delete().ctx(|| format!("deleting segment {b}"))?;
            }
        }
        let dir = self.dir.clone();
        let active = self.active_mut();
        active.truncate_at_position(pos).map_err(|e| LogError::Truncate(format!("{}: {e}", dir.display())))?;
        active.sync().fatal(|| format!("fsync after truncation of {}", dir.display()))?;
        let last = self.last_header().copied();
        self.last_raft = last.map(|h| (h.raft_term, h.raft_index));
        // Times of the truncated batches must not hold back the batches that replace them.
        self.last_append_time_ms = last.map_or(i64::MIN, |h| h.append_time_ms);
        Ok(())
    }

    /// Base offset and append time of the first batch appended at or after `timestamp_ms`
    /// (the log start if that batch starts below it); `None` if every batch is older.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<(u64, i64)>, LogError> {
        let start = self.log_start().0;
        for seg in self.segments.values().filter(|s| s.max_append_time_ms().is_some_and(|t| t >= timestamp_ms)) {
            let found =
                seg.offset_for_time(timestamp_ms).ctx(|| format!("time lookup in {}", seg.log_path().display()))?;
            if let Some((offset, time)) = found {
                return Ok(Some((offset.max(start), time)));
            }
        }
        Ok(None)
    }

    /// Calls `f` with the header of every batch from the one containing `from` (clamped to the
    /// log start) to the end, in offset order. Reads headers only, never payloads.
    pub fn scan_headers(&self, from: u64, mut f: impl FnMut(&format::BatchHeader)) -> Result<(), LogError> {
        let from = from.max(self.log_start().0);
        let first = self.segments.range(..=from).next_back().map_or(from, |(b, _)| *b);
        for seg in self.segments.range(first..).map(|(_, s)| s) {
            seg.for_each_header(from.max(seg.base_offset()), &mut f)
                .ctx(|| format!("scanning {}", seg.log_path().display()))?;
        }
        Ok(())
    }

    /// Base offsets of the sealed segments retention would delete now, oldest first: expired
    /// by age, beyond the size limit or wholly below the start floor, and wholly below
    /// `high_watermark` (data consumers have not been allowed to see yet is never deleted).
    /// The active segment never is.
    fn expired_segments(&self, now_ms: i64, high_watermark: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut total = self.size_bytes();
        let sealed = self.segments.len().saturating_sub(1);
        let ends: Vec<u64> = self.segments.keys().skip(1).copied().collect();
        for ((&base, seg), &end) in self.segments.iter().take(sealed).zip(&ends) {
            // A sealed segment covers offsets up to the next one's base (a compacted one may
            // hold none of its last offsets, or none at all).
            if end > high_watermark {
                break;
            }
            let expired = self.config.retention.max_age.is_some_and(|age| {
                let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                seg.max_append_time_ms().is_none_or(|t| now_ms.saturating_sub(t) > age)
            });
            let oversize = self.config.retention.max_bytes.is_some_and(|max| total - seg.size() >= max);
            let deleted = end <= self.start_floor;
            if !(expired || oversize || deleted) {
                break;
            }
            total -= seg.size();
            out.push(base);
        }
        out
    }

    /// The Raft index of the last batch retention would delete now (see
    /// [`Log::apply_retention`]); `None` if it would delete nothing. A replicated partition
    /// purges its Raft log up to here before it deletes.
    pub fn retention_point(&self, now_ms: i64, high_watermark: u64) -> Option<u64> {
        let last = *self.expired_segments(now_ms, high_watermark).last()?;
        self.segments.get(&last)?.last_header().map(|h| h.raft_index)
    }

    /// Deletes whole sealed segments that retention no longer keeps; the log start offset moves
    /// up to the first remaining segment. Only segments wholly below `high_watermark` go, and,
    /// with `raft_limit`, only those whose batches all have Raft index `raft_limit` or less
    /// (the durable purge point: entries a follower may still be sent are never deleted).
    pub fn apply_retention(
        &mut self,
        now_ms: i64,
        high_watermark: u64,
        raft_limit: Option<u64>,
    ) -> Result<RetentionOutcome, LogError> {
        let mut outcome = RetentionOutcome::default();
        for base in self.expired_segments(now_ms, high_watermark) {
            let within_limit =
                |seg: &Segment| raft_limit.is_none_or(|limit| seg.last_header().is_none_or(|h| h.raft_index <= limit));
            if !self.segments.get(&base).is_some_and(within_limit) {
                break;
            }
            let Some(seg) = self.segments.remove(&base) else { break };
            let size = seg.size();
            seg.delete().ctx(|| format!("deleting segment {base} in {}", self.dir.display()))?;
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += size;
        }
        Ok(outcome)
    }

    /// Removes every batch at or after `offset` (a batch boundary at or above the log start):
    /// drops an uncommitted suffix, as a Raft follower must when its leader's log disagrees.
    /// Durability: the truncation is fsynced before returning.
    pub fn truncate_suffix(&mut self, offset: u64) -> Result<(), LogError> {
        let (start, end) = (self.log_start().0, self.log_end().0);
        if offset >= end {
            return Ok(());
        }
        // The segment holding `offset` (or the first one after it) is cut; later ones go.
        let Some((&base, seg)) = self.segments.range(..=offset).next_back() else {
            return Err(LogError::Truncate(format!("offset {offset} is below the log start {start}")));
        };
        let found = seg.batch_for(offset).ctx(|| format!("reading {}", seg.log_path().display()))?;
        // No batch: `offset` is this segment's end, and only later segments go.
        let pos = match found {
            Some((_, h)) if h.base_offset != offset => {
                return Err(LogError::Truncate(format!(
                    "offset {offset} is inside the batch at {}; truncate at a batch boundary",
                    h.base_offset
                )))
            }
            Some((pos, _)) => pos,
            None => seg.size(),
        };
        self.truncate_at(base, pos)?;
        Ok(())
    }
}

/// Starts writing `file`'s dirty pages back without waiting for them (Linux:
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` over the whole file; elsewhere nothing). No
/// durability: only a steady stream of writeback in place of the kernel's bursts, which stall
/// every writer once dirty pages reach its background threshold (docs/PERFORMANCE.md,
/// "fsync=never under sustained load").
#[allow(unsafe_code)]
pub fn start_writeback(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a syscall on a descriptor `file` keeps open for the call; no memory is
        // passed, and offset 0 with length 0 means "to the end of the file".
        let r = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

/// fsyncs a directory, so entries created in it (new segment files) are durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Index files whose log file is gone (a crash between deleting the two) are removed.
fn remove_orphan_indexes(dir: &Path, bases: &[u64]) -> Result<(), LogError> {
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let base = [INDEX_EXT, TIME_INDEX_EXT].iter().find_map(|ext| {
            let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
            parse_log_file_name(&format!("{stem}.{}", format::LOG_EXT))
        });
        if let Some(base) = base {
            if bases.binary_search(&base).is_err() {
                std::fs::remove_file(entry.path()).ctx(|| format!("removing orphan {name}"))?;
            }
        }
    }
    Ok(())
}
