//! A scripted fake broker: an in-process tonic server on `127.0.0.1:0` serving the four
//! services the SDK calls (`RecordService` in its byte-level wire view, `AdminService`,
//! `GroupService`, `OffsetService`), with just enough broker behaviour for the SDK to run
//! against it, and everything it was asked recorded for the test to assert on.
//!
//! Behaviour, and what the test controls:
//! - Produce: every request goes through the test's script ([`FakeBroker::on_produce`]), which
//!   says [`Produce::Append`] (the default), refuse with an error code and leader hint, refuse
//!   only once the stream's next request has arrived (so the batches behind are surely in
//!   flight), or append and then hang up without answering. Appends follow the broker's
//!   idempotence rules (the broker's `producer_state.rs`): a duplicate (same producer,
//!   base sequence and count as a recent batch) is answered with its original offset, a gap is
//!   OUT_OF_ORDER_SEQUENCE, an unknown producer must start at 0. Responses come in request
//!   order, as from the real broker.
//! - Subscribe: serves the partition logs (appended or seeded with [`FakeBroker::append`])
//!   from the requested offsets, then tails them live until the client goes away.
//! - Group sessions: the test is the coordinator. Every session request but heartbeats is
//!   handed to the test ([`FakeBroker::next_session_request`]), which answers with
//!   [`FakeBroker::push`] on the latest session. Commits are checked like the coordinator does:
//!   a member commit whose generation is not the group's current one (the last `Joined` pushed,
//!   or [`FakeBroker::set_generation`]) is ILLEGAL_GENERATION.
//! - Admin: DescribeCluster lists [`FakeBroker::set_cluster`] (default: this broker alone),
//!   DescribeTopic and ListOffsets answer from the topics added with [`FakeBroker::add_topic`].
//!
//! Invariants: the state lock is never held across an await; every task it spawns ends when
//! its client goes away or when the test's runtime is dropped (which also closes the listener),
//! so a fake lives exactly as long as its test.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use tidelog::proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use tidelog::proto::v1::group_service_server::{GroupService, GroupServiceServer};
use tidelog::proto::v1::offset_service_server::{OffsetService, OffsetServiceServer};
use tidelog::proto::v1::{
    offset_spec, session_request, session_response, BrokerInfo, CommitRequest, CommitResponse, CommittedOffset,
    CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeGroupRequest, DescribeGroupResponse, DescribeTopicRequest, DescribeTopicResponse,
    ErrorCode, FetchCommittedRequest, FetchCommittedResponse, JoinGroup, ListOffsetsRequest, ListOffsetsResponse,
    ListTopicsRequest, ListTopicsResponse, PartitionDescription, PartitionOffsetAtTime, SessionRequest,
    SessionResponse, SyncGroup, TopicDescription,
};
use tidelog::proto::wire::record_service_server::{RecordService, RecordServiceServer};
use tidelog::proto::wire::{self, start_position};
use tidelog::Record;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::WAIT;

/// What the fake does with one produce request (the test's script decides).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Produce {
    /// Append it as the broker would (idempotence rules included) and answer.
    Append,
    /// Store nothing; answer this code, with this leader address (NOT_LEADER's hint; may be
    /// empty: leader unknown).
    Refuse(ErrorCode, String),
    /// As `Refuse` with no hint, but answered only once the stream's next request has been
    /// read (or after [`WAIT`], counted in [`FakeBroker::gate_timeouts`]): the batches behind
    /// this one are in flight when the client learns of the error.
    RefuseAfterNext(ErrorCode),
    /// Append, then end the stream with UNAVAILABLE instead of answering (a connection lost
    /// after the broker stored the batch).
    AppendThenHangUp,
}

type ProduceScript = Box<dyn FnMut(&wire::ProduceRequest) -> Produce + Send>;

/// A produce request as the fake received it, and the code it answered (`Unspecified` = ok).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenProduce {
    pub request_id: u64,
    pub topic: String,
    pub partition: u32,
    pub producer_id: i64,
    pub base_sequence: i32,
    pub record_count: u32,
    pub crc32c: Option<u32>,
    /// The batch's record values (lossy UTF-8).
    pub values: Vec<String>,
    pub answer: ErrorCode,
    /// The offset answered, for an append or a duplicate.
    pub base_offset: Option<u64>,
}

/// A commit request as received, with the code answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenCommit {
    pub group: String,
    pub topic: String,
    pub generation: u32,
    pub member_id: String,
    pub offsets: BTreeMap<u32, u64>,
    pub answer: ErrorCode,
}

/// Group and fetch traffic in arrival order, across services (heartbeats are only counted).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    SessionOpened,
    Join(JoinGroup),
    Sync(SyncGroup),
    Leave,
    /// A session's request stream ended (the member closed or dropped it).
    SessionEnded,
    Commit(SeenCommit),
    /// A subscription: topic, partition → start offset.
    Subscribe(String, BTreeMap<u32, u64>),
}

/// A recent batch of one producer on one partition (for duplicate detection).
#[derive(Clone, Copy, Debug)]
struct Recent {
    base_sequence: i32,
    record_count: u32,
    base_offset: u64,
}

/// Batches a producer's recent list holds (the broker's `RECENT_BATCHES`).
const RECENT_BATCHES: usize = 5;

#[derive(Default)]
struct Inner {
    /// DescribeCluster's brokers; empty: this broker alone.
    cluster: Vec<String>,
    topics: BTreeMap<String, u32>,
    logs: HashMap<(String, u32), Vec<wire::Batch>>,
    producers: HashMap<(i64, String, u32), VecDeque<Recent>>,
    next_producer_id: i64,
    script: Option<ProduceScript>,
    produced: Vec<SeenProduce>,
    gate_timeouts: usize,
    /// Records sent to subscribers, per partition.
    served: HashMap<(String, u32), u64>,
    generation: u32,
    committed: HashMap<(String, String, u32), u64>,
    commits: Vec<SeenCommit>,
    events: Vec<Event>,
    heartbeats: Vec<u32>,
    sessions: usize,
    session_out: Option<mpsc::Sender<Result<SessionResponse, Status>>>,
}

struct State {
    addr: String,
    inner: Mutex<Inner>,
    /// Bumped on every append: live subscriptions wake on it.
    appended: watch::Sender<u64>,
    session_tx: mpsc::UnboundedSender<session_request::Kind>,
    session_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<session_request::Kind>>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle to a running fake broker (cheap to clone; see the module docs).
#[derive(Clone)]
pub struct FakeBroker(Arc<State>);

impl FakeBroker {
    /// Starts a fake broker on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (session_tx, session_rx) = mpsc::unbounded_channel();
        let inner = Inner { next_producer_id: 1000, ..Inner::default() };
        let state = Arc::new(State {
            addr,
            inner: Mutex::new(inner),
            appended: watch::channel(0).0,
            session_tx,
            session_rx: tokio::sync::Mutex::new(session_rx),
        });
        let svc = Service(Arc::clone(&state));
        let incoming = TcpListenerStream::new(listener);
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(RecordServiceServer::new(svc.clone()).max_decoding_message_size(16 << 20))
                .add_service(AdminServiceServer::new(svc.clone()))
                .add_service(GroupServiceServer::new(svc.clone()))
                .add_service(OffsetServiceServer::new(svc))
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                eprintln!("fake broker stopped: {e}");
            }
        });
        Self(state)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        &self.0.addr
    }

    /// What DescribeCluster lists (broker ids 1, 2, … in this order).
    pub fn set_cluster(&self, brokers: &[&str]) {
        self.0.lock().cluster = brokers.iter().map(|b| b.to_string()).collect();
    }

    pub fn add_topic(&self, name: &str, partitions: u32) {
        self.0.lock().topics.insert(name.to_string(), partitions);
    }

    /// Sets the script every produce request goes through from now on.
    pub fn on_produce(&self, script: impl FnMut(&wire::ProduceRequest) -> Produce + Send + 'static) {
        self.0.lock().script = Some(Box::new(script));
    }

    /// Every produce request received so far, in arrival order.
    pub fn produced(&self) -> Vec<SeenProduce> {
        self.0.lock().produced.clone()
    }

    /// How many `RefuseAfterNext` answers went out without the next request arriving in time.
    pub fn gate_timeouts(&self) -> usize {
        self.0.lock().gate_timeouts
    }

    /// The records stored in a partition: (offset, value as lossy UTF-8).
    pub fn stored(&self, topic: &str, partition: u32) -> Vec<(u64, String)> {
        let batches = self.0.lock().logs.get(&(topic.to_string(), partition)).cloned().unwrap_or_default();
        batches
            .into_iter()
            .flat_map(|b| tidelog::batch::decode_batch(topic, partition, b, 0).unwrap())
            .map(|r| (r.offset, String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()))
            .collect()
    }

    /// Appends one uncompressed batch of these values to a partition (wakes subscribers).
    pub fn append(&self, topic: &str, partition: u32, values: &[String]) {
        let records = values.iter().map(|v| Record::new(v.clone())).collect();
        let (payload, crc) = tidelog::batch::encode_records(records);
        let mut inner = self.0.lock();
        let log = inner.logs.entry((topic.to_string(), partition)).or_default();
        let base_offset = log_end(log);
        log.push(wire::Batch {
            base_offset,
            record_count: values.len() as u32,
            append_time_ms: append_time(base_offset),
            compression: 0,
            payload: Some(wire::batch::Payload::Records(payload)),
            crc32c: crc,
        });
        drop(inner);
        self.0.appended.send_modify(|v| *v += 1);
    }

    /// Records sent to subscribers of a partition so far.
    pub fn served(&self, topic: &str, partition: u32) -> u64 {
        self.0.lock().served.get(&(topic.to_string(), partition)).copied().unwrap_or(0)
    }

    /// Sets a group's committed offset (as if committed earlier).
    pub fn set_committed(&self, group: &str, topic: &str, partition: u32, offset: u64) {
        self.0.lock().committed.insert((group.to_string(), topic.to_string(), partition), offset);
    }

    /// The group's generation as the coordinator sees it; member commits of any other are fenced.
    pub fn set_generation(&self, generation: u32) {
        self.0.lock().generation = generation;
    }

    pub fn commits(&self) -> Vec<SeenCommit> {
        self.0.lock().commits.clone()
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().events.clone()
    }

    /// Group sessions opened so far.
    pub fn sessions(&self) -> usize {
        self.0.lock().sessions
    }

    /// Generations of the heartbeats received so far.
    pub fn heartbeats(&self) -> Vec<u32> {
        self.0.lock().heartbeats.clone()
    }

    /// The next session request other than a heartbeat, waiting up to [`WAIT`].
    pub async fn next_session_request(&self) -> session_request::Kind {
        let mut rx = self.0.session_rx.lock().await;
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(kind)) => kind,
            Ok(None) => panic!("session request channel closed"),
            Err(_) => panic!("no session request within {WAIT:?}"),
        }
    }

    /// Sends a response on the latest group session. A `Joined` also sets the group's
    /// generation (what commits are checked against).
    pub fn push(&self, kind: session_response::Kind) {
        let mut inner = self.0.lock();
        if let session_response::Kind::Joined(j) = &kind {
            inner.generation = j.generation;
        }
        let out = inner.session_out.clone().expect("no group session is open");
        drop(inner);
        out.try_send(Ok(SessionResponse { kind: Some(kind) })).expect("session response buffer full or closed");
    }
}

fn log_end(log: &[wire::Batch]) -> u64 {
    log.last().map_or(0, |b| b.base_offset + u64::from(b.record_count))
}

/// A deterministic append time for a batch at `offset`.
fn append_time(offset: u64) -> i64 {
    1_700_000_000_000 + offset as i64
}

/// The services, over the shared state.
#[derive(Clone)]
struct Service(Arc<State>);

/// How a produce request was settled, before it is answered.
enum Settled {
    Answer(wire::ProduceResponse),
    AnswerAfterNext(wire::ProduceResponse),
    HangUp,
}

impl State {
    /// Runs the script on one request and applies its verdict (under the lock, no await).
    fn settle(&self, req: &wire::ProduceRequest) -> Settled {
        let mut inner = self.lock();
        let verdict = inner.script.as_mut().map_or(Produce::Append, |s| s(req));
        let values = decode(req).unwrap_or_default();
        let mut resp = wire::ProduceResponse {
            request_id: req.request_id,
            topic: req.topic.clone(),
            partition: req.partition,
            ..Default::default()
        };
        let (answer, base_offset) = match &verdict {
            Produce::Append | Produce::AppendThenHangUp => match inner.append(req) {
                Ok(offset) => (ErrorCode::Unspecified, Some(offset)),
                Err(code) => (code, None),
            },
            Produce::Refuse(code, _) | Produce::RefuseAfterNext(code) => (*code, None),
        };
        inner.produced.push(SeenProduce {
            request_id: req.request_id,
            topic: req.topic.clone(),
            partition: req.partition,
            producer_id: req.producer_id,
            base_sequence: req.base_sequence,
            record_count: req.record_count,
            crc32c: req.crc32c,
            values,
            answer,
            base_offset,
        });
        drop(inner);
        if answer == ErrorCode::Unspecified {
            self.appended.send_modify(|v| *v += 1);
            resp.base_offset = base_offset.unwrap_or_default();
            resp.append_time_ms = append_time(resp.base_offset);
        } else {
            resp.error_code = answer as i32;
            resp.error_message = format!("fake broker: {answer:?}");
        }
        match verdict {
            Produce::Append => Settled::Answer(resp),
            Produce::Refuse(_, leader) => {
                resp.leader_address = leader;
                Settled::Answer(resp)
            }
            Produce::RefuseAfterNext(_) => Settled::AnswerAfterNext(resp),
            Produce::AppendThenHangUp => Settled::HangUp,
        }
    }
}

impl Inner {
    /// Appends a produce request's batch per the broker's rules; the base offset it has (a
    /// duplicate's original one), or the error code.
    fn append(&mut self, req: &wire::ProduceRequest) -> Result<u64, ErrorCode> {
        let partitions = *self.topics.get(&req.topic).ok_or(ErrorCode::UnknownTopic)?;
        if req.partition >= partitions {
            return Err(ErrorCode::UnknownPartition);
        }
        if decode(req).is_err() {
            return Err(ErrorCode::CorruptBatch);
        }
        let key = (req.producer_id, req.topic.clone(), req.partition);
        if req.producer_id > 0 {
            match self.producers.get(&key) {
                None if req.base_sequence != 0 => return Err(ErrorCode::UnknownProducer),
                None => {}
                Some(recent) => {
                    let dup = recent
                        .iter()
                        .find(|b| b.base_sequence == req.base_sequence && b.record_count == req.record_count);
                    if let Some(dup) = dup {
                        return Ok(dup.base_offset);
                    }
                    let expected = recent
                        .back()
                        .map_or(0, |b| tidelog::proto::sequence::increment(b.base_sequence, b.record_count));
                    if req.base_sequence != expected {
                        return Err(ErrorCode::OutOfOrderSequence);
                    }
                }
            }
        }
        let log = self.logs.entry((req.topic.clone(), req.partition)).or_default();
        let base_offset = log_end(log);
        let payload = match req.payload.clone() {
            Some(wire::produce_request::Payload::Records(b)) => wire::batch::Payload::Records(b),
            Some(wire::produce_request::Payload::CompressedRecords(b)) => wire::batch::Payload::CompressedRecords(b),
            None => return Err(ErrorCode::InvalidRequest),
        };
        log.push(wire::Batch {
            base_offset,
            record_count: req.record_count,
            append_time_ms: append_time(base_offset),
            compression: req.compression,
            payload: Some(payload),
            crc32c: req.crc32c.unwrap_or_default(),
        });
        if req.producer_id > 0 {
            let recent = self.producers.entry(key).or_default();
            if recent.len() == RECENT_BATCHES {
                recent.pop_front();
            }
            recent.push_back(Recent { base_sequence: req.base_sequence, record_count: req.record_count, base_offset });
        }
        Ok(base_offset)
    }
}

/// The record values of a produce request's batch (checking its CRC and record count).
fn decode(req: &wire::ProduceRequest) -> Result<Vec<String>, tidelog::Error> {
    let payload = match req.payload.clone() {
        Some(wire::produce_request::Payload::Records(b)) => wire::batch::Payload::Records(b),
        Some(wire::produce_request::Payload::CompressedRecords(b)) => wire::batch::Payload::CompressedRecords(b),
        None => return Err(tidelog::Error::Decode("no payload".into())),
    };
    let batch = wire::Batch {
        base_offset: 0,
        record_count: req.record_count,
        append_time_ms: 0,
        compression: req.compression,
        payload: Some(payload),
        crc32c: req.crc32c.unwrap_or_default(),
    };
    let records = tidelog::batch::decode_batch(&req.topic, req.partition, batch, 0)?;
    Ok(records
        .into_iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect())
}

#[tonic::async_trait]
impl RecordService for Service {
    type ProduceStream = ReceiverStream<Result<wire::ProduceResponse, Status>>;
    type SubscribeStream = ReceiverStream<Result<wire::SubscribeResponse, Status>>;

    async fn produce(
        &self,
        request: Request<Streaming<wire::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let state = Arc::clone(&self.0);
        tokio::spawn(async move {
            // A request read ahead while an answer waited for it.
            let mut carried: Option<wire::ProduceRequest> = None;
            loop {
                let req = match carried.take() {
                    Some(r) => r,
                    None => match inbound.next().await {
                        Some(Ok(r)) => r,
                        _ => return,
                    },
                };
                let resp = match state.settle(&req) {
                    Settled::Answer(resp) => resp,
                    Settled::AnswerAfterNext(resp) => {
                        match tokio::time::timeout(WAIT, inbound.next()).await {
                            Ok(Some(Ok(next))) => carried = Some(next),
                            Ok(_) => {
                                let _ = tx.send(Ok(resp)).await;
                                return;
                            }
                            Err(_) => state.lock().gate_timeouts += 1,
                        }
                        resp
                    }
                    Settled::HangUp => {
                        let _ = tx.send(Err(Status::unavailable("fake broker: scripted hang-up"))).await;
                        return;
                    }
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn subscribe(
        &self,
        request: Request<wire::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        let starts = {
            let mut inner = self.0.lock();
            let partitions = *inner.topics.get(&req.topic).ok_or_else(|| Status::not_found("unknown topic"))?;
            let wanted: Vec<(u32, Option<&wire::StartPosition>)> = if req.partitions.is_empty() {
                (0..partitions).map(|p| (p, req.start.as_ref())).collect()
            } else {
                req.partitions.iter().map(|p| (p.partition, p.start.as_ref().or(req.start.as_ref()))).collect()
            };
            let mut starts = BTreeMap::new();
            for (p, start) in wanted {
                if p >= partitions {
                    return Err(Status::not_found(format!("no partition {p}")));
                }
                let end = inner.logs.get(&(req.topic.clone(), p)).map_or(0, |l| log_end(l));
                let offset = match start.and_then(|s| s.position) {
                    Some(start_position::Position::Offset(o)) if o > end => {
                        return Err(Status::out_of_range(format!("offset {o} is past the end {end}")));
                    }
                    Some(start_position::Position::Offset(o)) => o,
                    Some(start_position::Position::Latest(_)) => end,
                    _ => 0,
                };
                starts.insert(p, offset);
            }
            inner.events.push(Event::Subscribe(req.topic.clone(), starts.clone()));
            starts
        };
        let (tx, rx) = mpsc::channel(16);
        let state = Arc::clone(&self.0);
        let topic = req.topic;
        tokio::spawn(async move {
            let mut appended = state.appended.subscribe();
            let mut positions = starts;
            loop {
                appended.borrow_and_update();
                let mut responses = Vec::new();
                {
                    let mut inner = state.lock();
                    for (p, pos) in positions.iter_mut() {
                        let log = inner.logs.get(&(topic.clone(), *p)).cloned().unwrap_or_default();
                        let end = log_end(&log);
                        let batches: Vec<wire::Batch> =
                            log.into_iter().filter(|b| b.base_offset + u64::from(b.record_count) > *pos).collect();
                        if batches.is_empty() {
                            continue;
                        }
                        *inner.served.entry((topic.clone(), *p)).or_default() += end - *pos;
                        let read_from = *pos;
                        *pos = end;
                        responses.push(wire::SubscribeResponse {
                            partition: *p,
                            batches,
                            high_watermark: end,
                            read_from,
                            throttle_time_ms: 0,
                        });
                    }
                }
                for r in responses {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = appended.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn init_producer(
        &self,
        _request: Request<wire::InitProducerRequest>,
    ) -> Result<Response<wire::InitProducerResponse>, Status> {
        let mut inner = self.0.lock();
        inner.next_producer_id += 1;
        Ok(Response::new(wire::InitProducerResponse { producer_id: inner.next_producer_id, producer_epoch: 0 }))
    }
}

#[tonic::async_trait]
impl AdminService for Service {
    async fn create_topic(&self, _: Request<CreateTopicRequest>) -> Result<Response<CreateTopicResponse>, Status> {
        Err(Status::unimplemented("fake broker: add topics with FakeBroker::add_topic"))
    }

    async fn add_broker(
        &self,
        _: Request<tidelog::proto::v1::AddBrokerRequest>,
    ) -> Result<Response<tidelog::proto::v1::AddBrokerResponse>, Status> {
        Err(Status::unimplemented("fake broker: no membership"))
    }

    async fn alter_partition_reassignments(
        &self,
        _: Request<tidelog::proto::v1::AlterPartitionReassignmentsRequest>,
    ) -> Result<Response<tidelog::proto::v1::AlterPartitionReassignmentsResponse>, Status> {
        Err(Status::unimplemented("fake broker: no reassignment"))
    }

    async fn list_partition_reassignments(
        &self,
        _: Request<tidelog::proto::v1::ListPartitionReassignmentsRequest>,
    ) -> Result<Response<tidelog::proto::v1::ListPartitionReassignmentsResponse>, Status> {
        Err(Status::unimplemented("fake broker: no reassignment"))
    }

    async fn remove_broker(
        &self,
        _: Request<tidelog::proto::v1::RemoveBrokerRequest>,
    ) -> Result<Response<tidelog::proto::v1::RemoveBrokerResponse>, Status> {
        Err(Status::unimplemented("fake broker: no membership"))
    }

    async fn alter_topic_config(
        &self,
        _: Request<tidelog::proto::v1::AlterTopicConfigRequest>,
    ) -> Result<Response<tidelog::proto::v1::AlterTopicConfigResponse>, Status> {
        Err(Status::unimplemented("fake broker: topics are not altered"))
    }

    async fn create_partitions(
        &self,
        _: Request<tidelog::proto::v1::CreatePartitionsRequest>,
    ) -> Result<Response<tidelog::proto::v1::CreatePartitionsResponse>, Status> {
        Err(Status::unimplemented("fake broker: topics keep their partitions"))
    }

    async fn delete_records(
        &self,
        _: Request<tidelog::proto::v1::DeleteRecordsRequest>,
    ) -> Result<Response<tidelog::proto::v1::DeleteRecordsResponse>, Status> {
        Err(Status::unimplemented("fake broker: records are not deleted"))
    }

    async fn delete_topic(&self, _: Request<DeleteTopicRequest>) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("fake broker"))
    }

    async fn list_topics(&self, _: Request<ListTopicsRequest>) -> Result<Response<ListTopicsResponse>, Status> {
        let inner = self.0.lock();
        let topics = inner.topics.iter().map(|(name, n)| describe(&inner, name, *n)).collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let name = request.into_inner().name;
        let inner = self.0.lock();
        let n = *inner.topics.get(&name).ok_or_else(|| Status::not_found(format!("no topic {name}")))?;
        Ok(Response::new(DescribeTopicResponse { topic: Some(describe(&inner, &name, n)) }))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let req = request.into_inner();
        let inner = self.0.lock();
        let n = *inner.topics.get(&req.topic).ok_or_else(|| Status::not_found("unknown topic"))?;
        let partitions = if req.partitions.is_empty() { (0..n).collect() } else { req.partitions };
        let latest = matches!(req.spec.and_then(|s| s.spec), Some(offset_spec::Spec::Latest(_)));
        let offsets = partitions
            .into_iter()
            .map(|p| {
                let end = inner.logs.get(&(req.topic.clone(), p)).map_or(0, |l| log_end(l));
                PartitionOffsetAtTime { partition: p, offset: if latest { end } else { 0 }, timestamp_ms: -1 }
            })
            .collect();
        Ok(Response::new(ListOffsetsResponse { offsets }))
    }

    async fn describe_cluster(
        &self,
        _: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        let inner = self.0.lock();
        let addrs = if inner.cluster.is_empty() { vec![self.0.addr.clone()] } else { inner.cluster.clone() };
        let brokers = addrs
            .into_iter()
            .zip(1..)
            .map(|(address, id)| BrokerInfo { id, address, role: String::new() })
            .collect::<Vec<_>>();
        Ok(Response::new(DescribeClusterResponse { cluster_id: "fake".into(), controller_id: 1, brokers }))
    }
}

fn describe(inner: &Inner, name: &str, partitions: u32) -> TopicDescription {
    TopicDescription {
        name: name.to_string(),
        partition_count: partitions,
        replication_factor: 1,
        config: None,
        config_overrides: Vec::new(),
        partitions: (0..partitions)
            .map(|p| {
                let end = inner.logs.get(&(name.to_string(), p)).map_or(0, |l| log_end(l));
                PartitionDescription {
                    partition: p,
                    high_watermark: end,
                    log_end_offset: end,
                    leader_id: 1,
                    replica_ids: vec![1],
                    in_sync_replica_ids: vec![1],
                    ..Default::default()
                }
            })
            .collect(),
        created_at_ms: 0,
    }
}

#[tonic::async_trait]
impl GroupService for Service {
    type SessionStream = ReceiverStream<Result<SessionResponse, Status>>;

    // Group administration is not part of what these tests script.
    async fn list_groups(
        &self,
        _request: Request<tidelog::proto::v1::ListGroupsRequest>,
    ) -> Result<Response<tidelog::proto::v1::ListGroupsResponse>, Status> {
        Err(Status::unimplemented("the fake broker does not administer groups"))
    }

    async fn delete_group(
        &self,
        _request: Request<tidelog::proto::v1::DeleteGroupRequest>,
    ) -> Result<Response<tidelog::proto::v1::DeleteGroupResponse>, Status> {
        Err(Status::unimplemented("the fake broker does not administer groups"))
    }

    async fn reset_offsets(
        &self,
        _request: Request<tidelog::proto::v1::ResetOffsetsRequest>,
    ) -> Result<Response<tidelog::proto::v1::ResetOffsetsResponse>, Status> {
        Err(Status::unimplemented("the fake broker does not administer groups"))
    }

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        {
            let mut inner = self.0.lock();
            inner.sessions += 1;
            inner.session_out = Some(tx);
            inner.events.push(Event::SessionOpened);
        }
        let state = Arc::clone(&self.0);
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                let Some(kind) = req.kind else { continue };
                let event = match &kind {
                    session_request::Kind::Heartbeat(h) => {
                        state.lock().heartbeats.push(h.generation);
                        continue;
                    }
                    session_request::Kind::Join(j) => Event::Join(j.clone()),
                    session_request::Kind::Sync(s) => Event::Sync(s.clone()),
                    session_request::Kind::Leave(_) => Event::Leave,
                };
                state.lock().events.push(event);
                let _ = state.session_tx.send(kind);
            }
            state.lock().events.push(Event::SessionEnded);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn describe_group(
        &self,
        _: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        Err(Status::unimplemented("fake broker"))
    }
}

#[tonic::async_trait]
impl OffsetService for Service {
    type CommitStream = ReceiverStream<Result<CommitResponse, Status>>;

    async fn commit(&self, request: Request<Streaming<CommitRequest>>) -> Result<Response<Self::CommitStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let state = Arc::clone(&self.0);
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                let answer = {
                    let mut inner = state.lock();
                    let member = req.generation != 0 || !req.member_id.is_empty();
                    let answer = if member && req.generation != inner.generation {
                        ErrorCode::IllegalGeneration
                    } else {
                        ErrorCode::Unspecified
                    };
                    if answer == ErrorCode::Unspecified {
                        for o in &req.offsets {
                            inner.committed.insert((req.group.clone(), req.topic.clone(), o.partition), o.offset);
                        }
                    }
                    let seen = SeenCommit {
                        group: req.group.clone(),
                        topic: req.topic.clone(),
                        generation: req.generation,
                        member_id: req.member_id.clone(),
                        offsets: req.offsets.iter().map(|o| (o.partition, o.offset)).collect(),
                        answer,
                    };
                    inner.commits.push(seen.clone());
                    inner.events.push(Event::Commit(seen));
                    answer
                };
                let resp = CommitResponse {
                    request_id: req.request_id,
                    error_code: answer as i32,
                    error_message: if answer == ErrorCode::Unspecified {
                        String::new()
                    } else {
                        format!("fake broker: {answer:?}")
                    },
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_committed(
        &self,
        request: Request<FetchCommittedRequest>,
    ) -> Result<Response<FetchCommittedResponse>, Status> {
        let req = request.into_inner();
        let inner = self.0.lock();
        let mut offsets: Vec<CommittedOffset> = inner
            .committed
            .iter()
            .filter(|((g, t, p), _)| {
                *g == req.group && *t == req.topic && (req.partitions.is_empty() || req.partitions.contains(p))
            })
            .map(|((_, _, p), o)| CommittedOffset {
                partition: *p,
                offset: *o,
                metadata: String::new(),
                commit_time_ms: 0,
            })
            .collect();
        offsets.sort_by_key(|o| o.partition);
        Ok(Response::new(FetchCommittedResponse { offsets }))
    }
}

/// Record values `prefix-0`, `prefix-1`, … (`n` of them).
pub fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}
