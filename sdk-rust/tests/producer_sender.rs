//! The producer's sender (`src/producer/sender.rs`) against scripted fake brokers (see
//! `support/fake_broker.rs`), no real broker: a lone record whose NOT_LEADER hint names a dead
//! broker is still delivered promptly (not after its request timeout); a batch refused with a
//! retryable error is resent with its sequence numbers, followed by the batches behind it in
//! order, each record stored once; a fatal error fails only its batch, whose successors take
//! over its sequences; a connection lost after the broker stored a batch ends in a duplicate
//! the broker answers with the original offset; buffer memory makes a send wait and then
//! fail with BufferFull while nothing is acknowledged.
//!
//! Batches are made deterministic: records of 6 bytes count 22 bytes each towards a batch of
//! at most 44, so every batch holds exactly two records, sealed in send order, and a batch's
//! base sequence is the index of its first record. Scripts that fail a batch answer only once
//! the next batch has arrived, so the batches behind it are in flight when the error comes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::fake_broker::{FakeBroker, Produce, SeenProduce};
use support::{dead_broker, WAIT};
use tidelog::proto::v1::ErrorCode;
use tidelog::{Client, DeliveryFuture, Error, Producer, ProducerConfig, Record, RecordMetadata};

const TOPIC: &str = "t";
const RECORDS: usize = 10;
/// Two records of [`value`] (6 bytes each, 22 with per-record overhead).
const BATCH_BYTES: usize = 44;

fn value(i: usize) -> String {
    format!("rec-{i:02}")
}

/// The values of the batch whose first record is `first`.
fn batch_values(first: usize) -> Vec<String> {
    vec![value(first), value(first + 1)]
}

fn config() -> ProducerConfig {
    ProducerConfig {
        max_batch_bytes: BATCH_BYTES,
        linger: Duration::from_millis(5),
        retry_backoff: Duration::from_millis(10),
        request_timeout: Duration::from_secs(30),
        ..ProducerConfig::default()
    }
}

async fn producer(broker: &FakeBroker, config: ProducerConfig) -> Producer {
    let client = Client::connect(broker.addr()).await.unwrap();
    Producer::new(client, config).await.unwrap()
}

/// Queues the [`RECORDS`] records for partition 0 back to back, without waiting for any
/// delivery (the topic's metadata is fetched first, so no send waits on the broker).
async fn send_all(p: &Producer) -> Vec<DeliveryFuture> {
    assert_eq!(p.partitions(TOPIC).await.unwrap(), 1);
    let mut out = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        out.push(p.send_to(TOPIC, 0, Record::new(value(i))).await.unwrap());
    }
    out
}

/// Every delivery's outcome, in send order; each must settle within [`WAIT`].
async fn settle(deliveries: Vec<DeliveryFuture>) -> Vec<Result<RecordMetadata, Error>> {
    let mut out = Vec::with_capacity(deliveries.len());
    for (i, d) in deliveries.into_iter().enumerate() {
        out.push(tokio::time::timeout(WAIT, d).await.unwrap_or_else(|_| panic!("record {i} not settled in {WAIT:?}")));
    }
    out
}

/// Every attempt of the same batch content carried the same bytes (the batch is encoded once).
fn assert_resent_unchanged(seen: &[SeenProduce]) {
    let mut crc_of: BTreeMap<&[String], Option<u32>> = BTreeMap::new();
    for r in seen {
        let crc = *crc_of.entry(&r.values).or_insert(r.crc32c);
        assert_eq!(crc, r.crc32c, "batch {:?} was re-encoded between attempts", r.values);
    }
}

/// Every record was delivered at the offset of its send order and stored there once.
fn assert_every_record_stored_once_in_order(broker: &FakeBroker, results: Vec<Result<RecordMetadata, Error>>) {
    let offsets: Vec<u64> = results.into_iter().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, (0..RECORDS as u64).collect::<Vec<_>>(), "offsets follow send order");
    let expected: Vec<(u64, String)> = (0..RECORDS).map(|i| (i as u64, value(i))).collect();
    assert_eq!(broker.stored(TOPIC, 0), expected, "every record stored exactly once, in order");
}

fn sequences(seen: &[SeenProduce]) -> Vec<i32> {
    seen.iter().map(|r| r.base_sequence).collect()
}

/// The fake refuses the batch starting at `sequence` with `code`, once (answered after the
/// next request arrived, so later batches are in flight), and appends everything else.
fn refuse_once_at_sequence(broker: &FakeBroker, sequence: i32, code: ErrorCode) {
    let mut failed = false;
    broker.on_produce(move |r| {
        if r.base_sequence == sequence && !failed {
            failed = true;
            Produce::RefuseAfterNext(code)
        } else {
            Produce::Append
        }
    });
}

/// The regression test for a sender that slept on a deadline computed before a rewind: the
/// only batch goes to A, which answers NOT_LEADER naming a dead broker; the stream to it
/// cannot be opened, the batch is rewound, and nothing else will ever wake the sender. Asked
/// again, A no longer knows the leader, so the producer moves on to the next broker, B.
#[tokio::test]
async fn lone_record_is_delivered_promptly_when_the_leader_hint_names_a_dead_broker() {
    let (a, b) = (FakeBroker::start().await, FakeBroker::start().await);
    let dead = dead_broker();
    for broker in [&a, &b] {
        broker.add_topic(TOPIC, 1);
        broker.set_cluster(&[a.addr(), b.addr()]);
    }
    let mut asked = 0;
    a.on_produce(move |_| {
        asked += 1;
        let hint = if asked == 1 { dead.clone() } else { String::new() };
        Produce::Refuse(ErrorCode::NotLeader, hint)
    });
    let p = producer(&a, config()).await;
    assert_eq!(p.partitions(TOPIC).await.unwrap(), 1);

    let started = Instant::now();
    let delivery = p.send_to(TOPIC, 0, Record::new("lone")).await.unwrap();
    let stored = tokio::time::timeout(Duration::from_secs(10), delivery)
        .await
        .expect("not delivered within 10 s: the sender waited for its 30 s request timeout")
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "delivered after {elapsed:?}, request timeout 30 s");
    assert_eq!((stored.partition, stored.offset), (0, 0));

    let at_a: Vec<(ErrorCode, i32)> = a.produced().iter().map(|r| (r.answer, r.base_sequence)).collect();
    assert_eq!(at_a, [(ErrorCode::NotLeader, 0), (ErrorCode::NotLeader, 0)]);
    let at_b: Vec<(ErrorCode, i32)> = b.produced().iter().map(|r| (r.answer, r.base_sequence)).collect();
    assert_eq!(at_b, [(ErrorCode::Unspecified, 0)]);
    assert_eq!(b.stored(TOPIC, 0), [(0, "lone".to_string())]);
    assert!(a.stored(TOPIC, 0).is_empty());
    p.close().await;
}

/// A backoff long enough that waiting it or not cannot be mistaken for scheduling noise.
const LONG_BACKOFF: Duration = Duration::from_secs(3);

/// Two brokers, A and B, where A refuses every batch as NOT_LEADER naming B, and B appends,
/// except (`b_names_a_first`) its first batch, which it refuses as NOT_LEADER naming A; a
/// producer bootstrapped at A with [`LONG_BACKOFF`] sends one record. Returns how long its
/// delivery took, and each broker's answers in order.
async fn deliver_through_redirects(b_names_a_first: bool) -> (Duration, Vec<ErrorCode>, Vec<ErrorCode>) {
    let (a, b) = (FakeBroker::start().await, FakeBroker::start().await);
    for broker in [&a, &b] {
        broker.add_topic(TOPIC, 1);
        broker.set_cluster(&[a.addr(), b.addr()]);
    }
    let (a_addr, b_addr) = (a.addr().to_string(), b.addr().to_string());
    a.on_produce(move |_| Produce::Refuse(ErrorCode::NotLeader, b_addr.clone()));
    let mut refused = !b_names_a_first;
    b.on_produce(move |_| {
        if refused {
            return Produce::Append;
        }
        refused = true;
        Produce::Refuse(ErrorCode::NotLeader, a_addr.clone())
    });
    let p = producer(&a, ProducerConfig { retry_backoff: LONG_BACKOFF, ..config() }).await;
    assert_eq!(p.partitions(TOPIC).await.unwrap(), 1);
    let started = Instant::now();
    let delivery = p.send_to(TOPIC, 0, Record::new("lone")).await.unwrap();
    let stored = tokio::time::timeout(WAIT, delivery).await.expect("not delivered").unwrap();
    let elapsed = started.elapsed();
    assert_eq!((stored.partition, stored.offset), (0, 0));
    assert_eq!(b.stored(TOPIC, 0), [(0, "lone".to_string())]);
    let answers = |f: &FakeBroker| f.produced().iter().map(|r| r.answer).collect::<Vec<_>>();
    let seen = (elapsed, answers(&a), answers(&b));
    p.close().await;
    seen
}

/// A NOT_LEADER that names the leader is news, not trouble: the batch goes there at once, not
/// after the retry backoff (how a new producer's first batch reaches its leader).
#[tokio::test]
async fn batch_refused_by_a_follower_goes_to_the_named_leader_without_a_backoff() {
    let (elapsed, at_a, at_b) = deliver_through_redirects(false).await;
    assert_eq!(at_a, [ErrorCode::NotLeader]);
    assert_eq!(at_b, [ErrorCode::Unspecified]);
    assert!(elapsed < LONG_BACKOFF / 2, "delivered after {elapsed:?}: it waited the {LONG_BACKOFF:?} backoff");
}

/// Two brokers naming each other (views of an election a moment apart): one resend at once,
/// then backoffs until the partition is answered, so the producer never bounces between them
/// in a tight loop.
#[tokio::test]
async fn a_second_redirect_before_an_answer_waits_the_backoff() {
    let (elapsed, at_a, at_b) = deliver_through_redirects(true).await;
    // A names B (resent at once); B names A (the backoff); A names B (the backoff again).
    assert_eq!(at_a, [ErrorCode::NotLeader, ErrorCode::NotLeader]);
    assert_eq!(at_b, [ErrorCode::NotLeader, ErrorCode::Unspecified]);
    assert!(elapsed >= LONG_BACKOFF, "delivered after {elapsed:?}: a redirect did not wait the backoff");
}

#[tokio::test]
async fn retried_batch_keeps_its_sequence_and_the_batches_behind_it_follow_in_order() {
    let broker = FakeBroker::start().await;
    broker.add_topic(TOPIC, 1);
    refuse_once_at_sequence(&broker, 2, ErrorCode::StorageError);
    let p = producer(&broker, config()).await;
    let results = settle(send_all(&p).await).await;

    assert_every_record_stored_once_in_order(&broker, results);

    let seen = broker.produced();
    assert_eq!(broker.gate_timeouts(), 0);
    assert_resent_unchanged(&seen);
    for r in &seen {
        assert_eq!(r.values, batch_values(r.base_sequence as usize), "a batch's sequence is its first record's");
    }
    // Batch 0, the refused batch 2, the batches sent behind it (refused as out of order, their
    // answers stale), then batch 2 again and everything after it, in order.
    let seqs = sequences(&seen);
    let fail = seqs.iter().position(|s| *s == 2).unwrap();
    assert_eq!(&seqs[..fail], [0]);
    assert_eq!(seen[fail].answer, ErrorCode::StorageError);
    let resend = fail + 1 + seqs[fail + 1..].iter().position(|s| *s == 2).expect("batch 2 resent");
    let behind = &seen[fail + 1..resend];
    assert!(!behind.is_empty(), "the script answers only once the next batch is in flight");
    for (i, r) in behind.iter().enumerate() {
        assert_eq!(r.base_sequence, 4 + 2 * i as i32, "in flight behind the refused batch, in order");
        assert_eq!(r.answer, ErrorCode::OutOfOrderSequence);
    }
    assert_eq!(&seqs[resend..], [2, 4, 6, 8], "resent from the refused batch on, in order");
    assert!(seen[resend..].iter().all(|r| r.answer == ErrorCode::Unspecified));
    p.close().await;
}

#[tokio::test]
async fn fatal_error_fails_only_its_batch_and_the_next_batches_take_over_its_sequences() {
    let broker = FakeBroker::start().await;
    broker.add_topic(TOPIC, 1);
    refuse_once_at_sequence(&broker, 2, ErrorCode::InvalidRecord);
    let p = producer(&broker, config()).await;
    let results = settle(send_all(&p).await).await;

    let mut next_offset = 0;
    for (i, r) in results.into_iter().enumerate() {
        if i == 2 || i == 3 {
            match r {
                Err(Error::Delivery(msg)) => assert!(msg.contains("InvalidRecord"), "record {i}: {msg}"),
                other => panic!("record {i} of the refused batch: {other:?}"),
            }
        } else {
            assert_eq!(r.unwrap().offset, next_offset, "record {i}");
            next_offset += 1;
        }
    }
    let kept: Vec<usize> = (0..RECORDS).filter(|i| *i != 2 && *i != 3).collect();
    let expected: Vec<(u64, String)> = kept.iter().enumerate().map(|(o, i)| (o as u64, value(*i))).collect();
    assert_eq!(broker.stored(TOPIC, 0), expected);

    let seen = broker.produced();
    assert_eq!(broker.gate_timeouts(), 0);
    assert_resent_unchanged(&seen);
    let refused: Vec<&SeenProduce> = seen.iter().filter(|r| r.values == batch_values(2)).collect();
    assert_eq!(refused.len(), 1, "a fatal error is not retried");
    assert_eq!(refused[0].answer, ErrorCode::InvalidRecord);
    // Records 4 and 5 were in flight behind it as sequence 4, then resent as 2.
    let moved: Vec<(i32, ErrorCode)> =
        seen.iter().filter(|r| r.values == batch_values(4)).map(|r| (r.base_sequence, r.answer)).collect();
    assert_eq!(moved, [(4, ErrorCode::OutOfOrderSequence), (2, ErrorCode::Unspecified)]);
    let stored: Vec<(i32, Vec<String>)> = seen
        .iter()
        .filter(|r| r.answer == ErrorCode::Unspecified)
        .map(|r| (r.base_sequence, r.values.clone()))
        .collect();
    let want: Vec<(i32, Vec<String>)> =
        [0, 4, 6, 8].iter().enumerate().map(|(k, first)| (2 * k as i32, batch_values(*first))).collect();
    assert_eq!(stored, want, "accepted batches carry gapless sequences");

    // The producer goes on: a later record is delivered after them.
    let later = p.send_to(TOPIC, 0, Record::new("later")).await.unwrap();
    let stored = tokio::time::timeout(WAIT, later).await.unwrap().unwrap();
    assert_eq!(stored.offset, next_offset);
    p.close().await;
}

/// BATCH_TOO_LARGE (the topic's limit lowered under the producer): the refused batch is resent
/// as two batches under its own sequences (records 2 and 3 as sequences 2 and 3), the batches
/// in flight behind it keep theirs, and every record is stored once, in order.
#[tokio::test]
async fn a_batch_too_large_is_resent_in_two_parts_under_its_own_sequences() {
    let broker = FakeBroker::start().await;
    broker.add_topic(TOPIC, 1);
    refuse_once_at_sequence(&broker, 2, ErrorCode::BatchTooLarge);
    let p = producer(&broker, config()).await;
    let results = settle(send_all(&p).await).await;

    assert_every_record_stored_once_in_order(&broker, results);
    let stored: Vec<(i32, Vec<String>)> = broker
        .produced()
        .into_iter()
        .filter(|r| r.answer == ErrorCode::Unspecified)
        .map(|r| (r.base_sequence, r.values))
        .collect();
    let parts = [(2, vec![value(2)]), (3, vec![value(3)])];
    let want: Vec<(i32, Vec<String>)> = [(0, batch_values(0))]
        .into_iter()
        .chain(parts)
        .chain([4, 6, 8].map(|first| (first as i32, batch_values(first))))
        .collect();
    assert_eq!(stored, want, "the parts carry the refused batch's sequences; the rest keep theirs");
    p.close().await;
}

#[tokio::test]
async fn batch_stored_before_the_connection_dropped_is_answered_as_a_duplicate() {
    let broker = FakeBroker::start().await;
    broker.add_topic(TOPIC, 1);
    let mut hung_up = false;
    broker.on_produce(move |r| {
        if r.base_sequence == 4 && !hung_up {
            hung_up = true;
            Produce::AppendThenHangUp
        } else {
            Produce::Append
        }
    });
    let p = producer(&broker, config()).await;
    let results = settle(send_all(&p).await).await;

    let offsets: Vec<u64> = results.into_iter().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, (0..RECORDS as u64).collect::<Vec<_>>());
    let expected: Vec<(u64, String)> = (0..RECORDS).map(|i| (i as u64, value(i))).collect();
    assert_eq!(broker.stored(TOPIC, 0), expected, "no record stored twice");

    let seen = broker.produced();
    assert_resent_unchanged(&seen);
    let attempts: Vec<(ErrorCode, Option<u64>)> =
        seen.iter().filter(|r| r.base_sequence == 4).map(|r| (r.answer, r.base_offset)).collect();
    assert_eq!(attempts, [(ErrorCode::Unspecified, Some(4)); 2], "stored once, the resend answered with its offset");
    p.close().await;
}

/// Buffer memory is back-pressure: while nothing is acknowledged, a send that does not fit
/// waits `max_block` and fails with BufferFull (queuing nothing, naming the broker's refusal);
/// once the broker answers, the
/// queued records are delivered and their memory lets the next send in at once.
#[tokio::test]
async fn send_waits_for_buffer_memory_then_fails_with_buffer_full() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let broker = FakeBroker::start().await;
    broker.add_topic(TOPIC, 1);
    let answering = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&answering);
    broker.on_produce(move |_| {
        if gate.load(Ordering::Acquire) {
            Produce::Append
        } else {
            Produce::Refuse(ErrorCode::StorageError, String::new()) // retryable: resent after backoff
        }
    });
    let max_block = Duration::from_millis(150);
    let p = producer(&broker, ProducerConfig { buffer_memory: BATCH_BYTES, max_block, ..config() }).await;
    assert_eq!(p.partitions(TOPIC).await.unwrap(), 1);
    let queued = vec![
        p.send_to(TOPIC, 0, Record::new(value(0))).await.unwrap(),
        p.send_to(TOPIC, 0, Record::new(value(1))).await.unwrap(),
    ];

    let started = Instant::now();
    let full = p.send_to(TOPIC, 0, Record::new("never")).await;
    assert!(
        matches!(&full, Err(Error::BufferFull { waited, last_error: Some(e) })
            if *waited == max_block && e == "t/0: ERROR_CODE_STORAGE_ERROR fake broker: StorageError"),
        "the error names the refusal: {full:?}"
    );
    assert!(started.elapsed() >= max_block, "failed after {:?}, before max_block", started.elapsed());
    let stats = p.stats();
    assert_eq!(stats.queued_records, 2, "the refused record was not queued");
    assert!(stats.queued_bytes <= BATCH_BYTES, "the refused record holds no memory: {stats:?}");

    answering.store(true, Ordering::Release);
    let offsets: Vec<u64> = settle(queued).await.into_iter().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, [0, 1]);
    let started = Instant::now();
    let next = p.send_to(TOPIC, 0, Record::new(value(2))).await.unwrap();
    assert!(started.elapsed() < max_block, "memory came back with the deliveries");
    assert_eq!(settle(vec![next]).await[0].as_ref().unwrap().offset, 2);
    let stored: Vec<String> = broker.stored(TOPIC, 0).into_iter().map(|(_, v)| v).collect();
    assert_eq!(stored, [value(0), value(1), value(2)], "the refused record was never sent");
    p.close().await;
}
