//! Crash recovery of one segment: find where its valid batches end, and rebuild its indexes.
//!
//! After `kill -9` or a power loss the tail of the active segment may hold a torn batch (a
//! header without all its payload) or bytes that never became a valid batch. Recovery scans
//! forward from the last index entry that points at a valid batch — normally at most
//! `index_interval_bytes` plus one batch — checking every batch's header CRC, payload CRC and
//! that offsets increase, and reports the position after the last valid batch. The caller truncates
//! the file there.
//!
//! So recovery time is bounded by the index interval (or, when an index is missing and must be
//! rebuilt, by one segment), never by the partition's total size.
//!
//! This module only reads; it must never modify a file.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::format::{BatchHeader, BATCH_HEADER_LEN};
use super::index::{OffsetEntry, TimeEntry};

/// The outcome of scanning a segment's tail.
#[derive(Debug, Default)]
pub struct TailScan {
    /// File position just after the last valid batch.
    pub valid_end: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
    /// Header of the last valid batch, if any.
    pub last_header: Option<BatchHeader>,
    /// Index entries for batches in the scanned range (to append to the indexes).
    pub offset_entries: Vec<OffsetEntry>,
    pub time_entries: Vec<TimeEntry>,
    /// Log bytes written since the last index entry (continues the sparse-index cadence).
    pub bytes_since_index: u64,
    /// How many batches were read and checked.
    pub batches_checked: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped_by: Option<String>,
}

/// Where a scan starts: a validated index entry, or the segment's beginning.
#[derive(Clone, Copy, Debug)]
pub struct ScanStart {
    pub position: u64,
    pub offset: u64,
    /// Whether to emit an index entry for the first batch (true when the index has none for it).
    pub index_first: bool,
}

/// Reads the header at `position`, if a valid one is there and starts at `offset`.
pub fn header_at(file: &File, file_len: u64, position: u64, offset: u64) -> io::Result<Option<BatchHeader>> {
    use std::os::unix::fs::FileExt;
    if position + BATCH_HEADER_LEN as u64 > file_len {
        return Ok(None);
    }
    let mut buf = [0u8; BATCH_HEADER_LEN];
    file.read_exact_at(&mut buf, position)?;
    Ok(BatchHeader::decode(&buf)
        .ok()
        .filter(|h| h.base_offset == offset && position + u64::from(h.batch_len) <= file_len))
}

/// Scans `path` from `start` to its end, stopping at the first invalid batch.
pub fn scan_tail(path: &Path, start: ScanStart, index_interval_bytes: u64) -> io::Result<TailScan> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    file.seek(SeekFrom::Start(start.position))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut scan = TailScan {
        valid_end: start.position,
        next_offset: start.offset,
        bytes_since_index: if start.index_first { index_interval_bytes } else { 0 },
        ..TailScan::default()
    };
    let mut payload = Vec::new();
    let mut pos = start.position;
    while pos < file_len {
        if file_len - pos < BATCH_HEADER_LEN as u64 {
            scan.stopped_by = Some(format!("{} trailing bytes, shorter than a header", file_len - pos));
            break;
        }
        let mut hbuf = [0u8; BATCH_HEADER_LEN];
        reader.read_exact(&mut hbuf)?;
        let header = match BatchHeader::decode(&hbuf) {
            Ok(h) => h,
            Err(e) => {
                scan.stopped_by = Some(format!("invalid header at position {pos}: {e:?}"));
                break;
            }
        };
        // Offsets increase; a compacted segment (`compaction`) has gaps between batches.
        if header.base_offset < scan.next_offset {
            scan.stopped_by = Some(format!(
                "batch at position {pos} has offset {}, expected at least {}",
                header.base_offset, scan.next_offset
            ));
            break;
        }
        if pos + u64::from(header.batch_len) > file_len {
            scan.stopped_by = Some(format!(
                "torn batch at position {pos}: {} bytes missing",
                pos + u64::from(header.batch_len) - file_len
            ));
            break;
        }
        payload.resize(header.payload_len(), 0);
        reader.read_exact(&mut payload)?;
        if tidelog_proto::checksum::crc32c(&payload) != header.payload_crc {
            scan.stopped_by = Some(format!("payload CRC mismatch at position {pos}"));
            break;
        }
        if super::segment::wants_index_entry(scan.bytes_since_index, index_interval_bytes, &header) {
            // Positions fit in u32: segments are capped at MAX_SEGMENT_BYTES.
            scan.offset_entries.push(OffsetEntry { offset: header.base_offset, position: pos as u32 });
            scan.time_entries.push(TimeEntry { timestamp_ms: header.append_time_ms, offset: header.base_offset });
            scan.bytes_since_index = 0;
        }
        scan.bytes_since_index += u64::from(header.batch_len);
        pos += u64::from(header.batch_len);
        scan.valid_end = pos;
        scan.next_offset = header.next_offset();
        scan.last_header = Some(header);
        scan.batches_checked += 1;
    }
    Ok(scan)
}
