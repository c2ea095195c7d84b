//! Sparse indexes beside each segment: offset → file position, and append time → offset.
//!
//! An index is an append-only file of fixed-size entries mirrored in memory (a segment of
//! 1 GiB with one entry per 4 KiB of log holds 256 Ki entries, 2 MiB). Entries are added at most
//! once per `index_interval_bytes` of log, so index I/O is a small fraction of log I/O.
//!
//! An index holds no open file: lookups use the memory mirror, and new entries are written in
//! runs of [`WRITE_EVERY`] (opening the file for each run), when the segment is sealed, and
//! when the index is dropped. So a segment costs one file descriptor (its log), not three: at
//! 10,000 partitions the indexes would otherwise hold 20,000 descriptors. A process kill loses
//! at most `WRITE_EVERY - 1` unwritten entries per index, which recovery re-derives by
//! scanning from the last written one (`WRITE_EVERY` index intervals of log at most).
//!
//! Invariants:
//! - entries are strictly increasing in offset, and non-decreasing in position and time;
//! - an entry is written only after the batch it points at has been written to the log file,
//!   so after a crash an entry may be missing but never points at bytes that were never written
//!   (recovery still verifies the batch an entry points at: the OS may write pages back in any
//!   order after a power loss);
//! - the index is never the source of truth: a missing or damaged index is rebuilt from the log.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::format::{INDEX_ENTRY_LEN, TIME_INDEX_ENTRY_LEN};

/// One fixed-size index entry; offsets are absolute in memory, relative to the segment base on
/// disk.
pub trait IndexEntry: Copy + std::fmt::Debug {
    const LEN: usize;
    fn offset(&self) -> u64;
    /// The entry must not come after `prev` (monotonic order checks).
    fn follows(&self, prev: &Self) -> bool;
    fn encode(&self, base: u64, out: &mut [u8]);
    fn decode(base: u64, bytes: &[u8]) -> Self;
}

/// Offset index entry: the batch starting at `offset` is at file position `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    pub offset: u64,
    pub position: u32,
}

/// Time index entry: the batch starting at `offset` was appended at `timestamp_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp_ms: i64,
    pub offset: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl IndexEntry for OffsetEntry {
    const LEN: usize = INDEX_ENTRY_LEN;
    fn offset(&self) -> u64 {
        self.offset
    }
    fn follows(&self, prev: &Self) -> bool {
        self.offset > prev.offset && self.position > prev.position
    }
    fn encode(&self, base: u64, out: &mut [u8]) {
        // Relative offsets fit a u32: a segment (< 4 GiB) holds fewer than 2^32 records.
        out[..4].copy_from_slice(&((self.offset - base) as u32).to_le_bytes());
        out[4..8].copy_from_slice(&self.position.to_le_bytes());
    }
    fn decode(base: u64, b: &[u8]) -> Self {
        Self { offset: base + u64::from(u32_at(b, 0)), position: u32_at(b, 4) }
    }
}

impl IndexEntry for TimeEntry {
    const LEN: usize = TIME_INDEX_ENTRY_LEN;
    fn offset(&self) -> u64 {
        self.offset
    }
    fn follows(&self, prev: &Self) -> bool {
        self.offset > prev.offset && self.timestamp_ms >= prev.timestamp_ms
    }
    fn encode(&self, base: u64, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        out[8..12].copy_from_slice(&((self.offset - base) as u32).to_le_bytes());
    }
    fn decode(base: u64, b: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[..8]);
        Self { timestamp_ms: i64::from_le_bytes(ts), offset: base + u64::from(u32_at(b, 8)) }
    }
}

/// Entries kept in memory before they are written to the index file as one run.
pub const WRITE_EVERY: usize = 64;

/// A sparse index file and its in-memory mirror.
#[derive(Debug)]
pub struct SparseIndex<E: IndexEntry> {
    path: PathBuf,
    base: u64,
    entries: Vec<E>,
    /// How many of `entries` (a prefix) the file holds. Atomic so that [`SparseIndex::sync`]
    /// (called through `&self` when a segment is sealed) can write the rest.
    on_disk: AtomicUsize,
}

pub type OffsetIndex = SparseIndex<OffsetEntry>;
pub type TimeIndex = SparseIndex<TimeEntry>;

impl<E: IndexEntry> SparseIndex<E> {
    /// Opens (or creates) the index file and loads its entries. A trailing partial entry or the
    /// first entry out of order ends the index there (the file is truncated to match).
    /// Returns the index and whether it had to be cut (the caller may then rebuild it).
    pub fn open(path: &Path, base: u64) -> io::Result<(Self, bool)> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        drop(file);
        let mut entries: Vec<E> = Vec::with_capacity(raw.len() / E::LEN);
        let mut damaged = raw.len() % E::LEN != 0;
        for chunk in raw.chunks_exact(E::LEN) {
            let e = E::decode(base, chunk);
            let in_order = match entries.last() {
                Some(prev) => e.follows(prev),
                None => e.offset() >= base,
            };
            if !in_order {
                damaged = true;
                break;
            }
            entries.push(e);
        }
        let on_disk = AtomicUsize::new(entries.len());
        let mut index = Self { path: path.to_path_buf(), base, entries, on_disk };
        if damaged {
            index.rewrite()?;
        }
        Ok((index, damaged))
    }

    pub fn entries(&self) -> &[E] {
        &self.entries
    }

    pub fn last(&self) -> Option<&E> {
        self.entries.last()
    }

    /// Appends an entry. Durability: in memory; written to the OS (page cache) with the next
    /// run of [`WRITE_EVERY`]; indexes are rebuildable and are fsynced when their segment is
    /// sealed.
    pub fn append(&mut self, entry: E) -> io::Result<()> {
        if let Some(prev) = self.entries.last() {
            debug_assert!(entry.follows(prev), "index entries out of order: {prev:?} then {entry:?}");
        }
        self.entries.push(entry);
        if self.entries.len() - self.on_disk.load(Ordering::Relaxed) >= WRITE_EVERY {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Writes the entries the file does not hold yet, at its end. The file must exist (it
    /// is never created here: a deleted segment's index stays deleted).
    pub fn write_pending(&self) -> io::Result<()> {
        let from = self.on_disk.load(Ordering::Relaxed);
        if from >= self.entries.len() {
            return Ok(());
        }
        let mut raw = vec![0u8; (self.entries.len() - from) * E::LEN];
        for (e, chunk) in self.entries[from..].iter().zip(raw.chunks_exact_mut(E::LEN)) {
            e.encode(self.base, chunk);
        }
        // Whatever happens, these entries are not written again: a failed write leaves a
        // gap or a torn entry, which recovery handles (a gap only lengthens one scan).
        self.on_disk.store(self.entries.len(), Ordering::Relaxed);
        let mut file = OpenOptions::new().append(true).open(&self.path)?;
        file.write_all(&raw)
    }

    /// The last entry satisfying `pred`, where `pred` is true for a prefix of the entries.
    pub fn floor_by(&self, pred: impl Fn(&E) -> bool) -> Option<E> {
        let n = self.entries.partition_point(pred);
        n.checked_sub(1).map(|i| self.entries[i])
    }

    /// The first entry for which `pred` holds, where `pred` is false for a prefix.
    pub fn first_where(&self, pred: impl Fn(&E) -> bool) -> Option<E> {
        let n = self.entries.partition_point(|e| !pred(e));
        self.entries.get(n).copied()
    }

    /// Keeps only the entries for which `keep` holds on a prefix; cuts the file if it held
    /// any that went.
    pub fn truncate_while(&mut self, keep: impl Fn(&E) -> bool) -> io::Result<()> {
        let n = self.entries.partition_point(keep);
        if n < self.entries.len() {
            self.entries.truncate(n);
            if self.on_disk.load(Ordering::Relaxed) > n {
                self.on_disk.store(n, Ordering::Relaxed);
                OpenOptions::new().write(true).open(&self.path)?.set_len((n * E::LEN) as u64)?;
            }
        }
        Ok(())
    }

    /// Replaces the whole index (used when rebuilding from the log).
    pub fn replace(&mut self, entries: Vec<E>) -> io::Result<()> {
        self.entries = entries;
        self.rewrite()
    }

    fn rewrite(&mut self) -> io::Result<()> {
        OpenOptions::new().write(true).truncate(true).open(&self.path)?;
        self.on_disk.store(0, Ordering::Relaxed);
        self.write_pending()
    }

    /// Durability: writes what is pending and fsyncs the index file.
    pub fn sync(&self) -> io::Result<()> {
        self.write_pending()?;
        OpenOptions::new().write(true).open(&self.path)?.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<E: IndexEntry> Drop for SparseIndex<E> {
    /// A clean close keeps every entry (a restart then scans from the last one).
    fn drop(&mut self) {
        let _ = self.write_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_and_floor_lookup_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let (mut idx, damaged) = OffsetIndex::open(&path, 100).unwrap();
        assert!(!damaged);
        for (i, pos) in [(100, 0), (150, 4096), (230, 8200)] {
            idx.append(OffsetEntry { offset: i, position: pos }).unwrap();
        }
        drop(idx);
        let (idx, damaged) = OffsetIndex::open(&path, 100).unwrap();
        assert!(!damaged);
        assert_eq!(idx.entries().len(), 3);
        assert_eq!(idx.floor_by(|e| e.offset <= 149).map(|e| e.position), Some(0));
        assert_eq!(idx.floor_by(|e| e.offset <= 150).map(|e| e.position), Some(4096));
        assert_eq!(idx.floor_by(|e| e.offset <= 99), None);
        assert_eq!(idx.floor_by(|e| e.offset <= 10_000).map(|e| e.offset), Some(230));
    }

    #[test]
    fn torn_and_out_of_order_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.timeindex");
        let (mut idx, _) = TimeIndex::open(&path, 0).unwrap();
        idx.append(TimeEntry { timestamp_ms: 10, offset: 0 }).unwrap();
        idx.append(TimeEntry { timestamp_ms: 20, offset: 5 }).unwrap();
        drop(idx);
        // An entry that goes backwards in time, then half an entry.
        let mut raw = std::fs::read(&path).unwrap();
        let mut bad = [0u8; TIME_INDEX_ENTRY_LEN];
        TimeEntry { timestamp_ms: 5, offset: 9 }.encode(0, &mut bad);
        raw.extend_from_slice(&bad);
        raw.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &raw).unwrap();
        let (idx, damaged) = TimeIndex::open(&path, 0).unwrap();
        assert!(damaged);
        assert_eq!(idx.entries().len(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * TIME_INDEX_ENTRY_LEN as u64);
        assert_eq!(idx.first_where(|e| e.timestamp_ms >= 15).map(|e| e.offset), Some(5));
        assert_eq!(idx.first_where(|e| e.timestamp_ms >= 25), None);
    }
}
