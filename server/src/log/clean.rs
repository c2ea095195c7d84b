//! The log's side of compaction: the sealed segments a cleaner may read without the log's lock,
//! the staging directory it writes into, and the swap of its result ([`swap`](super::swap)).
//! What to keep is decided above the log (`compaction`), which reads payloads; the log only
//! stores bytes.
//!
//! Invariants:
//! - only sealed segments are ever replaced, never the active one;
//! - a swap happens only if every replaced segment is still there, unchanged, and the log was
//!   not replaced wholesale since the cleaner looked ([`Log::generation`](super::Log)): a
//!   cleaning that raced with retention, a truncation or a snapshot install is abandoned;
//! - offsets in a compacted segment increase but may have gaps; the cleaner ends a segment whose
//!   last records went with an empty end batch, so segments stay contiguous; the log start stays
//!   the first segment's base (compaction never moves it).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::{FatalContext, IoContext};
use super::format::{
    parse_log_file_name, segment_file_name, BatchHeader, BATCH_HEADER_LEN, CLEANER_CHECKPOINT_FILE, LOG_EXT,
};
use super::segment::{Segment, SegmentReader};
use super::{start_floor, swap, Log, LogError, StoredBatch};

/// Bytes a rewrite reads from a sealed segment at a time.
const READ_CHUNK: usize = 1 << 20;

/// A sealed segment as the cleaner sees it, read without the log's lock (sealed files never
/// change; a swap replaces them by rename, so an open reader keeps the old bytes).
#[derive(Clone, Debug)]
pub struct SealedSegment {
    pub base_offset: u64,
    /// The base of the next segment: this segment covers offsets `[base_offset, end_offset)`.
    pub end_offset: u64,
    pub size: u64,
    /// Raft index of its last batch (`None` when empty).
    pub last_raft_index: Option<u64>,
    /// Append time of its newest batch.
    pub max_append_time_ms: Option<i64>,
    pub reader: SegmentReader,
}

impl SealedSegment {
    /// Calls `f` with every batch in order (`f` returns false to stop), reading [`READ_CHUNK`]
    /// at a time and calling `on_read` with the bytes of each read (a throttle's hook).
    pub fn for_each_batch<E: From<LogError>>(
        &self,
        mut on_read: impl FnMut(u64),
        mut f: impl FnMut(StoredBatch) -> Result<bool, E>,
    ) -> Result<(), E> {
        let mut pos = 0;
        while pos < self.size {
            let (batches, next) = self
                .reader
                .read(pos, u64::MAX, READ_CHUNK)
                .ctx(|| format!("reading sealed segment {}", self.base_offset))?;
            on_read(next - pos);
            if batches.is_empty() {
                break;
            }
            pos = next;
            for b in batches {
                if !f(b)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// One new segment being written into a staging directory by a rewrite of sealed segments
/// (compaction, the metadata snapshot), named by its base offset. Batches go in as given;
/// the writer only frames them (sets `batch_len`). Durability: [`StagedSegment::finish`]
/// fsyncs the file.
pub struct StagedSegment {
    file: BufWriter<File>,
    base: u64,
    written: u64,
    /// The next offset after the last batch written.
    end: u64,
}

impl StagedSegment {
    pub fn create(staging: &Path, base: u64) -> Result<Self, LogError> {
        let path = staging.join(segment_file_name(base, LOG_EXT));
        let file = File::create(&path).ctx(|| format!("creating {}", path.display()))?;
        Ok(Self { file: BufWriter::with_capacity(1 << 20, file), base, written: 0, end: base })
    }

    pub fn put(&mut self, header: &BatchHeader, payload: &[u8]) -> Result<(), LogError> {
        let h = BatchHeader { batch_len: (BATCH_HEADER_LEN + payload.len()) as u32, ..*header };
        let base = self.base;
        self.file.write_all(&h.encode()).ctx(|| format!("writing staged segment {base}"))?;
        self.file.write_all(payload).ctx(|| format!("writing staged segment {base}"))?;
        self.written += u64::from(h.batch_len);
        self.end = self.end.max(h.next_offset());
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Ends the segment at `end` (the next segment's base): if its last records went, an
    /// empty end batch there carries `last`'s Raft term and index, so segments stay
    /// contiguous and a replica installing them as a Raft snapshot ends its log at the right
    /// offset with the last entry's id. Then flushes and fsyncs; returns the bytes written.
    pub fn finish(mut self, end: u64, last: &BatchHeader) -> Result<u64, LogError> {
        if self.end < end {
            let marker = BatchHeader {
                batch_len: 0,
                compression: 0,
                flags: 0,
                record_count: 0,
                base_offset: end,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                payload_crc: tidelog_proto::checksum::crc32c(&[]),
                delete_horizon_s: 0,
                ..*last
            };
            self.put(&marker, &[])?;
        }
        let base = self.base;
        let file =
            self.file.into_inner().map_err(|e| e.into_error()).ctx(|| format!("writing staged segment {base}"))?;
        file.sync_all().ctx(|| format!("fsync of staged segment {base}"))?;
        Ok(self.written)
    }
}

/// Fsyncs a staging directory once its segments are written.
pub fn sync_staging(staging: &Path) -> Result<(), LogError> {
    File::open(staging).and_then(|d| d.sync_all()).ctx(|| format!("fsync of {}", staging.display()))
}

impl Log {
    /// The sealed segments in offset order, with the log's generation (pass it back to
    /// [`Log::swap_cleaned`]).
    pub fn sealed_segments(&self) -> (u64, Vec<SealedSegment>) {
        let segs: Vec<&Segment> = self.segments.values().collect();
        let out = segs
            .windows(2)
            .map(|w| SealedSegment {
                base_offset: w[0].base_offset(),
                end_offset: w[1].base_offset(),
                size: w[0].size(),
                last_raft_index: w[0].last_header().map(|h| h.raft_index),
                max_append_time_ms: w[0].max_append_time_ms(),
                reader: w[0].reader(),
            })
            .collect();
        (self.generation, out)
    }

    /// The offset below which the log was compacted (the first dirty offset); 0 = never.
    pub fn cleaner_checkpoint(&self) -> u64 {
        self.cleaner_checkpoint
    }

    /// A fresh, empty directory for a cleaning's new segments (any leftover is removed).
    pub fn clean_staging(&self) -> Result<PathBuf, LogError> {
        swap::create_staging(&self.dir).ctx(|| format!("creating the compaction staging in {}", self.dir.display()))
    }

    /// Builds the indexes of the segments staged in `staging` (a full scan of each, checking
    /// every batch), so the swap under the log's lock has nothing left to scan.
    pub fn index_staged(staging: &Path, index_interval_bytes: u64) -> Result<(), LogError> {
        for entry in std::fs::read_dir(staging).ctx(|| format!("listing {}", staging.display()))? {
            let entry = entry.ctx(|| format!("listing {}", staging.display()))?;
            if let Some(base) = parse_log_file_name(&entry.file_name().to_string_lossy()) {
                let (seg, report) = Segment::open(staging, base, index_interval_bytes)
                    .ctx(|| format!("indexing staged segment {base} in {}", staging.display()))?;
                if report.truncated_bytes > 0 {
                    return Err(LogError::Config(format!(
                        "staged segment {base} in {} is not valid: {:?}",
                        staging.display(),
                        report.stopped_by
                    )));
                }
                seg.seal().ctx(|| format!("fsync of staged segment {base} and its indexes"))?;
            }
        }
        Ok(())
    }

    /// Removes a cleaning's staging directory (an abandoned cleaning).
    pub fn abandon_clean(&self) -> Result<(), LogError> {
        swap::discard(&self.dir).ctx(|| format!("discarding the compaction staging in {}", self.dir.display()))
    }

    /// Replaces the sealed segments `replaced` (base offset and size, as
    /// [`Log::sealed_segments`] reported them in `generation`) by the segments staged in
    /// [`Log::clean_staging`], crash-safely (see [`swap`]), and moves the cleaner checkpoint to
    /// `checkpoint`. Returns false (and discards the staging) if the log changed meanwhile.
    /// Durability: durable on return.
    pub fn swap_cleaned(
        &mut self,
        generation: u64,
        replaced: &[(u64, u64)],
        checkpoint: u64,
    ) -> Result<bool, LogError> {
        let active = self.active().base_offset();
        let unchanged = generation == self.generation
            && replaced
                .iter()
                .all(|(base, size)| *base != active && self.segments.get(base).is_some_and(|s| s.size() == *size));
        if !unchanged || replaced.is_empty() {
            self.abandon_clean()?;
            return Ok(false);
        }
        let dir = self.dir.clone();
        let bases: Vec<u64> = replaced.iter().map(|(b, _)| *b).collect();
        let staging = dir.join(super::format::CLEAN_STAGING_DIR);
        let staged: Vec<u64> =
            bases.iter().copied().filter(|b| staging.join(segment_file_name(*b, LOG_EXT)).exists()).collect();
        // A cleaning names its output after replaced segments; anything else is not its own.
        swap::crash_point("staged");
        if let Err(e) = swap::commit(&dir, &bases, &staged) {
            // The manifest may be on disk: if it stayed, a restart would finish this swap over
            // whatever the log did meanwhile. Remove it with the staging, or stop the partition.
            swap::discard(&dir).fatal(|| format!("discarding a failed compaction commit in {}", dir.display()))?;
            return Err(LogError::io(format!("committing a compaction in {}", dir.display()), e));
        }
        swap::crash_point("committed");
        // From here the swap is decided: a failure must stop the partition, and a restart
        // finishes it (`Log::open`).
        swap::finish_staged(&dir).fatal(|| format!("swapping compacted segments in {}", dir.display()))?;
        for base in &bases {
            self.segments.remove(base);
        }
        for base in staged {
            {
                let (seg, _) = Segment::open(&dir, base, self.config.index_interval_bytes)
                    .fatal(|| format!("opening compacted segment {base} in {}", dir.display()))?;
                self.segments.insert(base, seg);
            }
        }
        self.set_cleaner_checkpoint(checkpoint)?;
        Ok(true)
    }

    /// Stores the cleaner checkpoint (a stale one only makes the next cleaning redo work).
    fn set_cleaner_checkpoint(&mut self, offset: u64) -> Result<(), LogError> {
        if offset != self.cleaner_checkpoint {
            start_floor::store_u64(&self.dir, CLEANER_CHECKPOINT_FILE, offset)
                .ctx(|| format!("storing the cleaner checkpoint in {}", self.dir.display()))?;
            self.cleaner_checkpoint = offset;
        }
        Ok(())
    }
}
