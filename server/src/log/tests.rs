//! Unit tests of the log as a whole: append/read, roll, recovery, retention, truncation.

use std::time::Duration;

use super::*;

fn cfg(segment_bytes: u64) -> LogConfig {
    LogConfig { segment_bytes, index_interval_bytes: 256, ..LogConfig::default() }
}

fn payload(i: u64) -> Vec<u8> {
    format!("payload-{i:08}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

fn batch(p: &[u8], count: u32) -> AppendBatch<'_> {
    AppendBatch {
        payload: p,
        record_count: count,
        compression: 0,
        payload_crc: tidelog_proto::checksum::crc32c(p),
        raft: None,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        flags: 0,
    }
}

/// Appends `n` batches of 2 records each at times 1000, 1001, ...
fn fill(log: &mut Log, from: u64, n: u64) {
    for i in from..from + n {
        let p = payload(i);
        log.append(batch(&p, 2), 1000 + i as i64).unwrap();
    }
}

fn read_all(log: &Log) -> Vec<StoredBatch> {
    let mut out = Vec::new();
    let mut next = log.log_start().0;
    let end = log.log_end().0;
    while next < end {
        let got = log.read(next, end, 1000).unwrap();
        assert!(!got.is_empty(), "no progress at offset {next}");
        for b in got {
            assert_eq!(b.header.base_offset, next, "gap or overlap at {next}");
            assert_eq!(tidelog_proto::checksum::crc32c(&b.payload), b.header.payload_crc);
            next = b.header.next_offset();
            out.push(b);
        }
    }
    out
}

#[test]
fn append_read_round_trip_across_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(2048)).unwrap();
    fill(&mut log, 0, 300);
    assert!(log.segment_count() > 5, "expected rolls, got {} segments", log.segment_count());
    assert_eq!(log.log_end().0, 600);
    let all = read_all(&log);
    assert_eq!(all.len(), 300);
    for (i, b) in all.iter().enumerate() {
        assert_eq!(b.payload.as_ref(), payload(i as u64).as_slice());
        assert_eq!(b.header.raft_index, i as u64 + 1);
    }
    // Reading from the middle of a batch returns the batch that contains the offset.
    let mid = log.read(101, 600, 1).unwrap();
    assert_eq!(mid[0].header.base_offset, 100);
    // max_offset excludes batches at or above it.
    assert!(log.read(598, 598, 1 << 20).unwrap().is_empty());
    assert!(log.read(600, 600, 1 << 20).unwrap().is_empty());
}

#[test]
fn reopen_keeps_everything_and_checks_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(64 * 1024)).unwrap();
        fill(&mut log, 0, 3000);
    }
    let (log, report) = Log::open(dir.path(), cfg(64 * 1024)).unwrap();
    assert_eq!(log.log_end().0, 6000);
    assert_eq!(report.truncated_bytes, 0);
    assert!(report.segments > 3);
    // Each segment scans only past its last index entry (256-byte interval: a few batches).
    let bound = report.segments as u64 * 8;
    assert!(report.batches_checked <= bound, "recovery checked {} batches (bound {bound})", report.batches_checked);
    assert_eq!(read_all(&log).len(), 3000);
}

/// A process kill keeps no in-memory index entries (they are written in runs of
/// `index::WRITE_EVERY`): the reopened log has every batch, and recovery scans at most a
/// run's worth of index intervals past the last entry on disk.
#[test]
fn a_kill_loses_only_unwritten_index_entries_and_recovery_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(64 << 20)).unwrap();
    fill(&mut log, 0, 3000);
    std::mem::forget(log); // no Drop: as after kill -9
    let (log, report) = Log::open(dir.path(), cfg(64 << 20)).unwrap();
    assert_eq!(log.log_end().0, 6000);
    assert_eq!(report.truncated_bytes, 0);
    // One segment; ~4 batches per 256-byte index interval; at most WRITE_EVERY intervals.
    let bound = (index::WRITE_EVERY as u64 + 1) * 8;
    assert!(report.batches_checked <= bound, "recovery checked {} batches (bound {bound})", report.batches_checked);
    assert!(report.batches_checked > 8, "the unwritten entries were written anyway");
    assert_eq!(read_all(&log).len(), 3000);
}

/// Descriptors this process holds (nextest runs each test in its own process).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// A partition's log holds one descriptor per segment, not three: at 10,000 partitions the
/// indexes would otherwise hold 20,000.
#[test]
fn a_segment_holds_one_file_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let before = open_fds();
    let logs: Vec<Log> = (0..50)
        .map(|i| {
            let (mut log, _) = Log::open(&dir.path().join(i.to_string()), cfg(64 << 20)).unwrap();
            fill(&mut log, 0, 100);
            log
        })
        .collect();
    let held = open_fds().saturating_sub(before);
    assert!(held <= 50 + 5, "50 one-segment logs hold {held} descriptors");
    drop(logs);
}

/// The active (highest-named) `.log` file in a partition directory.
pub(super) fn active_log_file(dir: &Path) -> PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

#[test]
fn torn_tail_is_truncated_and_log_stays_appendable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
        fill(&mut log, 0, 100);
    }
    let path = active_log_file(dir.path());
    let good_len = std::fs::metadata(&path).unwrap().len();
    // A torn write: the header of a next batch and half its payload.
    let p = payload(100);
    let h = format::BatchHeader {
        batch_len: (BATCH_HEADER_LEN + p.len()) as u32,
        flags: 0,
        compression: 0,
        record_count: 2,
        base_offset: 200,
        raft_term: 0,
        raft_index: 101,
        append_time_ms: 5000,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        payload_crc: tidelog_proto::checksum::crc32c(&p),
        delete_horizon_s: 0,
    };
    let mut torn = h.encode().to_vec();
    torn.extend_from_slice(&p[..p.len() / 2]);
    let mut raw = std::fs::read(&path).unwrap();
    raw.extend_from_slice(&torn);
    std::fs::write(&path, &raw).unwrap();

    let (mut log, report) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(report.truncated_bytes, torn.len() as u64);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    assert_eq!(log.log_end().0, 200);
    fill(&mut log, 100, 10);
    assert_eq!(read_all(&log).len(), 110);
}

#[test]
fn corrupt_payload_in_last_batch_is_cut_and_garbage_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
        fill(&mut log, 0, 50);
    }
    let path = active_log_file(dir.path());
    let mut raw = std::fs::read(&path).unwrap();
    let n = raw.len();
    raw[n - 3] ^= 0xff; // inside the last batch's payload
    raw.extend_from_slice(&[0xab; 37]); // and garbage after it
    std::fs::write(&path, &raw).unwrap();
    let (log, report) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    assert!(report.truncated_bytes > 37);
    assert_eq!(log.log_end().0, 98, "only the damaged last batch is lost");
    assert_eq!(read_all(&log).len(), 49);
}

#[test]
fn missing_or_damaged_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(16 * 1024)).unwrap();
        fill(&mut log, 0, 400);
    }
    let mut indexes: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    indexes.sort();
    let first_len = std::fs::metadata(&indexes[0]).unwrap().len();
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::write(&indexes[1], [0xffu8; 13]).unwrap();
    let (log, report) = Log::open(dir.path(), cfg(16 * 1024)).unwrap();
    assert_eq!(report.indexes_rebuilt, 2);
    assert_eq!(std::fs::metadata(&indexes[0]).unwrap().len(), first_len, "rebuilt index differs");
    assert_eq!(read_all(&log).len(), 400);
    assert_eq!(log.read(555, 800, 1).unwrap()[0].header.base_offset, 554);
}

#[test]
fn retention_by_bytes_and_time_moves_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(4096);
    let (mut log, _) = Log::open(dir.path(), c).unwrap();
    fill(&mut log, 0, 500);
    let before = log.segment_count();
    c.retention.max_bytes = Some(16 * 1024);
    log.set_config(c).unwrap();
    let out = log.apply_retention(0, u64::MAX, None).unwrap();
    assert!(out.segments_deleted > 0);
    assert!(log.size_bytes() < 16 * 1024 + 4096 && log.size_bytes() >= 16 * 1024 - 4096);
    assert_eq!(log.segment_count(), before - out.segments_deleted);
    let start = log.log_start().0;
    assert!(start > 0);
    assert!(matches!(log.read(0, 1000, 100), Err(LogError::OffsetOutOfRange { log_start, .. }) if log_start == start));
    assert_eq!(read_all(&log).first().unwrap().header.base_offset, start);

    // Time: batches were appended at 1000..1500 ms; keep only the last 100 ms at now=1500.
    c.retention = Retention { max_age: Some(Duration::from_millis(100)), max_bytes: None };
    log.set_config(c).unwrap();
    log.apply_retention(1500, u64::MAX, None).unwrap();
    let oldest_kept = read_all(&log).first().unwrap().header.append_time_ms;
    assert!(oldest_kept >= 1300, "kept a batch from {oldest_kept}");
    // Everything expired: the active segment stays.
    // Never past the high watermark, even when everything has expired.
    assert_eq!(log.apply_retention(1_000_000, log.log_start().0, None).unwrap(), RetentionOutcome::default());
    log.apply_retention(1_000_000, u64::MAX, None).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_end().0, 1000);
}

#[test]
fn truncate_suffix_drops_uncommitted_batches_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(2048)).unwrap();
    fill(&mut log, 0, 200);
    assert!(matches!(log.truncate_suffix(101), Err(LogError::Truncate(_))), "mid-batch must be refused");
    log.truncate_suffix(100).unwrap();
    assert_eq!(log.log_end().0, 100);
    assert_eq!(log.last_raft_entry(), Some((0, 50)));
    fill(&mut log, 50, 10);
    assert_eq!(read_all(&log).len(), 60);
    drop(log);
    let (log, report) = Log::open(dir.path(), cfg(2048)).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(log.log_end().0, 120);
}

#[test]
fn time_lookup_finds_first_batch_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(4096)).unwrap();
    fill(&mut log, 0, 300); // times 1000..1299, offsets 2*i
    assert_eq!(log.offset_for_time(0).unwrap(), Some((0, 1000)));
    assert_eq!(log.offset_for_time(1150).unwrap(), Some((300, 1150)));
    assert_eq!(log.offset_for_time(1299).unwrap(), Some((598, 1299)));
    assert_eq!(log.offset_for_time(1300).unwrap(), None);
    // A clock stepping back does not make append times go backwards.
    let p = payload(1);
    let a = log.append(batch(&p, 1), 10).unwrap();
    assert_eq!(a.append_time_ms, 1299);
}

#[test]
fn bad_config_is_rejected_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let err = Log::open(dir.path(), cfg(10)).unwrap_err();
    assert!(err.to_string().contains("segment_bytes"), "{err}");
}

#[test]
fn corrupt_batch_at_the_last_index_entry_steps_back_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
        fill(&mut log, 0, 100);
    }
    // Find the last index entry, and corrupt the payload of the batch it points at.
    let index_path = active_log_file(dir.path()).with_extension("index");
    let raw_index = std::fs::read(&index_path).unwrap();
    let last = &raw_index[raw_index.len() - 8..];
    let rel = u32::from_le_bytes(last[..4].try_into().unwrap()) as u64;
    let pos = u32::from_le_bytes(last[4..].try_into().unwrap()) as usize;
    let path = active_log_file(dir.path());
    let mut raw = std::fs::read(&path).unwrap();
    raw[pos + BATCH_HEADER_LEN + 2] ^= 0xff;
    std::fs::write(&path, &raw).unwrap();

    let (mut log, report) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(log.log_end().0, rel, "everything from the damaged batch on is cut");
    assert!(report.truncated_bytes > 0);
    assert_eq!(read_all(&log).len() as u64, rel / 2);
    // The indexes are consistent again: appends, time lookups and a reopen all work.
    fill(&mut log, 1000, 20);
    assert_eq!(log.offset_for_time(1000 + 1000).unwrap().map(|(o, _)| o), Some(rel));
    drop(log);
    let (log, report) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!((report.truncated_bytes, log.log_end().0), (0, rel + 40));
}

#[test]
fn raising_the_start_hides_records_survives_reopen_and_frees_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(2048)).unwrap();
    fill(&mut log, 0, 300); // 600 offsets, batches of 2
    let segments = log.segment_count();
    // Inside a batch: the start moves exactly there, reads below it are out of range, and a
    // read at it returns the batch that holds it (consumers skip the records below).
    assert_eq!(log.raise_start(301).unwrap().0, 301);
    assert!(matches!(log.read(300, 600, 1 << 20), Err(LogError::OffsetOutOfRange { log_start: 301, .. })));
    assert_eq!(log.read(301, 600, 1).unwrap()[0].header.base_offset, 300);
    // Never down.
    assert_eq!(log.raise_start(10).unwrap().0, 301);
    drop(log);
    let (mut log, _) = Log::open(dir.path(), cfg(2048)).unwrap();
    assert_eq!(log.log_start().0, 301, "the floor survives a reopen");
    assert_eq!(log.segment_count(), segments, "nothing deleted yet");
    // Retention deletes the segments wholly below the floor, and nothing at or above it.
    let outcome = log.apply_retention(0, 600, None).unwrap();
    assert!(outcome.segments_deleted > 0 && log.segment_count() < segments, "{outcome:?}");
    assert_eq!(log.log_start().0, 301);
    let first = log.segments.keys().next().copied().unwrap();
    assert!(first <= 300, "the segment holding 300..302 was kept (first segment {first})");
    // Above the log end the start is capped there (a replica behind the floor), and follows
    // the log up to the floor as it grows.
    assert_eq!(log.raise_start(700).unwrap().0, 600);
    fill(&mut log, 300, 60);
    assert_eq!(log.log_start().0, 700);
    assert_eq!(log.log_end().0, 720);
}

/// Whether `bytes` lie in a mapping of a file whose path ends with `name` (`/proc/self/maps`).
fn mapped_from(bytes: &[u8], name: &str) -> bool {
    let at = bytes.as_ptr() as usize;
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().any(|line| {
        let mut parts = line.split_whitespace();
        let range = parts.next().unwrap_or_default();
        let (lo, hi) = range.split_once('-').unwrap_or_default();
        let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap_or(0), usize::from_str_radix(hi, 16).unwrap_or(0));
        (lo..hi).contains(&at) && line.ends_with(name)
    })
}

/// A large committed read hands out slices of a mapping of the segment (`mapped.rs`): the
/// batches a copying read gives, none at or past the committed bound, and payloads that stay
/// readable and unchanged after the uncommitted suffix behind them is truncated and written
/// over. A small read copies.
#[test]
fn committed_reads_map_large_ranges_that_outlive_a_truncation_behind_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(64 << 20)).unwrap();
    let payloads: Vec<Vec<u8>> = (0..200u8).map(|i| vec![i; 4096]).collect();
    for p in &payloads {
        log.append(batch(p, 1), 1000).unwrap();
    }
    let committed = 120;
    let (reader, pos) = log.locate(0).unwrap().unwrap();
    let (mapped, next) = reader.read_committed(pos, committed, 1 << 20).unwrap();
    let (copied, copied_next) = reader.read(pos, committed, 1 << 20).unwrap();
    assert_eq!((&mapped, next), (&copied, copied_next), "the same batches either way");
    assert_eq!(mapped.len(), committed as usize);
    let segment = format_name(0);
    assert!(mapped.iter().all(|b| mapped_from(&b.payload, &segment)), "payloads are slices of the mapping");
    assert!(copied.iter().all(|b| !mapped_from(&b.payload, &segment)));
    let (small, _) = reader.read_committed(pos, committed, 8 << 10).unwrap();
    assert!(!small.is_empty() && !mapped_from(&small[0].payload, &segment), "a small read copies");

    // The uncommitted suffix goes (the file shrinks under the mapping) and other bytes follow.
    log.truncate_suffix(committed).unwrap();
    let other = vec![0xEE; 4096];
    for _ in 0..100 {
        log.append(batch(&other, 1), 2000).unwrap();
    }
    for (b, p) in mapped.iter().zip(&payloads) {
        assert_eq!(&b.payload[..], &p[..], "batch {}", b.header.base_offset);
    }
}

fn format_name(base: u64) -> String {
    format::segment_file_name(base, format::LOG_EXT)
}
