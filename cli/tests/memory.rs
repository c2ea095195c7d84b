//! A subscriber that stops reading must not grow broker memory: HTTP/2 flow control stops the
//! response stream, the bounded channel fills, and the partition reader waits instead of
//! reading ahead. 200 MB are produced meanwhile; broker RSS must stay bounded, and afterwards
//! the stalled subscriber still receives every byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::*;
use tidelog::{Record, StartAt, Subscription};

const BATCH_BYTES: usize = 1 << 20;
const BATCHES: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_does_not_grow_broker_memory() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let producer = broker.client().await;
    let cfg = tidelog::proto::v1::TopicConfig { max_batch_bytes: Some(2 << 20), ..Default::default() };
    producer.create_topic_with("big", 1, cfg).await.unwrap();

    // One encoded 1 MiB batch (16 x 64 KiB records), cloned by reference for every request.
    let template = produce_request(0, "big", 0, (0..16).map(|_| Record::new(vec![7u8; BATCH_BYTES / 16])).collect());
    let send = |from: u64, n: u64| {
        let reqs = (from..from + n)
            .map(|i| tidelog::proto::wire::ProduceRequest { request_id: i, ..template.clone() })
            .collect();
        let producer = producer.clone();
        async move {
            for r in produce_all(&producer, reqs).await {
                assert_eq!(r.error_code, 0, "{}", r.error_message);
            }
        }
    };
    send(0, 4).await;

    // The subscriber (its own connection) reads one response, then stops reading.
    let subscriber = broker.client().await;
    let mut stream =
        Subscription::new("big").start_at(StartAt::Earliest).max_bytes(1 << 20).open_raw(&subscriber).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let mut received: u64 = first.batches.iter().map(|b| u64::from(b.record_count)).sum();
    let baseline = broker.rss_kib();

    let mut peak = baseline;
    for chunk in 0..(BATCHES / 20) {
        send(4 + chunk * 20, 20).await;
        peak = peak.max(broker.rss_kib());
    }
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "broker RSS: baseline {} MiB, peak {} MiB while 200 MiB were produced to a stalled subscriber",
        baseline / 1024,
        peak / 1024
    );
    assert!(growth_mib < 64, "broker RSS grew by {growth_mib} MiB with a stalled subscriber");

    // Nothing was dropped for the slow subscriber: it now reads everything from disk.
    let total = (BATCHES + 4) * 16;
    while received < total {
        let resp = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap().unwrap().unwrap();
        received += resp.batches.iter().map(|b| u64::from(b.record_count)).sum::<u64>();
    }
    assert_eq!(received, total);
}
