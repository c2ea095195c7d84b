//! Cluster membership: which brokers there are, where they are, and who votes in the
//! metadata group.
//!
//! The broker set starts as `--peers` (every one a metadata voter) and changes through the
//! metadata log: `AddBroker` and `RemoveBroker` commands, applied by every broker to its
//! [`Directory`] (and to the addresses its Raft transport calls), folded into metadata
//! snapshots like everything else. So a broker learns its peers' addresses from the metadata,
//! not only from its flags, and a new broker started with `--join` learns them from the member
//! it joins, then from the log.
//!
//! The metadata group, as KRaft's controller quorum: at most [`MAX_METADATA_VOTERS`] voters;
//! a broker added beyond that follows the log as an *observer* (an openraft learner): it
//! applies everything and serves clients, but neither votes nor counts for commits. Adding a
//! broker (on the controller): the `AddBroker` entry first (so every broker can reach it), then
//! it joins as a learner and catches up from the leader's log or metadata snapshot, then, while
//! the group has fewer voters than the maximum, it is promoted. Removing one: it must hold no
//! partition replica (a removal that finds some starts moving them to the other brokers,
//! `reassign.rs`, and refuses until they are gone; it is marked leaving meanwhile, so placement
//! skips it); the
//! `RemoveBroker` entry is written while it still follows the log, so it applies its own
//! removal; then a voter's vote goes to an observer that holds every committed entry (if there
//! is one), and it leaves the membership. Every broker forgets it. A broker that applies its
//! own removal, or finds at start that the controller no longer lists it (removed while it was
//! down), stops once the controller confirms it; restarted with the same id and data, it
//! refuses to serve until it is added again. Membership changes run one at a time on the
//! controller; a removal cut off part-way is finished by a retry.
//!
//! Never: remove the last voter, or add a broker id that is in use at another address.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ChangeMembers;

use super::metadata::{self, MetaCommand};
use super::replica::matched;
use super::Cluster;
use crate::broker::route::APPLY_WAIT;
use crate::broker::Broker;
use crate::config::MAX_NODE_ID;
use crate::error::BrokerError;

/// Voters of the metadata group at most; further brokers are observers.
pub const MAX_METADATA_VOTERS: usize = 3;

/// How long a removal waits for the removed broker to receive it before it leaves the group.
const REMOVAL_REACH_WAIT: Duration = Duration::from_secs(10);

/// How long an add waits for the new broker to catch up and be promoted (when the group is
/// short of voters) before it answers; the controller's periodic check promotes it later.
pub const ADD_PROMOTE_WAIT: Duration = Duration::from_secs(5);

/// Every broker's id and client address, this one included, as this broker applied them.
#[derive(Debug, Default)]
pub struct Directory {
    brokers: RwLock<BTreeMap<u64, String>>,
    /// Brokers being removed by this broker (the controller): placement skips them, so no
    /// replica lands on one between its removal's check and its `RemoveBroker` entry.
    leaving: RwLock<BTreeSet<u64>>,
}

impl Directory {
    pub fn new(brokers: BTreeMap<u64, String>) -> Self {
        Self { brokers: RwLock::new(brokers), leaving: RwLock::default() }
    }

    /// The brokers new replicas may be placed on.
    pub fn placeable(&self) -> Vec<u64> {
        let leaving = self.leaving.read().unwrap_or_else(PoisonError::into_inner).clone();
        self.ids().into_iter().filter(|id| !leaving.contains(id)).collect()
    }

    fn set_leaving(&self, id: u64, leaving: bool) {
        let mut set = self.leaving.write().unwrap_or_else(PoisonError::into_inner);
        if leaving {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }

    pub fn all(&self) -> BTreeMap<u64, String> {
        self.brokers.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.brokers.read().unwrap_or_else(PoisonError::into_inner).keys().copied().collect()
    }

    pub fn address(&self, id: u64) -> Option<String> {
        self.brokers.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    pub fn insert(&self, id: u64, address: String) {
        self.brokers.write().unwrap_or_else(PoisonError::into_inner).insert(id, address);
    }

    /// Forgets broker `id`; whether it was known.
    pub fn remove(&self, id: u64) -> bool {
        self.brokers.write().unwrap_or_else(PoisonError::into_inner).remove(&id).is_some()
    }

    /// Broker `leader`'s id and client address, for NOT_LEADER hints.
    pub fn hint(&self, leader: Option<u64>) -> Option<(u64, String)> {
        leader.and_then(|id| self.address(id).map(|a| (id, a)))
    }
}

fn membership_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::NotLeader { what: format!("the metadata group's membership ({e}; retry)"), leader: None }
}

/// Checks an `id=host:port` broker before it is added.
fn check_new(cluster: &Cluster, id: u64, address: &str) -> Result<bool, BrokerError> {
    if id == 0 || id >= MAX_NODE_ID {
        return Err(BrokerError::InvalidArgument(format!("broker ids are 1..{MAX_NODE_ID}, not {id}")));
    }
    if address.parse::<std::net::SocketAddr>().is_err()
        && address.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(BrokerError::InvalidArgument(format!("broker address {address:?}: use host:port")));
    }
    match cluster.brokers.address(id) {
        Some(a) if a == address => Ok(true), // added already: a retry
        Some(a) => Err(BrokerError::InvalidArgument(format!("broker id {id} is in use at {a}"))),
        None => Ok(false),
    }
}

/// On the controller: adds broker `id` (see the module docs). Answers once every broker can
/// reach it and it follows the metadata log (as a learner; the promotion to voter, if any,
/// follows once it caught up). Refused while a topic placed before placement existed (on
/// every broker, by no list) exists: it would count the new broker among its replicas.
pub async fn add_broker(
    broker: &Broker,
    cluster: &Cluster,
    id: u64,
    address: String,
    internal: Option<String>,
) -> Result<(), BrokerError> {
    let _one_at_a_time = cluster.membership_change.lock().await;
    if let Some(t) = broker.topics().iter().find(|t| t.record.replicas.is_empty() && t.record.partitions > 0) {
        return Err(BrokerError::MembershipRefused(format!(
            "topic {} predates replica placement (every broker holds it); recreate it before adding brokers",
            t.record.name
        )));
    }
    let address = address.trim_start_matches("http://").to_string();
    if !check_new(cluster, id, &address)? {
        let cmd = MetaCommand::AddBroker { id, address: address.clone(), internal: internal.clone() };
        let offset = metadata::propose(cluster, &cmd).await?;
        cluster.wait_applied(offset + 1, APPLY_WAIT).await?;
    }
    let raft = &cluster.metadata_group().raft;
    let members = raft.metrics().borrow_watched().membership_config.membership().clone();
    if !members.nodes().any(|(n, _)| *n == id) {
        raft.add_learner(id, openraft::EmptyNode {}, false).await.map_err(membership_error)?;
    }
    tracing::info!(broker = id, %address, "broker added; it follows the metadata log");
    Ok(())
}

/// On the controller: promotes observers that hold every committed entry (and are brokers
/// of the cluster, not being removed) while the metadata group has fewer than
/// [`MAX_METADATA_VOTERS`] voters, waiting up to `wait` for them to catch up. Returns the
/// voters after.
pub async fn settle_voters(cluster: &Cluster, wait: Duration) -> Result<BTreeSet<u64>, BrokerError> {
    let _one_at_a_time = cluster.membership_change.lock().await;
    let raft = &cluster.metadata_group().raft;
    let deadline = tokio::time::Instant::now() + wait;
    let placeable = cluster.brokers.placeable();
    loop {
        let m = raft.metrics().borrow_watched().clone();
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let observers: Vec<u64> = m.membership_config.membership().learner_ids().collect();
        if voters.len() >= MAX_METADATA_VOTERS || observers.is_empty() {
            return Ok(voters);
        }
        let committed = m.cluster_committed.map_or(0, |l| l.index);
        let ready: BTreeSet<u64> = observers
            .iter()
            .filter(|o| placeable.contains(o) && matched(&m, **o) >= committed)
            .take(MAX_METADATA_VOTERS - voters.len())
            .copied()
            .collect();
        if !ready.is_empty() {
            // One change per call (the metrics lag the change just made); the controller's
            // periodic check promotes any further observer.
            raft.change_membership(ChangeMembers::AddVoterIds(ready.clone()), true).await.map_err(membership_error)?;
            tracing::info!(voters = ?ready, "observers promoted to metadata voters");
            return Ok(voters.union(&ready).copied().collect());
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(voters);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// On the controller: removes broker `id` (see the module docs). A retry after a partial
/// removal (the entry applied, the broker still in the group) finishes it.
pub async fn remove_broker(broker: &Broker, cluster: &Cluster, id: u64) -> Result<(), BrokerError> {
    let _one_at_a_time = cluster.membership_change.lock().await;
    let raft = &cluster.metadata_group().raft;
    let in_group = || raft.metrics().borrow_watched().membership_config.membership().nodes().any(|(n, _)| *n == id);
    let known = cluster.brokers.address(id).is_some();
    if !known && !in_group() {
        return Err(BrokerError::InvalidArgument(format!("broker {id} is not a member of this cluster")));
    }
    if known {
        cluster.brokers.set_leaving(id, true);
        match remove_entry(broker, cluster, id).await {
            Ok(None) => cluster.brokers.set_leaving(id, false),
            // Stays leaving while its replicas move off it (on this controller).
            Ok(Some(moving)) => return Err(BrokerError::MembershipRefused(moving)),
            Err(e) => {
                cluster.brokers.set_leaving(id, false);
                return Err(e);
            }
        }
    }
    if in_group() {
        let m = raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(BrokerError::MembershipRefused(format!("broker {id} is the metadata group's last voter")));
            }
            // An observer that holds every committed entry takes its vote, so the quorum
            // keeps its size (without one, it shrinks by one).
            let committed = m.cluster_committed.map_or(0, |l| l.index);
            let placeable = cluster.brokers.placeable();
            let replacement = membership.learner_ids().find(|o| placeable.contains(o) && matched(&m, *o) >= committed);
            let mut next = voters.clone();
            next.remove(&id);
            next.extend(replacement);
            raft.change_membership(ChangeMembers::ReplaceAllVoters(next), true).await.map_err(membership_error)?;
        }
        // A follower applies an entry only once a later message from the leader says it is
        // committed, and the leader stops sending to `id` the moment it leaves the membership.
        // So having the `RemoveBroker` entry is not enough: `id` must hold an entry written
        // after it was committed, whose message carried that commit. The barrier is the same
        // command again (applying it twice changes nothing).
        metadata::propose(cluster, &MetaCommand::RemoveBroker { id }).await?;
        // Bounded: a broker that is down does not hold the removal up (when it returns, it
        // finds its removal in its log, or stops after the grace of `Cluster::forget_broker`).
        let entry = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
        let reached = |m: &openraft::RaftMetrics<_>| matched(m, id) >= entry;
        if let Err(e) = raft.wait(Some(REMOVAL_REACH_WAIT)).metrics(reached, "the removed broker has its removal").await
        {
            tracing::warn!(broker = id, error = %e, "the removed broker did not get its removal in time (down?)");
        }
        raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
    }
    tracing::info!(broker = id, "broker removed");
    Ok(())
}

/// The `RemoveBroker` entry, once no replica is placed on `id` (it is marked leaving, so
/// placement skips it meanwhile). Written while the broker still follows the log, so it
/// applies its own removal and stops. Until then: moves its replicas to the other brokers
/// (`reassign::moves_off`) and answers why it cannot remove it yet.
async fn remove_entry(broker: &Broker, cluster: &Cluster, id: u64) -> Result<Option<String>, BrokerError> {
    let brokers = cluster.brokers.ids();
    let held: Vec<String> = broker
        .topics()
        .iter()
        .flat_map(|t| {
            (0..t.record.partitions)
                .filter(|p| t.record.hosts_in(*p, brokers.iter().copied()).contains(&id))
                .map(|p| format!("{}/{p}", t.record.name))
                .collect::<Vec<_>>()
        })
        .collect();
    if !held.is_empty() {
        let moves = super::reassign::moves_off(broker, cluster, id);
        let started = moves.len();
        if started > 0 {
            super::reassign::propose_moves(broker, cluster, moves, 0).await?;
        }
        let moving = started > 0 || broker.topics().iter().any(|t| !t.record.reassigning.is_empty());
        let what = format!(
            "broker {id} still holds {} partition replicas ({})",
            held.len(),
            held.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        );
        if !moving {
            return Err(BrokerError::MembershipRefused(format!(
                "{what}; no other broker can take them (each of those partitions has a replica on every \
                 other broker): add a broker, or move them by hand (`tidelog partition reassign`)"
            )));
        }
        return Ok(Some(format!(
            "{what}; moving them to other brokers ({started} moves started now): retry once `tidelog partition \
             reassignments` lists none (`tidelog cluster remove-broker` waits by itself)"
        )));
    }
    let offset = metadata::propose(cluster, &MetaCommand::RemoveBroker { id }).await?;
    cluster.wait_applied(offset + 1, APPLY_WAIT).await?;
    Ok(None)
}
