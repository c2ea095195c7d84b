//! Sparse indexes beside each segment: offset → file position, and append time → offset.
//!
//! An index is an append-only file of fixed-size entries mirrored in memory (a segment of
//! 1 GiB with one entry per 4 KiB of log holds 256 Ki entries, 2 MiB). Entries are added at most
//! once per `index_interval_bytes` of log, so index I/O is a small fraction of log I/O.
//!
//! Invariants:
//! - entries are strictly increasing in offset, and non-decreasing in position and time;
//! - an entry is written only after the batch it points at has been written to the log file,
//!   so after a crash an entry may be missing but never points at bytes that were never written
//!   (recovery still verifies the batch an entry points at: the OS may write pages back in any
//!   order after a power loss);
//! - the index is never the source of truth: a missing or damaged index is rebuilt from the log.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

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

/// A sparse index file and its in-memory mirror.
#[derive(Debug)]
pub struct SparseIndex<E: IndexEntry> {
    path: PathBuf,
    file: File,
    base: u64,
    entries: Vec<E>,
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
        let mut index = Self { path: path.to_path_buf(), file, base, entries };
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

    /// Appends an entry. Durability: written to the OS (page cache) only; indexes are
    /// rebuildable and are fsynced when their segment is closed.
    pub fn append(&mut self, entry: E) -> io::Result<()> {
        if let Some(prev) = self.entries.last() {
            debug_assert!(entry.follows(prev), "index entries out of order: {prev:?} then {entry:?}");
        }
        let mut buf = [0u8; 16];
        entry.encode(self.base, &mut buf[..E::LEN]);
        self.file.write_all(&buf[..E::LEN])?;
        self.entries.push(entry);
        Ok(())
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

    /// Keeps only the entries for which `keep` holds on a prefix; rewrites the file if any went.
    pub fn truncate_while(&mut self, keep: impl Fn(&E) -> bool) -> io::Result<()> {
        let n = self.entries.partition_point(keep);
        if n < self.entries.len() {
            self.entries.truncate(n);
            self.file.set_len((n * E::LEN) as u64)?;
        }
        Ok(())
    }

    /// Replaces the whole index (used when rebuilding from the log).
    pub fn replace(&mut self, entries: Vec<E>) -> io::Result<()> {
        self.entries = entries;
        self.rewrite()
    }

    fn rewrite(&mut self) -> io::Result<()> {
        let mut raw = vec![0u8; self.entries.len() * E::LEN];
        for (e, chunk) in self.entries.iter().zip(raw.chunks_exact_mut(E::LEN)) {
            e.encode(self.base, chunk);
        }
        self.file.set_len(0)?;
        self.file.write_all(&raw)?;
        Ok(())
    }

    /// Durability: fsyncs the index file.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
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
