//! The group coordinator: one state machine per group, driven by member sessions (see
//! `group/mod.rs` for the protocol and its invariants). Messages to members go through each
//! member's session channel; nothing here blocks on a member.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tidelog_proto::v1::{
    session_response, Assignment, ErrorCode, GroupMember, JoinGroup, Joined, MemberAssignment, Rebalance, SessionError,
    SessionResponse, TopicPartitionCount, TopicPartitions,
};
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::error::BrokerError;

/// Accepted session timeouts (ms) and the default.
pub const MIN_SESSION_TIMEOUT_MS: u32 = 1000;
pub const MAX_SESSION_TIMEOUT_MS: u32 = 300_000;
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 10_000;
/// Assignors the coordinator knows by name.
pub const ASSIGNORS: [&str; 3] = ["range", "roundrobin", "sticky"];

pub type SessionTx = mpsc::UnboundedSender<Result<SessionResponse, tonic::Status>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    Rebalancing,
    AwaitingSync,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Rebalancing => "rebalancing",
            GroupState::AwaitingSync => "awaiting_sync",
            GroupState::Stable => "stable",
        }
    }
}

#[derive(Debug)]
struct Member {
    join: JoinGroup,
    session_timeout: Duration,
    last_seen: Instant,
    /// Has (re)joined during the current rebalance.
    joined: bool,
    /// Which session stream this member lives on (a rejoin on a new stream is a new member).
    session: u64,
    /// When the member first joined (the newest is dropped if no assignor is common).
    joined_at: Instant,
    tx: SessionTx,
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: u32,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    assignments: HashMap<String, Vec<TopicPartitions>>,
    rebalance_deadline: Option<Instant>,
    /// The assignor of the current generation.
    protocol: Option<String>,
    /// The partition count of each subscribed topic the current generation was assigned
    /// with (topics that did not exist are absent). A change starts a rebalance.
    counts: BTreeMap<String, u32>,
}

impl Group {
    /// A group first seen by this coordinator; its generations count up from `base`.
    fn new(base: u32) -> Self {
        Self {
            state: GroupState::Empty,
            generation: base,
            leader: None,
            members: BTreeMap::new(),
            assignments: HashMap::new(),
            rebalance_deadline: None,
            protocol: None,
            counts: BTreeMap::new(),
        }
    }
}

fn send(tx: &SessionTx, kind: session_response::Kind) {
    let _ = tx.send(Ok(SessionResponse { kind: Some(kind) }));
}

/// A snapshot for DescribeGroup.
#[derive(Debug)]
pub struct GroupView {
    pub state: GroupState,
    pub generation: u32,
    pub leader: Option<String>,
    pub members: Vec<GroupMember>,
    pub assignments: HashMap<String, Vec<TopicPartitions>>,
}

#[derive(Debug)]
pub struct Coordinator {
    broker: Arc<Broker>,
    groups: Mutex<HashMap<String, Group>>,
    next_member: std::sync::atomic::AtomicU64,
}

impl Coordinator {
    pub fn new(broker: Arc<Broker>) -> Arc<Self> {
        Arc::new(Self { broker, groups: Mutex::new(HashMap::new()), next_member: Default::default() })
    }

    /// Where a new group's generations start. In a cluster, above 65,536 × the controller's
    /// metadata term, so a later controller's generations are higher than an earlier one's
    /// (members see them in order across a failover, and a stale generation can never equal
    /// a current one); 0 on a single node.
    fn generation_base(&self) -> u32 {
        self.broker.generation_base()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A member (new, or rejoining on its session) joins; returns its member id.
    pub fn join(
        &self,
        session: u64,
        member_id: Option<&str>,
        mut join: JoinGroup,
        tx: SessionTx,
    ) -> Result<String, BrokerError> {
        if join.group.is_empty() || join.group.len() > 255 {
            return Err(BrokerError::InvalidArgument("group must be 1-255 characters".into()));
        }
        if join.topics.is_empty() {
            return Err(BrokerError::InvalidArgument("join lists no topics".into()));
        }
        join.assignors.retain(|a| ASSIGNORS.contains(&a.as_str()));
        if join.assignors.is_empty() {
            return Err(BrokerError::InvalidArgument(format!("no known assignor; use one of {ASSIGNORS:?}")));
        }
        let timeout_ms = match join.session_timeout_ms {
            0 => DEFAULT_SESSION_TIMEOUT_MS,
            t if (MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&t) => t,
            t => {
                return Err(BrokerError::InvalidArgument(format!(
                    "session_timeout_ms must be {MIN_SESSION_TIMEOUT_MS}..={MAX_SESSION_TIMEOUT_MS}, got {t}"
                )))
            }
        };
        let id = match member_id {
            Some(id) => id.to_string(),
            None => {
                let n = self.next_member.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let client = if join.client_id.is_empty() { "member" } else { join.client_id.as_str() };
                format!("{client}-{n}-{:08x}", rand::random::<u32>())
            }
        };
        let mut groups = self.lock();
        let group_name = join.group.clone();
        let base = self.generation_base();
        let g = groups.entry(group_name.clone()).or_insert_with(|| Group::new(base));
        let joined_at = g.members.get(&id).map_or_else(Instant::now, |m| m.joined_at);
        let member = Member {
            join,
            session_timeout: Duration::from_millis(u64::from(timeout_ms)),
            last_seen: Instant::now(),
            joined: true,
            session,
            joined_at,
            tx,
        };
        let known = g.members.insert(id.clone(), member).is_some();
        tracing::info!(group = %group_name, member = %id, rejoin = known, "member joined");
        if g.state == GroupState::Rebalancing {
            self.try_complete(&group_name, g);
        } else {
            let reason = if known { "member rejoined" } else { "member joined" };
            self.start_rebalance(&group_name, g, reason, Some(&id));
        }
        Ok(id)
    }

    /// Every member but `joined` (which just joined) must revoke and rejoin.
    fn start_rebalance(&self, name: &str, g: &mut Group, reason: &str, joined: Option<&str>) {
        g.state = GroupState::Rebalancing;
        g.assignments.clear();
        let timeout = g.members.values().map(|m| m.session_timeout).max().unwrap_or_default();
        g.rebalance_deadline = Some(Instant::now() + timeout);
        for (id, m) in g.members.iter_mut() {
            if joined == Some(id.as_str()) {
                m.joined = true;
                continue;
            }
            m.joined = false;
            send(&m.tx, session_response::Kind::Rebalance(Rebalance { reason: reason.to_string() }));
        }
        tracing::info!(group = name, reason, "rebalance started");
        self.try_complete(name, g);
    }

    /// Completes the join phase once every member has rejoined.
    fn try_complete(&self, name: &str, g: &mut Group) {
        if g.state != GroupState::Rebalancing || g.members.values().any(|m| !m.joined) {
            return;
        }
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.leader = None;
            return;
        }
        // The assignor: the leader's most preferred one that every member supports.
        let leader =
            g.leader.clone().filter(|l| g.members.contains_key(l)).or_else(|| g.members.keys().next().cloned());
        let Some(leader) = leader else { return };
        let common = g.members[&leader]
            .join
            .assignors
            .iter()
            .find(|a| g.members.values().all(|m| m.join.assignors.contains(a)))
            .cloned();
        let Some(assignor) = common else {
            // Remove the newest members until there is a common assignor.
            let newest = g.members.iter().max_by_key(|(_, m)| m.joined_at).map(|(id, _)| id.clone());
            if let Some(id) = newest {
                if let Some(m) = g.members.remove(&id) {
                    let message = "no assignor in common with the group's members".to_string();
                    let error = SessionError { code: ErrorCode::InconsistentGroup as i32, message };
                    send(&m.tx, session_response::Kind::Error(error));
                }
            }
            return self.try_complete(name, g);
        };
        g.generation += 1;
        g.protocol = Some(assignor.clone());
        g.leader = Some(leader.clone());
        g.state = GroupState::AwaitingSync;
        g.rebalance_deadline = None;
        let topics: BTreeSet<&String> = g.members.values().flat_map(|m| m.join.topics.iter()).collect();
        let topic_partitions: Vec<TopicPartitionCount> = topics
            .into_iter()
            .filter_map(|t| {
                self.broker
                    .topic(t)
                    .ok()
                    .map(|d| TopicPartitionCount { topic: t.clone(), partitions: d.record.partitions })
            })
            .collect();
        g.counts = topic_partitions.iter().map(|t| (t.topic.clone(), t.partitions)).collect();
        let members: Vec<GroupMember> = g
            .members
            .iter()
            .map(|(id, m)| GroupMember {
                member_id: id.clone(),
                topics: m.join.topics.clone(),
                owned: m.join.owned.clone(),
                client_id: m.join.client_id.clone(),
            })
            .collect();
        for (id, m) in &g.members {
            let is_leader = *id == leader;
            let joined = Joined {
                generation: g.generation,
                member_id: id.clone(),
                leader_id: leader.clone(),
                assignor: assignor.clone(),
                members: if is_leader { members.clone() } else { Vec::new() },
                topic_partitions: if is_leader { topic_partitions.clone() } else { Vec::new() },
            };
            send(&m.tx, session_response::Kind::Joined(joined));
        }
        tracing::info!(group = name, generation = g.generation, leader = %leader, assignor = %assignor, members = g.members.len(), "generation started");
    }

    /// The leader's assignment for `generation`; followers' syncs are accepted and ignored.
    pub fn sync(
        &self,
        group: &str,
        member: &str,
        generation: u32,
        assignments: Vec<MemberAssignment>,
    ) -> Result<(), BrokerError> {
        let mut groups = self.lock();
        let g = groups
            .get_mut(group)
            .ok_or_else(|| BrokerError::IllegalGeneration(format!("group {group} has no members")))?;
        touch(g, member);
        if g.state != GroupState::AwaitingSync || g.generation != generation {
            return Ok(()); // a newer rebalance superseded this sync; the member will rejoin
        }
        if g.leader.as_deref() != Some(member) {
            return Ok(());
        }
        // Every partition once at most: the leader must not assign one partition twice.
        let mut seen = BTreeSet::new();
        for a in &assignments {
            for tp in &a.partitions {
                for p in &tp.partitions {
                    if !seen.insert((tp.topic.clone(), *p)) {
                        return Err(BrokerError::InconsistentGroup(format!(
                            "partition {}/{p} assigned twice",
                            tp.topic
                        )));
                    }
                }
            }
        }
        g.assignments = assignments.into_iter().map(|a| (a.member_id, a.partitions)).collect();
        for (id, m) in &g.members {
            let partitions = g.assignments.get(id).cloned().unwrap_or_default();
            send(&m.tx, session_response::Kind::Assignment(Assignment { generation, partitions }));
        }
        g.state = GroupState::Stable;
        tracing::info!(group, generation, "assignment distributed");
        Ok(())
    }

    /// Records a heartbeat; returns false if the member is no longer in the group (its session
    /// expired while it was stalled): it must then revoke and rejoin, not go on consuming.
    pub fn heartbeat(&self, group: &str, member: &str) -> bool {
        let mut groups = self.lock();
        match groups.get_mut(group) {
            Some(g) if g.members.contains_key(member) => {
                touch(g, member);
                true
            }
            _ => false,
        }
    }

    /// Removes a member (leave, broken stream, expired session) and rebalances the rest.
    /// `session` guards against removing a member that already rejoined on another stream.
    pub fn remove(&self, group: &str, member: &str, session: Option<u64>, reason: &str) {
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else { return };
        if session.is_some_and(|s| g.members.get(member).is_some_and(|m| m.session != s)) {
            return;
        }
        if g.members.remove(member).is_none() {
            return;
        }
        tracing::info!(group, member, reason, "member removed");
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.leader = None;
            g.assignments.clear();
            return;
        }
        let name = group.to_string();
        if g.state == GroupState::Rebalancing {
            // Already rebalancing: the others need not rejoin again; finish without this one.
            self.try_complete(&name, g);
        } else {
            self.start_rebalance(&name, g, reason, None);
        }
    }

    /// Removes members whose session expired or who did not rejoin in time, and rebalances
    /// groups whose subscribed topics changed their partition count (added partitions, a
    /// topic created or deleted), as Kafka's consumer leaders do when their metadata changes.
    /// Called periodically.
    pub fn expire(&self) {
        let now = Instant::now();
        let mut doomed = Vec::new();
        {
            let mut groups = self.lock();
            for (name, g) in groups.iter_mut() {
                if let Some(reason) = self.topics_changed(g) {
                    self.start_rebalance(name, g, &reason, None);
                }
            }
            for (name, g) in groups.iter() {
                for (id, m) in &g.members {
                    if expired(g, m, now) {
                        doomed.push((name.clone(), id.clone()));
                    }
                }
            }
        }
        for (group, member) in doomed {
            self.remove_if_expired(&group, &member);
        }
    }

    /// Why a settled group must rebalance because a subscribed topic changed, if it must.
    fn topics_changed(&self, g: &Group) -> Option<String> {
        if !matches!(g.state, GroupState::Stable | GroupState::AwaitingSync) {
            return None;
        }
        let topics: BTreeSet<&String> = g.members.values().flat_map(|m| m.join.topics.iter()).collect();
        topics.into_iter().find_map(|t| {
            let now = match self.broker.topic(t) {
                Ok(d) => Some(d.record.partitions),
                Err(BrokerError::UnknownTopic(_)) => None,
                Err(_) => return None, // not known yet here (metadata catching up): no change
            };
            let then = g.counts.get(t).copied();
            (now != then).then(|| match (then, now) {
                (_, Some(n)) => format!("topic '{t}' now has {n} partitions"),
                (_, None) => format!("topic '{t}' was deleted"),
            })
        })
    }

    /// Removes `member` only if it is still expired under the lock (it may have rejoined or
    /// heartbeated since `expire` looked).
    fn remove_if_expired(&self, group: &str, member: &str) {
        let still = {
            let groups = self.lock();
            let now = Instant::now();
            groups
                .get(group)
                .and_then(|g| g.members.get(member).map(|m| (g, m)))
                .is_some_and(|(g, m)| expired(g, m, now))
        };
        if still {
            self.remove(group, member, None, "session timed out");
        }
    }

    /// Checks a commit's (generation, member) against the group.
    pub fn check_commit(&self, group: &str, generation: u32, member: &str) -> Result<(), BrokerError> {
        let groups = self.lock();
        let active = groups.get(group).filter(|g| !g.members.is_empty());
        match active {
            None if generation == 0 && member.is_empty() => Ok(()),
            None => Err(BrokerError::IllegalGeneration(format!(
                "group {group} has no members; member {member} of generation {generation} must rejoin"
            ))),
            Some(g) if g.generation == generation && g.members.contains_key(member) => Ok(()),
            Some(g) => Err(BrokerError::IllegalGeneration(format!(
                "group {group} is at generation {} and member {member:?} of generation {generation} is not part of it; rejoin",
                g.generation
            ))),
        }
    }

    /// Every group this coordinator knows: (name, state, members, protocol).
    pub fn list(&self) -> Vec<(String, GroupState, usize, String)> {
        let groups = self.lock();
        groups
            .iter()
            .map(|(name, g)| (name.clone(), g.state, g.members.len(), g.protocol.clone().unwrap_or_default()))
            .collect()
    }

    /// Checks that `group` has no members (an admin operation on its offsets may go ahead).
    pub fn check_inactive(&self, group: &str) -> Result<(), BrokerError> {
        match self.lock().get(group).map(|g| g.members.len()) {
            Some(members) if members > 0 => Err(BrokerError::GroupNotEmpty { group: group.to_string(), members }),
            _ => Ok(()),
        }
    }

    /// Forgets a group without members (it was deleted).
    pub fn forget(&self, group: &str) {
        let mut groups = self.lock();
        if groups.get(group).is_some_and(|g| g.members.is_empty()) {
            groups.remove(group);
        }
    }

    pub fn describe(&self, group: &str) -> Option<GroupView> {
        let groups = self.lock();
        let g = groups.get(group)?;
        Some(GroupView {
            state: g.state,
            generation: g.generation,
            leader: g.leader.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| GroupMember {
                    member_id: id.clone(),
                    topics: m.join.topics.clone(),
                    owned: g.assignments.get(id).cloned().unwrap_or_default(),
                    client_id: m.join.client_id.clone(),
                })
                .collect(),
            assignments: g.assignments.clone(),
        })
    }
}

/// A member's session timed out, or a rebalance it has not rejoined is overdue.
fn expired(g: &Group, m: &Member, now: Instant) -> bool {
    let overdue = g.rebalance_deadline.is_some_and(|d| now > d);
    now.duration_since(m.last_seen) > m.session_timeout || (overdue && !m.joined)
}

fn touch(g: &mut Group, member: &str) {
    if let Some(m) = g.members.get_mut(member) {
        m.last_seen = Instant::now();
    }
}

/// Runs [`Coordinator::expire`] every 100 ms until the broker shuts down.
pub fn spawn_reaper(coordinator: Arc<Coordinator>, broker: &Broker) {
    let mut shutdown = broker.shutdown_signal();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => coordinator.expire(),
                _ = shutdown.changed() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use tidelog_proto::v1::session_response::Kind;

    use super::*;
    use crate::broker::BrokerOptions;

    type Rx = mpsc::UnboundedReceiver<Result<SessionResponse, tonic::Status>>;

    fn coordinator(dir: &std::path::Path) -> Arc<Coordinator> {
        let broker = Broker::open(BrokerOptions::for_test(dir)).unwrap();
        Coordinator::new(broker)
    }

    fn join_req() -> JoinGroup {
        JoinGroup { group: "g".into(), topics: vec!["t".into()], assignors: vec!["range".into()], ..Default::default() }
    }

    fn join(c: &Coordinator, session: u64, id: Option<&str>) -> (String, Rx) {
        let (tx, rx) = mpsc::unbounded_channel();
        (c.join(session, id, join_req(), tx).unwrap(), rx)
    }

    fn next(rx: &mut Rx) -> Kind {
        rx.try_recv().expect("a message").unwrap().kind.unwrap()
    }

    fn assign(member: &str, partitions: &[u32]) -> MemberAssignment {
        MemberAssignment {
            member_id: member.into(),
            partitions: vec![TopicPartitions { topic: "t".into(), partitions: partitions.to_vec() }],
        }
    }

    #[test]
    fn generations_rebalances_and_fencing() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        assert!(c.check_commit("g", 0, "").is_ok(), "an empty group takes commits without a generation");

        let (a, mut rx_a) = join(&c, 1, None);
        let Kind::Joined(j) = next(&mut rx_a) else { panic!("a should be joined") };
        assert_eq!((j.generation, j.leader_id.as_str(), j.members.len()), (1, a.as_str(), 1));
        c.sync("g", &a, 1, vec![assign(&a, &[0, 1])]).unwrap();
        assert!(matches!(next(&mut rx_a), Kind::Assignment(x) if x.generation == 1));

        // b joins: a must revoke and rejoin before generation 2 starts.
        let (b, mut rx_b) = join(&c, 2, None);
        assert!(matches!(next(&mut rx_a), Kind::Rebalance(_)));
        assert!(rx_b.try_recv().is_err(), "no generation before every member rejoined");
        assert!(c.check_commit("g", 1, &a).is_ok(), "generation 1 may still commit while revoking");
        join_again(&c, 1, &a, &mut rx_a);
        let Kind::Joined(ja) = next(&mut rx_a) else { panic!() };
        let Kind::Joined(jb) = next(&mut rx_b) else { panic!() };
        assert_eq!((ja.generation, jb.generation), (2, 2));
        assert!(jb.members.is_empty(), "only the leader gets the member list");
        // A stale sync for generation 1 is ignored; a double assignment is refused.
        c.sync("g", &a, 1, vec![assign(&a, &[0])]).unwrap();
        assert!(rx_b.try_recv().is_err());
        let twice = c.sync("g", &a, 2, vec![assign(&a, &[0]), assign(&b, &[0])]);
        assert!(matches!(twice, Err(BrokerError::InconsistentGroup(_))));
        c.sync("g", &a, 2, vec![assign(&a, &[0]), assign(&b, &[1])]).unwrap();
        assert!(matches!(next(&mut rx_b), Kind::Assignment(x) if x.partitions[0].partitions == vec![1]));
        assert!(c.check_commit("g", 1, &a).is_err(), "generation 1 is fenced now");
        assert!(c.check_commit("g", 2, "stranger").is_err());
        assert!(c.check_commit("g", 0, "").is_err(), "a live group takes no generation-less commits");

        // a leaves (its session ends); b alone forms generation 3.
        c.remove("g", &a, Some(1), "left");
        assert!(matches!(next(&mut rx_b), Kind::Rebalance(_)));
        join_again(&c, 2, &b, &mut rx_b);
        assert!(matches!(next(&mut rx_b), Kind::Joined(j) if j.generation == 3 && j.leader_id == b));
        assert!(!c.heartbeat("g", &a), "a removed member learns it on its heartbeat");
        assert!(c.heartbeat("g", &b));
    }

    fn join_again(c: &Coordinator, session: u64, id: &str, rx: &mut Rx) {
        let (tx, new_rx) = mpsc::unbounded_channel();
        c.join(session, Some(id), join_req(), tx).unwrap();
        *rx = new_rx;
    }

    #[test]
    fn bad_joins_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        let (tx, _rx) = mpsc::unbounded_channel();
        let bad = JoinGroup { assignors: vec!["magic".into()], ..join_req() };
        assert!(
            matches!(c.join(1, None, bad, tx.clone()), Err(BrokerError::InvalidArgument(m)) if m.contains("assignor"))
        );
        let bad = JoinGroup { session_timeout_ms: 10, ..join_req() };
        assert!(
            matches!(c.join(1, None, bad, tx.clone()), Err(BrokerError::InvalidArgument(m)) if m.contains("session_timeout_ms"))
        );
        let bad = JoinGroup { topics: vec![], ..join_req() };
        assert!(c.join(1, None, bad, tx).is_err());
    }
}
