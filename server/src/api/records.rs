//! `RecordService`: Produce (bidi stream) and Subscribe (server stream), on the byte-level
//! wire view so batches are never re-encoded.
//!
//! Produce: the requests arrive decoded by `produce_requests.rs` (payloads are slices of the
//! HTTP/2 frames they came in). Each stream has one task that reads requests in order and
//! appends each batch to its partition immediately (so appends happen in request order), then
//! waits for durability of up to `MAX_IN_FLIGHT` batches concurrently and answers in request
//! order. A bad batch gets an error code in its response; the stream goes on. Invariant: every
//! appended batch is completed (fsynced per policy, high watermark advanced) even if the client
//! vanishes or the broker shuts down mid-stream; otherwise a partition's high watermark could
//! lag its log forever.
//!
//! The batch goes to its partition's `PartitionWriter` (`broker/seam.rs`), which fixes its place
//! before the next request is read: a single node appends it, a cluster proposes it to the
//! partition's Raft group and answers at commit (acks=all) or at the leader's append
//! (acks=leader). A broker that does not lead the partition answers NOT_LEADER with the
//! leader's id and address in the response, for the client to re-route.
//!
//! Subscribe: one task per partition reads batches below the high watermark and, when caught up,
//! sleeps on the partition's high-watermark watch (no polling). All tasks feed one bounded
//! channel; when the client stops reading, HTTP/2 flow control stops the response body
//! (`subscribe_body.rs`, which frames each response around the stored payloads instead of
//! tonic's encoder) from draining it, `send` waits, and the tasks stop reading the log. Memory per subscription is bounded by
//! (channel capacity + partitions) x `max_bytes` (x the decompression ratio, at most 64 MiB a
//! batch, for a subscriber that asked for decompressed batches).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tidelog_proto::v1::{Acks, ErrorCode, IsolationLevel};
use tidelog_proto::wire::{self, produce_request, record_service_server::RecordService, start_position};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::batch_trace;
use crate::auth::layer::caller;
use crate::auth::{Auth, Caller, Kind, Operation, ResourceType};
use crate::broker::seam::{Acks as WriteAcks, PartitionWriter, WriteAnswer};
use crate::broker::Broker;
use crate::error::{error_code, status, BrokerError};
use crate::log::format::FLAG_TRANSACTIONAL;
use crate::log::{AppendBatch, StoredBatch};
use crate::partition::batch::{self, Declared, CODEC_NONE};
use crate::partition::compaction;
use crate::partition::{Isolation, Partition};
use crate::telemetry::metrics::{self, AcksLabel, CodeLabel, GaugeGuard};

/// Produce requests whose durability wait may overlap on one stream.
const MAX_IN_FLIGHT: usize = 256;
/// Default and largest `max_bytes` of one Subscribe response.
const DEFAULT_MAX_BYTES: usize = 1 << 20;
const MAX_MAX_BYTES: usize = 8 << 20;
/// Responses buffered per subscription before back-pressure reaches the log readers.
const SUBSCRIBE_BUFFER: usize = 2;

#[derive(Debug)]
pub struct RecordApi {
    broker: Arc<Broker>,
}

impl RecordApi {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

type PendingResponse = Pin<Box<dyn Future<Output = Option<wire::ProduceResponse>> + Send>>;

/// Writes the batch now, in stream order, and returns the future that waits for durability and
/// builds the response (`None` for acks=none).
async fn start_produce(broker: &Broker, caller: &Caller, req: wire::ProduceRequest) -> PendingResponse {
    let mut resp = wire::ProduceResponse {
        request_id: req.request_id,
        topic: req.topic.clone(),
        partition: req.partition,
        ..Default::default()
    };
    let silent = req.acks == Acks::None as i32;
    let arrived = std::time::Instant::now();
    let acks = match Acks::try_from(req.acks) {
        Ok(Acks::All) => "all",
        Ok(Acks::Leader) => "leader",
        Ok(Acks::None) => "none",
        _ => "unknown",
    };
    let size = (u64::from(req.record_count), req.payload.as_ref().map_or(0, payload_len));
    let payload = match &req.payload {
        Some(produce_request::Payload::Records(b)) => Some((b, CODEC_NONE)),
        Some(produce_request::Payload::CompressedRecords(b)) => Some((b, u8::try_from(req.compression).unwrap_or(0))),
        None => None,
    };
    // Disabled (free) unless spans are exported.
    let span = batch_trace::append_span(&req.topic, req.partition, req.record_count, payload);
    let started = start(broker, caller, &req).instrument(span.clone()).await;
    let span_of_answer = span.clone();
    let answered = async move {
        let result = match started {
            Ok((partition, answer)) => {
                let result = answer.await;
                resp.log_start_offset = partition.offsets().log_start.0;
                if matches!(result, Ok(Ok(_))) {
                    partition.traffic.produced(size.0, size.1);
                }
                result
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(Ok(a)) => {
                resp.base_offset = a.base_offset;
                resp.append_time_ms = a.append_time_ms;
            }
            Ok(Err(rejected)) => {
                resp.error_code = rejected.code;
                resp.error_message = rejected.message;
            }
            Err(e) => {
                let code = error_code(&e);
                if code == ErrorCode::StorageError {
                    // The broker's fault, not the client's (a full disk, an I/O error): the
                    // operator must see it. Bounded per window (`telemetry::rate_limit`).
                    tracing::error!(topic = %resp.topic, partition = resp.partition, error = %e, "produce failed in the broker's storage");
                } else {
                    tracing::debug!(topic = %resp.topic, partition = resp.partition, error = %e, "produce rejected");
                }
                if let BrokerError::NotLeader { leader: Some((id, addr)), .. } = &e {
                    resp.leader_id = *id as u32;
                    resp.leader_address = addr.clone();
                }
                resp.error_code = code as i32;
                resp.error_message = e.to_string();
            }
        }
        let m = metrics::instruments();
        let code = ErrorCode::try_from(resp.error_code).map_or("UNKNOWN", |c| c.as_str_name());
        if resp.error_code == 0 {
            span.record("messaging.tidelog.batch.base_offset", resp.base_offset as i64);
        } else {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", code);
        }
        m.produce_batches.get_or_create(&CodeLabel { code }).inc();
        m.produce_latency.get_or_create(&AcksLabel { acks }).observe(arrived.elapsed().as_secs_f64());
        (!silent).then_some(resp)
    };
    Box::pin(answered.instrument(span_of_answer))
}

/// How long a producer must wait after this batch: the longer of its produce byte-rate and
/// request-rate quotas' delays (zero without quotas).
fn produce_throttle(broker: &Broker, caller: &Caller, bytes: u64) -> Duration {
    let auth = broker.auth();
    auth.throttle(caller, Kind::Produce, bytes).max(auth.throttle(caller, Kind::Request, 1))
}

/// The answer, telling the client how long it was throttled.
fn with_throttle(answer: PendingResponse, delay: Duration) -> PendingResponse {
    let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
    Box::pin(async move {
        answer.await.map(|mut r| {
            r.throttle_time_ms = ms;
            r
        })
    })
}

/// Resolves at `until` (never when `None`; the select branch is off then).
async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn payload_len(p: &produce_request::Payload) -> u64 {
    match p {
        produce_request::Payload::Records(b) | produce_request::Payload::CompressedRecords(b) => b.len() as u64,
    }
}

async fn start(
    broker: &Broker,
    caller: &Caller,
    req: &wire::ProduceRequest,
) -> Result<(Arc<Partition>, WriteAnswer), BrokerError> {
    // Before the topic is looked up: a caller without the right learns nothing about it.
    broker.auth().authorize(caller, Operation::Write, ResourceType::Topic, &req.topic)?;
    let Validated { partition, writer, batch, payload } = validate(broker, req)?;
    if req.transactional {
        admit_transactional(broker, req).await?;
    }
    let acks = if req.acks == Acks::All as i32 { WriteAcks::All } else { WriteAcks::Leader };
    let answer = writer.write(batch, payload, acks).await?;
    Ok((partition, answer))
}

/// How long a transactional batch waits for this broker to learn that its partition was added
/// to the transaction (a cluster applies the coordinator's change a moment after it commits).
const TXN_ADMIT_WAIT: Duration = Duration::from_secs(5);

/// Checks that a transactional batch belongs to its producer's open transaction and that the
/// partition was added to it (KIP-890's verification): a zombie's or a late batch would
/// otherwise open a transaction no coordinator knows, holding the last stable offset back
/// forever. Waits briefly for this broker's copy of the coordinator's state to catch up.
async fn admit_transactional(broker: &Broker, req: &wire::ProduceRequest) -> Result<(), BrokerError> {
    use crate::broker::txn_table::Admission;
    let txns = broker.transactions();
    let epoch = req.producer_epoch as i16;
    let mut changes = txns.watch();
    let deadline = tokio::time::Instant::now() + TXN_ADMIT_WAIT;
    loop {
        match txns.admission(req.producer_id, epoch, &req.topic, req.partition) {
            Admission::Admitted => return Ok(()),
            Admission::Fenced(current) => {
                return Err(BrokerError::ProducerFenced { producer_id: req.producer_id, epoch, current })
            }
            Admission::NotYet => {}
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(BrokerError::InvalidTxnState(format!(
                    "producer {}/{} has no open transaction that includes partition {} of topic '{}': \
                     call AddPartitionsToTransaction first (or the transaction was aborted: abort and begin again)",
                    req.producer_id, req.producer_epoch, req.partition, req.topic
                )))
            }
        }
    }
}

/// A produce request checked against its topic.
struct Validated<'r> {
    partition: Arc<Partition>,
    writer: Arc<dyn PartitionWriter>,
    batch: AppendBatch<'r>,
    /// The batch's payload as received (what a Raft proposal carries, without a copy).
    payload: &'r bytes::Bytes,
}

/// Checks a produce request against its topic.
fn validate<'r>(broker: &Broker, req: &'r wire::ProduceRequest) -> Result<Validated<'r>, BrokerError> {
    broker.check_running()?;
    let topic = broker.topic(&req.topic)?;
    let (partition, writer) = topic.held(req.partition)?;
    let (partition, writer) = (Arc::clone(partition), Arc::clone(writer));
    let (payload, compressed) = match &req.payload {
        Some(produce_request::Payload::Records(b)) => (b, false),
        Some(produce_request::Payload::CompressedRecords(b)) => (b, true),
        None => return Err(BrokerError::InvalidArgument("the request carries no records".into())),
    };
    if !(0..=3).contains(&req.acks) {
        return Err(BrokerError::InvalidArgument(format!("unknown acks value {}", req.acks)));
    }
    if req.producer_id < 0 || (req.producer_id > 0 && !(0..=i32::from(i16::MAX)).contains(&req.producer_epoch)) {
        return Err(BrokerError::InvalidArgument(format!(
            "invalid producer id/epoch {}/{}: use the values InitProducer returned",
            req.producer_id, req.producer_epoch
        )));
    }
    if req.transactional && req.producer_id <= 0 {
        return Err(BrokerError::InvalidArgument(
            "a transactional batch needs the producer id and epoch from InitTransactions".into(),
        ));
    }
    let declared = Declared { compressed, codec: req.compression, record_count: req.record_count, crc: req.crc32c };
    let valid = batch::validate(payload, declared, topic.record.settings.max_batch_bytes)?;
    if topic.record.settings.cleanup_policy.compacts() {
        compaction::require_keys(valid.codec, payload, valid.record_count)?;
    }
    let batch = AppendBatch {
        payload,
        record_count: valid.record_count,
        compression: valid.codec,
        payload_crc: valid.crc,
        raft: None,
        producer_id: if req.producer_id > 0 { req.producer_id } else { -1 },
        producer_epoch: if req.producer_id > 0 { req.producer_epoch as i16 } else { -1 },
        base_sequence: if req.producer_id > 0 { req.base_sequence } else { -1 },
        flags: if req.transactional { FLAG_TRANSACTIONAL } else { 0 },
    };
    Ok(Validated { partition, writer, batch, payload })
}

/// A stored batch as served: its stored bytes, or (for a subscriber that asked to
/// `decompress`) a compressed batch's records decompressed, with their own CRC32C. A batch
/// that does not decompress is served as stored.
fn to_wire_batch(b: StoredBatch, decompress: bool) -> wire::Batch {
    let mut served = wire::Batch {
        base_offset: b.header.base_offset,
        record_count: b.header.record_count,
        append_time_ms: b.header.append_time_ms,
        compression: i32::from(b.header.compression),
        payload: None,
        crc32c: b.header.payload_crc,
    };
    if b.header.compression == CODEC_NONE {
        served.payload = Some(wire::batch::Payload::Records(b.payload));
        return served;
    }
    if decompress {
        match batch::decompress(b.header.compression, &b.payload) {
            Ok(records) => {
                served.compression = i32::from(CODEC_NONE);
                served.crc32c = tidelog_proto::checksum::crc32c(&records);
                served.payload = Some(wire::batch::Payload::Records(records));
                return served;
            }
            Err(e) => tracing::warn!(offset = b.header.base_offset, error = %e, "serving a batch compressed"),
        }
    }
    served.payload = Some(wire::batch::Payload::CompressedRecords(b.payload));
    served
}

/// Resolves a start position to an offset; absent = latest (the high watermark, or for
/// read_committed the last stable offset).
fn resolve_start(p: &Partition, start: Option<&wire::StartPosition>, isolation: Isolation) -> Result<u64, BrokerError> {
    let offsets = p.offsets();
    match start.and_then(|s| s.position.as_ref()) {
        None | Some(start_position::Position::Latest(_)) if isolation == Isolation::ReadCommitted => {
            Ok(p.last_stable_offset())
        }
        None | Some(start_position::Position::Latest(_)) => Ok(offsets.high_watermark.0),
        Some(start_position::Position::Earliest(_)) => Ok(offsets.log_start.0),
        Some(start_position::Position::Offset(o)) => {
            p.check_offset(*o)?;
            Ok(*o)
        }
        Some(start_position::Position::TimestampMs(t)) => {
            Ok(p.offset_for_time(*t)?.map_or(offsets.high_watermark.0, |(o, _)| o))
        }
    }
}

/// What a subscription's partition tasks share.
struct Reader {
    max_bytes: usize,
    decompress: bool,
    isolation: Isolation,
    /// For the consume quota.
    caller: Caller,
    auth: Arc<Auth>,
}

async fn tail_partition(
    partition: Arc<Partition>,
    mut next: u64,
    reader: Reader,
    tx: mpsc::Sender<Result<wire::SubscribeResponse, Status>>,
    _open: Arc<GaugeGuard>,
) {
    let Reader { max_bytes, decompress, isolation, caller, auth } = reader;
    let mut hw = partition.watch_hw();
    loop {
        // Mark the current value seen before reading, so an append racing with the read
        // still wakes us. The last stable offset moves only when the high watermark does (a
        // transaction ends with a marker, appended and then committed), so the same watch
        // wakes read_committed subscriptions.
        hw.borrow_and_update();
        match partition.read_for_consumer(next, max_bytes, isolation) {
            Err(e) => {
                let code = error_code(&e).as_str_name();
                metrics::instruments().subscribe_errors.get_or_create(&CodeLabel { code }).inc();
                let _ = tx.send(Err(status(&e))).await;
                return;
            }
            Ok(read) if read.batches.is_empty() && read.next > next => next = read.next, // markers, aborted
            Ok(read) if read.batches.is_empty() => {
                tokio::select! {
                    changed = hw.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
            Ok(read) => {
                let (batches, high_watermark) = (read.batches, read.bound);
                let read_from = next;
                next = read.next;
                let records = batches.iter().map(|b| u64::from(b.header.record_count)).sum::<u64>();
                let bytes = batches.iter().map(|b| b.payload.len() as u64).sum::<u64>();
                partition.traffic.served(records, bytes);
                metrics::instruments().subscribe_responses.inc();
                // A span per response (while spans are exported): what one delivery carried
                // and how long the client's flow control held it.
                let delivery = crate::telemetry::exporting().then(|| {
                    tracing::info_span!(
                        "deliver",
                        otel.name = %format!("deliver {}", partition.topic()),
                        otel.kind = "server",
                        rpc.system = "grpc",
                        rpc.service = "tidelog.v1.RecordService",
                        rpc.method = "Subscribe",
                        messaging.system = "tidelog",
                        messaging.operation.name = "deliver",
                        messaging.destination.name = %partition.topic(),
                        messaging.destination.partition.id = %partition.index(),
                        messaging.batch.message_count = records as i64,
                        messaging.message.body.size = bytes as i64,
                        messaging.tidelog.batch.base_offset = read_from as i64,
                    )
                });
                // ACLs apply to open subscriptions too (Kafka checks every fetch): a READ
                // revoked, or a DENY added, ends the stream before anything more is served.
                if let Err(denied) = auth.authorize(&caller, Operation::Read, ResourceType::Topic, partition.topic()) {
                    let _ = tx.send(Err(status(&BrokerError::from(denied)))).await;
                    return;
                }
                // Quotas: a subscriber over its consume rate gets this response late (and says
                // how late), and nothing is read meanwhile.
                let delay = auth.throttle(&caller, Kind::Consume, bytes);
                if !delay.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = tx.closed() => return,
                    }
                }
                let resp = wire::SubscribeResponse {
                    partition: partition.index(),
                    batches: batches.into_iter().map(|b| to_wire_batch(b, decompress)).collect(),
                    high_watermark,
                    read_from,
                    throttle_time_ms: u32::try_from(delay.as_millis()).unwrap_or(u32::MAX),
                };
                let sent = match delivery {
                    Some(span) => tx.send(Ok(resp)).instrument(span).await,
                    None => tx.send(Ok(resp)).await,
                };
                if sent.is_err() {
                    return; // the client went away
                }
            }
        }
    }
}

impl RecordApi {
    /// Serves one Produce stream: `inbound`'s requests in order, their answers on the stream
    /// returned. Every batch appended is completed even if the caller goes (module docs).
    pub(super) fn produce_stream<S>(
        &self,
        caller: Caller,
        mut inbound: S,
    ) -> ReceiverStream<Result<wire::ProduceResponse, Status>>
    where
        S: futures::Stream<Item = Result<wire::ProduceRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(64);
        let broker = Arc::clone(&self.broker);
        tokio::spawn(async move {
            let _open = GaugeGuard::stream("produce");
            let mut pending: FuturesOrdered<PendingResponse> = FuturesOrdered::new();
            let mut shutdown = broker.shutdown_signal();
            // Quotas: the stream is not read again before this (Kafka mutes the channel).
            let mut throttled_until: Option<tokio::time::Instant> = None;
            let mut inbound_open = true;
            let mut client_gone = false;
            let mut shutting_down = false;
            while inbound_open || !pending.is_empty() {
                tokio::select! {
                    biased;
                    Some(done) = pending.next(), if !pending.is_empty() => {
                        if let Some(resp) = done {
                            if !client_gone && tx.send(Ok(resp)).await.is_err() {
                                // Nobody to answer, but the appended batches must still be
                                // completed (made durable and visible): keep draining.
                                client_gone = true;
                                inbound_open = false;
                            }
                        }
                    }
                    () = sleep_until(throttled_until), if throttled_until.is_some() => throttled_until = None,
                    msg = inbound.next(), if inbound_open && throttled_until.is_none() && pending.len() < MAX_IN_FLIGHT => match msg {
                        Some(Ok(req)) => {
                            let bytes = req.payload.as_ref().map_or(0, payload_len);
                            let answer = start_produce(&broker, &caller, req).await;
                            let delay = produce_throttle(&broker, &caller, bytes);
                            if delay.is_zero() {
                                pending.push_back(answer);
                            } else {
                                throttled_until = Some(tokio::time::Instant::now() + delay);
                                pending.push_back(with_throttle(answer, delay));
                            }
                        }
                        Some(Err(e)) => {
                            // The client broke the stream (disconnect, bad frame). Appended batches
                            // stay; there is nobody left to answer.
                            tracing::debug!(error = %e, "produce stream ended by client");
                            inbound_open = false;
                        }
                        None => inbound_open = false,
                    },
                    _ = shutdown.changed(), if inbound_open => {
                        // Stop taking batches; the ones already appended are still completed
                        // and answered before the stream ends with UNAVAILABLE.
                        inbound_open = false;
                        shutting_down = true;
                    }
                }
            }
            if shutting_down && !client_gone {
                let _ = tx.send(Err(status(&BrokerError::ShuttingDown))).await;
            }
        });
        ReceiverStream::new(rx)
    }
}

#[tonic::async_trait]
impl RecordService for RecordApi {
    type ProduceStream = ReceiverStream<Result<wire::ProduceResponse, Status>>;
    type SubscribeStream = ReceiverStream<Result<wire::SubscribeResponse, Status>>;

    async fn produce(
        &self,
        request: Request<Streaming<wire::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        // Served by `produce_requests.rs`, which decodes the requests without tonic's copy;
        // this path stays for callers of the generated server (none in the broker today).
        let caller = caller(&request);
        Ok(Response::new(self.produce_stream(caller, request.into_inner())))
    }

    async fn init_producer(
        &self,
        request: Request<wire::InitProducerRequest>,
    ) -> Result<Response<wire::InitProducerResponse>, Status> {
        self.broker.auth().authorize_idempotent(&caller(&request)).map_err(BrokerError::from)?;
        let producer_id = self.broker.next_producer_id().await?;
        tracing::debug!(producer_id, "producer id issued");
        Ok(Response::new(wire::InitProducerResponse { producer_id, producer_epoch: 0 }))
    }

    async fn subscribe(
        &self,
        request: Request<wire::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = caller(&request);
        let req = request.into_inner();
        self.broker
            .auth()
            .authorize(&caller, Operation::Read, ResourceType::Topic, &req.topic)
            .map_err(BrokerError::from)?;
        self.broker.check_running()?;
        let topic = self.broker.topic(&req.topic)?;
        let max_bytes = match req.max_bytes as usize {
            0 => DEFAULT_MAX_BYTES,
            n => n.min(MAX_MAX_BYTES),
        };
        let isolation = match IsolationLevel::try_from(req.isolation_level) {
            Ok(IsolationLevel::ReadCommitted) => Isolation::ReadCommitted,
            Ok(IsolationLevel::Unspecified | IsolationLevel::ReadUncommitted) => Isolation::ReadUncommitted,
            Err(_) => return Err(Status::invalid_argument(format!("unknown isolation_level {}", req.isolation_level))),
        };
        let mut starts: Vec<(Arc<Partition>, u64)> = Vec::new();
        if req.partitions.is_empty() {
            // Every partition, so each must be here (a cluster may hold some elsewhere).
            for i in 0..topic.record.partitions {
                let p = topic.partition(i)?;
                starts.push((Arc::clone(p), resolve_start(p, req.start.as_ref(), isolation)?));
            }
        } else {
            for ps in &req.partitions {
                let p = topic.partition(ps.partition)?;
                if starts.iter().any(|(q, _)| q.index() == ps.partition) {
                    return Err(Status::invalid_argument(format!("partition {} is listed twice", ps.partition)));
                }
                starts.push((Arc::clone(p), resolve_start(p, ps.start.as_ref().or(req.start.as_ref()), isolation)?));
            }
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBE_BUFFER);
        // Counted open until its last partition's task ends.
        let open = Arc::new(GaugeGuard::stream("subscribe"));
        for (p, offset) in starts {
            tracing::debug!(topic = %req.topic, partition = p.index(), offset, "subscription started");
            let reader = Reader {
                max_bytes,
                decompress: req.decompress,
                isolation,
                caller: caller.clone(),
                auth: Arc::clone(self.broker.auth()),
            };
            tokio::spawn(tail_partition(p, offset, reader, tx.clone(), Arc::clone(&open)));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
