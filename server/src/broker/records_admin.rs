//! Changing a topic's shape after creation: adding partitions, and deleting the records below
//! an offset (Kafka's CreatePartitions and DeleteRecords). Written once over the seam: the
//! checks live here, the control plane (`seam.rs`) makes the change durable everywhere.
//!
//! Invariants:
//! - a partition count only grows, up to `MAX_PARTITIONS`;
//! - a deletion's offset is checked against the partition's high watermark before anything
//!   changes, for every partition of the request, so a request with one bad offset changes
//!   nothing. Every replica's high watermark is a committed offset (one a majority holds), so
//!   checking against any replica's is safe; a replica here that lags the offset waits briefly
//!   for its high watermark to catch up, and for a partition held elsewhere the highest answer
//!   of its replicas counts.
//!
//! Never: delete records above the high watermark (records not yet produced would vanish as
//! they arrive).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tidelog_proto::v1::admin_service_client::AdminServiceClient;
use tidelog_proto::v1::{offset_spec, ListOffsetsRequest, OffsetSpec};

use super::route::{forwarded_request, upstream_error, Origin, APPLY_WAIT};
use super::{Broker, Topic, MAX_PARTITIONS};
use crate::error::BrokerError;

/// How long a deletion waits for a lagging replica's high watermark to reach its offset.
const HW_CATCH_UP: Duration = Duration::from_secs(3);

impl Broker {
    /// Raises a topic's partition count to `partitions`; returns the topic once this broker
    /// has the new partitions.
    pub async fn add_partitions(&self, name: &str, partitions: u32, origin: Origin) -> Result<Arc<Topic>, BrokerError> {
        self.check_running()?;
        let topic = self.topic(name)?;
        let now = topic.record.partitions;
        if partitions <= now || partitions > MAX_PARTITIONS {
            return Err(BrokerError::InvalidArgument(format!(
                "topic '{name}' has {now} partitions; a new count must be above that and at most {MAX_PARTITIONS} (got {partitions}); partitions are never removed"
            )));
        }
        self.control()?.add_partitions(self, &topic, partitions, origin).await
    }

    /// Deletes the records below `before` (`None`: the high watermark) in each named partition;
    /// returns each partition's log start afterwards.
    pub async fn delete_records(
        &self,
        name: &str,
        before: &[(u32, Option<u64>)],
        origin: Origin,
    ) -> Result<Vec<(u32, u64)>, BrokerError> {
        self.check_running()?;
        let topic = self.topic(name)?;
        if before.is_empty() {
            return Err(BrokerError::InvalidArgument("name at least one partition to delete records from".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (p, _) in before {
            topic.check_partition(*p)?;
            if !seen.insert(*p) {
                return Err(BrokerError::InvalidArgument(format!("partition {p} is named twice")));
            }
        }
        let marks = self.high_watermarks(&topic, before).await?;
        let mut resolved = Vec::with_capacity(before.len());
        for ((p, offset), hw) in before.iter().zip(marks) {
            let offset = offset.unwrap_or(hw);
            if offset > hw {
                return Err(BrokerError::AboveHighWatermark {
                    topic: name.to_string(),
                    partition: *p,
                    offset,
                    high_watermark: hw,
                });
            }
            resolved.push((*p, offset));
        }
        self.control()?.delete_records(self, &topic, &resolved, origin).await
    }

    /// The high watermark of each partition named, at least `before` where given (a lagging
    /// replica here waits up to `HW_CATCH_UP` for it). Partitions held elsewhere are asked of
    /// one of their replicas.
    async fn high_watermarks(&self, topic: &Topic, before: &[(u32, Option<u64>)]) -> Result<Vec<u64>, BrokerError> {
        let mut remote: BTreeMap<u32, u64> = BTreeMap::new();
        for (p, _) in before {
            if let Some(replicas) = topic.elsewhere(*p) {
                remote.insert(*p, self.remote_high_watermark(topic, *p, replicas).await?);
            }
        }
        let mut out = Vec::with_capacity(before.len());
        for (p, want) in before {
            if let Some(hw) = remote.get(p) {
                out.push(*hw);
                continue;
            }
            let (log, writer) = topic.held(*p)?;
            if let (Some(want), false) = (want, writer.leader() == Some(self.node_id())) {
                let mut hw = log.watch_hw();
                let _ = tokio::time::timeout(HW_CATCH_UP, hw.wait_for(|h| *h >= *want)).await;
            }
            out.push(log.offsets().high_watermark.0);
        }
        Ok(out)
    }

    async fn remote_high_watermark(
        &self,
        topic: &Topic,
        p: u32,
        replicas: &[(u64, String)],
    ) -> Result<u64, BrokerError> {
        let mut best: Option<u64> = None;
        let mut failure = None;
        for (id, _) in replicas {
            let req = ListOffsetsRequest {
                topic: topic.record.name.clone(),
                partitions: vec![p],
                spec: Some(OffsetSpec { spec: Some(offset_spec::Spec::Latest(true)) }),
                isolation_level: 0,
            };
            let Ok(channel) = self.channel_to(*id) else { continue };
            match AdminServiceClient::new(channel).list_offsets(forwarded_request(req, Some(APPLY_WAIT))).await {
                Ok(resp) => {
                    if let Some(o) = resp.into_inner().offsets.into_iter().find(|o| o.partition == p) {
                        best = Some(best.map_or(o.offset, |b| b.max(o.offset)));
                    }
                }
                Err(s) => failure = Some(s),
            }
        }
        if let Some(hw) = best {
            return Ok(hw);
        }
        let what =
            format!("partition {p} of topic '{}' (none of its replicas told its high watermark)", topic.record.name);
        Err(match failure {
            Some(s) => upstream_error(&what, &s),
            None => BrokerError::NotLeader { what, leader: None },
        })
    }
}
