//! The client side of broker-to-broker Raft traffic: openraft's network traits over gRPC
//! (`tidelog.internal.v1.RaftTransport`, served by `raft/transport.rs`).
//!
//! One lazily connected HTTP/2 channel per peer broker, shared by every group that replicates
//! to it (HTTP/2 multiplexes their calls on one connection), and a second one for pings only.
//! Every call carries its group id.
//! Each call is bounded by openraft's soft TTL; any failure is reported as `Unreachable`, so
//! openraft backs off instead of hammering a dead peer.
//!
//! Replication is pipelined: while a group's leader has entries to send to a peer, they go on
//! one `StreamAppend` call per (group, peer), each request sent without waiting for the answers
//! to the earlier ones ([`PeerClient::stream_append`]), each framed by hand around the stored
//! batch payloads (`append_stream.rs`: no copy in user space); HTTP/2 keeps them in order and
//! the follower answers in order; a stream with nothing new for a second ends, so idle groups
//! hold none of the connection's HTTP/2 stream slots. Heartbeats, probes and a replica paced
//! by the catch-up throttle go one unary AppendEntries at a time. Each active group's
//! heartbeat is its own call; idle groups go quiet instead (raft/quiesce.rs), and the
//! brokers' liveness is one ping per peer ([`Peers::ping`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{stream_append_sequential, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use tidelog_proto::internal::raft_transport_client::RaftTransportClient;
use tidelog_proto::internal::{RaftMessage, SnapshotChunk};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use super::append_stream;
use super::codec::{encode_snapshot_meta, CodecError};
use super::rpc_codec;
use super::state_machine::PartitionSnapshotOf;
use super::throttle::Throttle;
use super::types::{LogId, PartitionTc, Vote};

/// A `StreamAppend` call with no new request for this long ends ([`PeerClient::stream_append`]).
const STREAM_IDLE: Duration = Duration::from_secs(1);
/// The largest answer read on a `StreamAppend` call (tonic's default; an answer is a few bytes).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Bytes of segment data per snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// The connections to one peer. Pings have their own: on the shared one, a saturated peer
/// refuses streams past its limit and resets timed-out ones, which a ping would read as a
/// dead broker (`raft/quiesce.rs` `Liveness` counts a refused ping as one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Lane {
    /// Every group's Raft calls and the broker-level quiesce and wake calls.
    Calls,
    /// Pings.
    Liveness,
}

/// What one ping found (see [`Peers::ping`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ping {
    Answered,
    Refused,
    NoAnswer,
}

/// The peers' Raft endpoints (`http://host:port`) by node id, and two channels per peer
/// ([`Lane`]).
#[derive(Clone, Debug, Default)]
pub struct Peers {
    inner: Arc<Mutex<PeersInner>>,
    /// Paces what is sent to replicas catching up for a move (`throttle.rs`).
    throttle: Arc<Throttle>,
}

#[derive(Debug, Default)]
struct PeersInner {
    addresses: BTreeMap<u64, String>,
    channels: BTreeMap<(u64, Lane), Channel>,
    /// TLS for every channel (addresses are then `https://`).
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Peers that answered `StreamAppend` with UNIMPLEMENTED (an older broker during a
    /// rolling upgrade): replication to them goes one call at a time.
    unary_only: BTreeSet<u64>,
}

impl Peers {
    pub fn new(addresses: BTreeMap<u64, String>) -> Self {
        Self::with_tls(addresses, None)
    }

    /// Peers reached over TLS when `tls` is given (their addresses must be `https://`).
    pub fn with_tls(addresses: BTreeMap<u64, String>, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(PeersInner {
                addresses,
                channels: BTreeMap::new(),
                tls,
                unary_only: BTreeSet::new(),
            })),
            throttle: Arc::default(),
        }
    }

    /// The catch-up throttle every group's replication to this broker's peers goes through.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Where to call `node` from now on (`scheme://host:port`): a broker learnt from the
    /// metadata. A changed address drops the old channel.
    pub fn set_address(&self, node: u64, address: String) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.addresses.get(&node) != Some(&address) {
            inner.channels.retain(|(n, _), _| *n != node);
            inner.unary_only.remove(&node);
            inner.addresses.insert(node, address);
        }
    }

    /// Whether calls go over TLS.
    pub fn scheme(&self) -> &'static str {
        if self.inner.lock().unwrap_or_else(PoisonError::into_inner).tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The channel to `node` for Raft and broker calls, created (unconnected) on first use.
    pub fn channel(&self, node: u64) -> Result<Channel, Unreachable<PartitionTc>> {
        self.channel_on(node, Lane::Calls)
    }

    fn channel_on(&self, node: u64, lane: Lane) -> Result<Channel, Unreachable<PartitionTc>> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = inner.channels.get(&(node, lane)) {
            return Ok(c.clone());
        }
        let addr = inner
            .addresses
            .get(&node)
            .ok_or_else(|| Unreachable::from_string(format!("no address known for node {node}")))?;
        let mut endpoint = Endpoint::from_shared(addr.clone()).map_err(|e| Unreachable::new(&e))?;
        if let Some(tls) = inner.tls.clone() {
            endpoint = endpoint.tls_config(tls).map_err(|e| Unreachable::new(&e))?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            // A frozen peer (SIGSTOP) keeps the TCP connection open: HTTP/2 pings notice it,
            // so proxied group sessions and forwarded calls fail instead of hanging.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(4))
            .keep_alive_while_idle(true)
            .connect_lazy();
        inner.channels.insert((node, lane), channel.clone());
        Ok(channel)
    }

    fn streams_to(&self, node: u64) -> bool {
        !self.inner.lock().unwrap_or_else(PoisonError::into_inner).unary_only.contains(&node)
    }

    fn set_unary_only(&self, node: u64) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).unary_only.insert(node);
    }

    /// Broker-level calls (quiescing, liveness): one short unary call to `node`, `None` on
    /// any failure or after `timeout`.
    async fn unary<F, Fut>(&self, node: u64, msg: RaftMessage, timeout: Duration, f: F) -> Option<Bytes>
    where
        F: FnOnce(RaftTransportClient<Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let client = RaftTransportClient::new(self.channel(node).ok()?);
        match tokio::time::timeout(timeout, f(client, msg)).await {
            Ok(Ok(resp)) => Some(resp.into_inner().body),
            _ => None,
        }
    }

    /// Asks `node` to put its replica of `group` to sleep (raft/quiesce.rs); whether it agreed.
    pub async fn quiesce(
        &self,
        node: u64,
        group: u64,
        vote: &Vote,
        committed: Option<&LogId>,
        timeout: Duration,
    ) -> bool {
        let msg = RaftMessage { group_id: group, body: rpc_codec::encode_quiesce_request(vote, committed).into() };
        let reply = self.unary(node, msg, timeout, |mut c, m| async move { c.quiesce(m).await }).await;
        reply.is_some_and(|b| rpc_codec::decode_quiesce_response(&b).unwrap_or(false))
    }

    /// Wakes `node`'s replica of `group` (fire and forget: a failure changes nothing).
    pub async fn wake(&self, node: u64, group: u64, timeout: Duration) {
        let msg = RaftMessage { group_id: group, body: Bytes::new() };
        let _ = self.unary(node, msg, timeout, |mut c, m| async move { c.wake(m).await }).await;
    }

    /// Pings `node` from `from`: answered, refused (an error within `timeout`: no process
    /// listens, the connection broke), or no answer within `timeout` (a frozen peer, or one of
    /// the two brokers too busy to answer in time).
    pub async fn ping(&self, node: u64, from: u64, timeout: Duration) -> Ping {
        let msg = RaftMessage { group_id: from, body: Bytes::new() };
        let Ok(channel) = self.channel_on(node, Lane::Liveness) else { return Ping::Refused };
        let mut client = RaftTransportClient::new(channel);
        match tokio::time::timeout(timeout, client.ping(msg)).await {
            Ok(Ok(_)) => Ping::Answered,
            Ok(Err(_)) => Ping::Refused,
            Err(_) => Ping::NoAnswer,
        }
    }

    /// The network of one Raft group, for `Raft::new`.
    pub fn group(&self, group_id: u64) -> GroupNetwork {
        GroupNetwork { group_id, peers: self.clone() }
    }
}

/// openraft's network factory for one group.
#[derive(Clone, Debug)]
pub struct GroupNetwork {
    group_id: u64,
    peers: Peers,
}

impl RaftNetworkFactory<PartitionTc> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, _node: &openraft::EmptyNode) -> PeerClient {
        PeerClient { group_id: self.group_id, target, peers: self.peers.clone() }
    }
}

/// One group's client of one peer.
#[derive(Debug)]
pub struct PeerClient {
    group_id: u64,
    target: u64,
    peers: Peers,
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<PartitionTc> {
    Unreachable::from_string(e.to_string())
}

impl PeerClient {
    async fn call<F, Fut>(&self, option: &RPCOption, body: Vec<u8>, f: F) -> Result<Bytes, RPCError<PartitionTc>>
    where
        F: FnOnce(RaftTransportClient<Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let client = RaftTransportClient::new(self.peers.channel(self.target)?);
        let msg = RaftMessage { group_id: self.group_id, body: body.into() };
        match tokio::time::timeout(option.soft_ttl(), f(client, msg)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner().body),
            Ok(Err(status)) => Err(RPCError::Unreachable(unreachable(status))),
            Err(_) => Err(RPCError::Unreachable(unreachable(format!(
                "no answer from node {} within {:?}",
                self.target,
                option.soft_ttl()
            )))),
        }
    }
}

/// The answers of one `StreamAppend` call, and how many requests the call has sent.
struct AppendStream {
    answers: Streaming<RaftMessage>,
    sent: Arc<AtomicU64>,
    answered: u64,
    /// How many requests were sent when the last TTL expired without an answer.
    sent_at_last_tick: u64,
    target: u64,
    ttl: Duration,
}

impl AppendStream {
    /// The next answer; `None` when the call ended. An error ends it too.
    async fn next(&mut self) -> Option<Result<StreamAppendResult<PartitionTc>, RPCError<PartitionTc>>> {
        loop {
            match tokio::time::timeout(self.ttl, self.answers.message()).await {
                Ok(Ok(Some(m))) => {
                    self.answered += 1;
                    return Some(rpc_codec::decode_stream_result(&m.body).map_err(bad_reply));
                }
                Ok(Ok(None)) => return None,
                Ok(Err(status)) => return Some(Err(RPCError::Unreachable(unreachable(status)))),
                // Idle, or only requests younger than a whole TTL unanswered: the stream stays
                // open. A request already sent at the previous expiry and still unanswered has
                // waited at least a TTL: the peer is too slow or gone.
                Err(_) if self.answered >= self.sent_at_last_tick => {
                    self.sent_at_last_tick = self.sent.load(Ordering::Acquire);
                }
                Err(_) => {
                    let msg = format!("no answer from node {} within {:?}", self.target, self.ttl);
                    return Some(Err(RPCError::Unreachable(unreachable(msg))));
                }
            }
        }
    }
}

impl PeerClient {
    /// One `StreamAppend` call carrying `requests`; its answers as openraft's stream results.
    async fn open_append_stream<'s, S>(
        &'s mut self,
        requests: S,
        option: RPCOption,
    ) -> Result<BoxStream<'s, Result<StreamAppendResult<PartitionTc>, RPCError<PartitionTc>>>, RPCError<PartitionTc>>
    where
        S: Stream<Item = AppendEntriesRequest<PartitionTc>> + Send + Unpin + 'static,
    {
        let (group_id, target, ttl) = (self.group_id, self.target, option.soft_ttl());
        let sent = Arc::new(AtomicU64::new(0));
        // The requests end (openraft sees the answers end and starts a new session) when the
        // pair gets marked for the catch-up throttle, whose pacing is one call at a time, or at
        // an entry that cannot be encoded (only a proposal not yet stored could not be).
        let messages = {
            let (sent, throttle) = (Arc::clone(&sent), Arc::clone(&self.peers.throttle));
            tokio_stream::StreamExt::map_while(requests, move |rpc| {
                if throttle.request_budget(group_id, target).is_some() {
                    return None;
                }
                // The follower's message limit bounds what it reads; nothing here needs one.
                match rpc_codec::encode_append_body(&rpc).map_err(|e| e.to_string()).and_then(|body| {
                    append_stream::frame_request(group_id, body, usize::MAX).map_err(|s| s.message().to_string())
                }) {
                    Ok(chunks) => {
                        sent.fetch_add(1, Ordering::Release);
                        Some(chunks)
                    }
                    Err(e) => {
                        tracing::warn!(group_id, target, error = %e, "append request not encodable; stream ended");
                        None
                    }
                }
            })
        };
        // An idle stream ends: it would hold one of the connection's HTTP/2 stream slots
        // (`api::MAX_STREAMS_PER_CONNECTION`, shared by every group replicating to this peer)
        // for as long as its group lives. With thousands of groups per peer, streams of
        // groups that once replicated, most of them asleep since, took every slot, and
        // heartbeats and votes queued behind them until they timed out. The next entry
        // starts a new session (openraft resumes from the last acknowledged entry).
        let messages = futures::stream::unfold(Box::pin(messages), |mut messages| async move {
            match tokio::time::timeout(STREAM_IDLE, messages.next()).await {
                Ok(Some(m)) => Some((m, messages)),
                Ok(None) | Err(_) => None,
            }
        });
        let channel = self.peers.channel(target)?;
        let answers = match tokio::time::timeout(ttl, append_stream::call(channel, messages, MAX_ANSWER_BYTES)).await {
            Ok(Ok(answers)) => answers,
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(target, "peer has no StreamAppend: replicating to it one call at a time");
                self.peers.set_unary_only(target);
                return Err(RPCError::Unreachable(unreachable(status)));
            }
            Ok(Err(status)) => return Err(RPCError::Unreachable(unreachable(status))),
            Err(_) => {
                let msg = format!("no answer from node {target} within {ttl:?}");
                return Err(RPCError::Unreachable(unreachable(msg)));
            }
        };
        let state = AppendStream { answers, sent, answered: 0, sent_at_last_tick: 0, target, ttl };
        Ok(Box::pin(futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            let answer = state.next().await?;
            let failed = answer.is_err();
            Some((answer, (!failed).then_some(state)))
        })))
    }
}

fn bad_reply(e: CodecError) -> RPCError<PartitionTc> {
    RPCError::Unreachable(unreachable(format!("undecodable reply: {e}")))
}

impl RaftNetworkV2<PartitionTc> for PeerClient {
    type SnapshotData = super::PartitionSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<PartitionTc>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<PartitionTc>, RPCError<PartitionTc>> {
        let mut rpc = rpc;
        let encode = |rpc: &AppendEntriesRequest<PartitionTc>| {
            rpc_codec::encode_append_request(rpc).map_err(|e| RPCError::Unreachable(unreachable(e)))
        };
        let mut body = encode(&rpc)?;
        // A replica catching up for a move gets its entries in slices the throttle can pace
        // (openraft sends up to `max_payload_entries` at once): the first entries that fit
        // the throttle's request budget, answered as a partial success so the leader goes on
        // from there. Its commit point goes no further than what it was sent.
        let mut sent_to = None;
        if let Some(budget) = self.peers.throttle.request_budget(self.group_id, self.target) {
            if body.len() > budget && rpc.entries.len() > 1 {
                let keep = (rpc.entries.len() as u128 * budget as u128 / body.len() as u128).max(1) as usize;
                rpc.entries.truncate(keep);
                let last = rpc.entries.last().map(|e| e.log_id);
                if last.is_some() && rpc.leader_commit > last {
                    rpc.leader_commit = last;
                }
                sent_to = Some(last);
                body = encode(&rpc)?;
            }
        }
        self.peers.throttle.pace(self.group_id, self.target, body.len()).await;
        let reply = self.call(&option, body, |mut c, m| async move { c.append_entries(m).await }).await?;
        let resp = rpc_codec::decode_append_response(&reply).map_err(bad_reply)?;
        Ok(match (resp, sent_to) {
            (AppendEntriesResponse::Success, Some(last)) => AppendEntriesResponse::PartialSuccess(last),
            (resp, _) => resp,
        })
    }

    /// Replication as openraft streams it: every request after the first is sent without
    /// waiting for the answers to the earlier ones, on one `StreamAppend` call (HTTP/2 keeps
    /// them in order; the follower answers in order). A stream of one request (a heartbeat, a
    /// probe), a replica paced by the catch-up throttle, and a peer without `StreamAppend` go
    /// one unary call at a time instead.
    ///
    /// Timeouts: openraft's soft TTL bounds the call's setup; a request unanswered for between
    /// one and two TTLs ends the stream with an error; a stream with nothing new to replicate
    /// for [`STREAM_IDLE`] ends (openraft starts a new one for the next entries).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<PartitionTc>, RPCError<PartitionTc>>>, RPCError<PartitionTc>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<PartitionTc>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            // Fused: polled once more below after it may have ended.
            let mut input = input.fuse();
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            // The request stream of a heartbeat or a probe ends after its one request.
            let (more, second) = match input.next().now_or_never() {
                Some(None) => (false, None),
                Some(second) => (true, second),
                None => (true, None),
            };
            let throttled = self.peers.throttle.request_budget(self.group_id, self.target).is_some();
            let requests = futures::stream::iter([first]).chain(futures::stream::iter(second)).chain(input);
            if !more || throttled || !self.peers.streams_to(self.target) {
                return stream_append_sequential(self, requests, option).await;
            }
            self.open_append_stream(requests, option).await
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<PartitionTc>,
        option: RPCOption,
    ) -> Result<VoteResponse<PartitionTc>, RPCError<PartitionTc>> {
        let body = rpc_codec::encode_vote_request(&rpc);
        let reply = self.call(&option, body, |mut c, m| async move { c.vote(m).await }).await?;
        rpc_codec::decode_vote_response(&reply).map_err(bad_reply)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<PartitionTc>,
        option: RPCOption,
    ) -> Result<VoteResponse<PartitionTc>, RPCError<PartitionTc>> {
        let body = rpc_codec::encode_vote_request(&rpc);
        let reply = self.call(&option, body, |mut c, m| async move { c.pre_vote(m).await }).await?;
        rpc_codec::decode_vote_response(&reply).map_err(bad_reply)
    }

    /// A leader that stops (graceful shutdown) hands its leadership to an up-to-date follower,
    /// which then elects itself at once instead of after an election timeout.
    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<PartitionTc>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<PartitionTc>, RPCError<PartitionTc>> {
        let body = rpc_codec::encode_transfer_request(&rpc);
        let reply = self.call(&option, body, |mut c, m| async move { c.transfer_leader(m).await }).await?;
        rpc_codec::decode_transfer_response(&reply).map_err(bad_reply)
    }

    /// Streams the snapshot's segment slices in chunks (read with pread off the pinned files,
    /// so retention may delete them meanwhile). No overall timeout: a big snapshot takes what
    /// it takes; `cancel` (replication closed) stops it.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: PartitionSnapshotOf,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<PartitionTc>, StreamingError<PartitionTc>> {
        let channel = self.peers.channel(self.target)?;
        let (tx, rx) = mpsc::channel(4);
        let first = SnapshotChunk {
            group_id: self.group_id,
            vote: rpc_codec::encode_vote(&vote).into(),
            meta: encode_snapshot_meta(&snapshot.meta).into(),
            base_offset: 0,
            data: Bytes::new(),
        };
        let slices = snapshot.snapshot.slices;
        let (throttle, group, target) = (Arc::clone(&self.peers.throttle), self.group_id, self.target);
        let reader = tokio::spawn(async move {
            if tx.send(first).await.is_err() {
                return;
            }
            for slice in slices {
                let mut pos = 0u64;
                loop {
                    let n = usize::try_from(slice.len - pos).unwrap_or(SNAPSHOT_CHUNK_BYTES).min(SNAPSHOT_CHUNK_BYTES);
                    let file = Arc::clone(&slice.file);
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; n];
                        std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, pos).map(|()| buf)
                    })
                    .await;
                    let Ok(Ok(data)) = read else { return }; // the receiver sees a short stream
                    throttle.pace(group, target, data.len()).await;
                    pos += n as u64;
                    let chunk =
                        SnapshotChunk { base_offset: slice.base_offset, data: data.into(), ..SnapshotChunk::default() };
                    if tx.send(chunk).await.is_err() || pos >= slice.len {
                        break;
                    }
                }
            }
        });
        let mut client = RaftTransportClient::new(channel).max_encoding_message_size(2 * SNAPSHOT_CHUNK_BYTES);
        let call = client.install_snapshot(ReceiverStream::new(rx));
        let result = tokio::select! {
            r = call => r,
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
        };
        let reply = result.map_err(|s| StreamingError::Unreachable(unreachable(s)))?.into_inner().body;
        let vote = rpc_codec::decode_vote(&reply).map_err(|e| StreamingError::Unreachable(unreachable(e)))?;
        Ok(SnapshotResponse::new(vote))
    }
}
