//! Metadata snapshots: the metadata log holds state, not history. Every group commit is an
//! entry of it, so without this a broker would re-apply every commit ever made when it starts,
//! and a new broker would have to fetch them all.
//!
//! Once `metadata_snapshot_bytes` of sealed log were written since the last snapshot, each
//! broker, on its own replica (as compaction does for a partition):
//! 1. takes a Raft snapshot and purges the metadata group's Raft log up to the sealed prefix
//!    (`raft::retention::purge_through`; on the leader no further than every live follower
//!    holds, so only a broker that was down or is new is ever sent a snapshot);
//! 2. folds the sealed prefix, up to the durable purge point and below what this broker
//!    applied, into a [`MetaImage`] (`meta_image.rs`);
//! 3. replaces the prefix by one segment holding the image's commands, each at the offset
//!    and with the Raft id of a command it stands for, swapped in crash-safely
//!    ([`Partition::rewrite_prefix`], the compaction swap of `log/swap.rs`).
//!
//! The Raft snapshot of the metadata group is therefore the image segment plus the sealed
//! segments after it (`raft/state_machine.rs`): a broker that installs it rebuilds its whole
//! view from it (`metadata::run_applier`), and a broker that starts replays the image and at
//! most about `metadata_snapshot_bytes` of commands after it. Start-up time and memory follow
//! the live state (topics, groups' offsets, ACLs, transactional ids), not the number of
//! commands ever committed.
//!
//! Invariants: only sealed segments wholly below the applied offset and at or below the
//! durable Raft purge point are replaced; the log start never moves; a command's offset
//! never changes (topic ids are offsets); a kill -9 at any moment leaves the old prefix or
//! the image.
//!
//! Never: rewrite a segment this broker has not applied, or one Raft may still send.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::meta_image::MetaImage;
use super::metadata::MetaCommand;
use super::Cluster;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::log::format::BatchHeader;
use crate::log::{sync_staging, SealedSegment, StagedSegment};
use crate::partition::compaction::CleanStats;
use crate::partition::Partition;

/// How often each broker checks whether a snapshot is due (a check reads a few counters).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Bound on each of the Raft snapshot and the purge.
const RAFT_WAIT: Duration = Duration::from_secs(10);

/// The metadata log's segment size for a snapshot threshold: a quarter of it, so a snapshot
/// replaces a few sealed segments, within 64 KiB..64 MiB.
pub fn segment_bytes(snapshot_bytes: u64) -> u64 {
    (snapshot_bytes / 4).clamp(64 << 10, 64 << 20)
}

/// Takes a snapshot whenever one is due, until shutdown.
pub async fn run(broker: Arc<Broker>, cluster: Arc<Cluster>, log: Arc<Partition>, snapshot_bytes: u64) {
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match snapshot(&cluster, &log, snapshot_bytes).await {
            Ok(Some(s)) => {
                let m = crate::telemetry::metrics::instruments();
                m.metadata_snapshots.inc();
                m.metadata_image_bytes.set(s.bytes_written as i64);
                tracing::info!(
                    segments = s.segments,
                    read_bytes = s.bytes_read,
                    image_bytes = s.bytes_written,
                    snapshot_offset = s.cleaned_offset,
                    elapsed_ms = s.elapsed_ms,
                    "metadata snapshot taken"
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "metadata snapshot failed; retrying"),
        }
    }
}

/// One snapshot if one is due (see the module docs).
pub async fn snapshot(
    cluster: &Cluster,
    log: &Arc<Partition>,
    min_dirty_bytes: u64,
) -> Result<Option<CleanStats>, String> {
    let applied = *cluster.applied.borrow();
    let Some(upto) = log.rewrite_point(applied, min_dirty_bytes) else { return Ok(None) };
    let r = cluster.metadata_group();
    let upto = upto.min(r.live_followers_hold().unwrap_or(u64::MAX));
    if upto == 0 {
        return Ok(None);
    }
    crate::raft::retention::purge_through(&r.raft, &r.store, upto, RAFT_WAIT).await.map_err(|e| e.to_string())?;
    let Some(purged) = r.store.purged_index() else { return Ok(None) };
    let log = Arc::clone(log);
    tokio::task::spawn_blocking(move || log.rewrite_prefix(applied, Some(purged), min_dirty_bytes, write_image))
        .await
        .map_err(|e| format!("the metadata snapshot task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// Writes the image of `segments` (the sealed prefix, from the log start) into `staging` as
/// one segment: the image's commands, the Raft control batches (leader blanks, membership) as
/// they were, and any command this version cannot decode, kept as it is. Returns the bytes
/// written.
fn write_image(segments: &[SealedSegment], staging: &Path) -> Result<u64, BrokerError> {
    let (Some(first), Some(last_seg)) = (segments.first(), segments.last()) else {
        return Err(BrokerError::InvalidArgument("no metadata segment to snapshot".into()));
    };
    if last_seg.end_offset - first.base_offset > u64::from(u32::MAX) {
        return Err(BrokerError::InvalidArgument(
            "the metadata log's prefix spans more offsets than one segment can index".into(),
        ));
    }
    let mut image = MetaImage::default();
    let mut kept: Vec<(BatchHeader, Bytes)> = Vec::new();
    let mut last = None;
    for seg in segments {
        seg.for_each_batch(
            |_| {},
            |b| {
                let h = b.header;
                last = Some(h);
                if h.is_control() {
                    kept.push((h, b.payload));
                } else if h.record_count > 0 {
                    match serde_json::from_slice::<MetaCommand>(&b.payload) {
                        Ok(cmd) => image.fold(&h, cmd),
                        Err(_) => kept.push((h, b.payload)),
                    }
                }
                // An empty batch (an earlier image's end) has nothing to fold.
                Ok::<_, BrokerError>(true)
            },
        )?;
    }
    let Some(last) = last else {
        return Err(BrokerError::InvalidArgument("the metadata segments hold no batch".into()));
    };
    for (h, cmd) in image.commands() {
        let payload = Bytes::from(
            serde_json::to_vec(&cmd).map_err(|e| BrokerError::InvalidArgument(format!("encoding metadata: {e}")))?,
        );
        let header = BatchHeader {
            compression: 0,
            flags: 0,
            record_count: 1,
            payload_crc: tidelog_proto::checksum::crc32c(&payload),
            delete_horizon_s: 0,
            ..h
        };
        kept.push((header, payload));
    }
    // Log order: Raft indexes increase along the log, as offsets do.
    kept.sort_by_key(|(h, _)| (h.raft_index, h.base_offset));
    let mut out = StagedSegment::create(staging, first.base_offset)?;
    for (h, payload) in &kept {
        out.put(h, payload)?;
    }
    let written = out.finish(last_seg.end_offset, &last)?;
    sync_staging(staging)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{AppendBatch, FsyncPolicy, LogConfig};
    use crate::meta::StoredOffset;

    fn command(cmd: &MetaCommand) -> Vec<u8> {
        serde_json::to_vec(cmd).unwrap()
    }

    async fn append(p: &Partition, cmd: &MetaCommand) {
        let payload = command(cmd);
        let b = AppendBatch {
            payload: &payload,
            record_count: 1,
            compression: 0,
            payload_crc: tidelog_proto::checksum::crc32c(&payload),
            raft: None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            flags: 0,
        };
        let pending = p.append(b, 1_000).unwrap();
        p.complete(&pending).await.unwrap();
    }

    fn commit(group: &str, offset: u64) -> MetaCommand {
        MetaCommand::CommitOffsets {
            group: group.into(),
            topic: "t".into(),
            // Padded past a segment, so each command rolls a segment of its own.
            offsets: vec![StoredOffset { partition: 0, offset, commit_time_ms: 1, metadata: "m".repeat(1100) }],
            topic_id: 0,
        }
    }

    /// The sealed prefix ends with a command the image drops (a group deletion), so the
    /// image ends with an empty end batch; a broker reading the log from 0 (as at start) must
    /// read past it to the commands after, not stop there.
    #[tokio::test]
    async fn an_image_ending_in_an_end_batch_is_read_past() {
        let dir = tempfile::tempdir().unwrap();
        // The smallest segments; every command below is larger, so all but the last are sealed.
        let config = LogConfig { segment_bytes: 1024, ..LogConfig::default() };
        let gone = format!("gone-{}", "x".repeat(1100));
        let p = Arc::new(Partition::open(dir.path(), "__cluster_metadata", 0, config, FsyncPolicy::Never).unwrap().0);
        append(&p, &commit("kept", 7)).await; // 0
        append(&p, &commit(&gone, 8)).await; // 1
        append(&p, &MetaCommand::DeleteGroup { group: gone.clone() }).await; // 2: the image drops it
        append(&p, &commit("after", 9)).await; // 3: the active segment
        let stats = p.rewrite_prefix(4, None, 0, write_image).unwrap().expect("the prefix is rewritten");
        assert_eq!((stats.segments, stats.cleaned_offset), (3, 3));

        let mut image = MetaImage::default();
        let mut next = 0;
        for _ in 0..10 {
            let Some(cmds) = super::super::metadata::read_chunk(&p, &mut next).unwrap() else { break };
            for (h, cmd) in cmds {
                image.fold(&h, cmd);
            }
        }
        assert_eq!(next, 4, "read to the log end, past the image's end batch");
        let groups: Vec<&str> = image.offsets.keys().map(|(g, _)| g.as_str()).collect();
        assert_eq!(groups, ["after", "kept"]);
    }
}
