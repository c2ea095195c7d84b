//! Quiescing idle Raft groups: a group with nothing to replicate stops ticking on every
//! replica, so a thousand idle partitions cost no timers, heartbeats or wake-ups
//! (CockroachDB's idea). Measured: 1,000 idle groups on three brokers cost about half a core
//! per broker at a 250 ms heartbeat while ticking, and nothing while asleep
//! (docs/PERFORMANCE.md).
//!
//! ```text
//!   leader: idle (no proposal, last entry committed and matched by every live follower, for
//!   a while; a majority of the group alive)  ──Quiesce(vote, committed)──►  follower: same
//!   leader, same vote, has applied that commit?  yes: stop ticking, answer yes
//!   leader: every live follower said yes  →  stop ticking
//!
//!   wake-up: a proposal on the leader; any Raft message for the group (AppendEntries, Vote,
//!   TransferLeader, a snapshot, Wake) except a heartbeat that carries nothing new or an
//!   AppendEntries from a leader of an older vote (refused, so it changes nothing); a
//!   follower whose leader's broker stopped answering pings (cluster/quiesce.rs), which then
//!   elects as usual.
//! ```
//!
//! Invariants:
//! - a group asleep on a follower has every committed entry of its leader applied (the
//!   follower checks the leader's committed log id before it sleeps), so its consumers see
//!   everything acknowledged. The exception is a replica reopened by a restart, which starts
//!   asleep under the leader of its committed vote (`cluster/replica.rs`,
//!   `open_asleep_if_followed`) without asking: like any restarted replica until its
//!   leader's next message, it may lack entries, and that message (which wakes it) brings
//!   them. Nor does a new group's replica that waits, asleep and with an empty log, for the
//!   first leader's append (`wait_asleep_if_partition`): it has no entry to lack yet;
//! - a leader sleeps only after every follower agreed, and never with a proposal it has not
//!   seen: a proposal bumps `activity` *before* it checks `asleep`, and the leader sets `asleep`
//!   *before* it checks `activity` (both sequentially consistent), so one of the two always
//!   sees the other;
//! - sleeping and waking a group are serialised by one lock, so the ticker's state always
//!   matches `asleep`;
//! - an asleep replica never stands for election, so failover while asleep depends on the
//!   broker-level pings: a follower whose leader's broker is silent ([`Liveness`]) wakes and
//!   elects.
//!   An asleep (or just woken) replica refuses a pre-vote while its leader's broker answers
//!   pings (it has not heard the leader only because the leader is asleep), and wakes the
//!   leader instead, so a restarted broker does not steal the leadership of every idle group.
//!
//! Never: sleep the metadata group (the controller's liveness is what group sessions follow).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::raft::AppendEntriesRequest;
use openraft::type_config::async_runtime::WatchReceiver;

use super::transport::PartitionRaft;
use super::types::{LogId, PartitionTc, Vote};

/// Wakes of any group in this process, counted. The quiescing loop looks at every group only
/// when this moved (or a peer turned silent, or groups came or went), and otherwise only at
/// the groups it knows awake: 10,000 asleep groups visited four times a second were most of
/// an idle broker's CPU. Process-wide: brokers sharing a process (tests) only rescan more.
static WAKES: AtomicU64 = AtomicU64::new(0);

/// How many group wakes this process has seen (see [`WAKES`]).
pub fn wakes() -> u64 {
    WAKES.load(Ordering::SeqCst)
}

/// Whether one group is asleep, and the proposal counter the leader's decision checks.
#[derive(Debug, Default)]
pub struct Quiescence {
    asleep: AtomicBool,
    activity: AtomicU64,
    /// Serialises sleeping and waking; holds when the group last woke.
    lock: Mutex<Option<Instant>>,
}

impl Quiescence {
    pub fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }

    /// Proposals seen so far (the leader compares it across its idle check).
    pub fn activity(&self) -> u64 {
        self.activity.load(Ordering::SeqCst)
    }

    /// Called before every proposal: counts it, and wakes the group if it sleeps (returns
    /// whether it did).
    pub fn before_propose(&self, raft: &PartitionRaft) -> bool {
        self.activity.fetch_add(1, Ordering::SeqCst);
        self.wake(raft)
    }

    /// Starts the ticker again if the group sleeps; returns whether it did.
    pub fn wake(&self, raft: &PartitionRaft) -> bool {
        if !self.is_asleep() {
            return false; // the fast path of every message and proposal
        }
        let mut woke = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.asleep.swap(false, Ordering::SeqCst) {
            return false;
        }
        *woke = Some(Instant::now());
        raft.runtime_config().tick(true);
        WAKES.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Asleep, or woken less than `within` ago. A replica that just woke still carries the
    /// sleep in its Raft timers: a leader's quorum-ack lease dates from its last heartbeat
    /// round before it slept, so openraft would grant a pre-vote to anyone until its first
    /// round after the wake is acknowledged. The transport treats such a replica as asleep
    /// for pre-votes (raft/transport.rs).
    pub fn drowsy(&self, within: Duration) -> bool {
        self.is_asleep()
            || self.lock.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|at| at.elapsed() < within)
    }

    /// A follower's sleep (its leader asked, and it checked it is caught up).
    pub fn sleep(&self, raft: &PartitionRaft) {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.asleep.store(true, Ordering::SeqCst);
        raft.runtime_config().tick(false);
    }

    /// The leader's sleep: only if no proposal came since `activity` was read. Returns
    /// whether it sleeps now.
    pub fn sleep_if_idle(&self, raft: &PartitionRaft, activity: u64) -> bool {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.asleep.store(true, Ordering::SeqCst);
        if self.activity.load(Ordering::SeqCst) != activity {
            self.asleep.store(false, Ordering::SeqCst);
            return false;
        }
        raft.runtime_config().tick(false);
        true
    }
}

/// What a leader sends with its Quiesce request, read off its metrics if it may sleep: it
/// leads, its last entry is committed and every follower in `live` has it (a dead follower
/// cannot agree; it wakes the group by standing for election when it returns).
pub fn leader_idle_state(raft: &PartitionRaft, live: &[u64]) -> Option<(Vote, Option<LogId>)> {
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(m.id) || m.cluster_committed.map(|l| l.index) != m.last_log_index {
        return None;
    }
    let replication = m.replication.as_ref()?;
    let all_matched = replication
        .iter()
        .filter(|(id, _)| live.contains(id))
        .all(|(_, matched)| matched.map(|l| l.index) == m.last_log_index);
    all_matched.then_some((m.vote, m.cluster_committed))
}

/// A follower's answer to Quiesce: it follows the same leader with the same vote and has
/// applied exactly the leader's committed log.
pub fn follower_may_sleep(raft: &PartitionRaft, leader_vote: &Vote, leader_committed: Option<LogId>) -> bool {
    let m = raft.metrics().borrow_watched().clone();
    m.vote == *leader_vote
        && m.current_leader == Some(leader_vote.leader_id.voted_for)
        && m.current_leader != Some(m.id)
        && m.last_applied == leader_committed
        && m.last_log_index == leader_committed.map(|l| l.index)
}

/// Whether an AppendEntries for an asleep replica carries nothing it lacks: no entries, from
/// the leader it slept under (same vote), matching its log, with no commit past what it
/// applied. Such a heartbeat is processed without waking the replica. It is typically the
/// leader's last heartbeat before it slept, still in flight when this follower agreed: waking
/// on it would leave an awake follower under an asleep leader, which hears nothing more and
/// stands for election after a timeout (a needless change of leader of an idle partition).
///
/// So does an AppendEntries from a leader of an older vote, which the replica refuses (the
/// answer carries its vote, and the stale leader steps down): typically a broker restarted
/// after it lost the leadership, whose groups come back as leaders of their old term for a
/// moment. Woken by it, a follower of the asleep real leader would again hear nothing more
/// and stand for election.
pub fn carries_nothing_new(raft: &PartitionRaft, rpc: &AppendEntriesRequest<PartitionTc>) -> bool {
    let m = raft.metrics();
    let m = m.borrow_watched();
    if rpc.vote.partial_cmp(&m.vote) == Some(std::cmp::Ordering::Less) {
        return true;
    }
    // Asleep, a replica's last entry is its last applied one (it slept caught up).
    rpc.entries.is_empty()
        && rpc.vote == m.vote
        && rpc.prev_log_id == m.last_applied
        && m.last_log_index == m.last_applied.map(|l| l.index)
        && rpc.leader_commit == m.last_applied
}

/// When each peer broker last answered a ping (cluster/quiesce.rs sends them), and whether a
/// ping since was refused.
///
/// A peer counts as alive while it answered within `within` (an election timeout); past
/// that, only if no ping since was refused, for up to [`STALLED_FACTOR`] times as long. A
/// killed broker refuses at once (nothing listens), so asleep groups it led elect within an
/// election timeout. A ping that merely goes unanswered is as likely a saturated machine (this
/// broker's own loop late, or the peer slow to answer) as a frozen peer; counting it dead at
/// once woke every asleep group the peer led, and their elections saturated the machine
/// further. A frozen peer is still found, later.
#[derive(Debug, Default)]
pub struct Liveness {
    heard: Mutex<BTreeMap<u64, (Instant, bool)>>,
}

/// How many times `within` an unanswered (not refused) peer still counts as alive.
pub const STALLED_FACTOR: u32 = 4;

impl Liveness {
    /// Records what a ping of `node` found.
    pub fn record(&self, node: u64, ping: super::network::Ping) {
        use super::network::Ping;
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        match ping {
            Ping::Answered => {
                heard.insert(node, (Instant::now(), false));
            }
            Ping::Refused => {
                if let Some(h) = heard.get_mut(&node) {
                    h.1 = true;
                }
            }
            Ping::NoAnswer => {}
        }
    }

    pub fn heard(&self, node: u64) {
        self.record(node, super::network::Ping::Answered);
    }

    /// Whether `node` counts as alive (see the type's docs).
    pub fn alive(&self, node: u64, within: Duration) -> bool {
        self.heard.lock().unwrap_or_else(PoisonError::into_inner).get(&node).is_some_and(|(at, refused)| {
            let since = at.elapsed();
            since < within || (!refused && since < within * STALLED_FACTOR)
        })
    }
}

#[cfg(test)]
mod liveness_tests {
    use super::super::network::Ping;
    use super::*;

    #[test]
    fn a_refusing_peer_is_dead_after_the_window_and_an_unanswering_one_later() {
        let within = Duration::from_millis(40);
        let l = Liveness::default();
        assert!(!l.alive(1, within), "never heard");
        l.record(1, Ping::Answered);
        l.record(2, Ping::Answered);
        l.record(1, Ping::Refused);
        l.record(2, Ping::NoAnswer);
        assert!(l.alive(1, within) && l.alive(2, within), "both answered within the window");
        std::thread::sleep(within * 2);
        assert!(!l.alive(1, within), "refused since its last answer: dead past the window");
        assert!(l.alive(2, within), "only unanswered: still alive");
        std::thread::sleep(within * STALLED_FACTOR);
        assert!(!l.alive(2, within), "unanswered past the stalled window: dead");
        l.record(2, Ping::Answered);
        assert!(l.alive(2, within), "answering again: alive");
    }
}
