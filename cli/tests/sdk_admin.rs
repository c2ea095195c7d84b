//! The Rust SDK's admin operations, null values and producer metrics against a real broker
//! process: a
//! tombstone (null value) stays distinct from an empty value end to end; topics listed,
//! deleted, grown; offsets by position and time; records deleted below an offset, after which
//! a subscription from the earliest offset starts exactly there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::BrokerProcess;
use tidelog::{OffsetSpecKind, Producer, ProducerConfig, Record, StartAt, Subscription};

#[tokio::test]
async fn admin_operations_and_null_values() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("nulls", 1).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let before = tidelog_server::clock::now_ms();
    for r in [Record::new("v"), Record::new(""), Record::tombstone("gone"), Record::new("w")] {
        producer.send_to("nulls", 0, r.with_key("k")).await.unwrap().await.unwrap();
    }
    let stats = producer.stats();
    assert_eq!((stats.records_delivered, stats.records_failed, stats.queued_records, stats.queued_bytes), (4, 0, 0, 0));
    assert!(stats.batches_sent >= 4 && stats.bytes_sent > 0, "{stats:?}");
    assert!(stats.avg_batch_records >= 1.0 && stats.max_delivery_latency >= stats.avg_delivery_latency, "{stats:?}");
    assert!(!stats.max_delivery_latency.is_zero(), "{stats:?}");
    producer.close().await;
    let mut sub = Subscription::new("nulls").start_at(StartAt::Earliest).open(&client).await.unwrap();
    let mut values = Vec::new();
    for _ in 0..4 {
        let r = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap().unwrap();
        values.push(r.value.map(|v| v.to_vec()));
    }
    assert_eq!(values, [Some(b"v".to_vec()), Some(Vec::new()), None, Some(b"w".to_vec())]);

    let at = client.list_offsets("nulls", &[], OffsetSpecKind::TimestampMs(before)).await.unwrap();
    assert_eq!((at[0].0, at[0].1), (0, 0));
    assert!(at[0].2.is_some_and(|t| t >= before));
    let future = client.list_offsets("nulls", &[], OffsetSpecKind::TimestampMs(i64::MAX)).await.unwrap();
    assert_eq!(future, [(0, 4, None)], "nothing that new: the high watermark, no time");

    let lows = client.delete_records("nulls", &[(0, Some(3))]).await.unwrap();
    assert_eq!(lows, [(0, 3)]);
    let earliest = client.list_offsets("nulls", &[0], OffsetSpecKind::Earliest(true)).await.unwrap();
    assert_eq!(earliest, [(0, 3, None)]);
    // The batches below were written one record each; from the earliest now is offset 3.
    let mut sub = Subscription::new("nulls").start_at(StartAt::Earliest).open(&client).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((first.offset, first.value.as_deref()), (3, Some(&b"w"[..])));
    let above = client.delete_records("nulls", &[(0, Some(5))]).await.unwrap_err();
    assert!(matches!(&above, tidelog::Error::Status(s) if s.code() == tonic::Code::OutOfRange), "{above:?}");

    let grown = client.create_partitions("nulls", 3).await.unwrap();
    assert_eq!(grown.partition_count, 3);
    let names: Vec<String> = client.list_topics().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["nulls"]);
    client.delete_topic("nulls").await.unwrap();
    assert!(client.list_topics().await.unwrap().is_empty());
}
