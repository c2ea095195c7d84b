//! The broker's quiescing loop (the protocol and its invariants are in `raft/quiesce.rs`).
//! Every heartbeat interval it (looking at every group only when a group woke, a peer turned
//! silent or the number of groups changed since, and every 20 passes; otherwise at the groups
//! it saw awake: asleep ones cost nothing):
//! 1. pings every peer broker once (one call per peer for all groups: the liveness asleep
//!    followers rely on), on a task of its own ([`ping_peers`]);
//! 2. wakes every asleep follower replica whose leader's broker is silent (`Liveness`: it
//!    refused a ping and answered none for an election timeout, or answered none for
//!    several), so it elects as an awake one would; not a replica that is no voter yet (a
//!    new group's, asleep until its first leader's append: `cluster/replica.rs`);
//! 3. for every partition group it leads that has had no proposal and no new entry for
//!    `idle_after` (a group with no proposal through this replica since it opened here — a
//!    new one, holding a start permit (`cluster/replica.rs`), or one led here after a
//!    restart or a change of leader — for one heartbeat interval), with every entry committed
//!    and on every live follower (a majority of the group alive), asks those followers to
//!    sleep and sleeps itself once all agreed (at most [`CANDIDATES_PER_PASS`] groups a pass,
//!    of those that may sleep); a group that sleeps drops the entries it kept in memory for
//!    replication (`raft/recent.rs`).
//!
//! Never: touches the metadata group (group sessions follow the controller's liveness).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use openraft::type_config::async_runtime::WatchReceiver;

use super::replica::RaftReplica;
use super::Cluster;
use crate::broker::Broker;
use crate::raft::quiesce::leader_idle_state;
use crate::raft::transport::QuiesceContext;

/// Quiesce requests in flight at once (a first pass over a thousand idle groups).
const CONCURRENT_REQUESTS: usize = 32;

/// Idle groups a pass asks to sleep, at most.
const CANDIDATES_PER_PASS: usize = 512;

/// A pass looks at every group at least once in this many passes, whatever changed.
const FULL_SCAN_EVERY: u32 = 20;

/// What a pass over every group depends on: wakes counted, groups hosted, silent peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Scanned {
    wakes: u64,
    hosted: usize,
    silent: Vec<u64>,
}

/// Pings every peer broker every `every`, on its own task: the liveness asleep followers
/// rely on must not wait for a quiescing pass, which on a saturated broker (thousands of new
/// groups turning idle) took seconds — long enough for every peer to look silent and for
/// their asleep groups to be woken to elect, saturating it further.
async fn ping_peers(broker: Arc<Broker>, cluster: Arc<Cluster>, every: Duration) {
    let Some(cx) = cluster.groups().quiesce_context().cloned() else { return };
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // immediate; `run` pinged once already
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        ping_round(&cluster, &cx, every).await;
    }
}

/// One ping of every peer broker, recorded in the liveness.
async fn ping_round(cluster: &Cluster, cx: &QuiesceContext, every: Duration) {
    let me = cluster.node_id();
    // Read each round: brokers join and leave.
    let peers: Vec<u64> = cluster.brokers().keys().copied().filter(|p| *p != me).collect();
    futures::future::join_all(peers.iter().map(|p| async move {
        cx.liveness.record(*p, cx.peers.ping(*p, me, every * 2).await);
    }))
    .await;
}

/// Runs until the broker shuts down.
pub async fn run(broker: Arc<Broker>, cluster: Arc<Cluster>, every: Duration, idle_after: Duration) {
    let Some(cx) = cluster.groups().quiesce_context().cloned() else { return };
    let me = cluster.node_id();
    // Before the first pass looks at who is silent: a restarted broker's asleep replicas
    // must not be woken for want of a ping yet (`cluster/replica.rs` open_asleep_if_followed).
    ping_round(&cluster, &cx, every).await;
    tokio::spawn(ping_peers(Arc::clone(&broker), Arc::clone(&cluster), every));
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per group this broker leads: (proposals seen, last log index, since when both are so).
    let mut quiet: HashMap<u64, (u64, Option<u64>, Instant)> = HashMap::new();
    let mut reported = (usize::MAX, usize::MAX);
    // The groups found awake by the last pass, and what a pass must look at every group for.
    let mut awake: Vec<RaftReplica> = Vec::new();
    let (mut scanned, mut since_full) = (Scanned::default(), 0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // Read each pass: brokers join and leave.
        let peers: Vec<u64> = cluster.brokers().keys().copied().filter(|p| *p != me).collect();
        // Which leaders count as alive, decided once per pass (a clock read per peer, not per
        // group): an asleep group then costs an atomic load and a read of its leader.
        let silent: Vec<u64> = peers.iter().copied().filter(|p| !cx.liveness.alive(*p, cx.alive_within)).collect();
        let leader_alive = |l: u64| l == me || (peers.contains(&l) && !silent.contains(&l));
        // Every group, or only those awake at the last pass: an asleep group changes only by
        // waking (counted), and matters to this loop only when its leader's broker turns
        // silent. Read before the scan: a wake during it makes the next pass scan again.
        let now_scan =
            Scanned { wakes: crate::raft::quiesce::wakes(), hosted: cluster.hosted_count(), silent: silent.clone() };
        let full = now_scan != scanned || since_full >= FULL_SCAN_EVERY;
        let (mut groups, mut asleep) = (0, 0);
        if full {
            awake.clear();
            cluster.for_each_replica(|r| {
                groups += 1;
                if !r.quiescence.is_asleep() {
                    awake.push(r.clone());
                    return;
                }
                // A replica that is no voter (a new group's, waiting for its first leader's
                // append) cannot elect: waking it would only start its ticks.
                let (leader, should_elect) = {
                    let m = r.raft.metrics();
                    let m = m.borrow_watched();
                    let voter = || m.membership_config.membership().voter_ids().any(|v| v == me);
                    (m.current_leader, !m.current_leader.is_some_and(leader_alive) && voter())
                };
                if should_elect && r.quiescence.wake(&r.raft) {
                    tracing::info!(group = r.group_id, leader = ?leader, "leader's broker silent: woke to elect");
                    awake.push(r.clone());
                } else {
                    asleep += 1;
                }
            });
            (scanned, since_full) = (now_scan, 0);
        } else {
            awake.retain(|r| !r.quiescence.is_asleep());
            groups = now_scan.hosted;
            asleep = groups.saturating_sub(awake.len());
            since_full += 1;
        }
        let mut candidates = Vec::new();
        // The awake groups led here: the only ones `quiet` tracks (an asleep one starts its
        // idle time again once woken).
        let mut led_awake = HashSet::new();
        let now = Instant::now();
        for r in &awake {
            // Read in place, not cloned: this runs for every awake group every heartbeat.
            let (leader, last_log_index) = {
                let m = r.raft.metrics();
                let m = m.borrow_watched();
                (m.current_leader, m.last_log_index)
            };
            if leader != Some(me) {
                continue;
            }
            led_awake.insert(r.group_id);
            let state = (r.quiescence.activity(), last_log_index);
            let entry = quiet.entry(r.group_id).or_insert((state.0, state.1, now));
            if (entry.0, entry.1) != state {
                *entry = (state.0, state.1, now);
            } else if now.duration_since(entry.2) >= if state.0 == 0 { every } else { idle_after } {
                candidates.push((r.clone(), state.0));
            }
        }
        quiet.retain(|g, _| led_awake.contains(g));
        // Those that may sleep now: every entry committed and on every live follower, and a
        // majority alive (a follower whose broker is down cannot agree; the group may sleep
        // without it, and it wakes the group when it returns). Filtered before the bound, so
        // groups that cannot sleep (a majority down) never keep the others from it.
        let ready = candidates.into_iter().filter_map(|(r, activity)| {
            let voters = r.voters();
            let followers: Vec<u64> =
                voters.iter().copied().filter(|v| *v != me && cx.liveness.alive(*v, cx.alive_within)).collect();
            if (followers.len() + 1) * 2 <= voters.len() {
                return None;
            }
            let (vote, committed) = leader_idle_state(&r.raft, &followers)?;
            Some((r, activity, followers, vote, committed))
        });
        // Bounded per pass, so a pass stays about a heartbeat long when thousands of new
        // groups turn idle together; the rest are asked next pass.
        let ready: Vec<_> = ready.take(CANDIDATES_PER_PASS).collect();
        futures::stream::iter(ready)
            .for_each_concurrent(CONCURRENT_REQUESTS, |(r, activity, followers, vote, committed)| {
                let cx = &cx;
                async move {
                    let answers = futures::future::join_all(
                        followers
                            .iter()
                            .map(|f| cx.peers.quiesce(*f, r.group_id, &vote, committed.as_ref(), every * 2)),
                    )
                    .await;
                    if answers.iter().all(|a| *a) && r.quiescence.sleep_if_idle(&r.raft, activity) {
                        // Every follower holds everything: nothing is left to send.
                        r.store.forget_recent();
                        tracing::debug!(group = r.group_id, "idle: asleep");
                    }
                }
            })
            .await;
        // Counted before this pass's new sleepers: they show in the next report.
        let gauges = &crate::telemetry::metrics::instruments().raft_groups;
        let state = |state| crate::telemetry::metrics::StateLabel { state };
        gauges.get_or_create(&state("asleep")).set(asleep as i64);
        gauges.get_or_create(&state("awake")).set((groups - asleep) as i64);
        if (asleep, groups) != reported {
            reported = (asleep, groups);
            tracing::info!(asleep, groups, "partition groups asleep");
        }
    }
}
