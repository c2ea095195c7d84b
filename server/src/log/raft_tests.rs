//! Unit tests of the log as a Raft log: control batches (no offset, never served), lookup and
//! truncation by Raft index (across segments, after recovery), and a model-based random test
//! of append / control / truncate / reopen against a plain vector (the seed is printed; set
//! `TIDELOG_SEED` to replay).

use rand::{Rng, SeedableRng};

use super::*;

fn cfg(segment_bytes: u64) -> LogConfig {
    LogConfig { segment_bytes, index_interval_bytes: 256, ..LogConfig::default() }
}

/// A data batch at Raft (term, index) with `count` records.
fn data(log: &mut Log, term: u64, index: u64, count: u32) -> Appended {
    let p = format!("data-{index}-{}", "d".repeat((index % 40) as usize)).into_bytes();
    let b = AppendBatch {
        payload: &p,
        record_count: count,
        compression: 0,
        payload_crc: tidelog_proto::checksum::crc32c(&p),
        raft: Some((term, index)),
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        flags: 0,
    };
    log.append(b, 1000 + index as i64).unwrap()
}

fn control(log: &mut Log, term: u64, index: u64) -> Appended {
    log.append_control(format!("membership-{index}").as_bytes(), (term, index), 1000 + index as i64).unwrap()
}

/// Every stored batch from Raft index `from` on, as (index, is_control, base, count).
fn raft_entries(log: &Log, from: u64) -> Vec<(u64, bool, u64, u32)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let got = log.read_raft(next, 512).unwrap();
        if got.is_empty() {
            return out;
        }
        for b in got {
            let h = b.header;
            assert_eq!(h.raft_index, next, "read_raft skipped or repeated an entry");
            assert_eq!(tidelog_proto::checksum::crc32c(&b.payload), h.payload_crc);
            out.push((h.raft_index, h.is_control(), h.base_offset, h.record_count));
            next += 1;
        }
    }
}

/// What a consumer reads: (base, count) of every data batch from the log start.
fn consumed(log: &Log) -> Vec<(u64, u32)> {
    let (mut next, end, mut out) = (log.log_start().0, log.log_end().0, Vec::new());
    while next < end {
        let got = log.read(next, end, 300).unwrap();
        assert!(!got.is_empty(), "no progress at offset {next}");
        for b in got {
            assert!(!b.header.is_control(), "a consumer was served a control batch");
            assert_eq!(b.header.base_offset, next, "gap or overlap at {next}");
            next = b.header.next_offset();
            out.push((b.header.base_offset, b.header.record_count));
        }
    }
    out
}

#[test]
fn control_batches_take_no_offset_and_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(data(&mut log, 1, 1, 2).base_offset, 0);
    let c = control(&mut log, 1, 2);
    assert_eq!((c.base_offset, c.next_offset), (2, 2), "a control batch occupies no offset");
    assert_eq!(data(&mut log, 1, 3, 2).base_offset, 2, "the next data batch shares its base offset");
    control(&mut log, 2, 4);
    data(&mut log, 2, 5, 2);
    assert_eq!(log.log_end().0, 6);
    assert_eq!(consumed(&log), vec![(0, 2), (2, 2), (4, 2)]);
    let all = raft_entries(&log, 1);
    assert_eq!(
        all.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        [(1, false), (2, true), (3, false), (4, true), (5, false)]
    );
    assert_eq!(raft_entries(&log, 4)[0], (4, true, 4, 0));
    assert!(log.read_raft(6, 1 << 20).unwrap().is_empty());
    // Time lookups land on data, never on a control batch.
    assert_eq!(log.offset_for_time(1004).unwrap(), Some((4, 1005)));
    // Out-of-order entries are refused.
    assert!(matches!(log.append_control(b"x", (2, 5), 2000), Err(LogError::RaftOrder(_))));
    assert!(matches!(log.append_control(b"x", (1, 6), 2000), Err(LogError::RaftOrder(_))));
}

#[test]
fn truncation_by_raft_index_separates_a_control_batch_from_the_data_sharing_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    data(&mut log, 1, 1, 2);
    control(&mut log, 1, 2);
    data(&mut log, 1, 3, 2);
    control(&mut log, 2, 4);
    data(&mut log, 2, 5, 2);
    log.truncate_after_raft(Some(4)).unwrap();
    assert_eq!((log.log_end().0, log.last_raft_entry()), (4, Some((2, 4))), "the control batch at offset 4 stays");
    log.truncate_after_raft(Some(2)).unwrap();
    assert_eq!((log.log_end().0, log.last_raft_entry()), (2, Some((1, 2))));
    assert_eq!(raft_entries(&log, 1).len(), 2);
    // A new leader's entries continue from there, in a new term.
    assert_eq!(data(&mut log, 3, 3, 1).base_offset, 2);
    // Raft indexes may jump (the entry after a purge past the end): truncation keeps what lies
    // at or below the point even when the entry just above it is missing.
    data(&mut log, 3, 10, 1);
    log.truncate_after_raft(Some(5)).unwrap();
    assert_eq!((log.log_end().0, log.last_raft_entry()), (3, Some((3, 3))));
    log.truncate_after_raft(None).unwrap();
    assert_eq!((log.log_end().0, log.last_raft_entry(), consumed(&log)), (0, None, vec![]));
    drop(log);
    let (log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(log.log_end().0, 0);
}

#[test]
fn raft_lookup_across_segments_and_after_recovery_of_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(2048)).unwrap();
        for i in 1..=400u64 {
            if i % 3 == 0 {
                control(&mut log, 1 + i / 100, i);
            } else {
                data(&mut log, 1 + i / 100, i, 1 + (i % 2) as u32);
            }
        }
        assert!(log.segment_count() > 5, "expected rolls");
    }
    let path = dir.path();
    let active = super::tests::active_log_file(path);
    let mut raw = std::fs::read(&active).unwrap();
    raw.extend_from_slice(&[0xab; 50]); // a torn write after the last batch
    std::fs::write(&active, raw).unwrap();
    std::fs::remove_file(active.with_extension("index")).unwrap(); // and a lost index

    let (log, report) = Log::open(path, cfg(2048)).unwrap();
    assert_eq!(report.truncated_bytes, 50);
    assert_eq!(log.last_raft_entry().map(|e| e.1), Some(400));
    for i in [1, 2, 3, 99, 100, 101, 250, 299, 300, 399, 400] {
        let got = log.read_raft(i, 1).unwrap();
        assert_eq!(got.first().map(|b| (b.header.raft_index, b.header.is_control())), Some((i, i % 3 == 0)));
    }
    assert_eq!(raft_entries(&log, 1).len(), 400);
    let records: u64 = consumed(&log).iter().map(|(_, c)| u64::from(*c)).sum();
    assert_eq!(records, log.log_end().0);
}

#[test]
fn a_follower_stores_the_leaders_batches_verbatim_and_refuses_what_does_not_follow() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut leader, _) = Log::open(ld.path(), cfg(2048)).unwrap();
    let (mut follower, _) = Log::open(fd.path(), cfg(2048)).unwrap();
    for i in 1..=120u64 {
        if i % 4 == 0 {
            control(&mut leader, 1, i);
        } else {
            data(&mut leader, 1, i, 3);
        }
    }
    // Replicate in chunks, as a leader streams them (each read stays in one segment).
    let mut next = 1;
    loop {
        let chunk = leader.read_raft(next, 700).unwrap();
        if chunk.is_empty() {
            break;
        }
        for b in chunk {
            follower.append_replicated(&b.header, &b.payload).unwrap();
            next = b.header.raft_index + 1;
        }
    }
    assert_eq!(raft_entries(&follower, 1), raft_entries(&leader, 1));
    assert_eq!(follower.log_end(), leader.log_end());
    // Not the next entry, not at the log end, or a payload that does not match: refused.
    let last = leader.read_raft(120, 1).unwrap().remove(0);
    assert!(matches!(follower.append_replicated(&last.header, &last.payload), Err(LogError::RaftOrder(_))));
    let mut h = last.header;
    h.raft_index = 121;
    assert!(matches!(follower.append_replicated(&h, b"tampered"), Err(LogError::RaftOrder(_))));
    h.base_offset += 1;
    assert!(matches!(follower.append_replicated(&h, &last.payload), Err(LogError::RaftOrder(_))));
    h.base_offset -= 1;
    follower.append_replicated(&h, &last.payload).unwrap();
}

#[test]
fn a_segment_of_control_batches_only_never_rolls_into_a_duplicate_name() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(1024)).unwrap();
    for i in 1..=30 {
        control(&mut log, 1, i); // ~100 bytes each: three times segment_bytes
    }
    assert_eq!(log.segment_count(), 1, "no records yet: nothing to name a new segment after");
    for i in 31..=60 {
        data(&mut log, 1, i, 1);
    }
    assert!(log.segment_count() > 1);
    drop(log);
    let (log, report) = Log::open(dir.path(), cfg(1024)).unwrap();
    assert_eq!((report.segments_dropped, log.log_end().0, raft_entries(&log, 1).len()), (0, 30, 60));
}

/// Random appends (data and control), truncations by Raft index and reopens, checked after
/// every step against a model: the Raft entries, the consumer's view and the log end.
#[test]
fn model_based_random_raft_log() {
    let seed = std::env::var("TIDELOG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    println!("model_based_random_raft_log seed {seed} (TIDELOG_SEED={seed} to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(1024)).unwrap();
    // Model: (raft index, term, is control, record count).
    let mut model: Vec<(u64, u64, bool, u32)> = Vec::new();
    let mut term = 1;
    for step in 0..600 {
        let next = model.last().map_or(0, |e| e.0 + 1); // Raft index 0 is a real entry
        match rng.gen_range(0..100) {
            0..=59 => {
                let count = rng.gen_range(1..4);
                data(&mut log, term, next, count);
                model.push((next, term, false, count));
            }
            60..=79 => {
                control(&mut log, term, next);
                model.push((next, term, true, 0));
            }
            80..=91 if !model.is_empty() => {
                // `None` drops every entry.
                let keep = rng.gen_range(0..=model.last().map_or(0, |e| e.0 + 1)).checked_sub(1);
                log.truncate_after_raft(keep).unwrap();
                model.retain(|e| keep.is_some_and(|k| e.0 <= k));
                term += 1; // a new leader takes over after a truncation
            }
            _ => {
                drop(log);
                log = Log::open(dir.path(), cfg(1024)).unwrap().0;
            }
        }
        let end: u64 = model.iter().map(|e| u64::from(e.3)).sum();
        assert_eq!(log.log_end().0, end, "seed {seed} step {step}: log end");
        assert_eq!(log.last_raft_entry(), model.last().map(|e| (e.1, e.0)), "seed {seed} step {step}");
        let want: Vec<(u64, bool, u32)> = model.iter().map(|e| (e.0, e.2, e.3)).collect();
        let got: Vec<(u64, bool, u32)> = model
            .first()
            .map_or(Vec::new(), |f| raft_entries(&log, f.0))
            .into_iter()
            .map(|e| (e.0, e.1, e.3))
            .collect();
        assert_eq!(got, want, "seed {seed} step {step}: raft entries");
        let data_batches = model.iter().filter(|e| !e.2).count();
        assert_eq!(consumed(&log).len(), data_batches, "seed {seed} step {step}: consumer view");
    }
}

/// A snapshot install interrupted by a crash: before the staged copy is complete the old log
/// survives whole; after it, the next open finishes the swap.
#[test]
fn an_interrupted_snapshot_install_leaves_the_old_or_the_new_log_never_a_mix() {
    let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut src, _) = Log::open(src_dir.path(), cfg(1024)).unwrap();
    for i in 1..=60 {
        data(&mut src, 1, i, 2);
    }
    let (mut dst, _) = Log::open(dst_dir.path(), cfg(1024)).unwrap();
    for i in 1..=5 {
        data(&mut dst, 2, i, 1);
    }
    let old = raft_entries(&dst, 1);
    let prefix = src.raft_prefix(Some(40)).unwrap();
    assert!(prefix.len() > 1, "the prefix spans segments");

    // Crash while staging: no completion marker.
    snapshot::stage(dst_dir.path(), &prefix).unwrap();
    std::fs::remove_file(dst_dir.path().join(format::SNAPSHOT_STAGING_DIR).join(format::SNAPSHOT_COMPLETE_FILE))
        .unwrap();
    drop(dst);
    let (dst, _) = Log::open(dst_dir.path(), cfg(1024)).unwrap();
    assert_eq!(raft_entries(&dst, 1), old, "an incomplete staging directory is discarded");
    assert!(!dst_dir.path().join(format::SNAPSHOT_STAGING_DIR).exists());

    // Crash after staging completed: the open finishes the swap.
    snapshot::stage(dst_dir.path(), &prefix).unwrap();
    drop(dst);
    let (mut dst, _) = Log::open(dst_dir.path(), cfg(1024)).unwrap();
    let want: Vec<_> = raft_entries(&src, 1).into_iter().filter(|e| e.0 <= 40).collect();
    assert_eq!(raft_entries(&dst, 1), want);
    assert_eq!(dst.log_end().0, 80);
    // And the installed log continues like the source.
    data(&mut dst, 1, 41, 2);
    assert_eq!(dst.read_raft(41, 1).unwrap()[0].header.base_offset, 80);
}

/// A snapshot cut where a segment ends gives the installing replica the source's segment bases,
/// the empty segment after the cut included, so the same appends roll both at the same offsets
/// (replicas compact on their own, and only equal segments compact to equal records).
#[test]
fn a_snapshot_cut_at_a_segment_end_keeps_the_sources_segment_bases() {
    let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut src, _) = Log::open(src_dir.path(), cfg(1024)).unwrap();
    for i in 1..=60 {
        data(&mut src, 1, i, 2);
    }
    let bases = |log: &Log| log.segments.keys().copied().collect::<Vec<_>>();
    let second = bases(&src)[1];
    let cut = src.segments[&0].last_header().unwrap().raft_index;
    let (mut dst, _) = Log::open(dst_dir.path(), cfg(1024)).unwrap();
    dst.install_snapshot(&src.raft_prefix(Some(cut)).unwrap()).unwrap();
    assert_eq!(bases(&dst), vec![0, second], "the empty segment at the cut came along");
    assert_eq!(dst.log_end().0, second);
    for i in cut + 1..=60 {
        data(&mut dst, 1, i, 2);
    }
    assert_eq!(bases(&dst), bases(&src));
    assert_eq!(raft_entries(&dst, 1), raft_entries(&src, 1));
}
