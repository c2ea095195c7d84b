//! Three real openraft replicas of one partition, each with its own log directory and sled
//! store, joined by an in-memory network that can cut nodes off. Nodes are stopped and
//! reopened from their directories (a process restart without the process). Checks, after
//! every scenario: every acknowledged batch is on every replica at the offset it was
//! acknowledged with, offsets are gap-free, and the replicas' logs are byte-identical.
//!
//! Real broker processes over the network are the job of the fault suite (plan step 9); this
//! harness pins down the storage and state machine under real Raft first (plan step 4).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{Config, Raft, SnapshotPolicy};
use tempfile::TempDir;

use super::state_machine::PartitionSnapshotOf;
use super::types::Vote;
use super::*;
use crate::log::{Appended, FsyncPolicy, LogConfig, StoredBatch};
use crate::meta::MetaStore;

type PartitionRaft = Raft<PartitionTc, PartitionStateMachine>;

/// The in-memory network: who is up, and who is cut off from everyone.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<u64, PartitionRaft>>>,
    isolated: Arc<Mutex<BTreeSet<u64>>>,
}

impl Router {
    /// The target's Raft, if both ends are up and connected.
    fn route(&self, from: u64, to: u64) -> Result<PartitionRaft, Unreachable<PartitionTc>> {
        let isolated = self.isolated.lock().unwrap_or_else(PoisonError::into_inner);
        if isolated.contains(&from) || isolated.contains(&to) {
            return Err(Unreachable::from_string(format!("{from} -> {to} is cut")));
        }
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        nodes.get(&to).cloned().ok_or_else(|| Unreachable::from_string(format!("node {to} is down")))
    }
}

/// A client of one node, from another.
struct Link {
    from: u64,
    to: u64,
    router: Router,
}

/// The factory handed to one node's Raft.
#[derive(Clone)]
struct NodeNetwork {
    id: u64,
    router: Router,
}

impl RaftNetworkFactory<PartitionTc> for NodeNetwork {
    type Network = Link;

    async fn new_client(&mut self, target: u64, _node: &openraft::EmptyNode) -> Link {
        Link { from: self.id, to: target, router: self.router.clone() }
    }
}

fn unreachable(e: impl std::error::Error + 'static) -> RPCError<PartitionTc> {
    RPCError::Unreachable(Unreachable::new(&e))
}

impl RaftNetworkV2<PartitionTc> for Link {
    type SnapshotData = PartitionSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<PartitionTc>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<PartitionTc>, RPCError<PartitionTc>> {
        let raft = self.router.route(self.from, self.to)?;
        raft.append_entries(rpc).await.map_err(unreachable)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<PartitionTc>,
        _option: RPCOption,
    ) -> Result<VoteResponse<PartitionTc>, RPCError<PartitionTc>> {
        let raft = self.router.route(self.from, self.to)?;
        raft.vote(rpc).await.map_err(unreachable)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<PartitionTc>,
        _option: RPCOption,
    ) -> Result<VoteResponse<PartitionTc>, RPCError<PartitionTc>> {
        let raft = self.router.route(self.from, self.to)?;
        raft.pre_vote(rpc).await.map_err(unreachable)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: PartitionSnapshotOf,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<PartitionTc>, StreamingError<PartitionTc>> {
        let raft = self.router.route(self.from, self.to)?;
        raft.install_full_snapshot(vote, snapshot).await.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

/// One replica: its directory, and while it runs, its partition and Raft.
struct Node {
    dir: PathBuf,
    running: Option<(Arc<Partition>, PartitionRaft, PartitionLogStore)>,
}

/// Real gRPC on 127.0.0.1 instead of the in-memory router: each node's transport server
/// outlives its Raft (a stopped node's groups are unregistered: callers get NOT_FOUND).
struct Grpc {
    peers: network::Peers,
    groups: BTreeMap<u64, transport::RaftGroups>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Grpc {
    fn drop(&mut self) {
        self.servers.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl Grpc {
    /// Three servers on loopback. With `quiescing`, each node's transport runs as a broker's
    /// does in a cluster (its replicas may be asked to sleep: raft/quiesce.rs).
    async fn start(quiescing: bool) -> Self {
        let mut listeners = Vec::new();
        let mut addresses = BTreeMap::new();
        for id in IDS {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addresses.insert(id, format!("http://{}", listener.local_addr().unwrap()));
            listeners.push((id, listener));
        }
        let peers = network::Peers::new(addresses);
        let (mut groups, mut servers) = (BTreeMap::new(), Vec::new());
        for (id, listener) in listeners {
            let registry = if quiescing {
                transport::RaftGroups::clustered(transport::QuiesceContext {
                    peers: peers.clone(),
                    liveness: Arc::default(),
                    alive_within: Duration::from_secs(1),
                    starts: Arc::new(tokio::sync::Semaphore::new(8)),
                })
            } else {
                transport::RaftGroups::default()
            };
            let service = transport::RaftTransportService::new(registry.clone());
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let mut server = tonic::transport::Server::builder();
            // Node 3 serves StreamAppend through tonic's generated server, as a broker without
            // the hand-framed route would: the leader's hand-framed requests must read the same
            // there (append_stream.rs), and its tonic-framed answers.
            servers.push(if id == 3 {
                let generated = tidelog_proto::internal::raft_transport_server::RaftTransportServer::new(service)
                    .max_decoding_message_size(64 << 20);
                tokio::spawn(async move {
                    let _ = server.add_service(generated).serve_with_incoming(incoming).await;
                })
            } else {
                let routes = super::append_stream::RaftRoutes::new(service, 64 << 20);
                tokio::spawn(async move {
                    let _ = server.add_service(routes).serve_with_incoming(incoming).await;
                })
            });
            groups.insert(id, registry);
        }
        Self { peers, groups, servers }
    }
}

struct Cluster {
    _root: TempDir,
    router: Router,
    grpc: Option<Grpc>,
    nodes: BTreeMap<u64, Node>,
    config: Arc<Config>,
    /// Every acknowledged batch: raft index → where it landed and what it held.
    acked: BTreeMap<u64, (Appended, Bytes)>,
    /// Retention by size for every node's log (`None`: keep everything).
    retention_bytes: Option<u64>,
}

const IDS: [u64; 3] = [1, 2, 3];
const WAIT: Duration = Duration::from_secs(10);

impl Cluster {
    async fn new() -> Self {
        Self::with_transport(None).await
    }

    async fn over_grpc() -> Self {
        Self::with_transport(Some(Grpc::start(false).await)).await
    }

    async fn over_grpc_quiescing() -> Self {
        Self::with_transport(Some(Grpc::start(true).await)).await
    }

    async fn with_transport(grpc: Option<Grpc>) -> Self {
        let root = tempfile::tempdir().unwrap();
        let config = Config {
            heartbeat_interval: 50,
            election_timeout_min: 200,
            election_timeout_max: 400,
            // Snapshots and purges happen only when asked (in production: by retention).
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            ..Config::default()
        };
        let mut c = Self {
            nodes: IDS
                .iter()
                .map(|id| (*id, Node { dir: root.path().join(format!("node-{id}")), running: None }))
                .collect(),
            _root: root,
            router: Router::default(),
            grpc,
            config: Arc::new(config.validate().unwrap()),
            acked: BTreeMap::new(),
            retention_bytes: None,
        };
        for id in IDS {
            c.start(id).await;
        }
        c.raft(1).initialize(IDS.iter().copied().collect::<BTreeSet<u64>>()).await.unwrap();
        c
    }

    /// Opens a node from its directory (a restart if it ran before).
    async fn start(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let mut config = LogConfig { segment_bytes: 16 << 10, index_interval_bytes: 512, ..LogConfig::default() };
        config.retention.max_bytes = self.retention_bytes;
        let (partition, _) = Partition::open(&node.dir.join("t-0"), "t", 0, config, FsyncPolicy::PerBatch).unwrap();
        let partition = Arc::new(partition);
        let meta = open_meta(&node.dir.join("meta")).await;
        let (log, sm) = open_storage(Arc::clone(&partition), meta.raft_state(1).unwrap()).unwrap();
        let store = log.clone();
        let config = Arc::clone(&self.config);
        let raft = match &self.grpc {
            Some(grpc) => {
                let raft = Raft::new(id, config, grpc.peers.group(1), log, sm).await.unwrap();
                let incoming_dir = node.dir.join("incoming-snapshot");
                grpc.groups[&id].insert(1, transport::GroupHandle::new(raft.clone(), store.clone(), incoming_dir));
                raft
            }
            None => Raft::new(id, config, NodeNetwork { id, router: self.router.clone() }, log, sm).await.unwrap(),
        };
        self.router.nodes.lock().unwrap().insert(id, raft.clone());
        node.running = Some((partition, raft, store));
    }

    /// Stops a node: its Raft shuts down and its files are closed (what a kill leaves on disk,
    /// minus unsynced page cache, which fsync=always never acknowledges).
    async fn stop(&mut self, id: u64) {
        self.router.nodes.lock().unwrap().remove(&id);
        if let Some(grpc) = &self.grpc {
            grpc.groups[&id].remove(1);
        }
        if let Some((_, raft, _)) = self.nodes.get_mut(&id).unwrap().running.take() {
            raft.shutdown().await.unwrap();
        }
    }

    fn raft(&self, id: u64) -> &PartitionRaft {
        &self.nodes[&id].running.as_ref().unwrap().1
    }

    fn partition(&self, id: u64) -> &Arc<Partition> {
        &self.nodes[&id].running.as_ref().unwrap().0
    }

    /// One retention pass on node `id`, through Raft (snapshot, purge, delete).
    async fn retain(&self, id: u64) -> crate::log::RetentionOutcome {
        let (p, raft, store) = self.nodes[&id].running.as_ref().unwrap();
        retention::apply_retention(raft, store, p, crate::clock::now_ms(), WAIT).await.unwrap()
    }

    fn isolate(&self, id: u64, cut: bool) {
        let mut isolated = self.router.isolated.lock().unwrap();
        if cut {
            isolated.insert(id);
        } else {
            isolated.remove(&id);
        }
    }

    /// Waits until the running, connected nodes agree on a leader among them.
    async fn leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let isolated = self.router.isolated.lock().unwrap().clone();
            let up: Vec<u64> = self
                .nodes
                .iter()
                .filter(|(id, n)| n.running.is_some() && !isolated.contains(id))
                .map(|(id, _)| *id)
                .collect();
            let leaders: BTreeSet<Option<u64>> =
                up.iter().map(|id| self.raft(*id).metrics().borrow_watched().current_leader).collect();
            if let [Some(l)] = leaders.iter().copied().collect::<Vec<_>>()[..] {
                if up.contains(&l) && self.raft(l).metrics().borrow_watched().state.is_leader() {
                    return l;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no agreed leader among {up:?}: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes `n` batches to the leader (acks=all: each returns once applied on a majority).
    /// Like a client, it retries at the new leader when leadership moves under it (a retried
    /// batch may then be stored twice: only the idempotent producer prevents that).
    async fn write(&mut self, n: usize) {
        for _ in 0..n {
            let payload = Bytes::from(format!("batch-{}-{}", self.acked.len(), "v".repeat(self.acked.len() % 200)));
            let deadline = tokio::time::Instant::now() + WAIT;
            let appended = loop {
                let leader = self.leader().await;
                match self.raft(leader).client_write(batch(&payload)).await {
                    Ok(resp) => break resp.data.unwrap(),
                    Err(e) if e.forward_to_leader().is_some() && tokio::time::Instant::now() < deadline => continue,
                    Err(e) => panic!("write failed: {e}"),
                }
            };
            self.acked.insert(appended.raft_index, (appended, payload));
        }
    }

    /// Waits until every running node has applied everything the leader committed, then checks
    /// the invariants.
    async fn check(&self) {
        let leader = self.leader().await;
        // The leader's metrics may lag its last answered write by a moment: wait for both.
        let committed = self.raft(leader).metrics().borrow_watched().cluster_committed.map(|c| c.index);
        let committed = committed.max(self.acked.keys().next_back().copied());
        for (id, node) in &self.nodes {
            if node.running.is_some() {
                self.raft(*id).wait(Some(WAIT)).applied_index_at_least(committed, "catch up").await.unwrap();
            }
        }
        let reference = all_batches(self.partition(leader));
        // Offsets gap-free, in Raft order.
        let mut next = reference.first().map_or(0, |b| b.header.base_offset);
        for b in &reference {
            assert_eq!(b.header.base_offset, next, "gap or overlap at raft index {}", b.header.raft_index);
            next = b.header.next_offset();
        }
        let first_kept = reference.first().map_or(0, |b| b.header.raft_index);
        for (index, (appended, payload)) in self.acked.range(first_kept..) {
            let b = reference
                .iter()
                .find(|b| b.header.raft_index == *index)
                .unwrap_or_else(|| panic!("acknowledged batch at raft index {index} is gone from the leader's log"));
            assert_eq!((b.header.base_offset, &b.payload), (appended.base_offset, payload), "raft index {index}");
        }
        for (id, node) in &self.nodes {
            if let Some((p, _, _)) = &node.running {
                assert_eq!(all_batches(p), reference, "node {id} differs from leader {leader}");
                assert_eq!(p.offsets().high_watermark.0, next, "node {id} high watermark");
            }
        }
    }
}

/// Opens a node's sled store, waiting for the stopped instance's last handle (held by Raft
/// tasks that are still winding down) to release the file lock, as a restarted process would.
async fn open_meta(dir: &std::path::Path) -> MetaStore {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match MetaStore::open(dir) {
            Ok(m) => return m,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("opening {}: {e}", dir.display()),
        }
    }
}

fn batch(payload: &Bytes) -> BatchData {
    BatchData::Proposed(ProposedBatch {
        payload: payload.clone(),
        record_count: 2,
        compression: 0,
        payload_crc: tidelog_proto::checksum::crc32c(payload),
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        flags: 0,
        on_append: types::AppendHook::default(),
    })
}

/// Every batch the partition stores, control batches included.
fn all_batches(p: &Partition) -> Vec<StoredBatch> {
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let chunk = p.read_raft(next, 1 << 20).unwrap();
        let Some(last) = chunk.last() else { return out };
        next = last.header.raft_index + 1;
        out.extend(chunk);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_commit_identical_logs_and_survive_leader_loss_and_restarts() {
    leader_loss_and_restarts(Cluster::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_three_replicas_survive_leader_loss_and_restarts() {
    leader_loss_and_restarts(Cluster::over_grpc().await).await;
}

async fn leader_loss_and_restarts(mut c: Cluster) {
    c.write(50).await;
    c.check().await;

    // The leader dies; the other two elect a new one and keep committing.
    let old = c.leader().await;
    c.stop(old).await;
    c.write(30).await;
    c.check().await;

    // It comes back from its directory and catches up from the new leader's log.
    c.start(old).await;
    c.write(10).await;
    c.check().await;

    // Everyone restarts: votes, logs and checkpoints come back from disk.
    for id in IDS {
        c.stop(id).await;
    }
    for id in IDS {
        c.start(id).await;
    }
    c.write(10).await;
    c.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leaders_uncommitted_suffix_is_truncated_and_nothing_acknowledged_is_lost() {
    let mut c = Cluster::new().await;
    c.write(20).await;
    let old = c.leader().await;
    c.isolate(old, true);
    // The cut-off leader still takes proposals, but cannot commit them: none is acknowledged.
    let stale = c.raft(old).clone();
    let pending: Vec<_> = (0..5)
        .map(|i| {
            let r = stale.clone();
            tokio::spawn(async move { r.client_write(batch(&Bytes::from(format!("lost-{i}")))).await })
        })
        .collect();
    c.write(20).await; // the majority side elects a leader and commits
    c.isolate(old, false);
    c.check().await; // the old leader's suffix was replaced by the new leader's entries
    for p in pending {
        let outcome = tokio::time::timeout(WAIT, p).await.unwrap().unwrap();
        assert!(outcome.is_err(), "an uncommitted proposal was acknowledged: {outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_gets_the_segments_as_a_snapshot() {
    lagging_follower_gets_a_snapshot(Cluster::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_a_follower_behind_the_purged_log_gets_the_segments_streamed() {
    lagging_follower_gets_a_snapshot(Cluster::over_grpc().await).await;
}

async fn lagging_follower_gets_a_snapshot(mut c: Cluster) {
    c.write(10).await;
    let leader = c.leader().await;
    let lagging = IDS.into_iter().find(|id| *id != leader).unwrap();
    c.stop(lagging).await;
    c.write(200).await; // spans several 16 KiB segments
    let raft = c.raft(leader).clone();
    raft.trigger().snapshot().await.unwrap();
    let snap = raft.wait(Some(WAIT)).metrics(|m| m.snapshot.is_some(), "snapshot built").await.unwrap();
    let upto = snap.snapshot.unwrap().index;
    raft.trigger().purge_log(upto).await.unwrap();
    raft.wait(Some(WAIT)).metrics(|m| m.purged.is_some_and(|p| p.index == upto), "purged").await.unwrap();
    c.start(lagging).await;
    c.write(5).await;
    c.check().await;
    let metrics = c.raft(lagging).metrics().borrow_watched().clone();
    assert_eq!(metrics.snapshot.map(|s| s.index), Some(upto), "the follower installed the leader's snapshot");
}

/// Retention deletes segments on every replica only below its durable purge point; a follower
/// that was down meanwhile gets the leader's retained segments, starting where retention left
/// the leader's log, and all replicas agree on what remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_goes_through_raft_and_a_returning_follower_gets_what_is_retained() {
    let mut c = Cluster::new().await;
    c.retention_bytes = Some(48 << 10);
    for id in IDS {
        c.stop(id).await;
        c.start(id).await;
    }
    c.write(10).await;
    let leader = c.leader().await;
    let away = IDS.into_iter().find(|id| *id != leader).unwrap();
    c.stop(away).await;
    c.write(900).await; // ~100 KiB: several 16 KiB segments beyond the 48 KiB kept
    c.check().await;
    for id in IDS.into_iter().filter(|id| *id != away) {
        let before = c.partition(id).offsets().log_start.0;
        let out = c.retain(id).await;
        assert!(out.segments_deleted > 0, "node {id}: nothing deleted");
        assert!(c.partition(id).offsets().log_start.0 > before, "node {id}: log start did not move");
        let purged = c.nodes[&id].running.as_ref().unwrap().2.purged_index();
        let first = all_batches(c.partition(id))[0].header.raft_index;
        assert!(purged.is_some_and(|p| p + 1 >= first), "node {id} deleted above its purge point");
    }
    c.start(away).await;
    c.write(5).await;
    c.check().await;
    assert_eq!(
        c.partition(away).offsets().log_start,
        c.partition(leader).offsets().log_start,
        "the returning follower starts where retention left the leader"
    );
}

/// Replication over gRPC goes on pipelined `StreamAppend` calls (transport.rs), not one call
/// per request, and a stream that carries garbage or names a group not hosted is refused with
/// a status a leader can act on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_replication_streams_and_bad_streams_are_refused() {
    use crate::telemetry::metrics::{instruments, ModeLabel};
    use tidelog_proto::internal::raft_transport_client::RaftTransportClient;
    use tidelog_proto::internal::RaftMessage;

    let streamed = || instruments().raft_append_requests.get_or_create(&ModeLabel { mode: "stream" }).get();
    let mut c = Cluster::over_grpc().await;
    let before = streamed();
    c.write(40).await;
    c.check().await;
    // Each of the 40 entries was acknowledged by a follower before the next was proposed.
    let carried = streamed() - before;
    assert!(carried >= 20, "only {carried} AppendEntries came on streams for 40 entries");

    // Every node: 1 and 2 serve StreamAppend by hand, 3 through tonic's generated server.
    for id in IDS {
        let channel = c.grpc.as_ref().unwrap().peers.channel(id).unwrap();
        let mut client = RaftTransportClient::new(channel);
        let send = |group_id: u64, body: &'static [u8]| {
            futures::stream::iter([RaftMessage { group_id, body: Bytes::from_static(body) }])
        };
        let mut answers = client.stream_append(send(1, b"\x01garbage")).await.unwrap().into_inner();
        let status = answers.message().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "node {id}: {status:?}");
        let status = client.stream_append(send(77, b"")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "node {id}: {status:?}");
    }
    c.write(5).await;
    c.check().await;

    // Streams end once idle (network.rs STREAM_IDLE): each holds an HTTP/2 stream slot of the
    // connection every group to that peer shares, and thousands of groups' streams, open for
    // their groups' lifetimes, took them all. (The gauge is process-wide: nextest runs each
    // test in a process of its own.)
    let open = || instruments().raft_append_streams.get();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open() > 0 {
        assert!(std::time::Instant::now() < deadline, "{} append streams still open after 10 s idle", open());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.write(5).await;
    c.check().await;
}

/// A follower that agrees to sleep drops the entries it kept in memory for replication and
/// apply (raft/recent.rs), as its leader does when it sleeps: an asleep group holds no
/// entries, so ten thousand asleep partitions hold none either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_a_follower_put_to_sleep_keeps_no_recent_entries() {
    let mut c = Cluster::over_grpc_quiescing().await;
    c.write(20).await;
    c.check().await;
    let leader = c.leader().await;
    let followers: Vec<u64> = IDS.into_iter().filter(|id| *id != leader).collect();
    let recent = |c: &Cluster, id: u64| c.nodes[&id].running.as_ref().unwrap().2.recent_len();
    for f in &followers {
        assert!(recent(&c, *f) > 0, "follower {f} kept none of the entries it just appended");
    }
    for f in followers {
        put_to_sleep(&c, leader, f).await;
        assert_eq!(recent(&c, f), 0, "follower {f} asleep with entries kept in memory");
    }
}

/// Sends `follower` the leader's Quiesce until it agrees (once it has applied everything the
/// leader committed).
async fn put_to_sleep(c: &Cluster, leader: u64, follower: u64) {
    let peers = &c.grpc.as_ref().unwrap().peers;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some((vote, committed)) = super::quiesce::leader_idle_state(c.raft(leader), &[follower]) {
            if peers.quiesce(follower, 1, &vote, committed.as_ref(), Duration::from_secs(2)).await {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "follower {follower} never agreed to sleep");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An AppendEntries from a leader of an older vote leaves an asleep follower asleep, and is
/// refused. A broker restarted after it lost a leadership comes back leading its old term for
/// a moment; a follower its heartbeat woke would hear nothing more from its real, asleep
/// leader and stand for election (an idle partition's leadership moved for nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_an_append_from_a_stale_leader_leaves_a_follower_asleep() {
    use tidelog_proto::internal::raft_transport_client::RaftTransportClient;
    use tidelog_proto::internal::RaftMessage;
    let mut c = Cluster::over_grpc_quiescing().await;
    c.write(5).await;
    c.check().await;
    let leader = c.leader().await;
    let follower = IDS.into_iter().find(|id| *id != leader).unwrap();
    let other = IDS.into_iter().find(|id| *id != leader && *id != follower).unwrap();
    put_to_sleep(&c, leader, follower).await;
    let grpc = c.grpc.as_ref().unwrap();
    let (_, handle) = grpc.groups[&follower].all().into_iter().find(|(g, _)| *g == 1).unwrap();
    assert!(handle.quiescence.is_asleep());

    let m = c.raft(follower).metrics().borrow_watched().clone();
    let stale = Vote::new_committed(m.vote.leader_id().term - 1, other);
    let rpc = AppendEntriesRequest {
        vote: stale,
        prev_log_id: m.last_applied,
        entries: Vec::new(),
        leader_commit: m.last_applied,
    };
    let body = rpc_codec::encode_append_request(&rpc).unwrap();
    let mut client = RaftTransportClient::new(grpc.peers.channel(follower).unwrap());
    let answer = client.append_entries(RaftMessage { group_id: 1, body: body.into() }).await.unwrap().into_inner();
    let answer = rpc_codec::decode_append_response(&answer.body).unwrap();
    assert!(matches!(&answer, AppendEntriesResponse::HigherVote(v) if *v == m.vote), "{answer:?}");
    assert!(handle.quiescence.is_asleep(), "an append from a stale leader woke the follower");
    // The group itself is untouched: the same leader takes the next write.
    c.write(1).await;
    c.check().await;
    assert_eq!(c.leader().await, leader);
}
