//! The cluster's metadata: a Raft group (id 0; up to three voters, the other brokers observe:
//! `members.rs`) whose log holds
//! [`MetaCommand`]s, one per batch, JSON-encoded. KRaft's idea: metadata is itself a
//! replicated log, and every broker builds its view by applying it in order. The log holds
//! topics and consumer groups' committed offsets (Kafka's `__consumer_offsets`, folded into the
//! same quorum), and the ACLs and quotas.
//!
//! Writing: [`propose`] on the metadata leader (the controller); any other broker passes the
//! admin request on to it (`control.rs`). Reading: every broker applies the committed log to
//! its own topic table ([`run_applier`]), so describe and produce are answered locally.
//!
//! Applying is deterministic and idempotent over the log prefix: a `CreateTopic` for a name
//! that exists is ignored (the proposer sees another id and reports "exists"), a `DeleteTopic`
//! names the incarnation (topic id) it deletes. A broker starting (or installing a metadata
//! snapshot) folds the whole committed log into a [`MetaImage`] first and builds its view from
//! that ([`rebuild`]): deleted topics never start, a topic opens with its current settings, and
//! a revoked ACL is never enforced again while the log is read. A topic is published before
//! this broker's replicas of it are open, and they open while the applier waits
//! (`opening.rs`): the next command is applied only once they are.
//!
//! Never: apply a command above the metadata group's high watermark (uncommitted).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::meta_image::MetaImage;
use super::opening::{self, Opened, Pending};
use super::replica;
use super::{group_id, Cluster};
use crate::auth::SecurityChange;
use crate::broker::route::APPLY_WAIT;
use crate::broker::{Broker, PartitionSlot, Topic};
use crate::error::BrokerError;
use crate::log::format::BatchHeader;
use crate::log::StoredBatch;
use crate::meta::{StoredOffset, TopicRecord};
use crate::partition::Partition;
use crate::raft::types::AppendHook;
use crate::raft::{BatchData, ProposedBatch};
use crate::topic_config::TopicSettings;

/// Bytes of metadata log read per step of the applier.
const READ_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetaCommand {
    CreateTopic {
        record: TopicRecord,
    },
    /// `topic_id` names the incarnation; `partitions` lets a broker that never opened it
    /// clean up its directories and Raft state.
    DeleteTopic {
        name: String,
        topic_id: u64,
        partitions: u32,
    },
    /// Committed offsets of one group for one topic, proposed by the group coordinator (the
    /// controller) after it checked the commit's generation. Applying stores them in every
    /// broker's metadata store, so committed offsets survive the loss of any minority.
    ///
    /// `topic_id` names the incarnation committed to (0 in entries written before it
    /// existed: applied to whatever topic has the name).
    CommitOffsets {
        group: String,
        topic: String,
        offsets: Vec<StoredOffset>,
        #[serde(default, skip_serializing_if = "is_zero")]
        topic_id: u64,
    },
    /// An alteration of the incarnation `topic_id` of topic `name` (ignored if another
    /// incarnation holds the name): the settings named in `set` take their `values`, those in
    /// `reset` and those the topic never set take the proposer's `defaults`. Applied to the
    /// topic as it is at its turn in the log, so concurrent alterations compose; one that
    /// would leave invalid settings is skipped on every broker alike.
    AlterTopic {
        name: String,
        topic_id: u64,
        set: Vec<String>,
        values: TopicSettings,
        reset: Vec<String>,
        defaults: TopicSettings,
    },
    /// Every committed offset of a group goes (the coordinator checked it has no members).
    DeleteGroup {
        group: String,
    },
    /// Incarnation `topic_id` of topic `name` grows to `partitions` partitions; `replicas`
    /// places partitions `from..partitions` (empty for a topic placed before placement
    /// existed: every broker). Applied from the topic's count at its turn, so an add proposed
    /// from a stale count, or racing another, still grows the topic to `partitions`; ignored
    /// if the topic has that many already.
    AddPartitions {
        name: String,
        topic_id: u64,
        /// The partition count the proposer saw: `replicas[i]` places partition `from + i`.
        from: u32,
        partitions: u32,
        replicas: Vec<Vec<u64>>,
    },
    /// The records below each `(partition, offset)` of incarnation `topic_id` go: every
    /// replica raises its log start there (the proposer checked the offsets against the high
    /// watermark). Idempotent: a log start never moves down.
    DeleteRecords {
        name: String,
        topic_id: u64,
        before: Vec<(u32, u64)>,
    },
    /// A change to the ACLs or quotas (the proposer checked it); applied in log order on
    /// every broker, so every broker enforces the same set. A restarting broker rebuilds them
    /// by re-applying the log.
    Security {
        change: SecurityChange,
    },
    /// A transactional id's new coordinator state, stored over version `entry.version - 1`
    /// (compare-and-set, `broker::txn_table`): applied in log order on every broker, so every
    /// broker holds the same table and a failed-over coordinator recovers in-flight
    /// transactions from it.
    Txn {
        id: String,
        entry: crate::meta::txn::TxnEntry,
    },
    /// Broker `id` joins the cluster at `address` (clients) and `internal` (peers, if it has
    /// an internal listener), proposed by the controller (`members.rs`).
    AddBroker {
        id: u64,
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        internal: Option<String>,
    },
    /// Broker `id` left the cluster: every broker forgets it, and it stops serving.
    RemoveBroker {
        id: u64,
    },
    /// The whole ACL and quota state (written only by a metadata snapshot, `meta_image.rs`,
    /// in place of the `Security` changes it folds).
    SecurityState {
        state: crate::auth::SecurityState,
    },
    /// A transactional id's state, stored whatever the current version (written only by a
    /// metadata snapshot in place of the `Txn` changes it folds).
    TxnState {
        id: String,
        entry: crate::meta::txn::TxnEntry,
    },
    /// Partitions of incarnation `topic_id` of topic `name` move: each `(partition, target)`
    /// becomes the partition's move (`reassign.rs`), replacing one in progress; a target that
    /// is the partition's replicas before its move cancels it, and one with the same brokers
    /// as a partition not moving only reorders them (its preferred leader). `throttle` caps
    /// the catch-up traffic (bytes/s; 0: each leader's default).
    ReassignPartitions {
        name: String,
        topic_id: u64,
        targets: Vec<(u32, Vec<u64>)>,
        #[serde(default)]
        throttle: u64,
    },
    /// Partition `partition`'s Raft voters are now `voters`, as its leader reported: its move
    /// is done if they are the move's target (ignored otherwise: a later move replaced it).
    ReassignmentDone {
        name: String,
        topic_id: u64,
        partition: u32,
        voters: Vec<u64>,
    },
}

/// Proposes a command to the metadata group (on its leader) and returns the metadata-log
/// offset it was stored at, once committed. Not the leader: `NotLeader` with the controller.
pub async fn propose(cluster: &Cluster, cmd: &MetaCommand) -> Result<u64, BrokerError> {
    let payload = Bytes::from(
        serde_json::to_vec(cmd).map_err(|e| BrokerError::InvalidArgument(format!("encoding metadata: {e}")))?,
    );
    let batch = ProposedBatch {
        payload_crc: tidelog_proto::checksum::crc32c(&payload),
        payload,
        record_count: 1,
        compression: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        flags: 0,
        on_append: AppendHook::default(),
    };
    // Bounded: a controller cut off from its quorum accepts the entry but never commits it.
    let write = cluster.metadata_group().raft.client_write(BatchData::Proposed(batch));
    let resp = tokio::time::timeout(APPLY_WAIT, write)
        .await
        .map_err(|_| BrokerError::NotLeader {
            what: "the cluster metadata (the write was not committed in time; retry)".into(),
            leader: None,
        })?
        .map_err(|e| replica::write_error(e, |l| cluster.leader_hint(l)))?;
    let appended = resp.data.map_err(|r| BrokerError::InvalidArgument(r.message))?;
    Ok(appended.base_offset)
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The id of the topic created by the command at metadata offset `offset`.
pub fn topic_id_at(offset: u64) -> u64 {
    offset + 1
}

/// Applies the committed metadata log to the broker's topic table, forever (until shutdown).
/// It starts by rebuilding from the whole committed log ([`rebuild`]), and rebuilds again
/// whenever a Raft snapshot replaced the log under it (this broker was behind the leader's
/// metadata snapshot).
pub async fn run_applier(broker: Arc<Broker>, cluster: Arc<Cluster>, log: Arc<Partition>) {
    let mut hw = log.watch_hw();
    let mut shutdown = broker.shutdown_signal();
    let mut installs = log.snapshots_installed();
    let started = std::time::Instant::now();
    let mut next = match rebuild(&broker, &cluster, &log).await {
        Ok((next, listed_here)) => {
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(offset = next, elapsed_ms = ms, "cluster metadata applied from the log");
            cluster.verify_membership_at_start(listed_here);
            next
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the metadata log; this broker serves no topics");
            return;
        }
    };
    cluster.applied.send_replace(next);
    loop {
        if log.snapshots_installed() != installs {
            installs = log.snapshots_installed();
            match rebuild(&broker, &cluster, &log).await {
                Ok((end, _)) => {
                    tracing::info!(from = next, to = end, "rebuilt the cluster metadata from the leader's snapshot");
                    next = end;
                    cluster.applied.send_replace(next);
                }
                Err(e) => tracing::error!(error = %e, "rebuilding from a metadata snapshot failed; retrying"),
            }
        }
        match read_chunk(&log, &mut next) {
            Ok(Some(cmds)) => {
                for (h, cmd) in cmds {
                    apply(&broker, &cluster, h.base_offset, cmd).await;
                }
                cluster.applied.send_replace(next);
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "reading the metadata log failed; retrying on the next commit"),
        }
        tokio::select! {
            changed = hw.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// Builds this broker's view from the whole committed log: folds it into a [`MetaImage`]
/// (chunk by chunk; memory follows the live state, not the length of the log) and reconciles
/// the topic table, the offset store, the ACLs and quotas and the transactions with it. Used
/// at start (topics open with their current settings and partitions, never briefly with those
/// they were created with; deleted topics never start; revoked ACLs are never enforced
/// again) and after a snapshot replaced the log (topics deleted meanwhile go). Returns the
/// offset to go on from, and whether the log names this broker (added or removed).
async fn rebuild(broker: &Arc<Broker>, cluster: &Arc<Cluster>, log: &Partition) -> Result<(u64, bool), BrokerError> {
    let mut image = MetaImage::default();
    let mut end = 0u64;
    while let Some(cmds) = read_chunk(log, &mut end)? {
        for (h, cmd) in cmds {
            image.fold(&h, cmd);
        }
    }
    for (id, b) in &image.brokers {
        cluster.learn_broker(*id, &b.address, b.internal.as_deref());
    }
    for id in image.removed.keys() {
        cluster.forget_broker(*id);
    }
    broker.auth().replace_state(image.security_state());
    broker.transactions().replace_all(image.txns.iter().map(|(id, (_, e))| (id.clone(), e.clone())));
    for t in broker.topics() {
        if image.topic_id(&t.record.name) != Some(t.topic_id) {
            if let Err(e) = delete(broker, cluster, &t.record.name, t.topic_id, t.record.partitions).await {
                tracing::error!(topic = %t.record.name, error = %e, "removing a deleted topic failed on this broker");
            }
        }
    }
    // The store is only the log's applied view: exactly the image's offsets, no more (a
    // group deleted in a part of the log a snapshot replaced must not come back).
    let store = broker.store();
    for group in store.offset_groups()? {
        store.remove_group_offsets(&group)?;
    }
    for ((group, topic), g) in &image.offsets {
        store.apply_offsets(group, topic, &g.offsets.values().cloned().collect::<Vec<_>>())?;
    }
    // Every new topic is published before any of its replicas opens, so a restarting broker
    // answers for all of them at once and opens first what clients ask for (`opening.rs`).
    // Records deleted while this broker was down are gone before a replica is served.
    let mut announced = Vec::new();
    for (id, t) in &image.topics {
        match broker.topic(&t.record.name) {
            Ok(current) if current.topic_id == *id => {
                if let Err(e) = reconcile(broker, cluster, &current, t.record.clone()).await {
                    tracing::error!(topic = %t.record.name, topic_id = id, error = %e, "opening a topic failed on this broker");
                }
            }
            _ => {
                let floors = t.deleted_below.iter().flat_map(|(_, f)| f.iter().map(|(p, o)| (*p, *o)));
                announced.extend(announce(broker, cluster, *id, &t.record).map(|p| p.with_floors(floors)));
            }
        }
    }
    open_announced(broker, cluster, announced).await;
    for (id, t) in &image.topics {
        if let Some((_, floors)) = &t.deleted_below {
            let before: Vec<(u32, u64)> = floors.iter().map(|(p, o)| (*p, *o)).collect();
            if let Err(e) = apply_delete_records(broker, &t.record.name, *id, before).await {
                tracing::error!(topic = %t.record.name, error = %e, "deleting records failed on this broker");
            }
        }
    }
    sweep_deleted(broker, cluster, &image, end).await;
    let me = cluster.node_id();
    Ok((end, image.brokers.contains_key(&me) || image.removed.contains_key(&me)))
}

/// Removes the files and Raft state of replicas of topics that are gone: deleted in a part of
/// the log this broker never applied (a snapshot replaced it), or while it was down. Only ids
/// up to `end` (the log folded into `image`): a topic's id is its create's offset plus one, so
/// a replica of a topic created beyond what was folded is never taken for a deleted one.
async fn sweep_deleted(broker: &Broker, cluster: &Cluster, image: &MetaImage, end: u64) {
    let root = cluster.data_dir.join(crate::layout::REPLICAS_DIR);
    let Ok(dirs) = std::fs::read_dir(&root) else { return };
    for entry in dirs.flatten() {
        let Some(topic_id) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
        if image.topics.contains_key(&topic_id) || topic_id > end {
            continue;
        }
        let partitions: Vec<u32> = std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|p| p.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        match drop_replicas(broker, cluster, topic_id, partitions).await {
            Ok(()) => tracing::info!(topic_id, "removed the replicas of a topic deleted meanwhile"),
            Err(e) => tracing::warn!(topic_id, error = %e, "could not clear a deleted topic's Raft state"),
        }
    }
}

/// Forgets the replicas of topic incarnation `topic_id` held here: unhosts their groups,
/// clears their Raft state, removes their files (a failure to remove is logged).
async fn drop_replicas(
    broker: &Broker,
    cluster: &Cluster,
    topic_id: u64,
    partitions: impl IntoIterator<Item = u32>,
) -> Result<(), BrokerError> {
    for p in partitions {
        cluster.unhost(group_id(topic_id, p));
        broker.store().raft_state(group_id(topic_id, p))?.clear().await?;
    }
    let dir = crate::layout::replicas_dir(&cluster.data_dir, topic_id);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted topic's files");
        }
    }
    Ok(())
}

/// Brings topic `current` (the same incarnation) to `record`: new partitions opened, settings
/// republished, replicas opened and closed as moves say (`reassign.rs`).
async fn reconcile(
    broker: &Arc<Broker>,
    cluster: &Cluster,
    current: &Topic,
    record: TopicRecord,
) -> Result<(), BrokerError> {
    if record == current.record {
        return Ok(());
    }
    let moves = record.replicas != current.record.replicas || record.reassigning != current.record.reassigning;
    if record.partitions > current.record.partitions {
        grow(broker, cluster, current, record.clone()).await?;
    }
    if moves {
        super::reassign::resettle(broker, cluster, &*broker.topic(&record.name)?, record.clone()).await?;
    }
    let current = broker.topic(&record.name)?;
    broker.republish(&current, record).map(|_| ())
}

/// The committed commands from `next` in one read of up to [`READ_BYTES`], advancing it;
/// `None` at the high watermark (a chunk of only undecodable commands is `Some` and empty).
pub(super) fn read_chunk(
    log: &Partition,
    next: &mut u64,
) -> Result<Option<Vec<(BatchHeader, MetaCommand)>>, BrokerError> {
    // Past Raft control batches and empty ones too (a snapshot image ends with an empty end
    // batch when its last commands went): a read of only those still moves `next` on.
    let read = log.read_for_consumer(*next, READ_BYTES, crate::partition::Isolation::ReadUncommitted)?;
    if read.next <= *next && read.batches.is_empty() {
        return Ok(None);
    }
    *next = read.next.max(*next);
    let mut out = Vec::new();
    for b in read.batches {
        match decode(&b) {
            Ok(cmd) => out.push((b.header, cmd)),
            // A command this version does not know: skip it rather than stop applying.
            Err(e) => tracing::error!(offset = b.header.base_offset, error = %e, "skipping undecodable metadata"),
        }
    }
    Ok(Some(out))
}

fn decode(b: &StoredBatch) -> Result<MetaCommand, serde_json::Error> {
    serde_json::from_slice(&b.payload)
}

/// `record` as an `AlterTopic` or `AddPartitions` command leaves it; `None` (logged) for an
/// alteration that would leave invalid settings, an add that adds nothing, or another command.
pub(super) fn altered(record: &TopicRecord, cmd: &MetaCommand) -> Option<TopicRecord> {
    match cmd {
        MetaCommand::AlterTopic { set, values, reset, defaults, .. } => {
            match defaults.altered_with(&record.settings, &record.own_settings(), values, set, reset) {
                Ok((settings, overrides)) => {
                    Some(TopicRecord { settings, overrides: Some(overrides), ..record.clone() })
                }
                Err(e) => {
                    tracing::warn!(topic = %record.name, error = %e, "skipping a topic alteration that does not apply");
                    None
                }
            }
        }
        MetaCommand::AddPartitions { from, partitions, replicas, .. } => {
            if *partitions <= record.partitions {
                return None; // grown this far already
            }
            let mut grown = TopicRecord { partitions: *partitions, ..record.clone() };
            if !grown.replicas.is_empty() {
                // The placements of the partitions the topic does not have yet.
                let skip = record.partitions.checked_sub(*from).map(|n| n as usize);
                match skip.and_then(|n| replicas.get(n..)) {
                    Some(rest) if rest.len() == (*partitions - record.partitions) as usize => {
                        grown.replicas.extend(rest.iter().cloned());
                    }
                    _ => {
                        tracing::warn!(topic = %record.name, from, "skipping a partition add whose placement does not fit");
                        return None;
                    }
                }
            }
            Some(grown)
        }
        MetaCommand::ReassignPartitions { targets, throttle, .. } => super::reassign::moved(record, targets, *throttle),
        MetaCommand::ReassignmentDone { partition, voters, .. } => super::reassign::done(record, *partition, voters),
        _ => None,
    }
}

/// Applies an `AlterTopic` to the incarnation it names, if that is the topic here.
fn apply_alter(broker: &Broker, cmd: &MetaCommand) -> Result<(), BrokerError> {
    let MetaCommand::AlterTopic { name, topic_id, .. } = cmd else { return Ok(()) };
    match broker.topic(name) {
        Ok(t) if t.topic_id == *topic_id => match altered(&t.record, cmd) {
            Some(record) => broker.republish(&t, record).map(|_| ()),
            None => Ok(()),
        },
        _ => Ok(()), // another incarnation, or one this broker could not open
    }
}

/// Applies an `AddPartitions` to the incarnation it names.
async fn apply_add(broker: &Arc<Broker>, cluster: &Cluster, cmd: &MetaCommand) -> Result<(), BrokerError> {
    let MetaCommand::AddPartitions { name, topic_id, .. } = cmd else { return Ok(()) };
    let Ok(topic) = broker.topic(name) else { return Ok(()) };
    if topic.topic_id != *topic_id {
        return Ok(()); // another incarnation
    }
    let Some(record) = altered(&topic.record, cmd) else { return Ok(()) };
    grow(broker, cluster, &topic, record).await
}

/// Opens the partitions `topic` gains in `record` that are held here, and republishes the
/// topic with them.
async fn grow(broker: &Arc<Broker>, cluster: &Cluster, topic: &Topic, record: TopicRecord) -> Result<(), BrokerError> {
    let (name, from, to) = (record.name.clone(), topic.record.partitions, record.partitions);
    let pending = Pending::new(cluster, topic.topic_id, &record, from);
    let mut slots = topic.slots.clone();
    let announced = slots.iter().cloned().chain(pending.slots()).collect();
    broker.publish_topic(Arc::new(Topic { record: record.clone(), slots: announced, topic_id: topic.topic_id }));
    for opened in opening::open_all(broker, cluster, vec![pending]).await {
        slots.extend(opened.slots);
    }
    tracing::info!(topic = %name, topic_id = topic.topic_id, from, to, "partitions added");
    broker.publish_topic(Arc::new(Topic { record, slots, topic_id: topic.topic_id }));
    Ok(())
}

/// Applies a `DeleteRecords` to the partitions of the named incarnation held here.
async fn apply_delete_records(
    broker: &Broker,
    name: &str,
    topic_id: u64,
    before: impl IntoIterator<Item = (u32, u64)>,
) -> Result<(), BrokerError> {
    let Ok(topic) = broker.topic(name) else { return Ok(()) };
    if topic.topic_id != topic_id {
        return Ok(());
    }
    for (p, offset) in before {
        if let Ok(log) = topic.partition(p) {
            let start = log.raise_log_start(offset).await?;
            tracing::debug!(topic = %name, partition = p, log_start = start, "records deleted");
        }
    }
    Ok(())
}

async fn apply(broker: &Arc<Broker>, cluster: &Arc<Cluster>, offset: u64, cmd: MetaCommand) {
    let result = match cmd {
        MetaCommand::CreateTopic { record } => create(broker, cluster, topic_id_at(offset), record).await,
        MetaCommand::DeleteTopic { name, topic_id, partitions } => {
            delete(broker, cluster, &name, topic_id, partitions).await
        }
        // Not flushed: this log is the durable copy and is re-applied on every start.
        MetaCommand::CommitOffsets { group, topic, offsets, topic_id } => {
            let current = broker.topic(&topic).ok().map(|t| t.topic_id);
            if topic_id != 0 && current != Some(topic_id) {
                tracing::debug!(group, topic, topic_id, "commit for a deleted topic incarnation: skipped");
                return;
            }
            broker.store().apply_offsets(&group, &topic, &offsets).map_err(BrokerError::from)
        }
        alter @ MetaCommand::AlterTopic { .. } => apply_alter(broker, &alter),
        // Not flushed either, for the same reason.
        MetaCommand::DeleteGroup { group } => {
            broker.store().remove_group_offsets(&group).map(|_| ()).map_err(BrokerError::from)
        }
        add @ MetaCommand::AddPartitions { .. } => apply_add(broker, cluster, &add).await,
        MetaCommand::DeleteRecords { name, topic_id, before } => {
            apply_delete_records(broker, &name, topic_id, before).await
        }
        MetaCommand::Security { change } => {
            let mut state = (*broker.auth().state()).clone();
            state.apply(&change);
            broker.auth().replace_state(state);
            Ok(())
        }
        MetaCommand::Txn { id, entry } => {
            broker.transactions().compare_and_set_at(offset, &id, entry);
            Ok(())
        }
        MetaCommand::SecurityState { state } => {
            broker.auth().replace_state(state);
            Ok(())
        }
        MetaCommand::TxnState { id, entry } => {
            broker.transactions().put(&id, entry);
            Ok(())
        }
        MetaCommand::AddBroker { id, address, internal } => {
            cluster.learn_broker(id, &address, internal.as_deref());
            tracing::info!(broker = id, %address, "broker joined the cluster");
            Ok(())
        }
        MetaCommand::RemoveBroker { id } => {
            if cluster.forget_broker(id) {
                tracing::info!(broker = id, "broker left the cluster");
            }
            Ok(())
        }
        cmd @ (MetaCommand::ReassignPartitions { .. } | MetaCommand::ReassignmentDone { .. }) => {
            super::reassign::apply(broker, cluster, &cmd).await
        }
    };
    if let Err(e) = result {
        // The broker cannot host what the cluster decided (disk, corrupt state): it keeps
        // serving the rest; the other replicas carry the partition.
        tracing::error!(offset, error = %e, "applying cluster metadata failed on this broker");
    }
}

async fn create(
    broker: &Arc<Broker>,
    cluster: &Cluster,
    topic_id: u64,
    record: TopicRecord,
) -> Result<(), BrokerError> {
    if let Some(pending) = announce(broker, cluster, topic_id, &record) {
        open_announced(broker, cluster, vec![pending]).await;
    }
    Ok(())
}

/// Publishes a new topic with its replicas here still to open (`opening.rs`), so clients
/// see it at once; `None` if an earlier incarnation holds the name (this create lost the
/// race).
fn announce(broker: &Broker, cluster: &Cluster, topic_id: u64, record: &TopicRecord) -> Option<Pending> {
    if broker.topic(&record.name).is_ok() {
        return None;
    }
    let pending = Pending::new(cluster, topic_id, record, 0);
    broker.publish_topic(Arc::new(Topic { record: record.clone(), slots: pending.slots(), topic_id }));
    Some(pending)
}

/// Opens announced topics' replicas here (as one queue: `opening::open_all`) and
/// republishes each with them.
async fn open_announced(broker: &Broker, cluster: &Cluster, pending: Vec<Pending>) {
    for Opened { topic_id, record, slots } in opening::open_all(broker, cluster, pending).await {
        let hosted = slots.iter().filter(|s| matches!(s, PartitionSlot::Here { .. })).count();
        tracing::info!(topic = %record.name, topic_id, partitions = record.partitions, hosted, "topic replicas started");
        broker.publish_topic(Arc::new(Topic { record, slots, topic_id }));
    }
}

async fn delete(
    broker: &Broker,
    cluster: &Cluster,
    name: &str,
    topic_id: u64,
    partitions: u32,
) -> Result<(), BrokerError> {
    let mut partitions = partitions;
    if let Ok(topic) = broker.topic(name) {
        if topic.topic_id != topic_id {
            return Ok(()); // deletes another incarnation, already gone
        }
        // Partitions added after the proposer looked go too.
        partitions = partitions.max(topic.record.partitions);
        broker.withdraw_topic(name);
        for (_, writer) in topic.local() {
            writer.stop().await;
        }
    }
    // Every group's offsets for it go with it (a recreated topic starts without them), by
    // name, as the fold does (`MetaImage::fold`).
    if let Err(e) = broker.store().remove_offsets_of(name) {
        tracing::error!(topic = name, error = %e, "could not remove a deleted topic's committed offsets");
    }
    drop_replicas(broker, cluster, topic_id, 0..partitions).await?;
    tracing::info!(topic = name, topic_id, "topic deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_as_json() {
        let record = TopicRecord {
            name: "t".into(),
            partitions: 3,
            created_at_ms: 7,
            settings: TopicSettings::default(),
            replicas: vec![vec![1, 2], vec![2, 3], vec![3, 1]],
            overrides: Some(vec!["retention_ms".into()]),
            reassigning: Default::default(),
        };
        for cmd in [
            MetaCommand::AlterTopic {
                name: "t".into(),
                topic_id: 5,
                set: vec!["fsync_policy".into()],
                values: TopicSettings::default(),
                reset: vec!["retention_ms".into()],
                defaults: TopicSettings::default(),
            },
            MetaCommand::CreateTopic { record },
            MetaCommand::DeleteTopic { name: "t".into(), topic_id: 5, partitions: 3 },
            MetaCommand::DeleteGroup { group: "g".into() },
            MetaCommand::AddPartitions {
                name: "t".into(),
                topic_id: 5,
                from: 3,
                partitions: 5,
                replicas: vec![vec![1], vec![2]],
            },
            MetaCommand::DeleteRecords { name: "t".into(), topic_id: 5, before: vec![(0, 10), (2, 7)] },
            MetaCommand::CommitOffsets {
                group: "g".into(),
                topic: "t".into(),
                offsets: vec![StoredOffset { partition: 1, offset: 9, commit_time_ms: 3, metadata: "m".into() }],
                topic_id: 7,
            },
        ] {
            let bytes = serde_json::to_vec(&cmd).unwrap();
            assert_eq!(serde_json::from_slice::<MetaCommand>(&bytes).unwrap(), cmd);
        }
        assert_eq!(group_id(topic_id_at(0), 2), (1 << 16) | 2);
        // A commit written before commits named their incarnation still decodes (id 0).
        let old = br#"{"op":"commit_offsets","group":"g","topic":"t","offsets":[]}"#;
        let decoded: MetaCommand = serde_json::from_slice(old).unwrap();
        assert!(matches!(decoded, MetaCommand::CommitOffsets { topic_id: 0, .. }));
    }

    #[test]
    fn partition_adds_apply_from_the_count_at_their_turn() {
        let record = |partitions: u32| TopicRecord {
            name: "t".into(),
            partitions,
            created_at_ms: 7,
            settings: TopicSettings::default(),
            replicas: (0..partitions).map(|p| vec![u64::from(p % 3) + 1]).collect(),
            overrides: None,
            reassigning: Default::default(),
        };
        let add = |from: u32, to: u32| MetaCommand::AddPartitions {
            name: "t".into(),
            topic_id: 1,
            from,
            partitions: to,
            replicas: (from..to).map(|p| vec![u64::from(p) + 10]).collect(),
        };
        // Proposed from the current count.
        let grown = altered(&record(3), &add(3, 5)).unwrap();
        assert_eq!((grown.partitions, &grown.replicas[3..]), (5, &[vec![13], vec![14]][..]));
        // Proposed from a stale count (another add to 4 applied first): the rest of its
        // placement applies, and the topic still reaches 6.
        let raced = altered(&record(4), &add(3, 6)).unwrap();
        assert_eq!((raced.partitions, &raced.replicas[4..]), (6, &[vec![14], vec![15]][..]));
        // Grown this far already: nothing to do.
        assert!(altered(&record(6), &add(3, 5)).is_none());
        assert!(altered(&record(5), &add(3, 5)).is_none());
        // A count below the proposer's `from` (cannot happen in order): refused.
        assert!(altered(&record(2), &add(3, 5)).is_none());
    }
}
