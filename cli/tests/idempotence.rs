//! Idempotent produce: the broker drops resent batches (answering with their original offsets),
//! refuses gaps and fenced epochs, and keeps that state across kill -9 and clean restarts. The
//! SDK producer, with connections cut under it mid-stream, stores every record exactly once
//! and in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::proxy::Proxy;
use support::*;
use tidelog::proto::v1::ErrorCode;
use tidelog::proto::wire::{self, InitProducerRequest};
use tidelog::{Client, Producer, ProducerConfig, Record};

fn batch(pid: i64, epoch: i32, seq: i32, n: u32, tag: &str) -> wire::ProduceRequest {
    let records = (0..n).map(|i| Record::new(format!("{tag}-{i}"))).collect();
    wire::ProduceRequest {
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: seq,
        ..produce_request(0, "idem", 0, records)
    }
}

async fn send(client: &Client, req: wire::ProduceRequest) -> (i32, u64, String) {
    let r = produce_all(client, vec![req]).await.remove(0);
    (r.error_code, r.base_offset, r.error_message)
}

#[tokio::test]
async fn broker_deduplicates_and_refuses_gaps_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut broker = BrokerProcess::start(&data, &[]);
    let client = broker.client().await;
    client.create_topic("idem", 1).await.unwrap();
    let pid = client.records().init_producer(InitProducerRequest {}).await.unwrap().into_inner().producer_id;
    assert!(pid > 0);
    let other = client.records().init_producer(InitProducerRequest {}).await.unwrap().into_inner().producer_id;
    assert_ne!(pid, other, "producer ids are unique");

    assert_eq!(send(&client, batch(pid, 0, 0, 3, "a")).await.0, 0);
    // A resend: same offset, nothing appended.
    assert_eq!(send(&client, batch(pid, 0, 0, 3, "a")).await.0, 0);
    assert_eq!(high_watermark(&client, "idem", 0).await, 3);
    // A gap is refused with a message that says what was expected.
    let (code, _, msg) = send(&client, batch(pid, 0, 5, 1, "gap")).await;
    assert_eq!(code, ErrorCode::OutOfOrderSequence as i32);
    assert!(msg.contains("expected sequence 3"), "{msg}");
    let (code, offset, _) = send(&client, batch(pid, 0, 3, 2, "b")).await;
    assert_eq!((code, offset), (0, 3));
    // An unknown producer must start at 0.
    assert_eq!(send(&client, batch(pid + 1000, 0, 7, 1, "x")).await.0, ErrorCode::UnknownProducer as i32);

    // kill -9: the state comes back from the stored batch headers.
    broker.kill9();
    let mut broker = BrokerProcess::start(&data, &[]);
    let client = broker.client().await;
    let (code, offset, _) = send(&client, batch(pid, 0, 3, 2, "b")).await;
    assert_eq!((code, offset), (0, 3), "resend after kill -9 must be a duplicate");
    assert_eq!(high_watermark(&client, "idem", 0).await, 5);

    // Clean restart (snapshot written at shutdown), then a newer epoch fences the old one.
    assert!(broker.terminate().await.success());
    let broker = BrokerProcess::start(&data, &[]);
    let client = broker.client().await;
    assert_eq!(send(&client, batch(pid, 0, 3, 2, "b")).await.1, 3);
    assert_eq!(send(&client, batch(pid, 1, 0, 1, "new-epoch")).await.0, 0);
    let (code, _, msg) = send(&client, batch(pid, 0, 5, 1, "stale")).await;
    assert_eq!(code, ErrorCode::ProducerFenced as i32, "{msg}");
    let stored = read_range(&client, "idem", 0, 0, 6).await;
    let values: Vec<_> =
        stored.iter().map(|r| String::from_utf8(r.value.clone().unwrap_or_default().to_vec()).unwrap()).collect();
    assert_eq!(values, ["a-0", "a-1", "a-2", "b-0", "b-1", "new-epoch-0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_survives_cut_connections_without_duplicates_or_reordering() {
    let seed = seed("producer_cut_connections");
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let direct = broker.client().await;
    direct.create_topic("exact", 4).await.unwrap();
    let proxy = Proxy::start(&broker.addr).await;
    let client = Client::connect(proxy.addr.clone()).await.unwrap();
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        max_batch_bytes: 4 * 1024,
        retry_backoff: Duration::from_millis(10),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await.unwrap();

    const RECORDS: u64 = 20_000;
    const KEYS: u64 = 64;
    let cuts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cutter = {
        let interval = Duration::from_millis(60 + seed % 60);
        let proxy_cut = std::sync::Arc::new(proxy);
        let (p, cuts) = (proxy_cut.clone(), cuts.clone());
        (
            tokio::spawn(async move {
                for _ in 0..10 {
                    tokio::time::sleep(interval).await;
                    p.cut();
                    cuts.fetch_add(1, Ordering::Relaxed);
                }
            }),
            proxy_cut,
        )
    };
    let mut deliveries = Vec::with_capacity(RECORDS as usize);
    for i in 0..RECORDS {
        if i == RECORDS / 2 {
            // However fast the first half went, the second half goes after a cut: the
            // producer must reconnect with records in flight.
            eventually(Duration::from_secs(10), "a cut", || async { (cuts.load(Ordering::Relaxed) > 0).then_some(()) })
                .await;
        }
        let key = i % KEYS;
        let record = Record::new(format!("k{key}-{:06}", i / KEYS)).with_key(format!("k{key}"));
        deliveries.push(producer.send("exact", record).await.unwrap());
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut landed = HashMap::new();
    for (i, d) in deliveries.into_iter().enumerate() {
        let m = tokio::time::timeout(Duration::from_secs(60), d).await.expect("delivery stalled").unwrap();
        landed.insert((m.partition, m.offset), i as u64);
    }
    producer.close().await;
    cutter.0.await.unwrap();
    let connections = cutter.1.connections.load(Ordering::Relaxed);
    assert!(connections > 1, "the proxy never cut a live connection");

    // Read back directly: every record exactly once, per key in send order, at its offset.
    let mut total = 0;
    for p in 0..4 {
        let hw = high_watermark(&direct, "exact", p).await;
        let records = read_range(&direct, "exact", p, 0, hw).await;
        let mut last_seq: HashMap<String, i64> = HashMap::new();
        for r in &records {
            let v = String::from_utf8(r.value.clone().unwrap_or_default().to_vec()).unwrap();
            let (key, seq) = v.split_once('-').unwrap();
            let seq: i64 = seq.parse().unwrap();
            let prev = last_seq.insert(key.to_string(), seq).unwrap_or(-1);
            assert_eq!(seq, prev + 1, "key {key} in partition {p}: {prev} then {seq} (duplicate, gap or reordering)");
            let sent_index = landed.get(&(p, r.offset)).expect("stored record with no delivery");
            assert_eq!(
                format!("k{}-{:06}", sent_index % KEYS, sent_index / KEYS),
                v,
                "delivery metadata points elsewhere"
            );
        }
        total += records.len() as u64;
    }
    assert_eq!(total, RECORDS);
    eprintln!("{RECORDS} records, 10 cuts, {connections} connections: exactly once, in order");
}
