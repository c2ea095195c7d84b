//! A replicated partition's `PartitionWriter` (`broker/seam.rs`): writes are proposals to the
//! partition's Raft group, answered at commit (acks=all) or at the leader's append
//! (acks=leader); retention goes through Raft (`raft/retention.rs`).
//!
//! Never: write the partition's log directly. Only the group's log store does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::replica::RaftReplica;
use crate::broker::seam::{Acks, PartitionWriter, Replication, WriteAnswer};
use crate::error::BrokerError;
use crate::log::{AppendBatch, RetentionOutcome};
use crate::partition::compaction::{CleanStats, CleanerOptions, CompactionPolicy};
use crate::partition::Partition;
use crate::raft::transport::RaftGroups;
use crate::raft::types::AppendHook;
use crate::raft::ProposedBatch;

/// How long one retention pass may wait for its snapshot and for its purge.
const RETENTION_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct RaftWriter {
    pub(super) replica: RaftReplica,
    pub(super) log: Arc<Partition>,
    /// Every broker's client address, for NOT_LEADER hints.
    pub(super) brokers: Arc<super::members::Directory>,
    pub(super) groups: RaftGroups,
}

#[tonic::async_trait]
impl PartitionWriter for RaftWriter {
    async fn write(&self, batch: AppendBatch<'_>, payload: &Bytes, acks: Acks) -> Result<WriteAnswer, BrokerError> {
        let proposed = ProposedBatch {
            payload: payload.clone(), // a reference count, not a copy
            record_count: batch.record_count,
            compression: batch.compression,
            payload_crc: batch.payload_crc,
            producer_id: batch.producer_id,
            producer_epoch: batch.producer_epoch,
            base_sequence: batch.base_sequence,
            flags: batch.flags,
            on_append: AppendHook::default(),
        };
        let brokers = Arc::clone(&self.brokers);
        let hint = move |leader: Option<u64>| brokers.hint(leader);
        let what = format!("partition {} of topic '{}'", self.log.index(), self.log.topic());
        let proposed_at = std::time::Instant::now();
        let answer = self.replica.propose(proposed, acks == Acks::Leader, hint, what).await?;
        let answer = async move {
            let result = answer.await;
            if acks == Acks::All && matches!(result, Ok(Ok(_))) {
                let m = crate::telemetry::metrics::instruments();
                m.replication_commit_latency.observe(proposed_at.elapsed().as_secs_f64());
            }
            result
        };
        if !crate::telemetry::exporting() {
            return Ok(Box::pin(answer));
        }
        // A child of the batch's append span: the wait for the leader's append (acks=leader)
        // or for a majority's (acks=all).
        let span = tracing::info_span!(
            "replicate",
            otel.name = %format!("replicate {}", self.log.topic()),
            otel.kind = "internal",
            messaging.destination.name = %self.log.topic(),
            messaging.destination.partition.id = %self.log.index(),
            tidelog.acks = if acks == Acks::All { "all" } else { "leader" },
            tidelog.raft.term = self.replica.replication().term.unwrap_or(0) as i64,
        );
        Ok(Box::pin(tracing::Instrument::instrument(answer, span)))
    }

    fn leader(&self) -> Option<u64> {
        self.replica.leader()
    }

    fn in_sync(&self) -> Vec<u64> {
        self.replica.in_sync()
    }

    fn replication(&self) -> Replication {
        self.replica.replication()
    }

    async fn retain(&self, now_ms: i64) -> Result<RetentionOutcome, String> {
        let r = &self.replica;
        crate::raft::retention::apply_retention(&r.raft, &r.store, &self.log, now_ms, RETENTION_WAIT)
            .await
            .map_err(|e| e.to_string())
    }

    async fn compact(
        &self,
        now_ms: i64,
        policy: CompactionPolicy,
        options: &CleanerOptions,
        force: bool,
    ) -> Result<Option<CleanStats>, String> {
        let Some(upto) = self.log.clean_point(now_ms, &policy, force) else { return Ok(None) };
        let r = &self.replica;
        // Not past what a live follower holds (the leader only; see `live_followers_hold`).
        let upto = upto.min(r.live_followers_hold().unwrap_or(u64::MAX));
        if upto == 0 {
            return Ok(None);
        }
        crate::raft::retention::purge_through(&r.raft, &r.store, upto, RETENTION_WAIT)
            .await
            .map_err(|e| e.to_string())?;
        // Only below the durable purge point, as our log store recorded it (none: nothing).
        let Some(purged) = r.store.purged_index() else { return Ok(None) };
        self.log.compact(now_ms, policy, options, Some(purged), force).await.map_err(|e| e.to_string())
    }

    async fn stop(&self) {
        self.replica.stop(&self.groups).await;
    }
}
