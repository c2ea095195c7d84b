//! Cluster mode: brokers (those of `--peers`, and those added since: `members.rs`) that
//! replicate every partition with Raft. This module
//! is the Raft implementation of the broker's seam (`broker/seam.rs`): [`Cluster`] is its
//! `ControlPlane` (`control.rs`), each partition group's [`RaftReplica`] its `PartitionWriter`
//! (`writer.rs`). Nothing above the broker sees this module; `node.rs` starts it.
//!
//! ```text
//! Cluster
//!   ├─ metadata group (Raft group 0, up to 3 voters)        cluster/metadata.rs, members.rs
//!   │     its log holds MetaCommands (create/delete topic); every broker applies them, in log
//!   │     order, to its own topic table: topics, their ids and their partitions' groups
//!   ├─ one Raft group per partition (its replicas the voters) cluster/replica.rs
//!   │     opened once its topic is published, those clients ask for first (cluster/opening.rs);
//!   │     the partition log IS the Raft log (raft/); produce = propose; commit = high watermark;
//!   │     moved to other brokers by membership changes its leader drives (cluster/reassign.rs)
//!   ├─ Peers + RaftGroups: Raft traffic on the broker's own gRPC port (raft/network.rs,
//!   │     raft/transport.rs)
//!   └─ quiescing: idle partition groups stop ticking; one ping per peer keeps the brokers'
//!         liveness instead (cluster/quiesce.rs, raft/quiesce.rs)
//! ```
//!
//! Placement (`placement.rs`): a topic's partitions get `replication_factor` replicas each,
//! spread round-robin over the brokers with preferred leaders spread evenly; a broker opens
//! groups only for the partitions it holds. A new group's preferred leader stands for
//! election first; afterwards leaders move by themselves when a broker dies, and
//! [`Cluster::rebalance_leaders`] hands them back to their preferred replica once it is in
//! sync again (Kafka's preferred-leader election).
//!
//! Invariants:
//! - a topic exists on this broker iff its `CreateTopic` is applied and no matching
//!   `DeleteTopic` is: the metadata log is the only source of topics in cluster mode;
//! - a topic's id is the metadata-log offset of its `CreateTopic` plus one, so it is the same on
//!   every broker and a recreated topic never shares a Raft group (group id = id << 16 | p)
//!   with an old incarnation;
//! - this module never writes a partition's log itself: only its Raft group does;
//! - `hosted` holds the partition groups this broker opened for the topics in its topic
//!   table (and, after a create that failed midway on this broker, the groups it opened
//!   before the failure, until the topic is deleted).

pub mod control;
pub mod members;
pub mod meta_image;
pub mod meta_snapshot;
pub mod metadata;
pub mod opening;
pub mod placement;
pub mod quiesce;
pub mod reassign;
pub mod replica;
pub mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use openraft::type_config::async_runtime::WatchReceiver;
use tokio::sync::watch;

pub use replica::RaftReplica;

use crate::broker::Broker;
use crate::config::ClusterSettings;
use crate::error::BrokerError;
use crate::raft::network::Peers;
use crate::raft::transport::{QuiesceContext, RaftGroups};

/// How long a broker whose own log says it was removed waits, at start, for a leader that
/// added it again.
const REMOVED_GRACE: Duration = Duration::from_secs(10);

/// The metadata group's Raft group id. Partition groups are `topic_id << 16 | partition`
/// with `topic_id >= 1`, so they never collide with it.
pub const META_GROUP: u64 = 0;

/// Leaderships handed back to preferred replicas per rebalance round, and at once.
const HANDOVERS_PER_ROUND: usize = 256;
const CONCURRENT_HANDOVERS: usize = 32;

/// The Raft group of partition `partition` of topic incarnation `topic_id`.
pub fn group_id(topic_id: u64, partition: u32) -> u64 {
    (topic_id << 16) | u64::from(partition)
}

/// A partition group hosted here, with its preferred leader (placement's first replica).
#[derive(Clone, Debug)]
pub struct Hosted {
    pub replica: RaftReplica,
    pub preferred: Option<u64>,
}

#[derive(Debug)]
pub struct Cluster {
    node_id: u64,
    /// The cluster's name: `tidelog-` and the ids of the brokers it was started with.
    cluster_id: String,
    /// Every broker's client address (`host:port`), this one included (`members.rs`).
    brokers: Arc<members::Directory>,
    /// Held by a membership change on the controller (one at a time).
    membership_change: tokio::sync::Mutex<()>,
    /// Started with `--join` (it is a member only once added).
    joined: bool,
    /// Whether the metadata applied here says this broker was removed (and not added again).
    self_removed: std::sync::atomic::AtomicBool,
    /// Set once this broker is removed from the cluster for good: it stops serving.
    removed: watch::Sender<bool>,
    peers: Peers,
    groups: RaftGroups,
    raft_config: Arc<openraft::Config>,
    data_dir: PathBuf,
    /// The metadata group (its leader is the controller) and its log.
    metadata_group: RaftReplica,
    metadata_log: Arc<crate::partition::Partition>,
    /// The metadata-log offset up to which commands are applied to the topic table.
    applied: watch::Sender<u64>,
    /// The metadata log's end when this broker started: it is not current before it applied
    /// at least that far (what it held at start may be committed without it knowing yet).
    start_log_end: u64,
    /// Partition groups held here, by group id.
    hosted: RwLock<BTreeMap<u64, Hosted>>,
}

impl Cluster {
    /// Joins the cluster: opens the metadata group (on a new cluster's first start the lowest
    /// broker id initialises it, the others only if it did not: `replica::Start`) and starts
    /// applying its log to the broker's topic table. Peers need not be up yet.
    /// With `tls`, peers are called over TLS (`https://`), at `cluster.internal_peers` if set.
    pub async fn start(
        broker: &Arc<Broker>,
        settings: &ClusterSettings,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Arc<Self>, BrokerError> {
        let node_id = broker.node_id();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (brokers, endpoints, cluster_id) = match &settings.join {
            None => {
                let brokers = settings.parse_peers().map_err(|e| BrokerError::InvalidArgument(e.to_string()))?;
                let endpoints = settings.peer_endpoints().map_err(|e| BrokerError::InvalidArgument(e.to_string()))?;
                let ids: Vec<String> = brokers.keys().map(u64::to_string).collect();
                (brokers, endpoints, format!("tidelog-{}", ids.join("-")))
            }
            Some(member) => {
                let (mut brokers, cluster_id) = discover(member, scheme, tls.clone()).await?;
                let own = broker.options().advertised_address.clone();
                let own = own.trim_start_matches("http://").trim_start_matches("https://").to_string();
                // Listed at this address: this broker, restarting after it was added.
                if brokers.get(&node_id).is_some_and(|a| *a != own) {
                    return Err(BrokerError::InvalidArgument(format!(
                        "broker id {node_id} is in use in the cluster at {}; pick another --node-id",
                        brokers[&node_id]
                    )));
                }
                brokers.insert(node_id, own);
                (brokers.clone(), brokers, cluster_id)
            }
        };
        // Brokers call each other at their internal listeners when they have them.
        let peers = Peers::with_tls(endpoints.iter().map(|(id, a)| (*id, format!("{scheme}://{a}"))).collect(), tls);
        let config = openraft::Config {
            cluster_name: "tidelog".into(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_timeout_ms,
            election_timeout_max: settings.election_timeout_ms * 2,
            // A node that cannot win (a restarted or cut-off one) asks first and does not bump
            // the term: no disruptive elections, and asleep groups can refuse it
            // (raft/quiesce.rs).
            enable_pre_vote: Some(true),
            // Snapshots and purges happen only when retention asks (raft/retention.rs).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            ..openraft::Config::default()
        };
        let raft_config =
            Arc::new(config.validate().map_err(|e| BrokerError::InvalidArgument(format!("raft config: {e}")))?);
        let data_dir = broker.options().data_dir.clone();
        // With quiescing off this broker refuses to sleep its replicas: it runs no loop that
        // would wake them when their leader's broker dies.
        let groups = if settings.quiesce_ms > 0 {
            RaftGroups::clustered(QuiesceContext {
                peers: peers.clone(),
                liveness: Arc::default(),
                alive_within: Duration::from_millis(settings.election_timeout_ms),
                starts: Arc::new(tokio::sync::Semaphore::new(settings.group_starts as usize)),
            })
        } else {
            RaftGroups::default()
        };
        // A new cluster's metadata group is started by its lowest broker id (replica::Start);
        // a joining broker is added by the controller.
        let ranked: Vec<u64> = brokers.keys().copied().collect();
        let rank = ranked.iter().position(|b| *b == node_id).unwrap_or(0);
        let start = match settings.join {
            Some(_) => replica::Start::Never,
            None => replica::Start::by_rank(&raft_config, &ranked, rank),
        };
        let meta = replica::open(
            &replica::GroupContext {
                node_id,
                peers: &peers,
                groups: &groups,
                config: &raft_config,
                data_dir: &data_dir,
            },
            broker.store(),
            replica::GroupSpec::metadata(&data_dir, meta_snapshot::segment_bytes(settings.metadata_snapshot_bytes)),
            brokers.keys().copied().collect(),
            start,
        )
        .await?;
        let (applied, _) = watch::channel(0);
        let start_log_end = meta.partition.offsets().log_end.0;
        let cluster = Arc::new(Self {
            node_id,
            cluster_id,
            brokers: Arc::new(members::Directory::new(brokers)),
            membership_change: tokio::sync::Mutex::new(()),
            joined: settings.join.is_some(),
            self_removed: std::sync::atomic::AtomicBool::new(false),
            removed: watch::channel(false).0,
            peers,
            groups,
            raft_config,
            data_dir,
            metadata_group: meta.replica,
            metadata_log: Arc::clone(&meta.partition),
            applied,
            start_log_end,
            hosted: RwLock::default(),
        });
        tokio::spawn(metadata::run_applier(Arc::clone(broker), Arc::clone(&cluster), Arc::clone(&meta.partition)));
        cluster.peers.throttle().set_default_rate(settings.reassignment_throttle_bytes_per_sec);
        tokio::spawn(reassign::run(Arc::clone(broker), Arc::clone(&cluster)));
        tokio::spawn(meta_snapshot::run(
            Arc::clone(broker),
            Arc::clone(&cluster),
            meta.partition,
            settings.metadata_snapshot_bytes,
        ));
        if settings.quiesce_ms > 0 {
            let every = Duration::from_millis(settings.heartbeat_ms);
            let idle_after = Duration::from_millis(settings.quiesce_ms);
            tokio::spawn(quiesce::run(Arc::clone(broker), Arc::clone(&cluster), every, idle_after));
        }
        if settings.leader_rebalance_ms > 0 {
            let every = Duration::from_millis(settings.leader_rebalance_ms);
            let (broker, c) = (Arc::clone(broker), Arc::clone(&cluster));
            tokio::spawn(async move {
                let mut shutdown = broker.shutdown_signal();
                let mut tick = tokio::time::interval(every);
                tick.tick().await; // the first tick is immediate: give elections time first
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            c.rebalance_leaders().await;
                            c.settle_metadata_voters().await;
                        }
                        _ = shutdown.changed() => return,
                    }
                }
            });
        }
        Ok(cluster)
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Every broker's id and client address, as this broker applied them.
    pub fn brokers(&self) -> BTreeMap<u64, String> {
        self.brokers.all()
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Broker `id` is at `address` (client) and `internal` (peers), learnt from the metadata.
    pub(crate) fn learn_broker(&self, id: u64, address: &str, internal: Option<&str>) {
        if id == self.node_id {
            self.self_removed.store(false, std::sync::atomic::Ordering::Release);
        }
        self.brokers.insert(id, address.to_string());
        if id != self.node_id {
            let scheme = self.peers.scheme();
            self.peers.set_address(id, format!("{scheme}://{}", internal.unwrap_or(address)));
        }
    }

    /// Broker `id` left the cluster. This broker itself: it stops serving once it applied
    /// everything committed and is still removed (a later `AddBroker` in the log, for a broker
    /// removed and added again while it was down, keeps it), or after [`REMOVED_GRACE`] if
    /// it cannot tell (no leader replicates to a removed broker). Returns whether this was
    /// news (the controller writes a removal twice, `members::remove_broker`).
    pub(crate) fn forget_broker(self: &Arc<Self>, id: u64) -> bool {
        if id == self.node_id {
            use std::sync::atomic::Ordering;
            if self.self_removed.swap(true, Ordering::AcqRel) {
                return false; // a check is running, or ran
            }
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + REMOVED_GRACE;
                // The controller applies an entry concurrently with the others: it may still
                // list this broker for a moment, so "listed" is asked again until the grace ends.
                let mut listed = None;
                while me.self_removed.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
                    listed = me.controller_lists_me().await;
                    if listed == Some(false) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if !me.self_removed.load(Ordering::Acquire) {
                    return; // added again, and applied here
                }
                if listed == Some(true) {
                    // Added again: the log says so when it catches up.
                    me.self_removed.store(false, Ordering::Release);
                    tracing::warn!(
                        broker = me.node_id,
                        "applied this broker's removal, but the controller still lists it: it keeps serving"
                    );
                    return;
                }
                tracing::error!(
                    broker = me.node_id,
                    "this broker was removed from the cluster: it stops; add it again (tidelog cluster \
                     add-broker) to bring it back"
                );
                me.removed.send_replace(true);
            });
            return true;
        }
        // Its Raft address stays until it leaves the metadata group's membership (it must
        // still receive its own removal); nothing else calls it once it is not a broker.
        self.brokers.remove(id)
    }

    /// At start: a broker that was a member (of `--peers`, or added) asks the controller
    /// whether it still is, for up to a minute; a broker removed while it was down (so its own
    /// log never got the removal) then stops instead of serving a stale view.
    pub(crate) fn verify_membership_at_start(self: &Arc<Self>, listed_here: bool) {
        if self.joined && !listed_here {
            return; // a new broker waiting to be added
        }
        // Weak: a broker that stops meanwhile must not be kept open by this check.
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            for _ in 0..60 {
                let Some(me) = weak.upgrade() else { return };
                if me.groups.is_stopping() {
                    return;
                }
                match me.controller_lists_me().await {
                    Some(true) => return,
                    Some(false) => {
                        me.forget_broker(me.node_id);
                        return;
                    }
                    None => {}
                }
                drop(me);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Whether the controller (asked through any other broker that says it is the controller)
    /// lists this broker; `None` if none answered.
    async fn controller_lists_me(&self) -> Option<bool> {
        for id in self.brokers.ids().into_iter().filter(|id| *id != self.node_id) {
            let Ok(mut admin) = self.admin_client(id) else { continue };
            let ask = admin.describe_cluster(tidelog_proto::v1::DescribeClusterRequest {});
            let Ok(Ok(view)) = tokio::time::timeout(Duration::from_secs(1), ask).await else { continue };
            let view = view.into_inner();
            if u64::from(view.controller_id) == id {
                return Some(view.brokers.iter().any(|b| u64::from(b.id) == self.node_id));
            }
        }
        None
    }

    /// Resolves once this broker was removed from the cluster.
    pub async fn wait_removed(&self) {
        let mut rx = self.removed.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub fn is_removed(&self) -> bool {
        *self.removed.borrow()
    }

    pub fn groups(&self) -> &RaftGroups {
        &self.groups
    }

    pub(crate) fn context(&self) -> replica::GroupContext<'_> {
        replica::GroupContext {
            node_id: self.node_id,
            peers: &self.peers,
            groups: &self.groups,
            config: &self.raft_config,
            data_dir: &self.data_dir,
        }
    }

    /// The metadata group (its leader is the controller).
    pub fn metadata_group(&self) -> &RaftReplica {
        &self.metadata_group
    }

    /// Every partition group held here.
    pub fn hosted(&self) -> Vec<Hosted> {
        self.hosted.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// Every partition group held here, without their preferred leaders.
    pub fn partition_replicas(&self) -> Vec<RaftReplica> {
        self.hosted().into_iter().map(|h| h.replica).collect()
    }

    /// Calls `f` on every partition group held here, under the registry's read lock and
    /// without cloning them (the quiescing loop's pass over every group each heartbeat).
    /// `f` must not block or take the registry's lock.
    pub fn for_each_replica(&self, mut f: impl FnMut(&RaftReplica)) {
        for h in self.hosted.read().unwrap_or_else(PoisonError::into_inner).values() {
            f(&h.replica);
        }
    }

    /// How many partition groups are held here.
    pub fn hosted_count(&self) -> usize {
        self.hosted.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The partition group `group_id`, if held here.
    pub fn hosted_group(&self, group_id: u64) -> Option<Hosted> {
        self.hosted.read().unwrap_or_else(PoisonError::into_inner).get(&group_id).cloned()
    }

    pub(crate) fn host(&self, hosted: Hosted) {
        self.hosted.write().unwrap_or_else(PoisonError::into_inner).insert(hosted.replica.group_id, hosted);
    }

    pub(crate) fn unhost(&self, group_id: u64) {
        self.hosted.write().unwrap_or_else(PoisonError::into_inner).remove(&group_id);
    }

    /// A leader's id and client address, for NOT_LEADER hints.
    pub fn leader_hint(&self, leader: Option<u64>) -> Option<(u64, String)> {
        self.brokers.hint(leader)
    }

    /// Waits until the metadata log is applied up to `offset`, for at most `wait`.
    pub async fn wait_applied(&self, offset: u64, wait: Duration) -> Result<(), BrokerError> {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(wait, rx.wait_for(|a| *a >= offset)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(BrokerError::NotLeader {
                what: format!("metadata up to offset {offset} yet (applied {})", *self.applied.borrow()),
                leader: None,
            }),
        }
    }

    /// Changes whenever more metadata is applied.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Kafka's preferred-leader election: for every partition this broker leads whose
    /// preferred leader (first replica) is another, live broker holding every committed entry,
    /// hands the leadership back to it, so leaders return to the even spread of placement
    /// after failovers. Returns how many moved.
    pub async fn rebalance_leaders(&self) -> usize {
        let mut moves = Vec::new();
        for Hosted { replica, preferred } in self.hosted() {
            let Some(preferred) = preferred else { continue };
            if preferred != self.node_id && replica.leader() == Some(self.node_id) {
                moves.push((replica, preferred));
            }
        }
        // An asleep group is woken and gets a few heartbeats to hear its preferred replica.
        // At most HANDOVERS_PER_ROUND per round, some at a time: after a broker with
        // thousands of preferred leaderships returns, handing them all back at once would wake
        // them all at once (the next rounds hand over the rest).
        moves.truncate(HANDOVERS_PER_ROUND);
        let wait = Duration::from_millis(self.raft_config.heartbeat_interval * 4);
        let n = futures::stream::iter(moves)
            .map(|(r, p)| async move { r.hand_to(Some(p), wait).await })
            .buffer_unordered(CONCURRENT_HANDOVERS)
            .filter(|moved| std::future::ready(*moved))
            .count()
            .await;
        if n > 0 {
            tracing::info!(transfers = n, "handed partitions back to their preferred leaders");
        }
        n
    }

    /// On the controller: observers that caught up become voters while the metadata group has
    /// fewer than `members::MAX_METADATA_VOTERS` (an add whose broker was slow to catch up).
    async fn settle_metadata_voters(&self) {
        let m = self.metadata_group.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let short = membership.voter_ids().count() < members::MAX_METADATA_VOTERS;
        if m.current_leader == Some(self.node_id) && short && membership.learner_ids().next().is_some() {
            if let Err(e) = members::settle_voters(self, Duration::ZERO).await {
                tracing::warn!(error = %e, "promoting metadata observers failed; retrying");
            }
        }
    }

    /// Whether this broker's topic table is current: a controller is known (so this replica
    /// has heard the leader's commit point) and everything committed here is applied. Until
    /// then (a restart, a partition) an unknown topic may just not be applied yet, and is
    /// answered as retryable instead of "does not exist".
    pub fn metadata_ready(&self) -> bool {
        let o = self.metadata_log.offsets();
        let applied = *self.applied.borrow();
        // After a restart the local high watermark can lag what the local log holds (and the
        // controller committed): wait for everything held at start (or what a new leader left
        // of it), so no decision is made on an older state than the one this broker had.
        self.controller().is_some() && applied >= o.high_watermark.0 && applied >= self.start_log_end.min(o.log_end.0)
    }

    /// The metadata group's current Raft term (it grows with every controller election).
    pub fn meta_term(&self) -> u64 {
        self.metadata_group.raft.metrics().borrow_watched().current_term
    }

    /// The controller (metadata leader), if one is known.
    pub fn controller(&self) -> Option<u64> {
        self.metadata_group.raft.metrics().borrow_watched().current_leader
    }
}

/// A joining broker asks `member` for the cluster's brokers and name, for up to a minute (the
/// member may be starting too).
async fn discover(
    member: &str,
    scheme: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<(BTreeMap<u64, String>, String), BrokerError> {
    use tidelog_proto::v1::admin_service_client::AdminServiceClient;
    let url = format!("{scheme}://{}", member.trim_start_matches("http://").trim_start_matches("https://"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone()).map_err(|e| e.to_string())?;
            if let Some(tls) = tls.clone() {
                endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
            }
            let channel =
                endpoint.connect_timeout(Duration::from_secs(2)).connect().await.map_err(|e| e.to_string())?;
            let req = tidelog_proto::v1::DescribeClusterRequest {};
            let view =
                AdminServiceClient::new(channel).describe_cluster(req).await.map_err(|s| s.message().to_string())?;
            Ok::<_, String>(view.into_inner())
        };
        match attempt.await {
            // A cluster member knows the metadata group's roles; a single node has none.
            Ok(view) if view.brokers.iter().any(|b| !b.role.is_empty()) => {
                let brokers = view.brokers.into_iter().map(|b| (u64::from(b.id), b.address)).collect();
                tracing::info!(member, cluster = %view.cluster_id, "joining: learnt the brokers from a member");
                return Ok((brokers, view.cluster_id));
            }
            Ok(_) => tracing::warn!(member, "joining: the member is a single node or not current yet; retrying"),
            Err(e) => tracing::warn!(member, error = %e, "joining: the member does not answer yet; retrying"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BrokerError::InvalidArgument(format!(
                "cannot join the cluster through {member}: it did not describe a cluster within 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
