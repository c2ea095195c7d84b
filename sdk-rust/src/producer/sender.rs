//! The producer's background task. It owns the Produce stream: sends sealed batches (at most
//! `max_in_flight` per partition), completes deliveries from responses, and on failure rewinds
//! and resends the same batches, with the same sequence numbers, in order.
//!
//! Failure handling (per partition, since responses of one partition come back in order):
//! - connection lost / broker stalled past `request_timeout`: every in-flight batch goes back
//!   to the front of its queue; a new stream resends them (the broker answers those it already
//!   stored with their original offsets);
//! - retryable error on a batch (storage error, shutting down, not leader): that batch and the
//!   ones after it are rewound and resent after a backoff (the later ones were refused as out
//!   of order, and their stale responses are ignored);
//! - fatal error on a batch: its records fail; the batches after it take over its sequence
//!   numbers (the broker never stored it) and are resent;
//! - a batch that was never sent and is older than `delivery_timeout` fails. One that was sent
//!   and may be stored cannot be dropped without leaving the sequence ambiguous: then the
//!   producer fails everything and must be recreated (as a Kafka producer without epoch bump).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tidelog_proto::v1::{Acks, ErrorCode};
use tidelog_proto::wire;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::accumulator::{seal, Batch, PartitionQueue, TopicPartition};
use super::{RecordMetadata, Shared};
use crate::Error;

const MAX_BACKOFF: Duration = Duration::from_secs(1);

struct Conn {
    tx: mpsc::Sender<wire::ProduceRequest>,
    rx: tonic::Streaming<wire::ProduceResponse>,
    /// Request id → partition, for requests whose response is still wanted.
    in_flight: HashMap<u64, TopicPartition>,
}

impl Conn {
    async fn open(shared: &Shared) -> Result<Self, Error> {
        let (tx, rx) = mpsc::channel(256);
        let resp = shared.client.records().produce(ReceiverStream::new(rx)).await?;
        Ok(Self { tx, rx: resp.into_inner(), in_flight: HashMap::new() })
    }
}

enum Event {
    Response(wire::ProduceResponse),
    Lost(String),
    Wake,
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut conn: Option<Conn> = None;
    let mut backoff = shared.config.retry_backoff;
    let mut next_id: u64 = 1;
    loop {
        if shared.closed.load(Ordering::Acquire) && shared.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(c) = conn.as_mut() else {
            match Conn::open(&shared).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "produce stream not available; retrying");
                    expire(&shared, Instant::now());
                    let _ = tokio::time::timeout(backoff, shared.wake.notified()).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        };
        let now = Instant::now();
        let Collected { requests, deadline, oldest_sent } = collect(&shared, &mut c.in_flight, &mut next_id, now);
        let mut lost = None;
        for req in requests {
            if c.tx.send(req).await.is_err() {
                lost = Some("request stream closed".to_string());
                break;
            }
        }
        let event = match lost {
            Some(why) => Event::Lost(why),
            None => {
                let request_deadline = oldest_sent.map(|t| t + shared.config.request_timeout);
                let far = now + Duration::from_secs(3600);
                tokio::select! {
                    r = c.rx.next() => match r {
                        Some(Ok(resp)) => Event::Response(resp),
                        Some(Err(status)) => Event::Lost(format!("{}: {}", status.code(), status.message())),
                        None => Event::Lost("broker closed the stream".into()),
                    },
                    () = shared.wake.notified() => Event::Wake,
                    () = tokio::time::sleep_until(deadline.unwrap_or(far).into()) => Event::Wake,
                    () = tokio::time::sleep_until(request_deadline.unwrap_or(far).into()) => Event::Lost("request timed out".into()),
                }
            }
        };
        match event {
            Event::Response(resp) => {
                if handle_response(&shared, &mut c.in_flight, resp, backoff) {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                } else {
                    backoff = shared.config.retry_backoff;
                }
            }
            Event::Lost(why) => {
                tracing::debug!(why, "produce stream lost; resending in-flight batches");
                conn = None;
                rewind_all(&shared, Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Event::Wake => {}
        }
        notify_if_idle(&shared);
    }
}

fn notify_if_idle(shared: &Shared) {
    if shared.pending.load(Ordering::Acquire) == 0 {
        shared.idle.notify_waiters();
    }
}

/// Completes a batch's records and returns their buffer memory.
fn complete(shared: &Shared, tp: &TopicPartition, b: Batch, result: Result<(u64, i64), Error>) {
    let n = b.deliveries.len();
    match result {
        Ok((base, time)) => {
            for (i, d) in b.deliveries.into_iter().enumerate() {
                let _ = d.send(Ok(RecordMetadata {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: base + i as u64,
                    timestamp_ms: time,
                }));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for d in b.deliveries {
                let _ = d.send(Err(Error::Delivery(msg.clone())));
            }
        }
    }
    shared.memory.add_permits(b.memory);
    // The last pending record: wake `flush` now, whatever the sender loop is waiting on.
    if shared.pending.fetch_sub(n, Ordering::AcqRel) == n {
        shared.idle.notify_waiters();
    }
}

/// What one pass over the partition queues found.
struct Collected {
    /// Batches to send now.
    requests: Vec<wire::ProduceRequest>,
    /// The next time a linger or retry backoff is due.
    deadline: Option<Instant>,
    /// When the oldest batch still in flight was sent (its response is due by the timeout).
    oldest_sent: Option<Instant>,
}

/// Seals batches whose linger expired (all, when flushing), fails batches past their delivery
/// timeout, and takes the batches that may be sent now, in one pass over the queues.
fn collect(
    shared: &Shared,
    in_flight: &mut HashMap<u64, TopicPartition>,
    next_id: &mut u64,
    now: Instant,
) -> Collected {
    let cfg = &shared.config;
    expire(shared, now);
    let mut acc = shared.lock();
    let flush = std::mem::take(&mut acc.flush_requested) || shared.closed.load(Ordering::Acquire);
    let mut out = Vec::new();
    let mut deadline: Option<Instant> = None;
    let mut due = |t: Instant| deadline = Some(deadline.map_or(t, |d| d.min(t)));
    let mut oldest_sent: Option<Instant> = None;
    let mut fire_and_forget = Vec::new();
    for (tp, q) in acc.queues.iter_mut() {
        if let Some(open) = super::accumulator::linger_deadline(q, cfg.linger) {
            if flush || open <= now {
                seal(q, cfg.compression);
            } else {
                due(open);
            }
        }
        let waiting = match q.retry_at {
            Some(t) if t > now => {
                due(t);
                true
            }
            _ => {
                q.retry_at = None;
                false
            }
        };
        while !waiting && q.in_flight.len() < cfg.max_in_flight {
            let Some(mut b) = q.ready.pop_front() else { break };
            b.request_id = *next_id;
            *next_id += 1;
            b.sent_at = Some(now);
            b.attempts += 1;
            out.push(request(shared, tp, &b));
            if cfg.acks == Acks::None {
                fire_and_forget.push((tp.clone(), b));
            } else {
                in_flight.insert(b.request_id, tp.clone());
                q.in_flight.push_back(b);
            }
        }
        if let Some(sent) = q.in_flight.front().and_then(|b| b.sent_at) {
            oldest_sent = Some(oldest_sent.map_or(sent, |o| o.min(sent)));
        }
    }
    // Queues are never removed: an empty queue still holds the partition's next sequence.
    drop(acc);
    // acks = None: no response will come; the offset is unknown (u64::MAX).
    for (tp, b) in fire_and_forget {
        complete(shared, &tp, b, Ok((u64::MAX, -1)));
    }
    Collected { requests: out, deadline, oldest_sent }
}

fn request(shared: &Shared, tp: &TopicPartition, b: &Batch) -> wire::ProduceRequest {
    let compressed = b.compression != crate::compression::Compression::None;
    wire::ProduceRequest {
        request_id: b.request_id,
        topic: tp.topic.clone(),
        partition: tp.partition,
        acks: shared.config.acks as i32,
        payload: Some(if compressed {
            wire::produce_request::Payload::CompressedRecords(b.payload.clone())
        } else {
            wire::produce_request::Payload::Records(b.payload.clone())
        }),
        compression: b.compression.codec(),
        record_count: b.record_count,
        crc32c: Some(b.crc),
        producer_id: shared.producer_id,
        producer_epoch: shared.producer_epoch,
        base_sequence: if shared.producer_id > 0 { b.base_sequence } else { 0 },
    }
}

/// Handles one response; returns whether it asked for a backoff.
fn handle_response(
    shared: &Shared,
    in_flight: &mut HashMap<u64, TopicPartition>,
    r: wire::ProduceResponse,
    backoff: Duration,
) -> bool {
    let Some(tp) = in_flight.remove(&r.request_id) else {
        return false; // a response to a batch already rewound: it will be resent
    };
    let mut acc = shared.lock();
    let Some(q) = acc.queues.get_mut(&tp) else { return false };
    if q.in_flight.front().map(|b| b.request_id) != Some(r.request_id) {
        tracing::warn!(request_id = r.request_id, "response out of order; ignoring");
        return false;
    }
    let code = crate::error::error_code(r.error_code);
    let retryable = crate::error::retryable_code(code);
    if code == ErrorCode::Unspecified {
        if let Some(b) = q.in_flight.pop_front() {
            complete(shared, &tp, b, Ok((r.base_offset, r.append_time_ms)));
        }
        return false;
    }
    if retryable {
        for id in q.rewind() {
            in_flight.remove(&id);
        }
        q.retry_at = Some(Instant::now() + backoff);
        return true;
    }
    if matches!(code, ErrorCode::UnknownTopic | ErrorCode::UnknownPartition) {
        // The topic changed (deleted, recreated): the next send reads fresh metadata.
        shared.metadata.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&tp.topic);
    }
    // Fatal for this batch: it was not stored. The batches behind it take its sequences.
    let Some(b) = q.in_flight.pop_front() else { return false };
    q.renumber_after_drop(&b);
    for id in q.rewind() {
        in_flight.remove(&id);
    }
    let err = Error::Broker { code, message: r.error_message };
    complete(shared, &tp, b, Err(err));
    false
}

/// After a lost connection: every in-flight batch goes back to its queue's front.
fn rewind_all(shared: &Shared, retry_at: Instant) {
    let mut acc = shared.lock();
    for q in acc.queues.values_mut() {
        if !q.in_flight.is_empty() {
            q.rewind();
            q.retry_at = Some(retry_at);
        }
    }
}

/// Fails batches past the delivery timeout that are not in flight (see the module docs).
fn expire(shared: &Shared, now: Instant) {
    let timeout = shared.config.delivery_timeout;
    let mut acc = shared.lock();
    let mut expired: Vec<(TopicPartition, Batch)> = Vec::new();
    let mut poisoned = false;
    for (tp, q) in acc.queues.iter_mut() {
        while q.ready.front().is_some_and(|b| now.duration_since(b.created) > timeout) {
            let Some(b) = q.ready.pop_front() else { break };
            if b.attempts > 0 && shared.producer_id > 0 {
                poisoned = true;
            } else {
                q.renumber_after_drop(&b);
            }
            expired.push((tp.clone(), b));
        }
    }
    if poisoned {
        // Sequence state is ambiguous: fail everything queued (see module docs).
        for (tp, q) in acc.queues.iter_mut() {
            drain_queue(tp, q, &mut expired);
        }
        shared.closed.store(true, Ordering::Release);
    }
    drop(acc);
    for (tp, b) in expired {
        complete(shared, &tp, b, Err(Error::Delivery(format!("not acknowledged within {timeout:?}"))));
    }
}

fn drain_queue(tp: &TopicPartition, q: &mut PartitionQueue, out: &mut Vec<(TopicPartition, Batch)>) {
    seal(q, crate::compression::Compression::None);
    out.extend(q.in_flight.drain(..).chain(q.ready.drain(..)).map(|b| (tp.clone(), b)));
}
