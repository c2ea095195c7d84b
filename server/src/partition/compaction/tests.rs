//! Model-based tests of compaction at the partition level: random keyed writes, overwrites,
//! tombstones, compression and transactions against a map, with cleanings in between; after
//! each, a consumer reading from 0 must see, for every key, the model's latest value.
//! Seeded: a failure prints the seed (`COMPACTION_SEED=<seed>` replays it).

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use rand::{Rng, SeedableRng};
use tidelog_proto::v1::{Record, RecordBatch};

use super::records::{decompressed, reframe};
use super::*;
use crate::log::format::{FLAG_TRANSACTIONAL, FLAG_TXN_ABORT, FLAG_TXN_MARKER};
use crate::log::{AppendBatch, FsyncPolicy, LogConfig};
use crate::partition::batch::{CODEC_LZ4, CODEC_NONE, CODEC_ZSTD};
use crate::partition::Isolation;

const T0: i64 = 1_700_000_000_000;

fn policy(delete_retention_ms: i64) -> CompactionPolicy {
    CompactionPolicy { delete_retention_ms, min_cleanable_dirty_ratio: 0.5, min_compaction_lag_ms: 0 }
}

fn open(dir: &std::path::Path) -> Arc<Partition> {
    let config = LogConfig { segment_bytes: 2048, index_interval_bytes: 256, ..LogConfig::default() };
    Arc::new(Partition::open(dir, "t", 0, config, FsyncPolicy::Never).unwrap().0)
}

/// Appends `records` (key, value; `None` = tombstone) as one batch and publishes it.
async fn append(p: &Partition, records: &[(String, Option<String>)], codec: u8, flags: u16, pid: i64, now: i64) -> u64 {
    let batch = RecordBatch {
        records: records
            .iter()
            .map(|(k, v)| Record {
                key: Some(k.clone().into_bytes().into()),
                value: v.clone().unwrap_or_default().into_bytes().into(),
                null_value: v.is_none(),
                ..Record::default()
            })
            .collect(),
    };
    let raw = batch.encode_to_vec();
    let payload =
        if codec == CODEC_NONE { raw.clone() } else { reframe(&raw, std::iter::once(0..raw.len()), codec).unwrap() };
    let b = AppendBatch {
        payload: &payload,
        record_count: records.len() as u32,
        compression: codec,
        payload_crc: tidelog_proto::checksum::crc32c(&payload),
        raft: None,
        producer_id: if pid > 0 { pid } else { -1 },
        producer_epoch: if pid > 0 { 0 } else { -1 },
        base_sequence: if pid > 0 { 0 } else { -1 },
        flags,
    };
    let pending = p.append(b, now).unwrap();
    p.complete(&pending).await.unwrap();
    pending.appended.base_offset
}

/// Every record a read_committed consumer sees from 0: (offset, key, value).
fn read_all(p: &Partition) -> Vec<(u64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut at = p.offsets().log_start.0;
    for _ in 0..100_000 {
        let read = p.read_for_consumer(at, 64 << 10, Isolation::ReadCommitted).unwrap();
        for b in &read.batches {
            let raw = decompressed(b.header.compression, &b.payload).unwrap();
            let batch = RecordBatch::decode(&raw[..]).unwrap();
            assert_eq!(batch.records.len(), b.header.record_count as usize, "a batch's records match its count");
            for (i, r) in batch.records.into_iter().enumerate() {
                let value = (!r.null_value).then(|| String::from_utf8(r.value.to_vec()).unwrap());
                out.push((b.header.base_offset + i as u64, String::from_utf8(r.key.unwrap().to_vec()).unwrap(), value));
            }
        }
        if read.next == at || read.next >= read.bound {
            return out;
        }
        at = read.next;
    }
    panic!("read did not finish");
}

/// Checks the consumer's view against the model (`None` = tombstone; `expired` = tombstones
/// may be gone). Returns the number of records read.
fn check(p: &Partition, model: &BTreeMap<String, Option<String>>, seed: u64, expired: bool) -> usize {
    let seen = read_all(p);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "seed {seed}: offsets strictly increase");
    let mut last: BTreeMap<&str, &Option<String>> = BTreeMap::new();
    for (_, k, v) in &seen {
        last.insert(k, v);
    }
    for (k, v) in model {
        match (v, last.get(k.as_str())) {
            (Some(v), Some(Some(got))) => assert_eq!(got, v, "seed {seed}: key {k}"),
            (Some(v), got) => panic!("seed {seed}: key {k} should be {v:?}, consumer ends with {got:?}"),
            (None, None) => assert!(expired, "seed {seed}: tombstone of {k} vanished before its horizon"),
            (None, Some(None)) => {}
            (None, Some(got)) => panic!("seed {seed}: key {k} was deleted, consumer ends with {got:?}"),
        }
    }
    assert!(last.keys().all(|k| model.contains_key(*k)), "seed {seed}: no key from nowhere");
    seen.len()
}

fn seed() -> u64 {
    std::env::var("COMPACTION_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

#[tokio::test]
async fn random_writes_and_tombstones_compact_to_the_models_latest_values() {
    for round in 0..4 {
        let seed = seed().wrapping_add(round);
        println!("compaction model seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        let mut model: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut now = T0;
        let mut cleaned = 0;
        for step in 0..400 {
            now += 10;
            let n = rng.gen_range(1..5);
            let records: Vec<(String, Option<String>)> = (0..n)
                .map(|i| {
                    let k = format!("key-{}", rng.gen_range(0..30));
                    let v =
                        (rng.gen_range(0..10) > 0).then(|| format!("v{step}.{i}-{}", "x".repeat(rng.gen_range(0..40))));
                    (k, v)
                })
                .collect();
            let codec = [CODEC_NONE, CODEC_LZ4, CODEC_ZSTD][rng.gen_range(0..3)];
            append(&p, &records, codec, 0, 0, now).await;
            for (k, v) in records {
                model.insert(k, v);
            }
            if rng.gen_range(0..25) == 0 {
                let options = CleanerOptions { map_bytes: 24 * rng.gen_range(40..400), ..CleanerOptions::default() };
                if let Some(s) = p.compact(now, policy(3_600_000), &options, None, true).await.unwrap() {
                    cleaned += 1;
                    assert!(s.cleaned_offset > 0 && s.bytes_written <= s.bytes_read + 4096, "seed {seed}: {s:?}");
                }
                check(&p, &model, seed, false);
            }
        }
        let options = CleanerOptions::default();
        while p.compact(now, policy(3_600_000), &options, None, true).await.unwrap().is_some() {}
        let before = check(&p, &model, seed, false);
        let hw = p.offsets().high_watermark.0 as usize;
        assert!(cleaned > 0 && before < hw / 2, "seed {seed}: compaction removed records ({before} of {hw} left)");
        // Tombstones go once their horizon passed: a pass stamps them, a later one drops them.
        now += 3_600_000 + 2_000;
        p.compact(now, policy(3_600_000), &options, None, true).await.unwrap();
        let after = check(&p, &model, seed, true);
        assert!(after <= before, "seed {seed}");
        let cleaned = p.cleaner_status().cleaned_offset;
        let tombstones: Vec<u64> = read_all(&p).iter().filter(|r| r.2.is_none()).map(|r| r.0).collect();
        assert!(
            tombstones.iter().all(|o| *o >= cleaned),
            "seed {seed}: expired tombstones below {cleaned}: {tombstones:?}"
        );
        // Reopened (recovery reads segments with gaps), the log serves the same records.
        let seen = read_all(&p);
        drop(p);
        let p = open(dir.path());
        assert_eq!(read_all(&p), seen, "seed {seed}: the same after a restart");
        assert!(!dir.path().join(crate::log::format::CLEAN_STAGING_DIR).exists());
    }
}

#[tokio::test]
async fn a_map_smaller_than_the_dirty_keys_cleans_in_several_passes() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    let mut model = BTreeMap::new();
    for i in 0..600u32 {
        let k = format!("k{}", i % 150);
        let v = Some(format!("v{i}"));
        append(&p, &[(k.clone(), v.clone())], CODEC_NONE, 0, 0, T0 + i64::from(i)).await;
        model.insert(k, v);
    }
    // 64 slots: at most 57 keys per pass.
    let options = CleanerOptions { map_bytes: 24 * 64, ..CleanerOptions::default() };
    let mut checkpoints = Vec::new();
    for _ in 0..50 {
        match p.compact(T0 + 1000, policy(0), &options, None, true).await.unwrap() {
            Some(s) => checkpoints.push(s.cleaned_offset),
            None => break,
        }
    }
    assert!(checkpoints.len() > 2 && checkpoints.windows(2).all(|w| w[0] < w[1]), "{checkpoints:?}");
    check(&p, &model, 0, false);
    assert_eq!(p.cleaner_status().cleaned_offset, *checkpoints.last().unwrap());
}

#[tokio::test]
async fn aborted_transactions_go_committed_ones_stay_and_markers_expire() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    let mut model = BTreeMap::new();
    let marker = |p: &Arc<Partition>, pid: i64, abort: bool, now: i64| {
        let payload: &[u8] = if abort { b"abort" } else { b"commit" };
        let flags = FLAG_TRANSACTIONAL | FLAG_TXN_MARKER | if abort { FLAG_TXN_ABORT } else { 0 };
        let b = AppendBatch {
            payload,
            record_count: 1,
            compression: CODEC_NONE,
            payload_crc: tidelog_proto::checksum::crc32c(payload),
            raft: None,
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: -1,
            flags,
        };
        let pending = p.append(b, now).unwrap();
        let p = Arc::clone(p);
        async move { p.complete(&pending).await.unwrap() }
    };
    for t in 0..40i64 {
        let now = T0 + t;
        let abort = t % 3 == 0;
        let recs =
            [(format!("k{}", t % 7), Some(format!("txn{t}"))), (format!("plain{}", t % 5), Some(format!("p{t}")))];
        append(&p, &recs[..1], CODEC_NONE, FLAG_TRANSACTIONAL, 100 + t, now).await;
        append(&p, &recs[1..], CODEC_LZ4, 0, 0, now).await;
        marker(&p, 100 + t, abort, now).await;
        if !abort {
            model.insert(recs[0].0.clone(), recs[0].1.clone());
        }
        model.insert(recs[1].0.clone(), recs[1].1.clone());
    }
    // Roll past everything so it is all cleanable.
    append(&p, &[("end".into(), Some("x".repeat(3000)))], CODEC_NONE, 0, 0, T0 + 100).await;
    append(&p, &[("end".into(), Some("y".into()))], CODEC_NONE, 0, 0, T0 + 101).await;
    model.insert("end".into(), Some("y".into()));
    let options = CleanerOptions::default();
    p.compact(T0 + 200, policy(1_000), &options, None, true).await.unwrap().unwrap();
    check(&p, &model, 0, false);
    let headers = |p: &Partition| {
        let mut v = Vec::new();
        p.state().log.scan_headers(0, |h| v.push(*h)).unwrap();
        v
    };
    let hs = headers(&p);
    let sealed_end = p.state().log.sealed_segments().1.last().unwrap().end_offset;
    let sealed: Vec<_> = hs.iter().filter(|h| h.base_offset < sealed_end).collect();
    assert!(sealed.iter().all(|h| h.is_txn_marker() || !h.is_transactional()), "committed batches lose the flag");
    assert!(sealed.iter().filter(|h| h.is_txn_marker()).all(|h| h.delete_horizon_s > 0), "markers get a horizon");
    // After the horizon the markers go; the records stay, and the restart's header replay
    // finds no open transaction.
    p.compact(T0 + 10_000, policy(1_000), &options, None, true).await.unwrap();
    let hs = headers(&p);
    assert!(!hs.iter().any(|h| h.base_offset < sealed_end && h.is_txn_marker()), "expired markers are dropped");
    check(&p, &model, 0, false);
    drop(p);
    std::fs::remove_file(dir.path().join(crate::log::format::PRODUCER_SNAPSHOT_FILE)).ok();
    let p = open(dir.path());
    assert_eq!(p.last_stable_offset(), p.offsets().high_watermark.0, "no transaction looks open after replay");
    check(&p, &model, 0, false);
    // Producer 100's only batch was aborted and dropped; its empty last header keeps its
    // next sequence (1) for the replay.
    let next = p.state().producers.check(100, 0, 1, 1, 0).unwrap();
    assert_eq!(next, crate::partition::producer_state::SequenceCheck::Append);
}

#[tokio::test]
async fn nothing_above_the_last_stable_offset_or_in_the_active_segment_is_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    // An open transaction from offset 0 holds everything back.
    append(&p, &[("a".into(), Some("open".into()))], CODEC_NONE, FLAG_TRANSACTIONAL, 7, T0).await;
    for i in 0..100 {
        append(&p, &[("a".into(), Some(format!("v{i}-{}", "z".repeat(100))))], CODEC_NONE, 0, 0, T0).await;
    }
    assert!(p.compact(T0, policy(0), &CleanerOptions::default(), None, true).await.unwrap().is_none());
    assert_eq!(read_all(&p).len(), 0, "read_committed stops at the open transaction");
    let before = p.size_bytes();
    // A Raft limit below every segment: nothing either.
    assert!(p.compact(T0, policy(0), &CleanerOptions::default(), Some(0), true).await.unwrap().is_none());
    assert_eq!(p.size_bytes(), before);
}

#[tokio::test]
async fn records_younger_than_the_compaction_lag_and_clean_enough_logs_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    for i in 0..100 {
        append(&p, &[("a".into(), Some(format!("v{i}-{}", "z".repeat(100))))], CODEC_NONE, 0, 0, T0).await;
    }
    let lagged = CompactionPolicy { min_compaction_lag_ms: 60_000, ..policy(0) };
    assert!(p.compact(T0 + 1_000, lagged, &CleanerOptions::default(), None, true).await.unwrap().is_none());
    assert!(p.compact(T0 + 61_000, lagged, &CleanerOptions::default(), None, true).await.unwrap().is_some());
    // Cleaned; new dirt below a ratio of 1.0 is left alone unless forced.
    for i in 0..30 {
        append(&p, &[("b".into(), Some(format!("w{i}-{}", "y".repeat(100))))], CODEC_NONE, 0, 0, T0 + 62_000).await;
    }
    let status = p.cleaner_status();
    assert!(status.dirty_ratio > 0.0 && status.dirty_ratio < 1.0, "{status:?}");
    let picky = CompactionPolicy { min_cleanable_dirty_ratio: 1.0, ..policy(0) };
    assert!(p.compact(T0 + 62_000, picky, &CleanerOptions::default(), None, false).await.unwrap().is_none());
    assert!(p.compact(T0 + 62_000, picky, &CleanerOptions::default(), None, true).await.unwrap().is_some());
}

#[tokio::test]
async fn a_compacted_producers_next_sequence_survives_passes_and_a_header_replay() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    // Producer 9 writes x, y, z once (sequences 0-2); everyone else overwrites them after.
    let recs: Vec<(String, Option<String>)> =
        ["x", "y", "z"].iter().map(|k| (k.to_string(), Some("old".into()))).collect();
    append(&p, &recs, CODEC_NONE, 0, 9, T0).await;
    let mut model = BTreeMap::new();
    for round in 0..3 {
        for i in 0..60 {
            let k = ["x", "y", "z", "w"][i % 4].to_string();
            let v = Some(format!("r{round}-{i}-{}", "q".repeat(80)));
            append(&p, &[(k.clone(), v.clone())], CODEC_NONE, 0, 0, T0 + 1).await;
            model.insert(k, v);
        }
        // Several passes: the producer's emptied batch must stay while it is its latest.
        p.compact(T0 + 2, policy(0), &CleanerOptions::default(), None, true).await.unwrap();
        check(&p, &model, 0, false);
    }
    let mut headers = Vec::new();
    p.state().log.scan_headers(0, |h| headers.push(*h)).unwrap();
    let tail: Vec<_> = headers.iter().filter(|h| h.producer_id == 9).collect();
    assert_eq!(tail.len(), 1, "{tail:?}");
    assert_eq!((tail[0].record_count, tail[0].base_sequence, tail[0].base_offset), (0, 3, 2));
    drop(p);
    std::fs::remove_file(dir.path().join(crate::log::format::PRODUCER_SNAPSHOT_FILE)).ok();
    let p = open(dir.path());
    let state = p.state();
    assert_eq!(state.producers.check(9, 0, 3, 1, 0).unwrap(), crate::partition::producer_state::SequenceCheck::Append);
    assert!(state.producers.check(9, 0, 2, 1, 0).is_err(), "an old sequence is not new");
}
