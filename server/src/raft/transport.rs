//! The server side of broker-to-broker Raft traffic: `tidelog.internal.v1.RaftTransport`,
//! served on the broker's port. It decodes a call, hands it to the Raft of the group it names
//! (the [`RaftGroups`] registry), and encodes the answer.
//!
//! A snapshot arrives as a stream of segment chunks; they are written to the group's incoming
//! directory, then handed to openraft as [`PartitionSnapshot`] slices of those files, which the
//! state machine installs crash-safely (`log/snapshot.rs`). The incoming directory is removed
//! afterwards, installed or not.
//!
//! Quiescing (`raft/quiesce.rs`): every message for a group wakes it, but a pre-vote reaching
//! an asleep replica whose leader's broker is alive, a heartbeat that carries nothing new, an
//! AppendEntries from a leader of an older vote (refused either way), and Quiesce itself.
//!
//! Replication arrives either as unary AppendEntries (heartbeats, probes, a throttled catch-up)
//! or as one pipelined `StreamAppend` per group and leader: the leader sends the next entries
//! without waiting for the answers to the earlier ones, which come back in order. The broker
//! serves `StreamAppend` through `append_stream.rs`, which decodes the requests from their
//! frames without tonic's copy and hands them to [`RaftTransportService::append_stream`].
//!
//! Status codes: `NOT_FOUND` for a group this broker does not host (the caller backs off),
//! `INVALID_ARGUMENT` for an undecodable message, `UNAVAILABLE` when the group's Raft has
//! stopped.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, VoteResponse};
use openraft::storage::Snapshot;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::Raft;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tidelog_proto::internal::raft_transport_server::RaftTransport;
use tidelog_proto::internal::{RaftMessage, SnapshotChunk};
use tonic::{Request, Response, Status, Streaming};

use super::codec::{decode_snapshot_meta, CodecError};
use super::log_store::PartitionLogStore;
use super::network::Peers;
use super::quiesce::{carries_nothing_new, follower_may_sleep, Liveness, Quiescence};
use super::rpc_codec;
use super::types::PartitionTc;
use super::{PartitionSnapshot, PartitionStateMachine};
use crate::log::format::{segment_file_name, LOG_EXT};
use crate::log::SegmentSlice;
use crate::telemetry::metrics::{self, GaugeGuard, ModeLabel};

pub type PartitionRaft = Raft<PartitionTc, PartitionStateMachine>;

/// A group hosted here: its Raft, its log store, where incoming snapshots are written, and
/// whether it sleeps.
#[derive(Clone)]
pub struct GroupHandle {
    pub raft: PartitionRaft,
    pub store: PartitionLogStore,
    pub incoming_dir: PathBuf,
    pub quiescence: Arc<Quiescence>,
}

impl GroupHandle {
    pub fn new(raft: PartitionRaft, store: PartitionLogStore, incoming_dir: PathBuf) -> Self {
        Self { raft, store, incoming_dir, quiescence: Arc::default() }
    }

    /// A Raft message wakes the group: someone needs it to run. (Not called for Quiesce, for a
    /// pre-vote an asleep replica refuses, or for a heartbeat that carries nothing new.)
    fn woken(self, group: u64) -> Self {
        self.wake(group);
        self
    }

    fn wake(&self, group: u64) {
        if self.quiescence.wake(&self.raft) {
            tracing::debug!(group, "woken by a raft message");
        }
    }
}

/// The Raft groups this broker hosts, by group id, and what quiescing needs to know of the
/// peers (a single-process test has neither peers nor liveness: nothing sleeps there).
#[derive(Clone, Default)]
pub struct RaftGroups {
    inner: Arc<RwLock<HashMap<u64, GroupHandle>>>,
    peers: Option<QuiesceContext>,
    /// Set when this broker begins its graceful shutdown: it refuses leadership transfers.
    stopping: Arc<AtomicBool>,
    /// Set when its groups stop: every Raft message is refused (UNAVAILABLE) instead of
    /// reaching a group that is shutting down.
    closed: Arc<AtomicBool>,
    /// Held for reading by every Raft message being handled; [`RaftGroups::close`] takes it
    /// for writing, so the groups stop only after the messages in flight are answered.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Woken when the groups close: ends the pipelined replication streams, which would
    /// otherwise hold the gate until their leaders stop sending.
    closing: Arc<tokio::sync::Notify>,
}

/// Cluster mode: the peers (to wake an asleep leader) and their liveness.
#[derive(Clone, Debug)]
pub struct QuiesceContext {
    pub peers: Peers,
    pub liveness: Arc<Liveness>,
    /// A peer that answered a ping within this counts as alive.
    pub alive_within: Duration,
    /// How many new partition groups this broker starts at once (`cluster/replica.rs`
    /// `start_in_turn`): a group holds a permit from its first election until it sleeps.
    pub starts: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for RaftGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.read().unwrap_or_else(PoisonError::into_inner).len();
        write!(f, "RaftGroups({n} groups)")
    }
}

impl RaftGroups {
    /// A cluster's registry, whose groups may sleep (a broker with quiescing off uses the
    /// default registry: its replicas refuse to sleep).
    pub fn clustered(context: QuiesceContext) -> Self {
        Self { peers: Some(context), ..Self::default() }
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Refuses every Raft message from now on (the broker is stopping its groups), and waits
    /// (at most `wait`) for those being handled to be answered: a message that reached a group
    /// while it stopped would make openraft log errors for a clean stop.
    pub async fn close(&self, wait: Duration) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
        if tokio::time::timeout(wait, self.gate.write()).await.is_err() {
            tracing::debug!("raft messages still in flight at shutdown");
        }
    }

    /// Admits one Raft message for handling (see `gate`); refused once the groups stop.
    fn enter(&self) -> Result<tokio::sync::OwnedRwLockReadGuard<()>, Status> {
        let closed = || Status::unavailable("this broker is stopping its raft groups");
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        Arc::clone(&self.gate).try_read_owned().map_err(|_| closed())
    }

    /// Resolves once the groups close.
    fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let (closed, closing) = (Arc::clone(&self.closed), Arc::clone(&self.closing));
        async move {
            loop {
                // Registered before the check: a close between the two still wakes it.
                let notified = closing.notified();
                if closed.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        }
    }

    /// Whether this broker began its graceful shutdown.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn quiesce_context(&self) -> Option<&QuiesceContext> {
        self.peers.as_ref()
    }

    /// Every group hosted here.
    pub fn all(&self) -> Vec<(u64, GroupHandle)> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).iter().map(|(id, h)| (*id, h.clone())).collect()
    }

    pub fn insert(&self, group_id: u64, handle: GroupHandle) {
        self.inner.write().unwrap_or_else(PoisonError::into_inner).insert(group_id, handle);
    }

    pub fn remove(&self, group_id: u64) -> Option<GroupHandle> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner).remove(&group_id)
    }

    fn get(&self, group_id: u64) -> Result<GroupHandle, Status> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Status::unavailable("this broker is stopping its raft groups"));
        }
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&group_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("raft group {group_id} is not hosted on this broker")))
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct RaftTransportService {
    groups: RaftGroups,
    /// `tidelog_raft_append_requests_total` by mode: AppendEntries received one per call, and
    /// on streams.
    unary_appends: Counter,
    streamed_appends: Counter,
    /// `tidelog_raft_append_streams`.
    open_streams: Gauge,
}

impl RaftTransportService {
    pub fn new(groups: RaftGroups) -> Self {
        let appends = |mode| metrics::instruments().raft_append_requests.get_or_create(&ModeLabel { mode }).clone();
        Self {
            groups,
            unary_appends: appends("unary"),
            streamed_appends: appends("stream"),
            open_streams: metrics::instruments().raft_append_streams.clone(),
        }
    }
}

/// The answers of one `StreamAppend` call, in order.
pub type AppendAnswers = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

/// One request of a `StreamAppend` call: the group it names, and the append request its body
/// holds (or why that does not decode).
#[derive(Debug)]
pub struct AppendMessage {
    pub group_id: u64,
    pub rpc: Result<AppendEntriesRequest<PartitionTc>, CodecError>,
}

impl From<RaftMessage> for AppendMessage {
    fn from(m: RaftMessage) -> Self {
        Self { group_id: m.group_id, rpc: rpc_codec::decode_append_request(&m.body) }
    }
}

impl RaftTransportService {
    /// Pipelined replication of one group (`raft/network.rs` `stream_append`): the requests go
    /// to openraft's `stream_append` as they arrive, its answers come back in order. Each
    /// request wakes the group like a unary AppendEntries does. The stream ends at the first
    /// undecodable message or one for another group (answered `INVALID_ARGUMENT` after the
    /// answers before it), when the group's Raft stops (`UNAVAILABLE`), and when this broker
    /// closes its groups.
    pub(super) async fn append_stream<S>(&self, mut incoming: S) -> Result<AppendAnswers, Status>
    where
        S: Stream<Item = Result<AppendMessage, Status>> + Send + Unpin + 'static,
    {
        let admitted = self.groups.enter()?;
        let first = incoming.next().await.ok_or_else(|| Status::invalid_argument("empty append stream"))??;
        let group_id = first.group_id;
        let handle = self.groups.get(group_id)?;
        let failure: Arc<Mutex<Option<Status>>> = Arc::default();
        let requests = {
            let (handle, failure, streamed) = (handle.clone(), Arc::clone(&failure), self.streamed_appends.clone());
            let fail = move |status: Status| {
                *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
                None
            };
            let incoming = futures::stream::iter([Ok(first)]).chain(incoming).take_until(self.groups.closed());
            tokio_stream::StreamExt::map_while(incoming, move |m: Result<AppendMessage, Status>| {
                let m = match m {
                    Ok(m) if m.group_id == group_id => m,
                    Ok(m) => {
                        return fail(Status::invalid_argument(format!(
                            "append stream for group {group_id} carried a message for group {}",
                            m.group_id
                        )))
                    }
                    Err(status) => return fail(status),
                };
                let rpc = match m.rpc {
                    Ok(rpc) => rpc,
                    Err(e) => return fail(invalid(e)),
                };
                streamed.inc();
                if !(handle.quiescence.is_asleep() && carries_nothing_new(&handle.raft, &rpc)) {
                    handle.wake(group_id);
                }
                Some(rpc)
            })
        };
        let answers = handle.raft.stream_append(requests).map(move |r| match r {
            Ok(result) => Ok(RaftMessage { group_id, body: rpc_codec::encode_stream_result(&result).into() }),
            Err(fatal) => Err(stopped(fatal)),
        });
        // The last answer: why the requests stopped, if they stopped on a bad one. The gate is
        // held until then, and the stream counted open (or until the call is dropped).
        let open = GaugeGuard::hold(&self.open_streams);
        let last = futures::stream::once(async move {
            drop((admitted, open));
            failure.lock().unwrap_or_else(PoisonError::into_inner).take()
        })
        .filter_map(|f| async move { f.map(Err) });
        Ok(Box::pin(answers.chain(last)))
    }
}

fn invalid(e: CodecError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft group stopped: {e}"))
}

fn reply(group_id: u64, body: Vec<u8>) -> Response<RaftMessage> {
    Response::new(RaftMessage { group_id, body: body.into() })
}

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let _admitted = self.groups.enter()?;
        let m = request.into_inner();
        let handle = self.groups.get(m.group_id)?;
        let rpc = rpc_codec::decode_append_request(&m.body).map_err(invalid)?;
        self.unary_appends.inc();
        // Processed either way (it renews the follower's view of its leader); it only does
        // not restart the ticker when it brings nothing (raft/quiesce.rs).
        let asleep_heartbeat = handle.quiescence.is_asleep() && carries_nothing_new(&handle.raft, &rpc);
        let raft = if asleep_heartbeat { handle.raft } else { handle.woken(m.group_id).raft };
        let resp = raft.append_entries(rpc).await.map_err(stopped)?;
        Ok(reply(m.group_id, rpc_codec::encode_append_response(&resp)))
    }

    type StreamAppendStream = AppendAnswers;

    /// Served by `append_stream.rs` ([`RaftRoutes`](super::append_stream::RaftRoutes)), which
    /// decodes the requests without tonic's copy; this one serves the same for a server
    /// built without that route.
    async fn stream_append(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        self.append_stream(request.into_inner().map(|m| m.map(AppendMessage::from))).await.map(Response::new)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let _admitted = self.groups.enter()?;
        let m = request.into_inner();
        let raft = self.groups.get(m.group_id)?.woken(m.group_id).raft;
        let rpc = rpc_codec::decode_vote_request(&m.body).map_err(invalid)?;
        let resp = raft.vote(rpc).await.map_err(stopped)?;
        Ok(reply(m.group_id, rpc_codec::encode_vote_response(&resp)))
    }

    /// An asleep replica whose leader's broker answers pings refuses: the candidate has not
    /// heard the leader only because the leader sleeps. It wakes the leader instead, whose
    /// heartbeats then reach the candidate. Unless the candidate *is* that leader: restarted,
    /// its broker answers pings but it leads nothing, so refusing would leave the group
    /// leaderless (the wake would reach a broker that no longer leads it).
    ///
    /// A replica woken less than an election timeout ago counts as asleep here: a candidate's
    /// pre-votes reach every replica at once, and an asleep follower's wake of the leader can
    /// arrive just before the leader's own pre-vote, whose lease still dates from before it
    /// slept (`Quiescence::drowsy`); granting it moved the leadership of an idle group to a
    /// broker that had merely restarted.
    async fn pre_vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let _admitted = self.groups.enter()?;
        let m = request.into_inner();
        let handle = self.groups.get(m.group_id)?;
        let rpc = rpc_codec::decode_vote_request(&m.body).map_err(invalid)?;
        let cx = self.groups.quiesce_context().filter(|cx| handle.quiescence.drowsy(cx.alive_within));
        if let Some(cx) = cx {
            let metrics = handle.raft.metrics().borrow_watched().clone();
            let candidate = rpc.vote.leader_id.voted_for;
            if let Some(leader) = metrics.current_leader.filter(|l| *l != candidate) {
                // The asleep leader itself wakes: its heartbeats tell the candidate.
                if leader == metrics.id || cx.liveness.alive(leader, cx.alive_within) {
                    tracing::debug!(
                        group = m.group_id,
                        leader,
                        "asleep or just woken: pre-vote refused, waking the leader"
                    );
                    if leader == metrics.id {
                        handle.quiescence.wake(&handle.raft);
                    } else {
                        let (peers, group, wait) = (cx.peers.clone(), m.group_id, cx.alive_within);
                        tokio::spawn(async move { peers.wake(leader, group, wait).await });
                    }
                    // Asleep, its last entry is its last applied one (it slept caught up, and
                    // any new entry would have woken it); just woken, possibly a little more
                    // (a refusal's log id only delays the candidate's next try).
                    let refused =
                        VoteResponse { vote: metrics.vote, vote_granted: false, last_log_id: metrics.last_applied };
                    return Ok(reply(m.group_id, rpc_codec::encode_vote_response(&refused)));
                }
            }
        }
        let raft = handle.woken(m.group_id).raft;
        let resp = raft.pre_vote(rpc).await.map_err(stopped)?;
        Ok(reply(m.group_id, rpc_codec::encode_vote_response(&resp)))
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        if self.groups.is_stopping() {
            return Err(Status::unavailable("this broker is shutting down: it takes no leadership"));
        }
        let _admitted = self.groups.enter()?;
        let m = request.into_inner();
        let raft = self.groups.get(m.group_id)?.woken(m.group_id).raft;
        let rpc = rpc_codec::decode_transfer_request(&m.body).map_err(invalid)?;
        let resp = raft.handle_transfer_leader(rpc).await.map_err(stopped)?;
        Ok(reply(m.group_id, rpc_codec::encode_transfer_response(&resp)))
    }

    /// Sleeps this replica if it is caught up with the asking leader (raft/quiesce.rs).
    async fn quiesce(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let _admitted = self.groups.enter()?;
        let m = request.into_inner();
        let handle = self.groups.get(m.group_id)?;
        let (vote, committed) = rpc_codec::decode_quiesce_request(&m.body).map_err(invalid)?;
        let accepted = self.groups.quiesce_context().is_some() && follower_may_sleep(&handle.raft, &vote, committed);
        if accepted {
            handle.quiescence.sleep(&handle.raft);
            // Caught up with its leader: a follower serves no reads of its recent entries.
            handle.store.forget_recent();
        }
        Ok(reply(m.group_id, rpc_codec::encode_quiesce_response(accepted)))
    }

    async fn wake(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let _admitted = self.groups.enter()?;
        let m = request.into_inner();
        self.groups.get(m.group_id)?.woken(m.group_id);
        Ok(reply(m.group_id, Vec::new()))
    }

    async fn ping(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let from = request.into_inner().group_id;
        if let Some(cx) = self.groups.quiesce_context() {
            cx.liveness.heard(from);
        }
        Ok(reply(from, Vec::new()))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let _admitted = self.groups.enter()?;
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let group_id = first.group_id;
        let handle = self.groups.get(group_id)?.woken(group_id);
        let vote = rpc_codec::decode_vote(&first.vote).map_err(invalid)?;
        let meta = decode_snapshot_meta(&first.meta).map_err(invalid)?;
        let dir = handle.incoming_dir.clone();
        let result = async {
            let slices = receive_segments(&dir, &mut stream).await?;
            let snapshot = Snapshot { meta, snapshot: PartitionSnapshot { slices } };
            handle.raft.install_full_snapshot(vote, snapshot).await.map_err(stopped)
        }
        .await;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(group_id, dir = %dir.display(), error = %e, "incoming snapshot directory not removed");
        }
        Ok(reply(group_id, rpc_codec::encode_vote(&result?.vote)))
    }
}

/// Writes the streamed segments into `dir` (replacing what was there) and returns them as
/// slices. Durability: none needed; the install copies them durably.
async fn receive_segments(dir: &PathBuf, stream: &mut Streaming<SnapshotChunk>) -> Result<Vec<SegmentSlice>, Status> {
    let io = |e: std::io::Error| Status::internal(format!("writing incoming snapshot to {}: {e}", dir.display()));
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut files: Vec<(u64, File, u64)> = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if files.last().is_none_or(|(base, _, _)| *base != chunk.base_offset) {
            if files.last().is_some_and(|(base, _, _)| *base > chunk.base_offset) {
                return Err(Status::invalid_argument("snapshot segments out of offset order"));
            }
            let path = dir.join(segment_file_name(chunk.base_offset, LOG_EXT));
            let file = File::options().create(true).truncate(true).read(true).write(true).open(path).map_err(io)?;
            files.push((chunk.base_offset, file, 0));
        }
        if let Some((_, file, len)) = files.last_mut() {
            file.write_all(&chunk.data).map_err(io)?;
            *len += chunk.data.len() as u64;
        }
    }
    Ok(files
        .into_iter()
        .map(|(base_offset, file, len)| SegmentSlice { base_offset, file: Arc::new(file), len })
        .collect())
}
