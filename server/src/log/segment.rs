//! A segment: one `.log` file of batches and its two sparse indexes, covering a contiguous
//! range of offsets starting at `base_offset`. It holds one file descriptor, its log's (the
//! indexes open their files only to write a run of entries: `index.rs`).
//!
//! Invariants:
//! - offsets increase: each batch starts at or after the offset where the previous one ended
//!   (after it exactly, except in a compacted segment, `log/clean.rs`), and the file holds
//!   nothing after the last valid batch (`size` is the file length);
//! - only the active (last) segment of a log is ever appended to or truncated;
//! - a sealed segment (the log rolled past it) has been fsynced with its indexes, so crash
//!   recovery only has to look at the active segment;
//! - readers get an `Arc<File>` and read with `pread`, or map the range a large committed read
//!   covers (`mapped.rs`); they never move the file cursor, which belongs to the writer (the
//!   holder of `&mut Segment`);
//! - the file shrinks at run time only in `truncate_at_position`, under the segment's
//!   [`ShrinkGate`] held exclusively (a mapped page past the file's end is a SIGBUS).

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::format::{segment_file_name, BatchHeader, BATCH_HEADER_LEN, INDEX_EXT, LOG_EXT, TIME_INDEX_EXT};
use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use super::mapped::{self, ShrinkGate, MAP_MIN_BYTES};
use super::recovery::{header_at, scan_tail, ScanStart, TailScan};

/// Why an append failed.
#[derive(Debug)]
pub enum AppendError {
    /// Nothing was written (or it was rolled back): the segment is as before.
    Write(io::Error),
    /// A partial write could not be rolled back: the segment's state is uncertain.
    RollbackFailed(io::Error),
}

/// A batch read back from a segment: its header and the producer's payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBatch {
    pub header: BatchHeader,
    /// The payload exactly as the producer sent it (a slice of the read buffer, not a copy).
    pub payload: Bytes,
}

/// What opening a segment found.
#[derive(Debug)]
pub struct OpenReport {
    /// Bytes cut from the end of the file (a torn or corrupt tail).
    pub truncated_bytes: u64,
    pub batches_checked: u64,
    pub index_rebuilt: bool,
    pub stopped_by: Option<String>,
}

#[derive(Debug)]
pub struct Segment {
    base_offset: u64,
    log_path: PathBuf,
    file: Arc<File>,
    /// Shared with every reader: mapped reads against this file's truncation.
    shrink: ShrinkGate,
    size: u64,
    next_offset: u64,
    last_header: Option<BatchHeader>,
    index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index: u64,
    index_interval_bytes: u64,
}

/// Whether the batch after `bytes_since_index` unindexed bytes gets an index entry (the same
/// rule at append and in recovery). Control batches never do: they share their base offset
/// with the next data batch, and index offsets must strictly increase.
pub(super) fn wants_index_entry(bytes_since_index: u64, interval: u64, header: &BatchHeader) -> bool {
    bytes_since_index >= interval && !header.is_control()
}

fn paths(dir: &Path, base: u64) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(segment_file_name(base, LOG_EXT)),
        dir.join(segment_file_name(base, INDEX_EXT)),
        dir.join(segment_file_name(base, TIME_INDEX_EXT)),
    )
}

impl Segment {
    /// Creates an empty segment. Durability: the new files are not fsynced; an empty segment
    /// lost in a crash is simply recreated.
    pub fn create(dir: &Path, base_offset: u64, index_interval_bytes: u64) -> io::Result<Self> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&log_path)?;
        let (index, _) = OffsetIndex::open(&index_path, base_offset)?;
        let (time_index, _) = TimeIndex::open(&time_path, base_offset)?;
        Ok(Self {
            base_offset,
            log_path,
            file: Arc::new(file),
            shrink: ShrinkGate::default(),
            size: 0,
            next_offset: base_offset,
            last_header: None,
            index,
            time_index,
            bytes_since_index: index_interval_bytes,
            index_interval_bytes,
        })
    }

    /// Opens an existing segment and recovers it: scans from the last index entry that points at
    /// a valid batch, truncates whatever follows the last valid batch, and rebuilds indexes that
    /// are missing or damaged (a full scan of this one segment).
    pub fn open(dir: &Path, base_offset: u64, index_interval_bytes: u64) -> io::Result<(Self, OpenReport)> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let indexes_existed = index_path.exists() && time_path.exists();
        let file = OpenOptions::new().read(true).write(true).open(&log_path)?;
        let file_len = file.metadata()?.len();
        let (mut index, index_damaged) = OffsetIndex::open(&index_path, base_offset)?;
        let (mut time_index, time_damaged) = TimeIndex::open(&time_path, base_offset)?;
        let rebuild = file_len > 0 && (!indexes_existed || index_damaged || time_damaged);
        if rebuild {
            index.replace(Vec::new())?;
            time_index.replace(Vec::new())?;
        }

        // Scan from the last index entry whose batch is valid. An entry whose header is bad, or
        // whose batch fails its payload CRC (nothing checked from there), is dropped and the
        // entry before it tried.
        let (start, scan) = loop {
            let start = match index.last().copied() {
                Some(e) if header_at(&file, file_len, u64::from(e.position), e.offset)?.is_some() => {
                    ScanStart { position: u64::from(e.position), offset: e.offset, index_first: false }
                }
                Some(e) => {
                    index.truncate_while(|x| x.offset < e.offset)?;
                    continue;
                }
                None => ScanStart { position: 0, offset: base_offset, index_first: true },
            };
            let scan: TailScan = scan_tail(&log_path, start, index_interval_bytes)?;
            if scan.batches_checked == 0 && !start.index_first {
                index.truncate_while(|x| x.offset < start.offset)?;
                continue;
            }
            break (start, scan);
        };
        // Both indexes keep only entries up to the scan start; the scan supplies the rest, so
        // no entry can point past the valid end.
        let keep = |offset: u64| !start.index_first && offset <= start.offset;
        index.truncate_while(|x| keep(x.offset))?;
        time_index.truncate_while(|x| keep(x.offset))?;
        let truncated_bytes = file_len - scan.valid_end;
        if truncated_bytes > 0 {
            file.set_len(scan.valid_end)?;
        }
        for e in &scan.offset_entries {
            index.append(*e)?;
        }
        for e in &scan.time_entries {
            time_index.append(*e)?;
        }
        // Recovery leaves both files whole: nothing of an opened segment waits in memory.
        index.write_pending()?;
        time_index.write_pending()?;
        let mut file = file;
        file.seek(SeekFrom::Start(scan.valid_end))?;
        let report = OpenReport {
            truncated_bytes,
            batches_checked: scan.batches_checked,
            index_rebuilt: rebuild,
            stopped_by: scan.stopped_by,
        };
        Ok((
            Self {
                base_offset,
                log_path,
                file: Arc::new(file),
                shrink: ShrinkGate::default(),
                size: scan.valid_end,
                next_offset: scan.next_offset,
                last_header: scan.last_header,
                index,
                time_index,
                bytes_since_index: scan.bytes_since_index,
                index_interval_bytes,
            },
            report,
        ))
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn last_header(&self) -> Option<&BatchHeader> {
        self.last_header.as_ref()
    }
    /// Append time of the newest batch, if any.
    pub fn max_append_time_ms(&self) -> Option<i64> {
        self.last_header.map(|h| h.append_time_ms)
    }
    /// Append time of the oldest batch, if any (from the time index's first entry, which
    /// always describes the first batch).
    pub fn first_append_time_ms(&self) -> Option<i64> {
        self.time_index.entries().first().map(|e| e.timestamp_ms)
    }
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Appends one batch (header then payload, one `writev`). Durability: handed to the OS
    /// only; the caller fsyncs per its policy with [`Segment::sync`].
    ///
    /// On a write error (full disk, I/O error) the file is cut back to its previous length, so
    /// a failed append leaves no partial batch behind.
    pub fn append(&mut self, header: &BatchHeader, payload: &[u8]) -> Result<(), AppendError> {
        debug_assert_eq!(header.base_offset, self.next_offset);
        debug_assert_eq!(header.batch_len as usize, BATCH_HEADER_LEN + payload.len());
        let encoded = header.encode();
        let position = self.size;
        if let Err(e) = write_two(&self.file, &encoded, payload) {
            // Put the file back as it was, so the failed append leaves nothing behind.
            let rollback = self.file.set_len(position).and_then(|()| (&*self.file).seek(SeekFrom::Start(position)));
            if let Err(r) = rollback {
                return Err(AppendError::RollbackFailed(io::Error::new(r.kind(), format!("{e}; rollback: {r}"))));
            }
            return Err(AppendError::Write(e));
        }
        self.size += u64::from(header.batch_len);
        self.next_offset = header.next_offset();
        self.last_header = Some(*header);
        if wants_index_entry(self.bytes_since_index, self.index_interval_bytes, header) {
            // Written after the batch itself (see index.rs invariants). The batch is already in
            // the log, so an index write failure must not fail the append (the caller would
            // report an error for stored data, and a retry would duplicate it): indexes are
            // sparse and are rebuilt at startup if damaged.
            let offset_entry = OffsetEntry { offset: header.base_offset, position: position as u32 };
            let time_entry = TimeEntry { timestamp_ms: header.append_time_ms, offset: header.base_offset };
            if let Err(e) = self.index.append(offset_entry).and_then(|()| self.time_index.append(time_entry)) {
                tracing::warn!(segment = %self.log_path.display(), error = %e, "index write failed; rebuilt at restart");
            }
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += u64::from(header.batch_len);
        Ok(())
    }

    /// Durability: fsyncs the log file's data (not its indexes, which recovery can rebuild).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// A handle for fsyncing without holding the log (group commit).
    pub fn file_handle(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Durability: fsyncs the log file and both indexes; called when the log rolls past this
    /// segment, so sealed segments never need recovery.
    pub fn seal(&self) -> io::Result<()> {
        self.file.sync_all()?;
        self.index.sync()?;
        self.time_index.sync()
    }

    /// File position of the batch that contains `offset`, or of the first batch after it;
    /// `None` if `offset` is at or past the segment's end.
    pub fn position_for(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok(self.batch_for(offset)?.map(|(pos, _)| pos))
    }

    /// [`Segment::position_for`], with the batch's header.
    pub fn batch_for(&self, offset: u64) -> io::Result<Option<(u64, BatchHeader)>> {
        if offset >= self.next_offset {
            return Ok(None);
        }
        let floor = self.index.floor_by(|e| e.offset <= offset);
        self.find_from(floor.map_or(0, |e| u64::from(e.position)), |h| h.next_offset() > offset)
    }

    /// Walks the batch headers from byte `pos` (a batch boundary) to the end; returns the
    /// first batch for which `pred` holds, with its position.
    fn find_from(
        &self,
        mut pos: u64,
        mut pred: impl FnMut(&BatchHeader) -> bool,
    ) -> io::Result<Option<(u64, BatchHeader)>> {
        while pos < self.size {
            let h = self.read_header(pos)?;
            if pred(&h) {
                return Ok(Some((pos, h)));
            }
            pos += u64::from(h.batch_len);
        }
        Ok(None)
    }

    /// Base offset and append time of the first batch appended at or after `timestamp_ms`, if
    /// this segment has one.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> io::Result<Option<(u64, i64)>> {
        if self.max_append_time_ms().is_none_or(|t| t < timestamp_ms) {
            return Ok(None);
        }
        // Start at the last indexed batch older than the target; scan forward.
        let from = self.time_index.floor_by(|e| e.timestamp_ms < timestamp_ms).map_or(self.base_offset, |e| e.offset);
        let pos = self.position_for(from)?.unwrap_or(self.size);
        // Only batches with records: not control batches, not a compacted log's empty ones.
        let found = self.find_from(pos, |h| h.append_time_ms >= timestamp_ms && h.is_served())?;
        Ok(found.map(|(_, h)| (h.base_offset, h.append_time_ms)))
    }

    /// Calls `f` with the header of every batch that ends after `from_offset` or starts at or
    /// after it, in order.
    pub fn for_each_header(&self, from_offset: u64, f: &mut impl FnMut(&BatchHeader)) -> io::Result<()> {
        // Also a batch that starts at `from_offset` and holds no records (a compacted log's
        // empty batch: a replay of the headers must see it).
        let floor = self.index.floor_by(|e| e.offset <= from_offset).map_or(0, |e| u64::from(e.position));
        let first = self.find_from(floor, |h| h.next_offset() > from_offset || h.base_offset >= from_offset)?;
        let Some((pos, _)) = first else { return Ok(()) };
        self.find_from(pos, |h| {
            f(h);
            false
        })?;
        Ok(())
    }

    /// Raft index of the segment's first batch; `None` if the segment is empty.
    pub fn first_raft_index(&self) -> io::Result<Option<u64>> {
        if self.size == 0 {
            return Ok(None);
        }
        Ok(Some(self.read_header(0)?.raft_index))
    }

    /// Position of the batch whose Raft index is `index`; `None` if no batch here has it.
    pub fn position_for_raft(&self, index: u64) -> io::Result<Option<u64>> {
        Ok(self.first_at_or_after_raft(index)?.filter(|(_, h)| h.raft_index == index).map(|(pos, _)| pos))
    }

    /// The first batch whose Raft index is `index` or more, with its position; `None` if every
    /// batch here is below `index`. Raft indexes increase with position (in a compacted segment
    /// they never decrease, and the runs cut from one batch share its index: the answer may then
    /// be any of them, which no caller minds, as none looks below the purge point), so the sparse offset
    /// index is binary-searched by the Raft index of the batch each entry points at (a header
    /// read per probe, page-cached), then the headers after the floor entry are scanned (at
    /// most one index interval).
    pub fn first_at_or_after_raft(&self, index: u64) -> io::Result<Option<(u64, BatchHeader)>> {
        if self.last_header.is_none_or(|h| h.raft_index < index) {
            return Ok(None);
        }
        let entries = self.index.entries();
        let (mut lo, mut hi) = (0usize, entries.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.read_header(u64::from(entries[mid].position))?.raft_index <= index {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let floor = if lo == 0 { 0 } else { u64::from(entries[lo - 1].position) };
        self.find_from(floor, |h| h.raft_index >= index)
    }

    fn read_header(&self, pos: u64) -> io::Result<BatchHeader> {
        let mut buf = [0u8; BATCH_HEADER_LEN];
        self.file.read_exact_at(&mut buf, pos)?;
        BatchHeader::decode(&buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: bad header at {pos}: {e:?}", self.log_path.display()),
            )
        })
    }

    /// A read-only view for reading batches outside the log's lock.
    pub fn reader(&self) -> SegmentReader {
        SegmentReader {
            file: Arc::clone(&self.file),
            shrink: self.shrink.clone(),
            size: self.size,
            path: self.log_path.clone(),
        }
    }

    /// Removes every batch from byte `pos` on; `pos` must be a batch boundary (the position of
    /// a batch, or the end). Used to drop an uncommitted suffix (Raft). The caller fsyncs.
    pub fn truncate_at_position(&mut self, pos: u64) -> io::Result<()> {
        if pos >= self.size {
            return Ok(());
        }
        // A valid header here proves `pos` is a boundary (its CRC would not match otherwise).
        let h = self.read_header(pos)?;
        // No mapped read is looking at a header while the file shrinks (`mapped.rs`).
        let gate = self.shrink.shrinking();
        self.file.set_len(pos)?;
        drop(gate);
        (&*self.file).seek(SeekFrom::Start(pos))?;
        self.index.truncate_while(|e| u64::from(e.position) < pos)?;
        // Every batch before `pos` ends at or before `h.base_offset`, so time entries of kept
        // batches have smaller offsets (a control batch at `pos` shares its offset only with
        // batches after it).
        self.time_index.truncate_while(|e| e.offset < h.base_offset)?;
        // Re-derive the tail state from the last remaining index entry.
        let start = match self.index.last() {
            Some(e) => ScanStart { position: u64::from(e.position), offset: e.offset, index_first: false },
            None => ScanStart { position: 0, offset: self.base_offset, index_first: true },
        };
        let scan = scan_tail(&self.log_path, start, self.index_interval_bytes)?;
        debug_assert_eq!(scan.valid_end, pos, "truncation left an invalid tail");
        self.size = pos;
        self.next_offset = scan.next_offset;
        self.last_header = scan.last_header;
        self.bytes_since_index = scan.bytes_since_index;
        Ok(())
    }

    /// Deletes the segment's files. The caller has already removed it from the log.
    pub fn delete(self) -> io::Result<()> {
        let dir = self.log_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let (log, index, time) = paths(&dir, self.base_offset);
        std::fs::remove_file(log)?;
        for p in [index, time] {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes `a` then `b` at the file cursor with as few syscalls as the kernel allows.
fn write_two(mut file: &File, a: &[u8], b: &[u8]) -> io::Result<()> {
    let total = a.len() + b.len();
    let mut written = 0;
    while written < total {
        let res = if written < a.len() {
            file.write_vectored(&[IoSlice::new(&a[written..]), IoSlice::new(b)])
        } else {
            file.write(&b[written - a.len()..])
        };
        match res {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "log write returned 0 bytes")),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads whole batches from a segment without the log's lock (positional reads only).
#[derive(Debug, Clone)]
pub struct SegmentReader {
    file: Arc<File>,
    shrink: ShrinkGate,
    /// Readable length, fixed when the reader was made: bytes past it may be half-written.
    size: u64,
    path: PathBuf,
}

impl SegmentReader {
    /// Reads whole batches starting at `position`, stopping before a batch whose base offset is
    /// `>= max_offset`, once `max_bytes` would be exceeded, or at the end. The first batch is
    /// returned even if it alone exceeds `max_bytes`, so a reader always makes progress.
    /// One `pread` for the chunk (two if the first batch is larger than `max_bytes`); batch
    /// payloads are slices of that one buffer.
    pub fn read(&self, position: u64, max_offset: u64, max_bytes: usize) -> io::Result<(Vec<StoredBatch>, u64)> {
        if position >= self.size {
            return Ok((Vec::new(), position));
        }
        let mut want = self.wanted(position, max_bytes);
        let mut buf = self.pread(position, want)?;
        let first = self.decode(&buf, position)?;
        if first.batch_len as usize > want {
            want = first.batch_len as usize;
            buf = self.pread(position, want)?;
        }
        self.batches(buf.freeze(), position, max_offset)
    }

    /// [`SegmentReader::read`] below `committed`, an offset Raft will never truncate (the high
    /// watermark or the last stable offset): a read of [`MAP_MIN_BYTES`] or more hands out
    /// slices of a mapping of the file instead of a copy (`mapped.rs`, whose invariants this
    /// keeps: headers are read under the shrink gate, and no batch at or past `committed` is
    /// handed out).
    pub fn read_committed(
        &self,
        position: u64,
        committed: u64,
        max_bytes: usize,
    ) -> io::Result<(Vec<StoredBatch>, u64)> {
        if position >= self.size {
            return self.read(position, committed, max_bytes);
        }
        let mut want = self.wanted(position, max_bytes);
        if want < MAP_MIN_BYTES {
            return self.read(position, committed, max_bytes);
        }
        let _reading = self.shrink.reading();
        // A mapping that cannot be made (`vm.max_map_count` reached, no address space) falls
        // back to the copy, which still works.
        let Ok(mut buf) = mapped::map(&self.file, position, want) else {
            return self.read(position, committed, max_bytes);
        };
        let first = self.decode(&buf, position)?;
        if first.batch_len as usize > want {
            want = first.batch_len as usize;
            if position + want as u64 > self.size {
                return Err(self.short(position, want));
            }
            let Ok(whole) = mapped::map(&self.file, position, want) else {
                return self.read(position, committed, max_bytes);
            };
            buf = whole;
        }
        self.batches(buf, position, committed)
    }

    /// How much a read of `max_bytes` from `position` asks for: never less than one header.
    fn wanted(&self, position: u64, max_bytes: usize) -> usize {
        ((self.size - position) as usize).min(max_bytes.max(BATCH_HEADER_LEN))
    }

    /// The whole batches in `buf` (the file's bytes from `position`), stopping before one whose
    /// base offset is `max_offset` or more; and the position after the last one.
    fn batches(&self, buf: Bytes, position: u64, max_offset: u64) -> io::Result<(Vec<StoredBatch>, u64)> {
        let mut batches = Vec::new();
        let mut at = 0usize;
        while at + BATCH_HEADER_LEN <= buf.len() {
            let header = self.decode(&buf[at..], position + at as u64)?;
            let end = at + header.batch_len as usize;
            if header.base_offset >= max_offset || end > buf.len() {
                break;
            }
            batches.push(StoredBatch { header, payload: buf.slice(at + BATCH_HEADER_LEN..end) });
            at = end;
        }
        Ok((batches, position + at as u64))
    }

    /// [`SegmentReader::read`] for consumers: control batches (Raft entries that are not
    /// records) and empty batches (a compacted producer's last header) are left out, so no
    /// consumer path can serve one.
    pub fn read_records(&self, position: u64, max_offset: u64, max_bytes: usize) -> io::Result<Vec<StoredBatch>> {
        let (mut batches, _) = self.read(position, max_offset, max_bytes)?;
        batches.retain(|b| b.header.is_served());
        Ok(batches)
    }

    /// `len` bytes at `position` into a new buffer, read straight into its capacity: zeroing
    /// it first (as `read_exact_at` on a `&mut [u8]` needs) cost consumers 6 % of the broker's
    /// CPU on 1 MiB reads, a pass over every byte that the read overwrites anyway.
    #[allow(unsafe_code)]
    fn pread(&self, position: u64, len: usize) -> io::Result<BytesMut> {
        use std::os::fd::AsRawFd;
        let mut buf = BytesMut::with_capacity(len);
        let mut filled = 0usize;
        while filled < len {
            let offset = libc::off_t::try_from(position + filled as u64)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "read position past off_t"))?;
            // SAFETY: the destination is the buffer's spare capacity from `filled` on, at
            // least `len - filled` bytes (capacity >= len); the kernel writes at most that
            // many. `set_len` below covers only bytes a pread returned, so no uninitialised
            // byte is ever exposed.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    buf.spare_capacity_mut().as_mut_ptr().cast::<libc::c_void>(),
                    len - filled,
                    offset,
                )
            };
            match n {
                0 => return Err(self.short(position, len - filled)),
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                n => {
                    filled += n as usize;
                    // SAFETY: the kernel initialised bytes [0, filled) of the buffer.
                    unsafe { buf.set_len(filled) };
                }
            }
        }
        Ok(buf)
    }

    /// A read that found `missing` bytes fewer than it needed at `position`.
    fn short(&self, position: u64, missing: usize) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{}: {missing} bytes short at {position}", self.path.display()),
        )
    }

    fn decode(&self, bytes: &[u8], position: u64) -> io::Result<BatchHeader> {
        BatchHeader::decode(bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: bad header at {position}: {e:?}", self.path.display()),
            )
        })
    }
}
