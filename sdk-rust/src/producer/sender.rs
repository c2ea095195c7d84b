//! The producer's background task. It owns the Produce stream: sends sealed batches (at most
//! `max_in_flight` per partition), completes deliveries from responses, and on failure rewinds
//! and resends the same batches, with the same sequence numbers, in order.
//!
//! Routing: one Produce stream per broker; each partition's batches go to its leader, learnt
//! from NOT_LEADER answers (which carry the leader's address), or to a fallback broker while
//! no leader is known (see `Routes`). On a single node everything goes to the one broker.
//!
//! Failure handling (per partition, since responses of one partition come back in order):
//! - connection lost / broker stalled past `request_timeout`: the in-flight batches of that
//!   broker go back to the front of their queues; they are resent, to the new leader if it
//!   moved (the broker answers those it already stored with their original offsets);
//! - a request unanswered for `leader_probe_after` (a leader frozen by SIGSTOP, or cut off
//!   from its peers, keeps the connection open and answers nothing): the other brokers are
//!   asked who leads the partition ([`probe`]); once one names another leader, the broker is
//!   treated as lost (above) and the partition goes to the new leader. So failover takes the
//!   cluster's election plus a probe interval, not the request timeout;
//! - retryable error on a batch (storage error, shutting down, not leader): that batch and the
//!   ones after it are rewound and resent after a backoff (the later ones were refused as out
//!   of order, and their stale responses are ignored). Except a NOT_LEADER that names another
//!   broker as the leader: that is news, not trouble, so the batches go there at once (as
//!   Kafka's clients do since KIP-951). A new producer's first batch goes to a fallback broker,
//!   and a partition's first batch after a leader change to the old leader: neither waits a
//!   backoff for the answer to be taken. Once in a row only: a second such refusal before the
//!   partition is answered (two brokers naming each other mid-election) waits the backoff.
//!   The refusal is logged at WARN once per episode and kept until a batch is acknowledged
//!   (`PartitionQueue::last_error`), so a delivery timeout or `BufferFull` names it;
//! - BATCH_TOO_LARGE (the topic's limit was lowered after the producer read it): the batch is
//!   resent in two parts under its own sequence numbers (`split.rs`, Kafka's KIP-126), and the
//!   topic's metadata is read again; only a single record over the limit fails;
//! - fatal error on a batch: its records fail; the batches after it take over its sequence
//!   numbers (the broker never stored it) and are resent;
//! - a batch that was never sent and is older than `delivery_timeout` fails. One that was sent
//!   and may be stored cannot be dropped without leaving the sequence ambiguous: then the
//!   producer fails everything and must be recreated (as a Kafka producer without epoch bump).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tidelog_proto::v1::{Acks, ErrorCode};
use tidelog_proto::wire;
use tokio::sync::mpsc;

use super::accumulator::{seal, Batch, PartitionQueue, TopicPartition};
use super::delivery::Done;
use super::Shared;
use crate::Error;

const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Events handled before the queues are looked at again (see the sender loop).
const EVENTS_PER_PASS: usize = 1024;
/// The backoff's cap while a partition looks for its leader (connection lost, NOT_LEADER, a
/// probe's move): a new leader is found within this of its election.
const LEADER_BACKOFF: Duration = Duration::from_millis(250);

/// Where each partition's batches go: its leader when known (from a NOT_LEADER hint), else a
/// fallback broker, which answers NOT_LEADER with the leader if it is not the leader itself.
/// A partition's batches in flight all went to one broker (`sent_to`): a new target is used
/// only once they are answered or rewound, so no two brokers ever see one partition's
/// sequence interleaved.
struct Routes {
    brokers: Vec<String>,
    fallback: usize,
    leaders: HashMap<TopicPartition, String>,
    sent_to: HashMap<TopicPartition, String>,
    /// Quotas: brokers that said (`throttle_time_ms`) they read nothing from this producer
    /// before then. Batches for them stay queued until it has passed (Kafka's clients
    /// likewise); other brokers' batches go on.
    throttled: HashMap<String, Instant>,
}

impl Routes {
    fn new(brokers: Vec<String>) -> Self {
        Self { brokers, fallback: 0, leaders: HashMap::new(), sent_to: HashMap::new(), throttled: HashMap::new() }
    }

    fn target(&self, tp: &TopicPartition) -> String {
        match self.leaders.get(tp) {
            Some(a) => a.clone(),
            None => self.brokers[self.fallback % self.brokers.len()].clone(),
        }
    }

    /// A broker said it does not lead `tp`; `hint` is the leader's address ("" if it knows
    /// none). Returns the address the partition's batches go to now, if the hint named one.
    fn not_leader(&mut self, client: &crate::Client, tp: &TopicPartition, hint: &str) -> Option<String> {
        if hint.is_empty() {
            self.leaders.remove(tp);
            self.fallback += 1;
            None
        } else {
            let hint = client.broker_url(hint);
            if !self.brokers.contains(&hint) {
                self.brokers.push(hint.clone());
            }
            self.leaders.insert(tp.clone(), hint.clone());
            Some(hint)
        }
    }

    fn broker_lost(&mut self, addr: &str) {
        self.leaders.retain(|_, a| a != addr);
        if self.brokers[self.fallback % self.brokers.len()] == addr {
            self.fallback += 1;
        }
    }
}

/// One Produce stream to one broker. A reader task forwards its responses as [`Incoming`].
struct Conn {
    tx: mpsc::Sender<wire::ProduceRequest>,
    generation: u64,
    /// Request id → partition, for requests whose response is still wanted.
    in_flight: HashMap<u64, TopicPartition>,
}

enum Event {
    Response(wire::ProduceResponse),
    Lost(String),
    /// Another broker says `leader` leads this partition, not the broker it was sent to.
    Moved(TopicPartition, String),
}

struct Incoming {
    addr: String,
    generation: u64,
    event: Event,
}

impl Conn {
    async fn open(
        shared: &Shared,
        addr: &str,
        generation: u64,
        events: mpsc::UnboundedSender<Incoming>,
    ) -> Result<Self, Error> {
        let (tx, rx) = mpsc::channel(256);
        let client = shared.client.to_broker(addr)?;
        // A broker that accepts connections but never answers (paused, overloaded) must not
        // hold up the partitions routed elsewhere.
        let opening = super::produce_body::open(client.channel(), rx, crate::client::MAX_MESSAGE_BYTES);
        let mut stream = tokio::time::timeout(shared.config.request_timeout, opening)
            .await
            .map_err(|_| Error::Delivery(format!("{addr} did not open a produce stream in time")))??;
        let addr = addr.to_string();
        tokio::spawn(async move {
            loop {
                let event = match stream.next().await {
                    Some(Ok(resp)) => Event::Response(resp),
                    Some(Err(status)) => Event::Lost(format!("{}: {}", status.code(), status.message())),
                    None => Event::Lost("broker closed the stream".into()),
                };
                let last = matches!(event, Event::Lost(_));
                if events.send(Incoming { addr: addr.clone(), generation, event }).is_err() || last {
                    return;
                }
            }
        });
        Ok(Self { tx, generation, in_flight: HashMap::new() })
    }
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let brokers = match shared.client.brokers().await {
        Ok(b) => b,
        Err(_) => vec![shared.client.address().to_string()],
    };
    // Every broker by id, as the bootstrap broker names them (for the leader probe).
    let known = shared.client.broker_ids().await.unwrap_or_default();
    let mut routes = Routes::new(brokers);
    let mut conns: HashMap<String, Conn> = HashMap::new();
    let (events_tx, mut events) = mpsc::unbounded_channel::<Incoming>();
    let mut generation = 0u64;
    let mut backoff = shared.config.retry_backoff;
    let mut next_id: u64 = 1;
    let mut last_probe = Instant::now();
    let mut probing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        if shared.closed.load(Ordering::Acquire) && shared.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = Instant::now();
        let Collected { requests, deadline, oldest_sent } = collect(&shared, &mut routes, &mut next_id, now);
        let mut failed: HashSet<String> = HashSet::new();
        for (addr, tp, req) in requests {
            if failed.contains(&addr) {
                continue; // its partitions were rewound when the stream could not be opened
            }
            if !conns.contains_key(&addr) {
                generation += 1;
                match Conn::open(&shared, &addr, generation, events_tx.clone()).await {
                    Ok(c) => {
                        conns.insert(addr.clone(), c);
                    }
                    Err(e) => {
                        tracing::debug!(broker = %addr, error = %e, "produce stream not available; trying another broker");
                        lose(&shared, &mut conns, &mut routes, &addr, backoff);
                        failed.insert(addr);
                        backoff = (backoff * 2).min(LEADER_BACKOFF);
                        expire(&shared, Instant::now());
                        continue;
                    }
                }
            }
            let Some(c) = conns.get_mut(&addr) else { continue };
            if shared.config.acks != Acks::None {
                c.in_flight.insert(req.request_id, tp);
            }
            if c.tx.send(req).await.is_err() {
                lose(&shared, &mut conns, &mut routes, &addr, backoff);
                failed.insert(addr);
            }
        }
        if !failed.is_empty() {
            // Batches were rewound with a new `retry_at` that `deadline` (computed before)
            // does not know: recompute at once, or the loop could sleep until an old deadline
            // (the rewound batch's own request timeout) with nothing else to wake it.
            continue;
        }
        let request_deadline = oldest_sent.map(|t| t + shared.config.request_timeout);
        let far = now + Duration::from_secs(3600);
        let probe_at = next_probe(&shared, &routes, oldest_sent, last_probe);
        let incoming = tokio::select! {
            i = events.recv() => i,
            () = tokio::time::sleep_until(probe_at.unwrap_or(far).into()) => {
                last_probe = Instant::now();
                // One probe at a time: a slow one is not stacked upon.
                if probing.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                    let stalled = stalled(&shared, &routes, last_probe);
                    let gens =
                        stalled.iter().filter_map(|(a, _)| conns.get(a).map(|c| (a.clone(), c.generation))).collect();
                    let task = probe(Arc::clone(&shared), known.clone(), stalled, gens, events_tx.clone());
                    probing = Some(tokio::spawn(task));
                }
                None
            }
            () = shared.wake.notified() => None,
            () = tokio::time::sleep_until(deadline.unwrap_or(far).into()) => None,
            () = tokio::time::sleep_until(request_deadline.unwrap_or(far).into()) => {
                tracing::debug!("produce request timed out; resending in-flight batches");
                let addrs: Vec<String> = conns.keys().cloned().collect();
                for addr in addrs {
                    lose(&shared, &mut conns, &mut routes, &addr, backoff);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                None
            }
        };
        // Every event already queued is handled before the next pass over the queues: a pass
        // visits every partition, so one pass per response made a producer writing to N
        // partitions cost O(N²) (1,200 partitions: 5.9 s in a debug build). Bounded, so
        // batches still go out between bursts.
        let mut next = incoming;
        for _ in 0..EVENTS_PER_PASS {
            let Some(event) = next else { break };
            on_event(&shared, &mut conns, &mut routes, &mut backoff, event);
            next = events.try_recv().ok();
        }
        if let Some(event) = next {
            on_event(&shared, &mut conns, &mut routes, &mut backoff, event);
        }
        notify_if_idle(&shared);
    }
}

/// Handles one event of a broker's produce stream (a response, a lost stream, a moved
/// leader), adjusting the backoff.
fn on_event(
    shared: &Shared,
    conns: &mut HashMap<String, Conn>,
    routes: &mut Routes,
    backoff: &mut Duration,
    incoming: Incoming,
) {
    let Incoming { addr, generation, event } = incoming;
    match (conns.get_mut(&addr), event) {
        (Some(c), _) if c.generation != generation => {} // from a stream already replaced
        (Some(c), Event::Response(resp)) => {
            if resp.throttle_time_ms > 0 {
                shared.stats.throttled(resp.throttle_time_ms);
                let until = Instant::now() + Duration::from_millis(resp.throttle_time_ms.into());
                let t = routes.throttled.entry(addr.clone()).or_insert(until);
                *t = (*t).max(until);
            }
            let leadership = resp.error_code == ErrorCode::NotLeader as i32;
            // The refusal names another broker as the leader: resend there at once.
            let mut redirect = false;
            if leadership {
                if let Some(tp) = c.in_flight.get(&resp.request_id) {
                    redirect = routes.not_leader(&shared.client, tp, &resp.leader_address).is_some_and(|to| to != addr);
                }
            }
            let clustered = routes.brokers.len() > 1;
            let cap = if leadership { LEADER_BACKOFF } else { MAX_BACKOFF };
            match handle_response(shared, &mut c.in_flight, resp, *backoff, clustered, redirect) {
                Some(true) => *backoff = (*backoff * 2).min(cap),
                Some(false) => *backoff = shared.config.retry_backoff,
                None => {} // stale: says nothing about the broker's health now
            }
        }
        (Some(_), Event::Lost(why)) => {
            tracing::debug!(broker = %addr, why, "produce stream lost; resending its in-flight batches");
            lose(shared, conns, routes, &addr, *backoff);
            *backoff = (*backoff * 2).min(LEADER_BACKOFF);
        }
        (Some(_), Event::Moved(tp, leader)) => {
            if routes.sent_to.get(&tp) == Some(&addr) {
                tracing::info!(broker = %addr, %leader, topic = %tp.topic, partition = tp.partition,
                        "the partition's leader moved while this broker was silent; resending there");
                lose(shared, conns, routes, &addr, Duration::ZERO);
                let _ = routes.not_leader(&shared.client, &tp, &leader);
            }
        }
        (None, _) => {}
    }
}

/// When to ask the other brokers who leads the partitions waiting longest: once the oldest
/// request has waited `leader_probe_after`, then every quarter of it. `None`: no need (nothing in
/// flight, probing off, or a single broker).
fn next_probe(shared: &Shared, routes: &Routes, oldest_sent: Option<Instant>, last: Instant) -> Option<Instant> {
    let after = shared.config.leader_probe_after;
    if after.is_zero() || routes.brokers.len() < 2 {
        return None;
    }
    Some((oldest_sent? + after).max(last + after / 4))
}

/// The partitions whose oldest request has waited `leader_probe_after` by `now`, with the
/// broker they wait on.
fn stalled(shared: &Shared, routes: &Routes, now: Instant) -> Vec<(String, TopicPartition)> {
    let after = shared.config.leader_probe_after;
    let acc = shared.lock();
    acc.queues()
        .filter(|q| q.in_flight.front().and_then(|b| b.sent_at).is_some_and(|t| now.duration_since(t) >= after))
        .filter_map(|q| Some((routes.sent_to.get(&q.tp)?.clone(), q.tp.clone())))
        .collect()
}

/// Asks the other brokers (each within half a second) who leads each stalled partition, and
/// reports a partition whose leader is not the broker it waits on as [`Event::Moved`]. A
/// broker that holds no replica of a partition, or knows no leader, says nothing. Brokers are
/// compared by id (`known`: this producer's view of their addresses), since two brokers may
/// name a third by different addresses.
async fn probe(
    shared: Arc<Shared>,
    known: BTreeMap<u32, String>,
    stalled: Vec<(String, TopicPartition)>,
    generations: HashMap<String, u64>,
    events: mpsc::UnboundedSender<Incoming>,
) {
    const ASK: Duration = Duration::from_millis(500);
    let mut left = stalled;
    for b in known.values() {
        let mine: Vec<&(String, TopicPartition)> = left.iter().filter(|(a, _)| a != b).collect();
        if mine.is_empty() {
            continue;
        }
        let Ok(client) = shared.client.to_broker(b) else { continue };
        let topics: HashSet<&str> = mine.iter().map(|(_, tp)| tp.topic.as_str()).collect();
        let mut found: Vec<(String, TopicPartition, String)> = Vec::new();
        for topic in topics {
            let asked = async {
                let desc = client.describe_topic(topic).await.ok()?;
                let ids = client.broker_ids().await.ok()?;
                Some((desc, ids))
            };
            let Ok(Some((desc, theirs))) = tokio::time::timeout(ASK, asked).await else { break };
            for (waits_on, tp) in mine.iter().filter(|(_, tp)| tp.topic == topic) {
                let leader = desc.partitions.iter().find(|p| p.partition == tp.partition).map(|p| p.leader_id);
                tracing::debug!(asked = %b, %waits_on, topic, partition = tp.partition, ?leader, "leader probe");
                let Some(leader) = leader.filter(|l| *l != 0) else { continue };
                let named = [known.get(&leader), theirs.get(&leader)];
                if named.iter().flatten().any(|a| *a == waits_on) {
                    continue; // the broker it waits on still leads, as far as this one knows
                }
                if let Some(addr) = named.into_iter().flatten().next() {
                    found.push((waits_on.clone(), tp.clone(), addr.clone()));
                }
            }
        }
        for (waits_on, tp, leader) in found {
            left.retain(|(a, t)| !(a == &waits_on && t == &tp));
            let Some(generation) = generations.get(&waits_on).copied() else { continue };
            let event = Event::Moved(tp, leader);
            if events.send(Incoming { addr: waits_on, generation, event }).is_err() {
                return;
            }
        }
        if left.is_empty() {
            return;
        }
    }
}

/// A broker's stream is gone: its partitions' in-flight batches go back to their queues, and
/// partitions it led look for their leader again.
fn lose(shared: &Shared, conns: &mut HashMap<String, Conn>, routes: &mut Routes, addr: &str, backoff: Duration) {
    conns.remove(addr);
    // Every partition last sent there: that covers batches taken for it but never sent.
    let tps: Vec<TopicPartition> =
        routes.sent_to.iter().filter(|(_, a)| a.as_str() == addr).map(|(tp, _)| tp.clone()).collect();
    rewind(shared, tps, Instant::now() + backoff);
    routes.broker_lost(addr);
}

/// Rewinds the in-flight batches of these partitions, to be resent after `retry_at`.
fn rewind(shared: &Shared, tps: impl IntoIterator<Item = TopicPartition>, retry_at: Instant) {
    let mut acc = shared.lock();
    for tp in tps {
        if let Some(q) = acc.queue_mut(&tp) {
            if !q.in_flight.is_empty() {
                q.rewind();
                q.retry_at = Some(retry_at);
            }
        }
    }
}

fn notify_if_idle(shared: &Shared) {
    if shared.pending.load(Ordering::Acquire) == 0 {
        shared.idle.notify_waiters();
    }
}

/// Completes a batch's records and returns their buffer memory.
fn complete(shared: &Shared, b: Batch, result: Result<(u64, i64), Error>) {
    let n = b.record_count as usize;
    shared.stats.completed(n, result.is_ok().then(|| b.created.elapsed()));
    let done = match result {
        Ok((base, append_time_ms)) => Done::Stored { base, append_time_ms },
        Err(e) => {
            if let Some(txn) = &shared.txn {
                // A transaction with a lost batch must not commit (Kafka's abortable error).
                txn.failed.store(true, Ordering::Release);
            }
            // The delivery future says "delivery failed: " itself.
            Done::Failed(match e {
                Error::Delivery(message) => message,
                e => e.to_string(),
            })
        }
    };
    b.completion.complete(done);
    shared.memory.add_permits(b.memory);
    // The last pending record: wake `flush` now, whatever the sender loop is waiting on.
    if shared.pending.fetch_sub(n, Ordering::AcqRel) == n {
        shared.idle.notify_waiters();
    }
}

/// What one pass over the partition queues found.
struct Collected {
    /// Batches to send now, with the broker each goes to.
    requests: Vec<(String, TopicPartition, wire::ProduceRequest)>,
    /// The next time a linger or retry backoff is due.
    deadline: Option<Instant>,
    /// When the oldest batch still in flight was sent (its response is due by the timeout).
    oldest_sent: Option<Instant>,
}

/// Seals batches whose linger expired (all, when flushing), fails batches past their delivery
/// timeout, and takes the batches that may be sent now, in one pass over the queues.
fn collect(shared: &Shared, routes: &mut Routes, next_id: &mut u64, now: Instant) -> Collected {
    let cfg = &shared.config;
    expire(shared, now);
    let mut acc = shared.lock();
    let flush = std::mem::take(&mut acc.flush_requested) || shared.closed.load(Ordering::Acquire);
    let mut out = Vec::new();
    let mut deadline: Option<Instant> = None;
    let mut due = |t: Instant| deadline = Some(deadline.map_or(t, |d| d.min(t)));
    let mut oldest_sent: Option<Instant> = None;
    let mut fire_and_forget = Vec::new();
    for q in acc.queues_mut() {
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
        // Only a partition with something to send looks its route up: this pass visits every
        // partition, after every burst of responses.
        if !waiting && !q.ready.is_empty() {
            let tp = &q.tp;
            let target = routes.target(tp);
            // A new target only once nothing is in flight to the old one (see `Routes`).
            let switching = !q.in_flight.is_empty() && routes.sent_to.get(tp) != Some(&target);
            let throttled = match routes.throttled.get(&target) {
                Some(t) if *t > now => {
                    due(*t);
                    true
                }
                _ => false,
            };
            while !switching && !throttled && q.in_flight.len() < cfg.max_in_flight {
                let Some(mut b) = q.ready.pop_front() else { break };
                b.request_id = *next_id;
                *next_id += 1;
                b.sent_at = Some(now);
                b.attempts += 1;
                out.push((target.clone(), tp.clone(), request(shared, tp, &b)));
                routes.sent_to.insert(tp.clone(), target.clone());
                if cfg.acks == Acks::None {
                    fire_and_forget.push(b);
                } else {
                    q.in_flight.push_back(b);
                }
            }
        }
        if let Some(sent) = q.in_flight.front().and_then(|b| b.sent_at) {
            oldest_sent = Some(oldest_sent.map_or(sent, |o| o.min(sent)));
        }
    }
    // Queues are never removed: an empty queue still holds the partition's next sequence.
    drop(acc);
    // acks = None: no response will come; the offset is unknown (u64::MAX).
    for b in fire_and_forget {
        complete(shared, b, Ok((u64::MAX, -1)));
    }
    Collected { requests: out, deadline, oldest_sent }
}

fn request(shared: &Shared, tp: &TopicPartition, b: &Batch) -> wire::ProduceRequest {
    let compressed = b.compression != crate::compression::Compression::None;
    shared.stats.sent(b.record_count, b.payload.len(), b.attempts);
    let producer_id = shared.producer_id.load(Ordering::Acquire);
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
        producer_id,
        producer_epoch: shared.producer_epoch.load(Ordering::Acquire),
        base_sequence: if producer_id > 0 { b.base_sequence } else { 0 },
        transactional: shared.txn.is_some(),
    }
}

/// Handles one response; returns whether it asked for a backoff, or `None` for a response
/// that says neither: a stale one (to a batch already rewound), or a refusal whose batches go
/// at once to the leader it named (`redirect`). `clustered`: the producer knows more than one
/// broker.
fn handle_response(
    shared: &Shared,
    in_flight: &mut HashMap<u64, TopicPartition>,
    r: wire::ProduceResponse,
    backoff: Duration,
    clustered: bool,
    redirect: bool,
) -> Option<bool> {
    // A response to a batch already rewound: it will be resent.
    let tp = in_flight.remove(&r.request_id)?;
    let mut acc = shared.lock();
    let q = acc.queue_mut(&tp)?;
    if q.in_flight.front().map(|b| b.request_id) != Some(r.request_id) {
        tracing::warn!(request_id = r.request_id, "response out of order; ignoring");
        return None;
    }
    let code = crate::error::error_code(r.error_code);
    // In a cluster a just-created topic reaches each broker's metadata a moment apart (as in
    // Kafka, where UNKNOWN_TOPIC_OR_PARTITION is retriable): retry until the delivery timeout.
    // On a single node the broker's answer is final.
    let unknown = matches!(code, ErrorCode::UnknownTopic | ErrorCode::UnknownPartition);
    let retryable = crate::error::retryable_code(code) || (clustered && unknown);
    if code == ErrorCode::Unspecified {
        q.redirected = false;
        q.last_error = None;
        if let Some(b) = q.in_flight.pop_front() {
            complete(shared, b, Ok((r.base_offset, r.append_time_ms)));
        }
        return Some(false);
    }
    if retryable {
        for id in q.rewind() {
            in_flight.remove(&id);
        }
        if redirect && !q.redirected {
            tracing::debug!(topic = %tp.topic, partition = tp.partition, "not the leader; resending to the leader it named");
            q.redirected = true;
            q.retry_at = None;
            return None;
        }
        // Once per episode at WARN (Kafka's producer warns on every retry): a full disk or a
        // long election shows in the application's log, not only as a timeout a minute later.
        let last = format!("{} {}", code.as_str_name(), r.error_message);
        if q.last_error.as_deref() == Some(last.as_str()) {
            tracing::debug!(topic = %tp.topic, partition = tp.partition, error = %last, "retryable produce error; resending after a backoff");
        } else {
            tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %last, "the broker refused a batch (retryable); resending after a backoff");
            q.last_error = Some(last);
        }
        q.retry_at = Some(Instant::now() + backoff);
        return Some(true);
    }
    q.redirected = false;
    if matches!(code, ErrorCode::UnknownTopic | ErrorCode::UnknownPartition | ErrorCode::BatchTooLarge) {
        // The topic changed (deleted, recreated, its batch limit lowered): the next send reads
        // fresh metadata.
        shared.metadata.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&tp.topic);
    }
    let b = q.in_flight.pop_front()?;
    // Too large for the topic's (lowered) limit: resent in two parts (`split.rs`).
    let b = match code {
        ErrorCode::BatchTooLarge => match super::split::split(b) {
            Ok((first, second)) => {
                tracing::info!(topic = %tp.topic, partition = tp.partition, records = first.record_count + second.record_count, "batch too large for the topic; resending it in two parts");
                for id in q.rewind() {
                    in_flight.remove(&id);
                }
                q.ready.push_front(second);
                q.ready.push_front(first);
                return Some(false);
            }
            Err(b) => b,
        },
        _ => b,
    };
    // Fatal for this batch: it was not stored. The batches behind it take its sequences.
    q.renumber_after_drop(&b);
    for id in q.rewind() {
        in_flight.remove(&id);
    }
    let err = Error::Broker { code, message: r.error_message };
    complete(shared, b, Err(err));
    Some(false)
}

/// Fails batches past the delivery timeout that are not in flight (see the module docs).
fn expire(shared: &Shared, now: Instant) {
    let timeout = shared.config.delivery_timeout;
    let mut acc = shared.lock();
    // Each expired batch with its partition's last refusal, if the broker gave one.
    let mut expired: Vec<(Batch, Option<String>)> = Vec::new();
    let mut poisoned = false;
    for q in acc.queues_mut() {
        while q.ready.front().is_some_and(|b| now.duration_since(b.created) > timeout) {
            let Some(b) = q.ready.pop_front() else { break };
            if b.attempts > 0 && shared.producer_id.load(Ordering::Acquire) > 0 {
                poisoned = true;
            } else {
                q.renumber_after_drop(&b);
            }
            expired.push((b, q.last_error.clone()));
        }
    }
    if poisoned {
        // Sequence state is ambiguous: fail everything queued (see module docs).
        for q in acc.queues_mut() {
            let mut drained = Vec::new();
            drain_queue(q, &mut drained);
            expired.extend(drained.into_iter().map(|b| (b, q.last_error.clone())));
        }
        shared.closed.store(true, Ordering::Release);
    }
    drop(acc);
    for (b, last_error) in expired {
        let why = match last_error {
            Some(e) => format!("not acknowledged within {timeout:?}; the broker's last answer: {e}"),
            None => format!("not acknowledged within {timeout:?}"),
        };
        complete(shared, b, Err(Error::Delivery(why)));
    }
}

fn drain_queue(q: &mut PartitionQueue, out: &mut Vec<Batch>) {
    seal(q, crate::compression::Compression::None);
    out.extend(q.in_flight.drain(..).chain(q.ready.drain(..)));
}
