//! Partition reassignment: moving a partition's replicas to other brokers while it serves
//! (Kafka's `kafka-reassign-partitions`, done with Raft membership changes).
//!
//! ```text
//! client ─ AlterPartitionReassignments ─> controller: ReassignPartitions entry (metadata log)
//!   every broker applies it: the partition's record gets a move {target, members}; a broker
//!   in the target that held no replica opens one, empty, that waits to be added (Start::Never)
//! partition leader (run, every DRIVE_EVERY):
//!   1. adds the target's new brokers as Raft learners, each once it applied all the metadata
//!      the leader did (internal ClusterControl.MetadataApplied: an old replica of the
//!      partition on it is gone by then); their catch-up (from its log, or a snapshot of its
//!      segments) is paced by the throttle (raft/throttle.rs)
//!   2. once each holds what the group had committed one round before: one joint-consensus
//!      change to the target's voters (openraft ReplaceAllVoters, in its own task; an old
//!      leader not in the target hands its leadership to a new voter once the change commits;
//!      a joint config left by a change cut off midway is finished the next round)
//!   3. voters == target: reports to the controller (internal ClusterControl.ReassignmentDone)
//! controller: ReassignmentDone entry; every broker applies it: replicas = target, and a broker
//!   not in it closes its replica and deletes its files
//! ```
//!
//! Every step is re-derived from state each round (the record's move, the group's committed
//! membership), never from memory of earlier rounds, so a move survives the loss of any
//! broker: a new partition leader, a returning learner or a new controller picks it up where
//! the state says it is. A move replaced by another (or cancelled: its target is the replicas
//! from before) goes on from wherever the group's membership is.
//!
//! Invariants:
//! - a broker keeps its replica of a moving partition open while it may be in the group's
//!   Raft membership: every broker of `members` (the replicas before the move and every
//!   target since) hosts it, and only `ReassignmentDone` (voters == target) closes replicas;
//!   so no move ever takes a voter's data away, whatever was cancelled when;
//! - a membership change is proposed only by the group's leader, only to the move's target,
//!   and only when every new voter holds what was committed a round before, so the new
//!   majority can commit at once: producers see at most a leader hand-over;
//! - a broker is added to a group only once it applied every metadata entry its leader had,
//!   so the replica that joins is the one the current move opened, never an old one a later
//!   `ReassignmentDone` is about to delete;
//! - the record's `replicas` are the group's voters as of the last completed move.
//!
//! Never: close or delete a replica on a `ReassignPartitions`; report a move done while the
//! group is in a joint configuration.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use tidelog_proto::internal::cluster_control_client::ClusterControlClient;
use tidelog_proto::internal::{
    MetadataAppliedRequest, MetadataAppliedResponse, ReassignmentDoneRequest, ReassignmentDoneResponse,
};

use super::metadata::{self, MetaCommand};
use super::replica::matched;
use super::{group_id, Cluster, Hosted, RaftReplica};
use crate::broker::route::APPLY_WAIT;
use crate::broker::seam::{MoveView, PartitionMove};
use crate::broker::{Broker, PartitionSlot, Topic};
use crate::error::BrokerError;
use crate::meta::{Reassignment, TopicRecord};
use crate::partition::Closed;

/// How often each broker drives the moves of the partitions it leads.
const DRIVE_EVERY: Duration = Duration::from_millis(300);

/// `record` after a `ReassignPartitions` of `targets` (see `MetaCommand`); `None` if it
/// changes nothing.
pub(super) fn moved(record: &TopicRecord, targets: &[(u32, Vec<u64>)], throttle: u64) -> Option<TopicRecord> {
    let mut out = record.clone();
    for (p, target) in targets {
        let Some(current) = record.replicas.get(*p as usize) else {
            tracing::warn!(topic = %record.name, partition = p, "skipping a move of a partition without placement");
            continue;
        };
        if target.is_empty() {
            continue;
        }
        match out.reassigning.get_mut(p) {
            Some(r) => {
                for b in target {
                    if !r.members.contains(b) {
                        r.members.push(*b);
                    }
                }
                r.target = target.clone();
                r.throttle = throttle;
            }
            // The same brokers in another order: only the preferred leader changes.
            None if same_set(current, target) => out.replicas[*p as usize] = target.clone(),
            None => {
                let mut members = current.clone();
                members.extend(target.iter().filter(|b| !current.contains(b)));
                out.reassigning.insert(*p, Reassignment { target: target.clone(), members, throttle });
            }
        }
    }
    (out != *record).then_some(out)
}

/// `record` after a `ReassignmentDone` for partition `p` with `voters`: the move is done if
/// they are its target; `None` otherwise.
pub(super) fn done(record: &TopicRecord, p: u32, voters: &[u64]) -> Option<TopicRecord> {
    let r = record.reassigning.get(&p)?;
    if !same_set(&r.target, voters) || record.replicas.len() <= p as usize {
        return None;
    }
    let mut out = record.clone();
    out.replicas[p as usize] = r.target.clone();
    out.reassigning.remove(&p);
    Some(out)
}

fn same_set(a: &[u64], b: &[u64]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

/// Applies a `ReassignPartitions` or `ReassignmentDone` to the incarnation it names.
pub(super) async fn apply(broker: &Arc<Broker>, cluster: &Cluster, cmd: &MetaCommand) -> Result<(), BrokerError> {
    let (MetaCommand::ReassignPartitions { name, topic_id, .. } | MetaCommand::ReassignmentDone { name, topic_id, .. }) =
        cmd
    else {
        return Ok(());
    };
    let Ok(topic) = broker.topic(name) else { return Ok(()) };
    if topic.topic_id != *topic_id {
        return Ok(()); // another incarnation
    }
    let Some(record) = metadata::altered(&topic.record, cmd) else { return Ok(()) };
    if let MetaCommand::ReassignmentDone { partition, .. } = cmd {
        let target = record.replicas_of(*partition).to_vec();
        tracing::info!(topic = %name, partition, replicas = ?target, "partition move done");
    }
    resettle(broker, cluster, &topic, record).await
}

/// Brings the replicas held here of `topic` (same incarnation, same partition count) in line
/// with `record`: opens the replicas it now places here (empty, waiting to be added), closes
/// and deletes those it no longer does (see the module invariants), updates the preferred
/// leaders and where clients are sent, and republishes the topic. Each partition's step is
/// logged if it fails, and the topic is always republished with the slots as they are, so a
/// later resettle never opens a replica twice.
pub(super) async fn resettle(
    broker: &Arc<Broker>,
    cluster: &Cluster,
    topic: &Topic,
    record: TopicRecord,
) -> Result<(), BrokerError> {
    let me = cluster.node_id();
    let brokers = cluster.brokers();
    let mut slots = Vec::with_capacity(topic.slots.len());
    for (p, slot) in (0u32..).zip(topic.slots.iter().map(PartitionSlot::current)) {
        let hosts = record.hosts_in(p, brokers.keys().copied());
        let group = group_id(topic.topic_id, p);
        let next = match (slot, hosts.contains(&me)) {
            (PartitionSlot::Here { .. }, true) => {
                if let Some(h) = cluster.hosted_group(group) {
                    cluster.host(Hosted { replica: h.replica, preferred: record.replicas_of(p).first().copied() });
                }
                slot.clone()
            }
            (PartitionSlot::Here { log, writer }, false) => {
                writer.stop().await;
                log.close(Closed::Moved);
                match drop_partition(broker, cluster, topic.topic_id, p).await {
                    Ok(()) => {
                        tracing::info!(topic = %record.name, partition = p, "replica moved off this broker: closed and deleted")
                    }
                    Err(e) => {
                        tracing::error!(topic = %record.name, partition = p, error = %e, "replica moved off this broker: closed, but its Raft state could not be cleared")
                    }
                }
                elsewhere(cluster, &record, p)
            }
            (PartitionSlot::Elsewhere { .. }, true) => {
                tracing::info!(topic = %record.name, partition = p, "opening a replica for a partition move");
                match super::opening::open_slot(broker, cluster, topic.topic_id, &record, p).await {
                    Ok(slot) => slot,
                    // The move's leader keeps trying to add it; the next resettle tries again.
                    Err(e) => {
                        tracing::error!(topic = %record.name, partition = p, error = %e, "cannot open a replica for a partition move");
                        elsewhere(cluster, &record, p)
                    }
                }
            }
            (PartitionSlot::Elsewhere { .. }, false) => elsewhere(cluster, &record, p),
            // Not after an opening (the applier awaits it, and it settles every slot).
            (PartitionSlot::Opening(_), _) => slot.clone(),
        };
        slots.push(next);
    }
    broker.publish_topic(Arc::new(Topic { record, slots, topic_id: topic.topic_id }));
    Ok(())
}

/// Where clients are sent for partition `p` held elsewhere: its replicas, then the brokers
/// its move adds.
pub(super) fn elsewhere(cluster: &Cluster, record: &TopicRecord, p: u32) -> PartitionSlot {
    let hosts = record.hosts_in(p, cluster.brokers().keys().copied());
    PartitionSlot::Elsewhere { replica_addrs: hosts.iter().filter_map(|r| cluster.leader_hint(Some(*r))).collect() }
}

/// Forgets this broker's replica of partition `p` of incarnation `topic_id`, whose group the
/// caller stopped: unhosts it, clears its Raft state, removes its files (a failure to remove
/// is logged).
pub(super) async fn drop_partition(
    broker: &Broker,
    cluster: &Cluster,
    topic_id: u64,
    p: u32,
) -> Result<(), BrokerError> {
    let group = group_id(topic_id, p);
    cluster.unhost(group);
    broker.store().raft_state(group)?.clear().await?;
    let dir = crate::layout::replicas_dir(&cluster.data_dir, topic_id).join(p.to_string());
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a moved replica's files");
        }
    }
    Ok(())
}

/// Drives the moves of the partitions this broker leads, forever (until shutdown).
pub async fn run(broker: Arc<Broker>, cluster: Arc<Cluster>) {
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(DRIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Each moving group's committed index at the previous round: a learner holding it is
    // caught up (it follows within a round of the leader).
    let mut committed_before: HashMap<u64, u64> = HashMap::new();
    // Groups with a membership change running (in its own task: a change cut off between its
    // joint and final steps would leave the group joint).
    let changing: Changing = Arc::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut moving = Vec::new();
        for topic in broker.topics() {
            for (p, r) in &topic.record.reassigning {
                let Some(h) = cluster.hosted_group(group_id(topic.topic_id, *p)) else { continue };
                if h.replica.leader() == Some(cluster.node_id()) {
                    moving.push((Arc::clone(&topic), *p, r.clone(), h.replica));
                }
            }
        }
        let leading: HashSet<u64> = moving.iter().map(|m| m.3.group_id).collect();
        committed_before.retain(|g, _| leading.contains(g));
        // A broker that lost a group's leadership mid-move paces nobody of it any more.
        cluster.peers.throttle().keep_only(&leading);
        let rounds = moving.iter().map(|(topic, p, r, replica)| {
            let before = committed_before.get(&replica.group_id).copied().unwrap_or(u64::MAX);
            Step { broker: &broker, cluster: &cluster, topic, p: *p, r, changing: &changing }.drive(replica, before)
        });
        for (group, committed) in futures::future::join_all(rounds).await {
            committed_before.insert(group, committed);
        }
    }
}

/// Groups with a membership change in flight on this broker.
type Changing = Arc<std::sync::Mutex<HashSet<u64>>>;

/// One round of one partition's move on its leader.
struct Step<'a> {
    broker: &'a Broker,
    cluster: &'a Cluster,
    topic: &'a Topic,
    p: u32,
    r: &'a Reassignment,
    changing: &'a Changing,
}

impl Step<'_> {
    /// One round of the move (see the module docs). Returns the group and its committed index
    /// now.
    async fn drive(self, replica: &RaftReplica, committed_before: u64) -> (u64, u64) {
        let (cluster, p, r) = (self.cluster, self.p, self.r);
        let group = replica.group_id;
        let m = replica.raft.metrics().borrow_watched().clone();
        let committed = m.cluster_committed.map_or(0, |l| l.index);
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let nodes: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
        let target: BTreeSet<u64> = r.target.iter().copied().collect();
        let throttle = cluster.peers.throttle();
        let name = &self.topic.record.name;
        // A change not committed yet, or running here: it finishes (or fails) first.
        let uncommitted = m.membership_config.log_id() != m.committed_membership_config.log_id();
        if uncommitted || self.changing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&group) {
            return (group, committed);
        }
        if membership.get_joint_config().len() > 1 {
            // A committed joint config whose final step was cut off (a leader change, a
            // crash): finish it, toward the target (openraft applies a change to the joint
            // config's last half).
            tracing::info!(topic = %name, partition = p, voters = ?target, "move: finishing a joint configuration");
            self.change(replica, ChangeMembers::ReplaceAllVoters(target));
            return (group, committed);
        }

        if voters == target {
            throttle.unmark(group);
            let stale: BTreeSet<u64> = nodes.difference(&target).copied().collect();
            if !stale.is_empty() {
                // Learners of a move that was replaced before they were promoted.
                self.change(replica, ChangeMembers::RemoveNodes(stale));
                return (group, committed);
            }
            if voters.contains(&cluster.node_id()) {
                let voters: Vec<u64> = voters.into_iter().collect();
                if let Err(e) = report_done(self.broker, cluster, name, self.topic.topic_id, p, voters).await {
                    tracing::debug!(group, error = %e, "reporting a finished move failed; retrying");
                }
            }
            // Else this leader is not in the target: openraft hands its leadership to a new
            // voter (`removed_leader_step_down`), and the new leader reports.
            return (group, committed);
        }

        let new: HashSet<u64> = target.difference(&voters).copied().collect();
        // Throttled from their first byte: marked before they are added.
        throttle.mark(group, &new, r.throttle);
        let mine = *cluster.applied.borrow();
        for t in target.difference(&nodes) {
            // Only once it applied all the metadata this leader did: an old replica of this
            // partition on it (from before an earlier move took it away) is gone by then, so
            // the one added is the new, empty one.
            if applied_at(cluster, *t).await.is_none_or(|theirs| theirs < mine) {
                return (group, committed);
            }
            if let Err(e) = replica.raft.add_learner(*t, openraft::EmptyNode {}, false).await {
                tracing::debug!(group, learner = t, error = %e, "adding a learner failed; retrying");
                return (group, committed);
            }
            tracing::info!(topic = %name, partition = p, broker = t, "move: catching up a new replica");
        }
        if !new.iter().all(|t| nodes.contains(t) && matched(&m, *t) >= committed_before) {
            return (group, committed);
        }
        // Voters are never throttled: the new majority must commit at the leader's pace.
        throttle.unmark(group);
        tracing::info!(topic = %name, partition = p, voters = ?target, "move: new replicas caught up; changing voters");
        self.change(replica, ChangeMembers::ReplaceAllVoters(target));
        (group, committed)
    }

    /// Runs a membership change of the group in its own task (never dropped midway), one at
    /// a time per group.
    fn change(&self, replica: &RaftReplica, change: ChangeMembers<u64, openraft::EmptyNode>) {
        let group = replica.group_id;
        self.changing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(group);
        let (raft, changing) = (replica.raft.clone(), Arc::clone(self.changing));
        tokio::spawn(async move {
            if let Err(e) = raft.change_membership(change, false).await {
                tracing::warn!(group, error = %e, "move: a membership change failed; retrying");
            }
            changing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&group);
        });
    }
}

/// How far broker `id` applied the metadata log (this broker's own, or asked within a second).
async fn applied_at(cluster: &Cluster, id: u64) -> Option<u64> {
    if id == cluster.node_id() {
        return Some(*cluster.applied.borrow());
    }
    let mut client = ClusterControlClient::new(cluster.peers.channel(id).ok()?);
    let ask = client.metadata_applied(MetadataAppliedRequest {});
    Some(tokio::time::timeout(Duration::from_secs(1), ask).await.ok()?.ok()?.into_inner().offset)
}

/// Tells the controller that partition `p`'s voters are `voters`.
async fn report_done(
    broker: &Broker,
    cluster: &Cluster,
    name: &str,
    topic_id: u64,
    p: u32,
    voters: Vec<u64>,
) -> Result<(), BrokerError> {
    let req = ReassignmentDoneRequest { topic: name.to_string(), topic_id, partition: p, voters };
    match cluster.controller() {
        Some(c) if c == cluster.node_id() => record_done(broker, cluster, &req).await,
        Some(c) => {
            let channel = cluster.peers.channel(c).map_err(|e| not_now(&e))?;
            let mut client = ClusterControlClient::new(channel);
            match tokio::time::timeout(Duration::from_secs(2), client.reassignment_done(req)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(s)) => Err(not_now(&s.message())),
                Err(_) => Err(not_now(&"the controller did not answer in 2 s")),
            }
        }
        None => Err(not_now(&"no controller")),
    }
}

fn not_now(e: &impl std::fmt::Display) -> BrokerError {
    BrokerError::NotLeader { what: format!("the cluster metadata ({e})"), leader: None }
}

/// On the controller: the `ReassignmentDone` entry, if the move is still the one reported.
async fn record_done(broker: &Broker, cluster: &Cluster, req: &ReassignmentDoneRequest) -> Result<(), BrokerError> {
    let Ok(topic) = broker.topic(&req.topic) else { return Ok(()) };
    if topic.topic_id != req.topic_id || done(&topic.record, req.partition, &req.voters).is_none() {
        return Ok(()); // recorded already, or replaced by another move
    }
    let cmd = MetaCommand::ReassignmentDone {
        name: req.topic.clone(),
        topic_id: req.topic_id,
        partition: req.partition,
        voters: req.voters.clone(),
    };
    let offset = metadata::propose(cluster, &cmd).await?;
    cluster.wait_applied(offset + 1, APPLY_WAIT).await
}

/// A partition and the replicas it moves to.
type Target = (u32, Vec<u64>);

/// On the controller: checks `moves` against the topics and brokers, and writes one
/// `ReassignPartitions` entry per topic. An empty target cancels a partition's move (back to
/// its replicas before it); cancelling a partition that is not moving does nothing.
pub(super) async fn propose_moves(
    broker: &Broker,
    cluster: &Cluster,
    moves: Vec<PartitionMove>,
    throttle: u64,
) -> Result<(), BrokerError> {
    let placeable = cluster.brokers.placeable();
    let mut by_topic: Vec<(Arc<Topic>, Vec<Target>)> = Vec::new();
    for m in moves {
        let topic = broker.topic(&m.topic)?;
        if topic.record.replicas.is_empty() {
            return Err(BrokerError::InvalidArgument(format!(
                "topic {} predates replica placement (every broker holds it): it cannot be moved",
                m.topic
            )));
        }
        if m.partition >= topic.record.partitions {
            return Err(BrokerError::UnknownPartition {
                topic: m.topic,
                partition: m.partition,
                count: topic.record.partitions,
            });
        }
        let target = if m.replicas.is_empty() {
            match topic.record.reassigning.get(&m.partition) {
                Some(_) => topic.record.replicas_of(m.partition).to_vec(),
                None => continue,
            }
        } else {
            m.replicas
        };
        if target.iter().collect::<BTreeSet<_>>().len() != target.len() {
            return Err(BrokerError::InvalidArgument(format!(
                "{}/{}: replicas {target:?} name a broker twice",
                m.topic, m.partition
            )));
        }
        let current = topic.record.replicas_of(m.partition);
        if let Some(b) = target.iter().find(|b| !placeable.contains(b) && !current.contains(b)) {
            return Err(BrokerError::InvalidArgument(format!(
                "{}/{}: broker {b} is not a broker of this cluster (or is being removed); brokers: {placeable:?}",
                m.topic, m.partition
            )));
        }
        match by_topic.iter_mut().find(|(t, _)| t.topic_id == topic.topic_id) {
            Some((_, targets)) => targets.push((m.partition, target)),
            None => by_topic.push((topic, vec![(m.partition, target)])),
        }
    }
    for (topic, targets) in by_topic {
        let name = topic.record.name.clone();
        let cmd = MetaCommand::ReassignPartitions { name: name.clone(), topic_id: topic.topic_id, targets, throttle };
        let offset = metadata::propose(cluster, &cmd).await?;
        cluster.wait_applied(offset + 1, APPLY_WAIT).await?;
        tracing::info!(topic = %name, "partition moves started");
    }
    Ok(())
}

/// The moves that take every replica off broker `id` (for its removal): each partition that
/// may hold it and is not already moving away from it gets a target with `id` replaced, in
/// its place, by the placeable broker that holds the fewest replicas and none of this
/// partition (ties: the lowest id). Empty when no other broker can take one.
pub(super) fn moves_off(broker: &Broker, cluster: &Cluster, id: u64) -> Vec<PartitionMove> {
    let brokers = cluster.brokers.ids();
    let candidates: Vec<u64> = cluster.brokers.placeable().into_iter().filter(|b| *b != id).collect();
    let mut load: HashMap<u64, usize> = candidates.iter().map(|b| (*b, 0)).collect();
    let topics = broker.topics();
    for t in &topics {
        for p in 0..t.record.partitions {
            for b in t.record.hosts_in(p, brokers.iter().copied()) {
                if let Some(n) = load.get_mut(&b) {
                    *n += 1;
                }
            }
        }
    }
    let mut out = Vec::new();
    for t in &topics {
        for p in 0..t.record.partitions {
            let replicas = match t.record.reassigning.get(&p) {
                Some(r) if !r.target.contains(&id) => continue, // moving away already
                Some(r) => r.target.clone(),
                None => t.record.replicas_of(p).to_vec(),
            };
            let Some(pos) = replicas.iter().position(|b| *b == id) else { continue };
            let Some(to) = candidates
                .iter()
                .filter(|b| !replicas.contains(b))
                .min_by_key(|b| (load.get(b).copied().unwrap_or(0), **b))
                .copied()
            else {
                continue;
            };
            *load.entry(to).or_default() += 1;
            let mut target = replicas;
            target[pos] = to;
            out.push(PartitionMove { topic: t.record.name.clone(), partition: p, replicas: target });
        }
    }
    out
}

/// The moves in progress (of `topic`, or all), with each new replica's progress where this
/// broker leads the partition.
pub(super) fn views(broker: &Broker, cluster: &Cluster, topic: Option<&str>) -> Vec<MoveView> {
    let me = cluster.node_id();
    let mut out = Vec::new();
    for t in broker.topics() {
        if topic.is_some_and(|name| name != t.record.name) {
            continue;
        }
        for (p, r) in &t.record.reassigning {
            let mut view = MoveView {
                topic: t.record.name.clone(),
                partition: *p,
                replicas: t.record.replicas_of(*p).to_vec(),
                target: r.target.clone(),
                ..MoveView::default()
            };
            if let Some(h) = cluster.hosted_group(group_id(t.topic_id, *p)).filter(|h| h.replica.leader() == Some(me)) {
                let m = h.replica.raft.metrics().borrow_watched().clone();
                let last = m.last_log_index.unwrap_or(0);
                let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
                view.leader = Some(me);
                view.progress = r
                    .target
                    .iter()
                    .filter(|b| !view.replicas.contains(b))
                    .map(|b| {
                        let role = if voters.contains(b) { "VOTER" } else { "LEARNER" };
                        (*b, last.saturating_sub(matched(&m, *b)), role)
                    })
                    .collect();
            }
            out.push(view);
        }
    }
    out
}

/// `tidelog.internal.v1.ClusterControl`: what brokers ask the controller outside Raft.
#[derive(Debug)]
pub struct ControlService {
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
}

impl ControlService {
    pub fn new(broker: Arc<Broker>, cluster: Arc<Cluster>) -> Self {
        Self { broker, cluster }
    }
}

#[tonic::async_trait]
impl tidelog_proto::internal::cluster_control_server::ClusterControl for ControlService {
    async fn reassignment_done(
        &self,
        request: tonic::Request<ReassignmentDoneRequest>,
    ) -> Result<tonic::Response<ReassignmentDoneResponse>, tonic::Status> {
        if self.cluster.controller() != Some(self.cluster.node_id()) {
            return Err(tonic::Status::unavailable("not the controller"));
        }
        record_done(&self.broker, &self.cluster, request.get_ref())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(tonic::Response::new(ReassignmentDoneResponse {}))
    }

    async fn metadata_applied(
        &self,
        _request: tonic::Request<MetadataAppliedRequest>,
    ) -> Result<tonic::Response<MetadataAppliedResponse>, tonic::Status> {
        Ok(tonic::Response::new(MetadataAppliedResponse { offset: *self.cluster.applied.borrow() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic_config::TopicSettings;

    fn record(replicas: Vec<Vec<u64>>) -> TopicRecord {
        TopicRecord {
            name: "t".into(),
            partitions: replicas.len() as u32,
            created_at_ms: 0,
            settings: TopicSettings::default(),
            replicas,
            overrides: None,
            reassigning: Default::default(),
        }
    }

    #[test]
    fn a_move_keeps_every_possible_voter_hosting_until_done() {
        let r0 = record(vec![vec![1, 2, 3], vec![2, 3, 1]]);
        // 0 moves to {4,5,6}; 1 only reorders (a preferred-leader change, done at once).
        let r1 = moved(&r0, &[(0, vec![4, 5, 6]), (1, vec![1, 2, 3])], 0).unwrap();
        assert_eq!(r1.replicas[1], vec![1, 2, 3]);
        assert!(!r1.reassigning.contains_key(&1));
        assert_eq!(r1.replicas[0], vec![1, 2, 3], "replicas stay the old ones until done");
        assert_eq!(r1.hosts_in(0, std::iter::empty()), vec![1, 2, 3, 4, 5, 6]);
        // Redirected midway to {1,5,7}: 4 and 6 may already vote, so they keep hosting.
        let r2 = moved(&r1, &[(0, vec![1, 5, 7])], 1000).unwrap();
        assert_eq!(r2.reassigning[&0].target, vec![1, 5, 7]);
        assert_eq!(r2.reassigning[&0].throttle, 1000);
        assert_eq!(r2.hosts_in(0, std::iter::empty()), vec![1, 2, 3, 4, 5, 6, 7]);
        // A report of the superseded target does not complete it.
        assert!(done(&r2, 0, &[4, 5, 6]).is_none());
        // The current one does, in any order: only the target hosts after.
        let r3 = done(&r2, 0, &[7, 5, 1]).unwrap();
        assert_eq!(r3.replicas[0], vec![1, 5, 7]);
        assert!(r3.reassigning.is_empty());
        assert_eq!(r3.hosts_in(0, std::iter::empty()), vec![1, 5, 7]);
        // Done twice, or for a partition not moving: nothing.
        assert!(done(&r3, 0, &[1, 5, 7]).is_none());
        // Repeating the same move changes nothing.
        assert!(moved(&r3, &[(0, vec![1, 5, 7])], 0).is_none());
    }

    #[test]
    fn a_cancel_is_a_move_back_to_the_replicas_before() {
        let r0 = record(vec![vec![1, 2, 3]]);
        let r1 = moved(&r0, &[(0, vec![1, 2, 4])], 0).unwrap();
        let back = moved(&r1, &[(0, vec![1, 2, 3])], 0).unwrap();
        assert_eq!(back.reassigning[&0].target, vec![1, 2, 3]);
        assert_eq!(back.hosts_in(0, std::iter::empty()), vec![1, 2, 3, 4], "4 may have voted: it keeps hosting");
        let r2 = done(&back, 0, &[3, 2, 1]).unwrap();
        assert_eq!((r2.replicas[0].clone(), r2.reassigning.len()), (vec![1, 2, 3], 0));
        // A move of a partition without placement, or with an empty target, changes nothing.
        assert!(moved(&record(vec![]), &[(0, vec![1])], 0).is_none());
        assert!(moved(&r0, &[(0, vec![])], 0).is_none());
    }
}
