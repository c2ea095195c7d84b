//! Tests of the partition's Raft storage: openraft's own storage suite, for each fsync policy,
//! plus what the suite does not check — durability across reopen, and snapshots that carry
//! real record batches between two logs.

use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use tempfile::TempDir;

use super::types::{log_id, Entry, EntryPayload, Membership, Vote};
use super::*;
use crate::log::{FsyncPolicy, LogConfig};
use crate::meta::reopen;

struct Builder(FsyncPolicy);

/// Opens (or reopens) a partition and its Raft storage under `dir`.
fn open(dir: &std::path::Path, fsync: FsyncPolicy) -> (Arc<Partition>, PartitionLogStore, PartitionStateMachine) {
    let config = LogConfig { segment_bytes: 4096, index_interval_bytes: 256, ..LogConfig::default() };
    let (partition, _) = Partition::open(&dir.join("t-0"), "t", 0, config, fsync).unwrap();
    let partition = Arc::new(partition);
    let meta = reopen(&dir.join("meta"));
    let (log, sm) = open_storage(Arc::clone(&partition), meta.raft_state(7).unwrap()).unwrap();
    (partition, log, sm)
}

/// As [`open`] (as `open_storage` builds it, fsync=never), with a handle on the recent entries.
fn open_with_recent(
    dir: &std::path::Path,
) -> (Arc<Partition>, PartitionLogStore, PartitionStateMachine, Arc<recent::RecentEntries>) {
    let config = LogConfig { segment_bytes: 4096, index_interval_bytes: 256, ..LogConfig::default() };
    let (partition, _) = Partition::open(&dir.join("t-0"), "t", 0, config, FsyncPolicy::Never).unwrap();
    let partition = Arc::new(partition);
    let state = reopen(&dir.join("meta")).raft_state(7).unwrap();
    let recent = Arc::new(recent::RecentEntries::default());
    let log = PartitionLogStore::open(Arc::clone(&partition), state.clone(), Arc::clone(&recent)).unwrap();
    let sm = PartitionStateMachine::open(Arc::clone(&partition), state, Arc::clone(&recent)).unwrap();
    (partition, log, sm, recent)
}

impl StoreBuilder<PartitionTc, PartitionLogStore, PartitionStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, PartitionLogStore, PartitionStateMachine), StorageError<PartitionTc>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(PartitionTc::err_from_error(&e)))?;
        let (_, log, sm) = open(dir.path(), self.0);
        Ok((dir, log, sm))
    }
}

#[tokio::test]
async fn openraft_storage_suite_fsync_per_batch() {
    Suite::test_all(Builder(FsyncPolicy::PerBatch)).await.unwrap();
}

#[tokio::test]
async fn openraft_storage_suite_fsync_never() {
    Suite::test_all(Builder(FsyncPolicy::Never)).await.unwrap();
}

/// A data entry as a leader proposes it.
fn proposed(term: u64, index: u64, records: u32) -> Entry {
    let payload = Bytes::from(format!("records-{index}-{}", "x".repeat(index as usize % 50)));
    let batch = ProposedBatch {
        payload_crc: tidelog_proto::checksum::crc32c(&payload),
        payload,
        record_count: records,
        compression: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        flags: 0,
        on_append: crate::raft::types::AppendHook::default(),
    };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(BatchData::Proposed(batch)) }
}

fn control(term: u64, index: u64, members: &[u64]) -> Entry {
    let payload = if members.is_empty() {
        EntryPayload::Blank
    } else {
        EntryPayload::Membership(Membership::new_with_defaults(vec![members.iter().copied().collect()], []))
    };
    Entry { log_id: log_id(term, index), payload }
}

async fn append(log: &mut PartitionLogStore, entries: Vec<Entry>) {
    let (tx, rx) = PartitionTc::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

/// Applies entries as openraft does: read back from the log.
async fn apply_from_log(log: &mut PartitionLogStore, sm: &mut PartitionStateMachine, range: std::ops::Range<u64>) {
    let entries = log.try_get_log_entries(range).await.unwrap();
    sm.apply(futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await.unwrap();
}

/// The leader's log: membership, a blank, then data batches; offsets assigned at append.
async fn leader_log(log: &mut PartitionLogStore, batches: u64) {
    append(log, vec![control(1, 0, &[1, 2, 3]), control(1, 1, &[])]).await;
    append(log, (2..2 + batches).map(|i| proposed(1, i, 3)).collect()).await;
}

#[tokio::test]
async fn offsets_follow_the_raft_log_and_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (partition, mut log, mut sm) = open(dir.path(), FsyncPolicy::PerBatch);
        leader_log(&mut log, 40).await;
        let entries = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(entries.len(), 42);
        let offsets: Vec<u64> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(BatchData::Stored(b)) => Some(b.header.base_offset),
                _ => None,
            })
            .collect();
        assert_eq!(offsets, (0..40).map(|i| i * 3).collect::<Vec<_>>(), "gap-free offsets in Raft order");
        assert_eq!(partition.offsets().high_watermark.0, 0, "nothing is visible before it is applied");
        apply_from_log(&mut log, &mut sm, 0..30).await;
        assert_eq!(partition.offsets().high_watermark.0, 28 * 3, "applied up to entry 29 = batch 28");
        log.save_vote(&Vote::new_committed(4, 2)).await.unwrap();
        log.purge(log_id(1, 5)).await.unwrap();
        // An uncommitted suffix is dropped; the high watermark is untouched.
        log.truncate_after(Some(log_id(1, 35))).await.unwrap();
        assert_eq!(partition.offsets().log_end.0, 34 * 3);
    }
    let (partition, mut log, mut sm) = open(dir.path(), FsyncPolicy::PerBatch);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(4, 2)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 5)), Some(log_id(1, 35))));
    assert_eq!(log.try_get_log_entries(0..).await.unwrap()[0].log_id, log_id(1, 6), "purged entries are hidden");
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 29)));
    assert_eq!(membership.voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(partition.offsets().high_watermark.0, 28 * 3, "the high watermark comes back from the checkpoint");
}

#[tokio::test]
async fn a_snapshot_carries_the_segments_and_replaces_a_diverged_log() {
    let leader_dir = tempfile::tempdir().unwrap();
    let (_leader, mut leader_store, mut leader_sm) = open(leader_dir.path(), FsyncPolicy::PerBatch);
    leader_log(&mut leader_store, 120).await; // several 4 KiB segments
    apply_from_log(&mut leader_store, &mut leader_sm, 0..100).await;
    let snap = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 99)));
    assert!(snap.snapshot.slices.len() > 1, "spans segments");

    // The follower holds a diverged suffix of another term.
    let follower_dir = tempfile::tempdir().unwrap();
    let (follower, mut follower_store, mut follower_sm) = open(follower_dir.path(), FsyncPolicy::PerBatch);
    append(&mut follower_store, vec![control(1, 0, &[1, 2, 3])]).await;
    append(&mut follower_store, (1..20).map(|i| proposed(2, i, 1)).collect()).await;
    follower_sm.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    follower_store.purge(log_id(1, 99)).await.unwrap();

    let want = leader_store.try_get_log_entries(0..100).await.unwrap();
    let got = follower.read_raft(0, usize::MAX).unwrap();
    assert_eq!(follower.offsets().high_watermark.0, 98 * 3);
    assert_eq!(follower.offsets().log_end.0, 98 * 3);
    // Byte-equal entries, read through a fresh log (indexes rebuilt from the copied segments).
    let mut all = Vec::new();
    let mut next = 0;
    loop {
        let batch = follower.read_raft(next, 1 << 20).unwrap();
        let Some(last) = batch.last() else { break };
        next = last.header.raft_index + 1;
        all.extend(batch.into_iter().map(|b| log_store::entry_from_batch(b).unwrap()));
    }
    assert!(!got.is_empty());
    assert_eq!(all, want);
    // The follower continues the leader's log from there.
    append(&mut follower_store, vec![proposed(1, 100, 3)]).await;
    let next_batch = follower.read_raft(100, 1).unwrap();
    assert_eq!(next_batch[0].header.base_offset, 98 * 3);
    assert_eq!(follower_sm.get_current_snapshot().await.unwrap().unwrap().meta, snap.meta);
}

/// An idempotent producer's batch with sequence `seq` (a resend of a stored one becomes an
/// outcome control batch at append).
fn proposed_idempotent(term: u64, index: u64, seq: i32) -> Entry {
    let mut entry = proposed(term, index, 2);
    if let EntryPayload::Normal(BatchData::Proposed(b)) = &mut entry.payload {
        let payload = Bytes::from(format!("idempotent-{seq}"));
        (b.payload_crc, b.payload, b.producer_id, b.producer_epoch, b.base_sequence) =
            (tidelog_proto::checksum::crc32c(&payload), payload, 9, 0, seq);
    }
    entry
}

/// Every entry with index in `range`, read through a log store with nothing kept in memory.
async fn from_disk(partition: &Arc<Partition>, dir: &std::path::Path, range: std::ops::Range<u64>) -> Vec<Entry> {
    let meta = reopen(&dir.join("meta-disk"));
    let state = meta.raft_state(7).unwrap();
    let mut store = PartitionLogStore::open(Arc::clone(partition), state, Arc::default()).unwrap();
    store.try_get_log_entries(range).await.unwrap()
}

#[tokio::test]
async fn replication_reads_from_memory_equal_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (partition, mut log, _sm, recent) = open_with_recent(dir.path());

    leader_log(&mut log, 40).await;
    // A resend of a stored batch is kept as the outcome control batch the log stores.
    append(&mut log, vec![proposed_idempotent(1, 42, 0), proposed_idempotent(1, 43, 0)]).await;
    assert_eq!(recent.len(), 44, "every entry appended as leader is kept");
    let want = from_disk(&partition, dir.path(), 0..44).await;
    assert_eq!(want.len(), 44);
    assert_eq!(log.try_get_log_entries(0..44).await.unwrap(), want);
    // Replication's chunked reads: the same entries, whatever the chunk boundaries.
    let mut got = Vec::new();
    let mut next = 0;
    while next < 44 {
        let chunk = log.limited_get_log_entries(next, 44).await.unwrap();
        next = chunk.last().unwrap().log_id.index + 1;
        got.extend(chunk);
    }
    assert_eq!(got, want);

    // A truncation cuts what is kept; entries of a new term continue the run.
    log.truncate_after(Some(log_id(1, 30))).await.unwrap();
    assert_eq!(recent.len(), 31);
    append(&mut log, (31..36).map(|i| proposed(2, i, 1)).collect()).await;
    assert_eq!(recent.len(), 36);
    assert_eq!(log.try_get_log_entries(20..36).await.unwrap(), from_disk(&partition, dir.path(), 20..36).await);

    // A purge drops what it hides; a vote change drops the rest.
    log.purge(log_id(1, 25)).await.unwrap();
    assert_eq!(recent.len(), 10);
    assert_eq!(log.try_get_log_entries(0..36).await.unwrap(), from_disk(&partition, dir.path(), 26..36).await);
    log.save_vote(&Vote::new(3, 2)).await.unwrap();
    assert!(recent.is_empty());
    assert_eq!(log.try_get_log_entries(26..36).await.unwrap(), from_disk(&partition, dir.path(), 26..36).await);

    // A follower's appends (batches as their leader stored them) are kept too: every replica
    // reads its entries back to apply them.
    let replicated = from_disk(&partition, dir.path(), 35..36).await;
    log.truncate_after(Some(log_id(2, 34))).await.unwrap();
    append(&mut log, replicated.clone()).await;
    assert_eq!(recent.len(), 1);
    assert_eq!(log.try_get_log_entries(35..36).await.unwrap(), replicated);
    // A group that falls asleep forgets.
    append(&mut log, vec![proposed(3, 36, 1)]).await;
    assert_eq!(recent.len(), 2);
    log.forget_recent();
    assert!(recent.is_empty());
}

#[tokio::test]
async fn a_snapshot_install_empties_the_kept_entries() {
    let leader_dir = tempfile::tempdir().unwrap();
    let (_leader, mut leader_store, mut leader_sm) = open(leader_dir.path(), FsyncPolicy::Never);
    leader_log(&mut leader_store, 30).await;
    apply_from_log(&mut leader_store, &mut leader_sm, 0..25).await;
    let snap = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();

    // A replica that led a diverged suffix of another term, at indexes past the snapshot.
    let dir = tempfile::tempdir().unwrap();
    let (_partition, mut store, mut sm, recent) = open_with_recent(dir.path());
    append(&mut store, vec![control(2, 0, &[1, 2, 3])]).await;
    append(&mut store, (1..40).map(|i| proposed(2, i, 1)).collect()).await;
    assert_eq!(recent.len(), 40);
    sm.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert!(recent.is_empty(), "the log was replaced");
    assert_eq!(store.try_get_log_entries(0..25).await.unwrap(), leader_store.try_get_log_entries(0..25).await.unwrap());
}
