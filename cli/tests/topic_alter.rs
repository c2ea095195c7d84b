//! Altering a topic's settings against real broker processes: `tidelog topic alter` changes
//! what the broker enforces at once (max batch bytes), `describe` says which values are the
//! topic's own and which the broker's defaults, `--reset` goes back to the default, and the
//! change survives a restart; in a cluster, altered through a non-controller, every broker
//! applies it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::cluster::TestCluster;
use support::{eventually, produce_all, produce_request, run_cli, BrokerProcess};
use tidelog::proto::v1::ErrorCode;
use tidelog::{Client, Record};

const WAIT: Duration = Duration::from_secs(20);

/// One produce of a single 3 KiB record: its error code.
async fn produce_3k(client: &Client) -> i32 {
    let big = Record::new(vec![b'x'; 3 * 1024]);
    produce_all(client, vec![produce_request(1, "cfg", 0, vec![big])]).await[0].error_code
}

fn config_line(described: &str) -> String {
    described.lines().find(|l| l.trim_start().starts_with("config ")).unwrap_or_default().to_string()
}

#[tokio::test]
async fn single_node_alter_applies_at_once_shows_sources_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut broker = BrokerProcess::start(&data, &[]);
    let addr = broker.addr.clone();
    let created = run_cli(&addr, &["topic", "create", "cfg", "--max-batch-bytes", "2048"], "");
    assert!(config_line(&created).contains("max_batch_bytes=2048 (topic)"), "{created}");
    assert!(config_line(&created).contains("fsync_policy=interval (default)"), "{created}");
    let client = broker.client().await;
    assert_eq!(produce_3k(&client).await, ErrorCode::BatchTooLarge as i32);

    let altered = run_cli(&addr, &["topic", "alter", "cfg", "--max-batch-bytes", "8192", "--fsync", "always"], "");
    let line = config_line(&altered);
    assert!(line.contains("max_batch_bytes=8192 (topic)") && line.contains("fsync_policy=always (topic)"), "{line}");
    assert_eq!(produce_3k(&client).await, ErrorCode::Unspecified as i32, "the new limit applies at once");

    let reset = run_cli(&addr, &["topic", "alter", "cfg", "--reset", "max_batch_bytes"], "");
    assert!(config_line(&reset).contains("max_batch_bytes=1048576 (default)"), "{reset}");
    assert_eq!(produce_3k(&client).await, ErrorCode::Unspecified as i32);

    assert!(broker.terminate().await.success());
    let broker = BrokerProcess::start(&data, &[]);
    let described = run_cli(&broker.addr, &["topic", "describe", "cfg"], "");
    let line = config_line(&described);
    assert!(
        line.contains("fsync_policy=always (topic)") && line.contains("max_batch_bytes=1048576 (default)"),
        "{line}"
    );
    assert!(described.contains("high_watermark=2"), "the data is still there: {described}");
}

#[tokio::test]
async fn cluster_alter_through_a_non_controller_reaches_every_broker() {
    let c = TestCluster::start().await;
    let controller = c.controller().await;
    let other = (1..=3).find(|n| *n != controller).unwrap();
    let created = c.create_topic("cfg", 1, 3, Default::default()).await;
    // A create answers once its partitions have leaders (not leader=0).
    assert!(created.partitions.iter().all(|p| p.leader_id != 0), "{:?}", created.partitions);
    let addr = c.addr(other);
    let at_other = Client::connect(addr.clone()).await.unwrap();
    eventually(WAIT, "the topic at the non-controller", || async { at_other.describe_topic("cfg").await.ok() }).await;
    let alter = ["topic", "alter", "cfg", "--retention-ms", "120000", "--max-batch-bytes", "8192"];
    let altered = tokio::task::spawn_blocking(move || run_cli(&addr, &alter, "")).await.unwrap();
    assert!(config_line(&altered).contains("retention_ms=120000 (topic)"), "{altered}");
    for n in 1..=3 {
        let client = Client::connect(c.addr(n)).await.unwrap();
        eventually(WAIT, "the new settings at every broker", || async {
            let t = client.describe_topic("cfg").await.ok()?;
            let cfg = t.config?;
            (cfg.retention_ms == Some(120_000) && cfg.max_batch_bytes == Some(8192)).then_some(())
        })
        .await;
    }
}

/// A producer that read the topic's batch limit before it was lowered keeps sealing batches
/// under the old one: the broker refuses them as BATCH_TOO_LARGE and the producer splits them
/// (Kafka's KIP-126) until they fit, so every record is stored once, in order; and from the
/// refusal on it knows the new limit, so a record larger than that fails at `send`.
#[tokio::test]
async fn a_lowered_batch_limit_splits_the_producers_batches_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("shrink", 1).await.unwrap();
    let config = tidelog::ProducerConfig {
        linger: Duration::from_millis(500),
        compression: tidelog::Compression::Lz4,
        max_batch_bytes: 512 * 1024,
        ..tidelog::ProducerConfig::default()
    };
    let producer = tidelog::Producer::new(client.clone(), config).await.unwrap();
    producer.send_to("shrink", 0, Record::new("first")).await.unwrap().await.unwrap();
    let lowered = tidelog::proto::v1::TopicConfig { max_batch_bytes: Some(16 * 1024), ..Default::default() };
    client.alter_topic_config("shrink", lowered, &[]).await.unwrap();

    // About 400 KiB sealed as one batch under the old limit (incompressible values, so the
    // compressed batch is as large), then a record no batch of the new limit can hold.
    let noise = |i: usize, len: usize| -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64; // xorshift: bytes LZ4 cannot shrink
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let value = |i: usize| noise(i, 1024);
    let mut deliveries = Vec::new();
    for i in 0..400 {
        deliveries.push(producer.send_to("shrink", 0, Record::new(value(i))).await.unwrap());
    }
    producer.flush().await;
    for (i, d) in deliveries.into_iter().enumerate() {
        let m = d.await.unwrap_or_else(|e| panic!("record {i}: {e}"));
        assert_eq!(m.offset, 1 + i as u64, "stored once, in order");
    }
    // The refusal made the producer read the topic again: it knows the new limit.
    let too_big = producer.send_to("shrink", 0, Record::new(noise(9999, 64 * 1024))).await;
    assert!(
        matches!(&too_big, Err(tidelog::Error::InvalidArgument(m)) if m.contains("exceeds the batch size")),
        "{too_big:?}"
    );
    let stored = support::read_range(&client, "shrink", 0, 1, 401).await;
    assert_eq!(stored.len(), 400);
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(r.value.as_deref(), Some(value(i).as_slice()), "record {i}");
    }
    producer.close().await;
}
