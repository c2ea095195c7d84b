//! One Raft group on this broker: a partition log, its Raft storage, and its `openraft::Raft`,
//! registered with the transport so peers reach it.
//!
//! Opening a group over an empty log starts it (openraft `initialize` with the full voter
//! set) on one replica only, the one [`Start`] names, when the broker's start budget has room
//! (`Waiting::start_in_turn`); the others learn the membership from its first append, and
//! start it themselves, staggered, only if none arrived. Until then every replica of a new
//! partition group waits asleep (no ticks; with quiescing on). A replica with a log never
//! initialises.
//!
//! Proposing ([`RaftReplica::propose`]) is where produce enters Raft: the entry is queued to the
//! group's core in the caller's order, and the answer comes at commit (acks=all) or at the
//! leader's append (acks=leader, through the entry's [`AppendHook`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResponse;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{Instant as _, Raft};

use crate::error::BrokerError;
use crate::log::{FsyncPolicy, LogConfig};
use crate::meta::MetaStore;
use crate::partition::Partition;
use crate::raft::network::Peers;
use crate::raft::quiesce::Quiescence;
use crate::raft::transport::{GroupHandle, PartitionRaft, RaftGroups};
use crate::raft::types::{AppendHook, ProduceOutcome};
use crate::raft::{open_storage, BatchData, PartitionLogStore, PartitionTc, ProposedBatch};
use crate::telemetry::metrics::GaugeGuard;

/// What every group on this broker shares.
#[derive(Clone, Copy)]
pub struct GroupContext<'a> {
    pub node_id: u64,
    pub peers: &'a Peers,
    pub groups: &'a RaftGroups,
    pub config: &'a Arc<openraft::Config>,
    pub data_dir: &'a Path,
}

/// Which group to open, and where its log lives.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    pub group_id: u64,
    pub dir: PathBuf,
    pub topic: String,
    pub partition: u32,
    pub log_config: LogConfig,
    pub fsync: FsyncPolicy,
}

impl GroupSpec {
    /// The metadata group: fsync per batch (metadata must not be lost), no retention (its
    /// sealed prefix is replaced by snapshots instead: `meta_snapshot.rs`), segments of
    /// `segment_bytes`.
    pub fn metadata(data_dir: &Path, segment_bytes: u64) -> Self {
        Self {
            group_id: super::META_GROUP,
            dir: crate::layout::cluster_meta_dir(data_dir),
            topic: "__cluster_metadata".into(),
            partition: 0,
            log_config: LogConfig { segment_bytes, ..LogConfig::default() },
            fsync: FsyncPolicy::PerBatch,
        }
    }
}

/// A running group: its Raft and log store (the partition is the topic's), and whether it
/// sleeps (`raft/quiesce.rs`).
#[derive(Clone)]
pub struct RaftReplica {
    pub group_id: u64,
    pub raft: PartitionRaft,
    pub store: PartitionLogStore,
    pub quiescence: Arc<Quiescence>,
}

impl std::fmt::Debug for RaftReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftReplica").field("group_id", &self.group_id).finish_non_exhaustive()
    }
}

/// A group just opened, with its partition.
pub struct Opened {
    pub partition: Arc<Partition>,
    pub replica: RaftReplica,
}

/// Which replica starts a new group. openraft's `initialize` makes a replica stand for
/// election at once, so if every replica initialised a new group together they would split
/// the vote (all three stood at once, and leaders did not land where placement put them).
/// One replica (the preferred leader) starts it and wins unopposed; the others learn the
/// membership from its first append, and initialise it themselves only if none arrived
/// within their delay and no replica ranked before them is on a broker that answers pings
/// (it starts the group when it opens it: on a busy cluster the brokers open a large
/// topic's groups at different paces). The delays are staggered by rank
/// ([`Start::by_rank`]), so the fallbacks do not split the vote either. Same voters
/// everywhere, so a late initialise is harmless (openraft: one leader per term).
#[derive(Clone, Debug)]
pub enum Start {
    Now,
    /// After `wait` with no leader's message, unless a broker of `earlier` (the replicas
    /// ranked before this one) is alive; then again, at most [`MAX_DEFERRALS`] times.
    IfNoLeaderWithin {
        wait: Duration,
        earlier: Vec<u64>,
    },
    /// Never by this replica: a broker joining a running cluster is added by its leader.
    Never,
}

/// How many times a replica waits again for an earlier-ranked one whose broker is alive
/// before it starts the group itself (that broker may have failed to open its replica).
pub const MAX_DEFERRALS: u32 = 30;

impl Start {
    /// The replica of `rank` in a new group's replica list `replicas`: the first starts it
    /// at once; the one of rank `r` waits `r` times two of the longest election timeouts for
    /// one before it.
    pub fn by_rank(config: &openraft::Config, replicas: &[u64], rank: usize) -> Self {
        match rank {
            0 => Self::Now,
            r => {
                let wait = Duration::from_millis(config.election_timeout_max * 2);
                let wait = wait.saturating_mul(u32::try_from(r).unwrap_or(u32::MAX));
                Self::IfNoLeaderWithin { wait, earlier: replicas.iter().take(r).copied().collect() }
            }
        }
    }
}

/// Opens (or reopens) a group and registers it with the transport. A new group is started as
/// `start` says.
pub async fn open(
    cx: &GroupContext<'_>,
    meta: &MetaStore,
    spec: GroupSpec,
    voters: BTreeSet<u64>,
    start: Start,
) -> Result<Opened, BrokerError> {
    let (partition, report) = Partition::open(&spec.dir, &spec.topic, spec.partition, spec.log_config, spec.fsync)?;
    if report.truncated_bytes > 0 || report.segments_dropped > 0 {
        tracing::warn!(group = spec.group_id, ?report, "recovered replica log");
    }
    let partition = Arc::new(partition);
    let state = meta.raft_state(spec.group_id)?;
    let (log, sm) = open_storage(Arc::clone(&partition), state).map_err(storage)?;
    let store = log.clone();
    let raft =
        Raft::new(cx.node_id, Arc::clone(cx.config), cx.peers.group(spec.group_id), log, sm).await.map_err(|e| {
            BrokerError::NotLeader {
                what: format!("raft group {} (failed to start: {e})", spec.group_id),
                leader: None,
            }
        })?;
    let incoming_dir = crate::layout::incoming_dir(cx.data_dir, spec.group_id);
    let handle = GroupHandle::new(raft.clone(), store.clone(), incoming_dir);
    let quiescence = Arc::clone(&handle.quiescence);
    cx.groups.insert(spec.group_id, handle);
    match (raft.is_initialized().await, start) {
        (Ok(true), _) => open_asleep_if_followed(cx, spec.group_id, &raft, &quiescence),
        (Ok(false), Start::Now) if !wait_asleep_if_partition(cx, spec.group_id, &raft, &quiescence) => {
            initialize(&raft, spec.group_id, voters).await
        }
        (Ok(false), Start::Now) => {
            let waiting =
                Waiting { raft: raft.clone(), quiescence: Arc::clone(&quiescence), groups: cx.groups.clone() };
            drop(tokio::spawn(async move { waiting.start_in_turn(spec.group_id, voters).await }))
        }
        (Ok(false), Start::IfNoLeaderWithin { wait, earlier }) => {
            wait_asleep_if_partition(cx, spec.group_id, &raft, &quiescence);
            let waiting =
                Waiting { raft: raft.clone(), quiescence: Arc::clone(&quiescence), groups: cx.groups.clone() };
            drop(tokio::spawn(start_unless_led(waiting, spec.group_id, voters, wait, earlier)))
        }
        (Ok(false), Start::Never) => {
            wait_asleep_if_partition(cx, spec.group_id, &raft, &quiescence);
        }
        (Err(_), _) => {} // stopped already: nothing to start
    }
    Ok(Opened { partition, replica: RaftReplica { group_id: spec.group_id, raft, store, quiescence } })
}

/// A reopened partition group (a restart) whose committed vote names another broker's
/// replica as its leader starts asleep, as it most likely was: it does not tick, so it fires
/// no election timeout whose pre-votes would wake the whole group. Before, a broker restarted
/// with thousands of replicas woke thousands of idle groups within two seconds this way, and
/// the load made elections cascade. Whatever the group needs wakes it: any message from its
/// leader (an append, with entries it lacks), a client's proposal, or the quiescing loop once
/// that leader's broker is silent (its first pass pings every peer before it looks). The
/// metadata group never sleeps; nor does a group this replica led (openraft restores it as
/// leader, and its heartbeats wake the followers).
fn open_asleep_if_followed(cx: &GroupContext<'_>, group: u64, raft: &PartitionRaft, quiescence: &Quiescence) {
    if group == super::META_GROUP || cx.groups.quiesce_context().is_none() {
        return;
    }
    let leader = raft.metrics().borrow_watched().current_leader;
    if leader.is_some_and(|l| l != cx.node_id) {
        quiescence.sleep(raft);
    }
}

/// A partition replica with an empty log waits asleep: for another replica to start its
/// group (or, for a move, to add it), or for its own turn to start it (see `start_in_turn`).
/// With no membership it cannot stand for election, so its ticks would do nothing but cost a
/// timer and a core wake-up twenty times a second — for every replica of a large topic being
/// created at once. Any message of the group wakes it (the first leader's vote request or
/// append); so does its own start. The quiescing loop never wakes a replica that is not a
/// voter (`cluster/quiesce.rs`). Returns whether it sleeps (cluster mode with quiescing on).
fn wait_asleep_if_partition(cx: &GroupContext<'_>, group: u64, raft: &PartitionRaft, quiescence: &Quiescence) -> bool {
    let sleeps = group != super::META_GROUP && cx.groups.quiesce_context().is_some();
    if sleeps {
        quiescence.sleep(raft);
    }
    sleeps
}

/// The longest a started group holds its permit: one that neither sleeps nor is written to
/// (it cannot elect: a majority of its brokers is down) gives the permit back after this, so
/// the budget cannot be held for good.
const START_HOLD: Duration = Duration::from_secs(60);

async fn initialize(raft: &PartitionRaft, group: u64, voters: BTreeSet<u64>) {
    // Another replica's first entry may have arrived first: that is the same group.
    if let Err(e) = raft.initialize(voters).await {
        tracing::debug!(group, error = %e, "group already initialised");
    }
}

/// A new group's replica waiting for another to start it.
struct Waiting {
    raft: PartitionRaft,
    quiescence: Arc<Quiescence>,
    groups: RaftGroups,
}

impl Waiting {
    /// Starts the group once a permit of the broker's start budget is free, and holds the
    /// permit until the group sleeps or is written to. Without quiescing (no budget) it
    /// starts at once.
    ///
    /// Why a budget (`cluster.group_starts`, 128 by default: how many groups a broker starts
    /// at once): a group just started is awake on every replica (ticking twenty times a
    /// second, heartbeating four) until it sleeps; a topic of 10,000 partitions started all
    /// at once kept ~7,000 groups awake per broker on two cores, their timers and heartbeats
    /// came late, elections failed and repeated, and the cluster did not converge. With a
    /// budget, creation goes at the pace the machine allows: a group holds its permit from
    /// its start until it sleeps (a new group with no write sleeps after one quiescing pass:
    /// `cluster/quiesce.rs`) or is led and written to, or [`START_HOLD`] at most. A group
    /// that fails to elect keeps its permit, so elections that fail for want of CPU slow the
    /// starts down instead of adding to the load.
    async fn start_in_turn(&self, group: u64, voters: BTreeSet<u64>) {
        // The metadata group never sleeps: it would hold a permit for the whole START_HOLD.
        let budget = self.groups.quiesce_context().filter(|_| group != super::META_GROUP);
        let Some(starts) = budget.map(|cx| Arc::clone(&cx.starts)) else {
            self.quiescence.wake(&self.raft);
            return initialize(&self.raft, group, voters).await;
        };
        let Ok(_permit) = starts.acquire_owned().await else { return };
        // Another replica's first append (or vote request) woke and started it meanwhile.
        if self.groups.is_stopping() || self.raft.metrics().borrow_watched().last_log_index.is_some() {
            return;
        }
        let _starting = GaugeGuard::hold(&crate::telemetry::metrics::instruments().raft_group_starts);
        self.quiescence.wake(&self.raft);
        initialize(&self.raft, group, voters).await;
        let deadline = tokio::time::Instant::now() + START_HOLD;
        let mut metrics = self.raft.metrics();
        while !self.started() && tokio::time::Instant::now() < deadline && !self.groups.is_stopping() {
            // Metrics change at every step of the election and replication; sleeping is
            // not one of them, so look again at least every 100 ms.
            let changed = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
            if matches!(changed, Ok(Err(_))) {
                return; // the group stopped
            }
        }
    }

    /// Whether a started group no longer needs its permit: it sleeps, or it has a leader and
    /// is written to (it stays awake for its writes, not for its start).
    fn started(&self) -> bool {
        self.quiescence.is_asleep()
            || (self.quiescence.activity() > 0 && self.raft.metrics().borrow_watched().current_leader.is_some())
    }

    /// Whether a broker holding one of `earlier` answers pings (none known in a broker that
    /// runs no quiescing loop, which is what feeds the liveness).
    fn earlier_alive(&self, earlier: &[u64]) -> bool {
        self.groups.quiesce_context().is_some_and(|cx| earlier.iter().any(|b| cx.liveness.alive(*b, cx.alive_within)))
    }
}

/// [`Start::IfNoLeaderWithin`]: after `wait`, a replica with a log was started by another
/// (done); one with neither log nor vote starts the group itself, unless a broker ranked
/// before it is alive (it waits again, up to [`MAX_DEFERRALS`] times). One that granted a
/// vote but has no log saw the first replica win and then go silent before its first append:
/// openraft refuses to initialise over a vote, and without the membership this replica cannot
/// stand for election, so the group waits for that replica to return (its log holds the
/// membership) — a window of milliseconds, said in a warning. Ends when the broker stops or
/// the group does.
async fn start_unless_led(w: Waiting, group: u64, voters: BTreeSet<u64>, wait: Duration, earlier: Vec<u64>) {
    let (mut warned, mut deferred) = (false, 0);
    loop {
        tokio::time::sleep(wait).await;
        if w.groups.is_stopping() || w.raft.metrics().borrow_watched().last_log_index.is_some() {
            return;
        }
        match w.raft.is_initialized().await {
            Ok(false) if deferred < MAX_DEFERRALS && w.earlier_alive(&earlier) => deferred += 1,
            Ok(false) => {
                tracing::info!(group, "no replica started this new group within {wait:?}: starting it here");
                return w.start_in_turn(group, voters).await;
            }
            Ok(true) if !warned => {
                warned = true;
                tracing::warn!(
                    group,
                    "this new group's first leader won a vote here and went silent before its first append: \
                     the group waits for it to return"
                );
            }
            Ok(true) => {}
            Err(_) => return, // the group was stopped (deleted, or the broker shut down)
        }
    }
}

/// On a leader's metrics `m`: the last Raft index replica `id` is known to hold (0 when none
/// or not known, e.g. not the leader).
pub fn matched(m: &openraft::RaftMetrics<PartitionTc>, id: u64) -> u64 {
    m.replication.as_ref().and_then(|r| r.get(&id)).and_then(|l| l.as_ref()).map_or(0, |l| l.index)
}

fn storage(e: std::io::Error) -> BrokerError {
    BrokerError::Log(crate::log::LogError::io("opening raft storage", e))
}

impl RaftReplica {
    /// The current leader, as this replica knows it.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The voters of the group's current membership.
    pub fn voters(&self) -> Vec<u64> {
        self.raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect()
    }

    /// On the leader: the voters holding every committed entry (itself included). Elsewhere:
    /// empty, since only the leader tracks replication.
    pub fn in_sync(&self) -> Vec<u64> {
        let m = self.raft.metrics().borrow_watched().clone();
        let (Some(replication), Some(committed)) = (m.replication.as_ref(), m.cluster_committed) else {
            return Vec::new();
        };
        replication
            .iter()
            .filter(|(_, matched)| matched.is_some_and(|l| l.index >= committed.index))
            .map(|(id, _)| *id)
            .collect()
    }

    /// On the leader: the lowest Raft index every live follower (heard from within three
    /// heartbeats) holds, `u64::MAX` with none; `None` elsewhere. Compaction purges no further
    /// on the leader, so a live follower is never sent a snapshot because of it; a follower
    /// that is down catches up through one when it returns.
    pub fn live_followers_hold(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow_watched().clone();
        let fresh = Duration::from_millis(self.raft.config().heartbeat_interval * 3);
        let heartbeats = m.heartbeat.as_ref()?;
        let held = m
            .replication
            .as_ref()?
            .iter()
            .filter(|(id, _)| **id != m.id)
            .filter(|(id, _)| heartbeats.get(id).and_then(|t| t.as_ref()).is_some_and(|t| t.elapsed() < fresh))
            .map(|(_, matched)| matched.map_or(0, |l| l.index))
            .min();
        Some(held.unwrap_or(u64::MAX))
    }

    /// The group's term and, on its leader, each follower's lag in entries.
    pub fn replication(&self) -> crate::broker::seam::Replication {
        let m = self.raft.metrics().borrow_watched().clone();
        let last = m.last_log_index.unwrap_or(0);
        let follower_lag = match m.replication.as_ref() {
            Some(r) => r
                .iter()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, matched)| (*id, last.saturating_sub(matched.map_or(0, |l| l.index))))
                .collect(),
            None => Vec::new(),
        };
        crate::broker::seam::Replication { term: Some(m.current_term), follower_lag }
    }

    /// Queues a batch in the group, in the caller's order (await this before proposing the
    /// next), and returns the future of its answer: at the leader's append when
    /// `at_leader_append` (acks=leader), else at commit (acks=all). `hint` turns a leader id
    /// into the address a client should use.
    pub async fn propose(
        &self,
        mut batch: ProposedBatch,
        at_leader_append: bool,
        hint: impl Fn(Option<u64>) -> Option<(u64, String)> + Send + 'static,
        what: String,
    ) -> Result<impl std::future::Future<Output = Result<ProduceOutcome, BrokerError>> + Send + 'static, BrokerError>
    {
        let hook_rx = if at_leader_append {
            let (hook, rx) = AppendHook::new();
            batch.on_append = hook;
            Some(rx)
        } else {
            None
        };
        let (responder, rx) = ProgressResponder::<PartitionTc, _>::complete_only();
        if self.quiescence.before_propose(&self.raft) {
            tracing::debug!(group = self.group_id, "woken by a write");
        }
        self.renew_lease_if_stale().await;
        self.raft.client_write_ff(BatchData::Proposed(batch), Some(responder)).await.map_err(|e| stopped(&e))?;
        let group = self.group_id;
        Ok(async move {
            if let Some(hook_rx) = hook_rx {
                // The hook is dropped unanswered when the entry never reached the log (not the
                // leader): the commit answer then says why.
                if let Ok(outcome) = hook_rx.await {
                    return Ok(outcome);
                }
            }
            match rx.await {
                Ok(result) => {
                    committed(result, &hint, what).inspect_err(|e| tracing::debug!(group, error = %e, "write refused"))
                }
                Err(_) => Err(BrokerError::NotLeader { what: format!("{what} (the group stopped)"), leader: None }),
            }
        })
    }

    /// Where a leadership transfer should go: among the followers that hold every committed
    /// entry *and* acknowledged a heartbeat within three heartbeat intervals (a dead replica
    /// stays "in sync" on an idle partition, so matching alone is not enough), `preferred` if
    /// it is one, else the one with the most of the log. `None`: not the leader, or no such
    /// follower (an asleep group sends no heartbeats: wake it first).
    pub fn transfer_target(&self, preferred: Option<u64>) -> Option<u64> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(m.id) {
            return None;
        }
        let fresh = Duration::from_millis(self.raft.config().heartbeat_interval * 3);
        let committed = m.cluster_committed.map_or(0, |l| l.index);
        let heartbeats = m.heartbeat.as_ref()?;
        let candidates: Vec<(u64, u64)> = m
            .replication
            .as_ref()?
            .iter()
            .filter(|(id, _)| **id != m.id)
            .filter(|(id, _)| heartbeats.get(id).and_then(|t| t.as_ref()).is_some_and(|t| t.elapsed() < fresh))
            .filter_map(|(id, matched)| matched.map(|l| (*id, l.index)))
            .filter(|(_, index)| *index >= committed)
            .collect();
        match preferred {
            Some(p) => candidates.iter().any(|(id, _)| *id == p).then_some(p),
            None => candidates.iter().max_by_key(|(_, index)| *index).map(|(id, _)| *id),
        }
    }

    /// If this replica leads its group, hands the leadership to `to` (or, with `None`, to
    /// the live follower that has the most of its log; [`RaftReplica::transfer_target`]) and
    /// waits until this replica no longer leads, for at most `wait`. openraft's transfer: the
    /// target elects itself at once, without waiting out an election timeout, and refuses if
    /// it has not flushed the leader's log yet. An asleep group is woken first and given the
    /// rest of `wait` to hear from its followers. Returns whether the leadership moved; not
    /// the leader, or no eligible target in time: `false`.
    pub async fn hand_to(&self, to: Option<u64>, wait: Duration) -> bool {
        let me = self.raft.metrics().borrow_watched().id;
        if self.leader() != Some(me) {
            return false;
        }
        let deadline = tokio::time::Instant::now() + wait;
        self.quiescence.wake(&self.raft);
        let target = loop {
            if let Some(t) = self.transfer_target(to) {
                break t;
            }
            if tokio::time::Instant::now() + Duration::from_millis(50) > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if self.raft.trigger().transfer_leader(target).await.is_err() {
            return false;
        }
        let mut metrics = self.raft.metrics();
        let moved = async {
            while metrics.borrow_watched().current_leader == Some(me) {
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout_at(deadline, moved).await.is_ok()
    }

    /// openraft refuses writes on a leader whose lease ran out (no quorum acknowledged it for
    /// a while), and that is what a leader that slept looks like (`raft/quiesce.rs`): renew
    /// it with a heartbeat round before proposing, bounded by two election timeouts (a leader
    /// that cannot reach a quorum then gets openraft's refusal, as it should). A leader that
    /// is its group's only voter (replication factor 1) is its own quorum: no heartbeat is
    /// answered to renew anything, and it needs none.
    async fn renew_lease_if_stale(&self) {
        let config = self.raft.config();
        let lease = Duration::from_millis(config.election_timeout_min);
        let stale = |m: &openraft::RaftMetrics<PartitionTc>| {
            m.current_leader == Some(m.id)
                && m.last_quorum_acked.is_none_or(|t| t.elapsed() >= lease)
                && m.membership_config.membership().voter_ids().any(|v| v != m.id)
        };
        let mut metrics = self.raft.metrics();
        if !stale(&metrics.borrow_watched()) {
            return;
        }
        let _ = self.raft.trigger().heartbeat().await;
        let renewed = async {
            while stale(&metrics.borrow_watched()) {
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        let wait = Duration::from_millis(config.election_timeout_max * 2);
        if tokio::time::timeout(wait, renewed).await.is_err() {
            // Debug, not warn: during a quorum loss this fires once per proposal.
            tracing::debug!(
                group = self.group_id,
                "leader lease not renewed within {wait:?}: the write will be refused"
            );
        }
    }

    /// Stops the group: unregisters it from the transport and shuts its Raft down.
    pub async fn stop(&self, groups: &RaftGroups) {
        groups.remove(self.group_id);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(group = self.group_id, error = %e, "raft group did not stop cleanly");
        }
    }
}

fn stopped(e: &impl std::fmt::Display) -> BrokerError {
    BrokerError::NotLeader { what: format!("this partition any more (its raft group stopped: {e})"), leader: None }
}

type WriteResult = Result<ClientWriteResponse<PartitionTc>, ClientWriteError<PartitionTc>>;

fn committed(
    result: WriteResult,
    hint: &impl Fn(Option<u64>) -> Option<(u64, String)>,
    what: String,
) -> Result<ProduceOutcome, BrokerError> {
    match result {
        Ok(resp) => Ok(resp.data),
        Err(ClientWriteError::ForwardToLeader(f)) => Err(BrokerError::NotLeader { what, leader: hint(f.leader_id) }),
        Err(e) => Err(BrokerError::NotLeader { what: format!("{what} ({e})"), leader: None }),
    }
}

/// Maps a `client_write` error of the metadata group.
pub fn write_error(
    e: RaftError<PartitionTc, ClientWriteError<PartitionTc>>,
    hint: impl Fn(Option<u64>) -> Option<(u64, String)>,
) -> BrokerError {
    match e.forward_to_leader() {
        Some(f) => BrokerError::NotLeader { what: "the cluster metadata".into(), leader: hint(f.leader_id) },
        None => BrokerError::NotLeader { what: format!("the cluster metadata ({e})"), leader: None },
    }
}
