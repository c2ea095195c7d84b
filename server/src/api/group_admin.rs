//! Group administration (Kafka's `kafka-consumer-groups`): list groups, delete a group's
//! committed offsets, reset them. Served where group calls are served (`broker/route.rs`: the
//! coordinator), so the membership checks and the commits see one coordinator's view.
//!
//! Invariants: deleting or resetting needs a group without members (`NON_EMPTY_GROUP`
//! otherwise), as Kafka requires, so no live member's commits interleave; a reset commits
//! through the same path as a member's commit (durable before it is answered, fenced against
//! a deleted topic incarnation); a dry run changes nothing.

use std::collections::{BTreeMap, HashMap};

use tidelog_proto::v1::{
    offset_spec, reset_offsets_request, DeleteGroupResponse, GroupListing, ListGroupsResponse, ListOffsetsRequest,
    OffsetSpec, PartitionReset, ResetOffsetsRequest, ResetOffsetsResponse,
};
use tonic::Status;

use super::admin::list_offsets;
use super::offsets::validate_group;
use crate::broker::route::Origin;
use crate::broker::Broker;
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::group::Coordinator;
use crate::meta::StoredOffset;

/// Every group the coordinator knows (with its state) or that has committed offsets.
pub fn list_groups(broker: &Broker, coordinator: &Coordinator) -> Result<ListGroupsResponse, BrokerError> {
    let mut groups: BTreeMap<String, GroupListing> = coordinator
        .list()
        .into_iter()
        .map(|(group, state, members, protocol)| {
            let listing =
                GroupListing { group: group.clone(), state: state.name().into(), members: members as u32, protocol };
            (group, listing)
        })
        .collect();
    for group in broker.groups_with_offsets()? {
        groups.entry(group.clone()).or_insert_with(|| GroupListing {
            group,
            state: "empty".into(),
            members: 0,
            protocol: String::new(),
        });
    }
    Ok(ListGroupsResponse { groups: groups.into_values().collect() })
}

/// Whether a group exists: the coordinator knows it, or it has committed offsets.
pub fn check_exists(broker: &Broker, coordinator: &Coordinator, group: &str) -> Result<(), BrokerError> {
    if coordinator.describe(group).is_some() || broker.group_has_offsets(group)? {
        Ok(())
    } else {
        Err(BrokerError::UnknownGroup(group.to_string()))
    }
}

/// Deletes an inactive group's committed offsets.
pub async fn delete_group(
    broker: &Broker,
    coordinator: &Coordinator,
    group: &str,
) -> Result<DeleteGroupResponse, BrokerError> {
    validate_group(group)?;
    coordinator.check_inactive(group)?;
    check_exists(broker, coordinator, group)?;
    let deleted = broker.delete_group(group).await?;
    coordinator.forget(group);
    tracing::info!(group, offsets = deleted, "group deleted");
    Ok(DeleteGroupResponse { offsets_deleted: deleted as u32 })
}

/// Moves an inactive group's committed offsets for one topic (see the proto for the targets).
pub async fn reset_offsets(
    broker: &Broker,
    coordinator: &Coordinator,
    req: ResetOffsetsRequest,
) -> Result<ResetOffsetsResponse, Status> {
    use reset_offsets_request::To;
    validate_group(&req.group)?;
    let to = req.to.ok_or_else(|| {
        Status::invalid_argument("say where to reset to: earliest, latest, offset, timestamp_ms or shift_by")
    })?;
    let topic = broker.topic(&req.topic)?;
    let mut partitions = req.partitions.clone();
    if partitions.is_empty() {
        partitions = (0..topic.record.partitions).collect();
    }
    partitions.sort_unstable();
    partitions.dedup();
    for p in &partitions {
        topic.check_partition(*p)?;
    }
    coordinator.check_inactive(&req.group)?;

    let committed: HashMap<u32, u64> =
        broker.committed_offsets(&req.group, &req.topic)?.into_iter().map(|o| (o.partition, o.offset)).collect();
    let offsets_at = |spec: offset_spec::Spec| {
        let req = ListOffsetsRequest {
            topic: req.topic.clone(),
            partitions: partitions.clone(),
            spec: Some(OffsetSpec { spec: Some(spec) }),
            isolation_level: 0,
        };
        async move {
            let resp = list_offsets(broker, req, Origin::Client).await?;
            Ok::<HashMap<u32, u64>, Status>(resp.offsets.into_iter().map(|o| (o.partition, o.offset)).collect())
        }
    };
    let start = offsets_at(offset_spec::Spec::Earliest(true)).await?;
    let end = offsets_at(offset_spec::Spec::Latest(true)).await?;
    let at_time = match to {
        To::TimestampMs(t) => Some(offsets_at(offset_spec::Spec::TimestampMs(t)).await?),
        _ => None,
    };
    let mut resets = Vec::with_capacity(partitions.len());
    for p in &partitions {
        let (Some(&lo), Some(&hi)) = (start.get(p), end.get(p)) else {
            return Err(Status::unavailable(format!("no offsets for partition {p} of topic '{}'; retry", req.topic)));
        };
        let before = committed.get(p).copied();
        let target: i128 = match to {
            To::Earliest(_) => i128::from(lo),
            To::Latest(_) => i128::from(hi),
            To::Offset(o) => i128::from(o),
            To::TimestampMs(_) => i128::from(at_time.as_ref().and_then(|m| m.get(p)).copied().unwrap_or(hi)),
            To::ShiftBy(d) => i128::from(before.unwrap_or(lo)) + i128::from(d),
        };
        // max then min, not clamp: two reads of a moving log may give lo > hi (then hi wins).
        let after = target.max(i128::from(lo)).min(i128::from(hi)) as u64;
        resets.push(PartitionReset { partition: *p, before, after });
    }
    if !req.dry_run {
        // A group without members accepts commits without a generation (the coordinator's
        // rule for every commit); a member that joined since is caught here.
        coordinator.check_inactive(&req.group)?;
        coordinator.check_commit(&req.group, 0, "")?;
        let now = now_ms();
        let offsets = resets
            .iter()
            .map(|r| StoredOffset {
                partition: r.partition,
                offset: r.after,
                commit_time_ms: now,
                metadata: String::new(),
            })
            .collect();
        broker.commit_offsets(&req.group, &topic, offsets).await?;
        tracing::info!(group = %req.group, topic = %req.topic, partitions = resets.len(), "committed offsets reset");
    }
    Ok(ResetOffsetsResponse { partitions: resets, applied: !req.dry_run })
}
