//! The cluster's metadata: a Raft group (id 0, every broker a voter) whose log holds
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
//! names the incarnation (topic id) it deletes. A broker restarting re-applies the log from the
//! start; creates that a later delete undoes are skipped, so their groups never start, a
//! topic's alterations are folded into its create, so it opens with its current settings, and
//! the ACLs and quotas are folded into one state installed before anything else, so a revoked
//! ACL is never enforced again while the backlog replays.
//!
//! Never: apply a command above the metadata group's high watermark (uncommitted).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::replica::{self, GroupSpec};
use super::writer::RaftWriter;
use super::{group_id, Cluster, Hosted};
use crate::auth::SecurityChange;
use crate::broker::route::APPLY_WAIT;
use crate::broker::{Broker, PartitionSlot, Topic};
use crate::error::BrokerError;
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
}

/// Proposes a command to the metadata group (on its leader) and returns the metadata-log
/// offset it was stored at, once committed. Not the leader: `NotLeader` with the controller.
pub async fn propose(cluster: &Cluster, cmd: &MetaCommand) -> Result<u64, BrokerError> {
    let payload = Bytes::from(
        serde_json::to_vec(cmd).map_err(|e| BrokerError::InvalidArgument(format!("encoding metadata: {e}")))?,
    );
    let batch = ProposedBatch {
        payload_crc: crc32c::crc32c(&payload),
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
pub async fn run_applier(broker: Arc<Broker>, cluster: Arc<Cluster>, log: Arc<Partition>) {
    let mut hw = log.watch_hw();
    let mut shutdown = broker.shutdown_signal();
    let mut next = match apply_backlog(&broker, &cluster, &log).await {
        Ok(next) => next,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the metadata log; this broker serves no topics");
            return;
        }
    };
    cluster.applied.send_replace(next);
    loop {
        match read_chunk(&log, &mut next) {
            Ok(Some(cmds)) => {
                for (offset, cmd) in cmds {
                    apply(&broker, &cluster, offset, cmd).await;
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

/// Startup: applies what is committed already, in a second pass that skips creates a later
/// delete undid (their groups never start); the first pass only collects those deletes. Both
/// read chunk by chunk, so memory does not grow with the log (every group commit is an entry
/// of it). Returns the offset to go on from.
async fn apply_backlog(broker: &Arc<Broker>, cluster: &Cluster, log: &Partition) -> Result<u64, BrokerError> {
    let mut deleted: HashSet<u64> = HashSet::new();
    // Each topic's alterations and added partitions, in log order, folded into its create
    // below: a topic opens with the settings and partitions it has now, never briefly with
    // those it was created with.
    let mut alterations: HashMap<u64, Vec<MetaCommand>> = HashMap::new();
    // The ACLs and quotas as the whole backlog leaves them, installed once before anything is
    // served from it: replaying them one by one would briefly enforce revoked ACLs again.
    let mut security = (*broker.auth().state()).clone();
    let mut end = 0u64;
    while let Some(cmds) = read_chunk(log, &mut end)? {
        for (_, cmd) in cmds {
            match cmd {
                MetaCommand::DeleteTopic { topic_id, .. } => {
                    deleted.insert(topic_id);
                }
                MetaCommand::AlterTopic { topic_id, .. } | MetaCommand::AddPartitions { topic_id, .. } => {
                    alterations.entry(topic_id).or_default().push(cmd);
                }
                MetaCommand::Security { change } => {
                    security.apply(&change);
                }
                MetaCommand::CreateTopic { .. }
                | MetaCommand::Txn { .. }
                | MetaCommand::CommitOffsets { .. }
                | MetaCommand::DeleteGroup { .. }
                | MetaCommand::DeleteRecords { .. } => {}
            }
        }
    }
    broker.auth().replace_state(security);
    let mut next = 0u64;
    while next < end {
        let Some(cmds) = read_chunk(log, &mut next)? else { break };
        for (offset, cmd) in cmds {
            match cmd {
                MetaCommand::CreateTopic { .. } if deleted.contains(&topic_id_at(offset)) => {}
                MetaCommand::CreateTopic { mut record } => {
                    for alter in alterations.get(&topic_id_at(offset)).into_iter().flatten() {
                        if let Some(altered) = altered(&record, alter) {
                            record = altered;
                        }
                    }
                    apply(broker, cluster, offset, MetaCommand::CreateTopic { record }).await;
                }
                MetaCommand::AlterTopic { .. } | MetaCommand::AddPartitions { .. } => {} // folded into its create
                MetaCommand::Security { .. } => {}                                       // installed whole above
                cmd => apply(broker, cluster, offset, cmd).await,
            }
        }
    }
    Ok(next)
}

/// The committed commands from `next` in one read of up to [`READ_BYTES`], advancing it;
/// `None` at the high watermark (a chunk of only undecodable commands is `Some` and empty).
fn read_chunk(log: &Partition, next: &mut u64) -> Result<Option<Vec<(u64, MetaCommand)>>, BrokerError> {
    let batches = log.read(*next, READ_BYTES)?;
    if batches.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for b in batches {
        *next = b.header.next_offset();
        match decode(&b) {
            Ok(cmd) => out.push((b.header.base_offset, cmd)),
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
fn altered(record: &TopicRecord, cmd: &MetaCommand) -> Option<TopicRecord> {
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

/// Applies an `AddPartitions` to the incarnation it names: opens the new partitions held here
/// and republishes the topic with them.
async fn apply_add(broker: &Arc<Broker>, cluster: &Cluster, cmd: &MetaCommand) -> Result<(), BrokerError> {
    let MetaCommand::AddPartitions { name, topic_id, .. } = cmd else { return Ok(()) };
    let Ok(topic) = broker.topic(name) else { return Ok(()) };
    if topic.topic_id != *topic_id {
        return Ok(()); // another incarnation
    }
    let Some(record) = altered(&topic.record, cmd) else { return Ok(()) };
    let mut slots = topic.slots.clone();
    for p in topic.record.partitions..record.partitions {
        slots.push(open_slot(broker, cluster, *topic_id, &record, p).await?);
    }
    tracing::info!(topic = %name, topic_id, from = topic.record.partitions, to = record.partitions, "partitions added");
    broker.publish_topic(Arc::new(Topic { record, slots, topic_id: *topic_id }));
    Ok(())
}

/// Applies a `DeleteRecords` to the partitions of the named incarnation held here.
async fn apply_delete_records(broker: &Broker, cmd: &MetaCommand) -> Result<(), BrokerError> {
    let MetaCommand::DeleteRecords { name, topic_id, before } = cmd else { return Ok(()) };
    let Ok(topic) = broker.topic(name) else { return Ok(()) };
    if topic.topic_id != *topic_id {
        return Ok(());
    }
    for (p, offset) in before {
        if let Ok(log) = topic.partition(*p) {
            let start = log.raise_log_start(*offset).await?;
            tracing::debug!(topic = %name, partition = p, log_start = start, "records deleted");
        }
    }
    Ok(())
}

async fn apply(broker: &Arc<Broker>, cluster: &Cluster, offset: u64, cmd: MetaCommand) {
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
        delete @ MetaCommand::DeleteRecords { .. } => apply_delete_records(broker, &delete).await,
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
    if broker.topic(&record.name).is_ok() {
        return Ok(()); // an earlier incarnation holds the name: this create lost the race
    }
    let mut slots = Vec::with_capacity(record.partitions as usize);
    for p in 0..record.partitions {
        slots.push(open_slot(broker, cluster, topic_id, &record, p).await?);
    }
    let hosted = slots.iter().filter(|s| matches!(s, PartitionSlot::Here { .. })).count();
    tracing::info!(topic = %record.name, topic_id, partitions = record.partitions, hosted, "topic replicas started");
    broker.publish_topic(Arc::new(Topic { record, slots, topic_id }));
    Ok(())
}

/// Partition `p` of a topic as this broker holds it: its Raft replica, started, if this
/// broker is among its replicas; else where it lives.
async fn open_slot(
    broker: &Broker,
    cluster: &Cluster,
    topic_id: u64,
    record: &TopicRecord,
    p: u32,
) -> Result<PartitionSlot, BrokerError> {
    let replicas = record.replicas_in(p, cluster.brokers().keys().copied());
    if !replicas.contains(&cluster.node_id()) {
        let replica_addrs = replicas.iter().filter_map(|r| cluster.leader_hint(Some(*r))).collect();
        return Ok(PartitionSlot::Elsewhere { replica_addrs });
    }
    let cx = cluster.context();
    let spec = GroupSpec {
        group_id: group_id(topic_id, p),
        dir: crate::layout::replicas_dir(&cluster.data_dir, topic_id).join(p.to_string()),
        topic: record.name.clone(),
        partition: p,
        log_config: record.settings.log_config(),
        fsync: record.settings.fsync_policy(),
    };
    // Leaders spread as placement decided: a new group's preferred leader starts it and wins
    // unopposed (replica::Start). Topics placed before placement existed have no preferred
    // leader: every replica starts them.
    let rank = replicas.iter().position(|r| *r == cluster.node_id()).unwrap_or(0);
    let start = if record.replicas.is_empty() { replica::Start::Now } else { replica::Start::by_rank(cx.config, rank) };
    let opened = replica::open(&cx, broker.store(), spec, replicas.iter().copied().collect(), start).await?;
    cluster.host(Hosted { replica: opened.replica.clone(), preferred: record.replicas_of(p).first().copied() });
    let writer = RaftWriter {
        replica: opened.replica,
        log: Arc::clone(&opened.partition),
        brokers: Arc::clone(&cluster.brokers),
        groups: cluster.groups().clone(),
    };
    Ok(PartitionSlot::Here { log: opened.partition, writer: Arc::new(writer) })
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
    // Every group's offsets for it go with it (a recreated topic starts without them). By
    // name: at a restart's re-apply this may take a later incarnation's offsets too, and the
    // later commits in the log put them back.
    if let Err(e) = broker.store().remove_offsets_of(name) {
        tracing::error!(topic = name, error = %e, "could not remove a deleted topic's committed offsets");
    }
    for p in 0..partitions {
        cluster.unhost(group_id(topic_id, p));
        broker.store().raft_state(group_id(topic_id, p))?.clear().await?;
    }
    let dir = crate::layout::replicas_dir(&cluster.data_dir, topic_id);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted topic's files");
        }
    }
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
