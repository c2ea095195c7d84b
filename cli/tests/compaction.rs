//! Compacted topics against real broker processes: the latest value per key survives the
//! cleaner, consumers and groups cross the gaps it leaves, keyless records are refused, a
//! `compact,delete` topic also loses old segments, a kill -9 at any point of a cleaning loses
//! nothing, and three replicas agree record for record once each has cleaned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use support::cluster::TestCluster;
use support::*;
use tidelog::proto::v1::{CleanupPolicy, TopicConfig};
use tidelog::{Client, GroupConfig, GroupConsumer, Producer, ProducerConfig, Record, StartAt, Subscription};

const WAIT: Duration = Duration::from_secs(60);

/// A compacted topic: small segments, cleaned as soon as anything is dirty.
fn compacted(policy: CleanupPolicy) -> TopicConfig {
    TopicConfig {
        cleanup_policy: policy as i32,
        segment_bytes: Some(4096),
        max_batch_bytes: Some(2048),
        min_cleanable_dirty_ratio: Some(0.01),
        delete_retention_ms: Some(3_600_000),
        ..TopicConfig::default()
    }
}

/// Writes `rounds` versions of `keys` keys (every 7th write a tombstone) through an idempotent
/// producer, one record per request; returns the model (latest value per key, `None` deleted).
async fn write_versions(
    client: &Client,
    topic: &str,
    keys: u32,
    rounds: u32,
    tag: &str,
) -> BTreeMap<String, Option<String>> {
    let config = ProducerConfig { linger: Duration::ZERO, max_batch_bytes: 1024, ..ProducerConfig::default() };
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let mut model = BTreeMap::new();
    let mut pending = Vec::new();
    for r in 0..rounds {
        for k in 0..keys {
            let key = format!("user-{k}");
            // Values that do not compress away, so the log spans several segments.
            let noise: String = (0..4)
                .map(|i| format!("{:016x}", (u64::from(r * keys + k) + i).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
                .collect();
            let value = ((r * keys + k) % 7 != 6).then(|| format!("{tag}-{r}-{k}-{noise}"));
            let record = match &value {
                Some(v) => Record::new(v.clone()).with_key(key.clone()),
                None => Record::tombstone(key.clone()),
            };
            pending.push(producer.send_to(topic, 0, record).await.unwrap());
            model.insert(key, value);
        }
    }
    for d in pending {
        d.await.unwrap();
    }
    producer.close().await;
    model
}

/// Every record from offset 0 to the high watermark: (offset, key, value).
async fn read_table(client: &Client, topic: &str) -> Vec<(u64, String, Option<String>)> {
    let hw = high_watermark(client, topic, 0).await;
    read_range(client, topic, 0, 0, hw)
        .await
        .into_iter()
        .map(|r| {
            let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
            (r.offset, key, r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()))
        })
        .collect()
}

/// The invariants: offsets increase, and each key's last record is the model's value.
fn check_table(rows: &[(u64, String, Option<String>)], model: &BTreeMap<String, Option<String>>, what: &str) {
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "{what}: offsets strictly increase");
    let mut last = BTreeMap::new();
    for (_, k, v) in rows {
        last.insert(k.clone(), v.clone());
    }
    for (k, v) in model {
        assert_eq!(last.get(k), Some(v), "{what}: key {k}");
    }
    assert!(last.keys().all(|k| model.contains_key(k)), "{what}: a key nobody wrote");
}

async fn cleaned_offset(client: &Client, topic: &str) -> u64 {
    client.describe_topic(topic).await.unwrap().partitions[0].cleaned_offset
}

#[tokio::test]
async fn a_compacted_topic_keeps_the_latest_value_per_key_and_consumers_cross_the_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("d"),
        &["--cleaner-interval-ms", "100", "--retention-check-interval-ms", "100"],
    );
    let client = broker.client().await;
    client.create_topic_with("profiles", 1, compacted(CleanupPolicy::Compact)).await.unwrap();
    let model = write_versions(&client, "profiles", 20, 40, "a").await;
    let hw = high_watermark(&client, "profiles", 0).await;
    assert_eq!(hw, 800);
    eventually(WAIT, "the cleaner to compact profiles", || {
        let client = client.clone();
        async move { (cleaned_offset(&client, "profiles").await > 400).then_some(()) }
    })
    .await;
    let rows = read_table(&client, "profiles").await;
    check_table(&rows, &model, "after compaction");
    assert!(rows.len() < 400, "compaction removed records: {} of 800 left", rows.len());
    let p = client.describe_topic("profiles").await.unwrap().partitions[0].clone();
    assert_eq!(p.log_start_offset, 0, "compaction never moves the log start");
    assert!(p.last_cleaned_ms > 0 && p.dirty_ratio < 1.0, "{p:?}");

    // A subscription that starts inside a compacted-away range begins at the next record.
    let present: Vec<u64> = rows.iter().map(|r| r.0).collect();
    let gap = (0..hw).find(|o| !present.contains(o)).expect("a gap");
    let next = *present.iter().find(|o| **o > gap).unwrap();
    let mut stream = Subscription::new("profiles").start_at(StartAt::Offset(gap)).open(&client).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().offset, next);

    // A group whose committed offset lies in a removed range resumes at the next record.
    let group = GroupConfig {
        offset_reset: tidelog::OffsetReset::Earliest,
        auto_commit_interval: None,
        ..GroupConfig::new("table-readers", &["profiles"])
    };
    let mut first = GroupConsumer::join(client.clone(), group.clone()).await.unwrap();
    // The first record arrives once the partition is assigned; then seek into the gap.
    tokio::time::timeout(WAIT, first.next()).await.unwrap().unwrap().unwrap();
    first.seek("profiles", 0, gap).unwrap();
    first.commit().await.unwrap();
    first.close().await;
    let mut second = GroupConsumer::join(client.clone(), group).await.unwrap();
    let r = tokio::time::timeout(WAIT, second.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(r.offset, next, "resumed at the first record after the committed offset {gap}");
    second.close().await;

    // A record without a key is refused (nothing written); the CLI shows the cleaner's state.
    let resp = produce_all(&client, vec![produce_request(1, "profiles", 0, vec![Record::new("no key")])]).await;
    assert_eq!(resp[0].error_code, tidelog::proto::v1::ErrorCode::InvalidRecord as i32, "{:?}", resp[0]);
    assert!(resp[0].error_message.contains("key"), "{}", resp[0].error_message);
    assert_eq!(high_watermark(&client, "profiles", 0).await, hw);
    let out = run_cli(&broker.addr, &["topic", "describe", "profiles"], "");
    assert!(out.contains("cleanup_policy=compact (topic)") && out.contains("cleaner dirty_ratio="), "{out}");

    // The CLI creates compacted topics too, and `compact,delete` also deletes by age.
    run_cli(
        &broker.addr,
        &[
            "topic",
            "create",
            "cd",
            "--cleanup-policy",
            "compact,delete",
            "--segment-bytes",
            "4096",
            "--max-batch-bytes",
            "2048",
            "--retention-ms",
            "1",
            "--min-cleanable-dirty-ratio",
            "0.01",
        ],
        "",
    );
    let _ = write_versions(&client, "cd", 10, 30, "cd").await;
    eventually(WAIT, "retention of the compact,delete topic", || {
        let client = client.clone();
        async move { (client.describe_topic("cd").await.unwrap().partitions[0].log_start_offset > 0).then_some(()) }
    })
    .await;
}

/// Crash points of a swap (`TIDELOG_CRASH_AT`), then random kill -9 times during cleanings.
#[tokio::test]
async fn a_kill_at_any_point_of_a_cleaning_loses_nothing() {
    let seed = seed("compaction kill -9");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let log = dir.path().join("broker.log");
    // A broker whose cleaner ticks every `interval` ms (its first tick comes at start).
    let start = |env: &[(&str, &str)], interval: &str, io: &str| {
        let args = ["--cleaner-interval-ms", interval, "--cleaner-io-bytes-per-sec", io];
        BrokerProcess::start_with_env(&data, &log, "127.0.0.1:0", &args, env)
    };
    let mut broker = start(&[], "50", "0");
    let client = broker.client().await;
    client.create_topic_with("t", 1, compacted(CleanupPolicy::Compact)).await.unwrap();
    let mut model = BTreeMap::new();
    let mut round = 0;
    for point in ["staged", "committed", "renamed"] {
        round += 1;
        // Written (and acknowledged) while the cleaner waits an hour for its next tick...
        broker.kill9();
        broker = start(&[], "3600000", "0");
        let client = broker.client().await;
        model.extend(write_versions(&client, "t", 15, 30, &format!("r{round}")).await);
        // ...then cleaned by a broker that aborts at `point` of its first swap.
        broker.kill9();
        broker = start(&[("TIDELOG_CRASH_AT", point)], "50", "0");
        let status = broker.wait_exit(WAIT).await;
        assert!(
            status.is_some(),
            "{point}: the broker should have aborted at its first swap; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        broker = start(&[], "50", "0");
        let client = broker.client().await;
        let rows = read_table(&client, "t").await;
        check_table(&rows, &model, &format!("seed {seed}: after a crash at {point}"));
    }
    // Random kill -9 times while a throttled cleaner (so a pass takes a while) is working.
    for _ in 0..4 {
        round += 1;
        let client = broker.client().await;
        model.extend(write_versions(&client, "t", 15, 30, &format!("r{round}")).await);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
        broker.kill9();
        broker = start(&[], "50", "200000");
        let client = broker.client().await;
        let rows = read_table(&client, "t").await;
        check_table(&rows, &model, &format!("seed {seed}: round {round}"));
    }
    broker.kill9();
    broker = start(&[], "50", "0");
    let client = broker.client().await;
    eventually(WAIT, "a final cleaning", || {
        let client = client.clone();
        async move { (client.describe_topic("t").await.unwrap().partitions[0].dirty_ratio < 0.5).then_some(()) }
    })
    .await;
    let rows = read_table(&client, "t").await;
    check_table(&rows, &model, &format!("seed {seed}: final"));
    assert!(rows.len() < (round * 15 * 30) as usize / 2, "seed {seed}: compacted: {} rows", rows.len());
}

#[tokio::test]
async fn three_replicas_compact_under_a_producer_and_agree_after_a_follower_returns_by_snapshot() {
    let mut c = TestCluster::start_with(&["--cleaner-interval-ms", "100"]).await;
    c.create_topic("table", 1, 3, compacted(CleanupPolicy::Compact)).await;
    let leader = c.leader("table").await;
    let client = Client::connect(c.addr(leader)).await.unwrap();
    let mut model = write_versions(&client, "table", 25, 20, "one").await;
    eventually(WAIT, "the leader to compact", || {
        let client = client.clone();
        async move { (cleaned_offset(&client, "table").await > 0).then_some(()) }
    })
    .await;
    // A follower goes away; the leader keeps writing and compacting (purging its Raft log), so
    // the follower comes back through a snapshot of compacted segments.
    let follower = c.serving().into_iter().find(|n| *n != leader).unwrap();
    c.kill9(follower);
    // The follower holds at most what was written before it died.
    let kill_hw = high_watermark(&client, "table", 0).await;
    model.extend(write_versions(&client, "table", 25, 20, "two").await);
    eventually(WAIT, "the leader to compact past what the follower holds", || {
        let client = client.clone();
        async move { (cleaned_offset(&client, "table").await > kill_hw).then_some(()) }
    })
    .await;
    c.start_node(follower);
    // Each replica cleans on its own; once all have cleaned the same sealed segments they hold
    // the same records.
    let hw = high_watermark(&client, "table", 0).await;
    let views = eventually(WAIT, "every replica to hold the same compacted records", || {
        let c = &c;
        async move {
            let mut views = BTreeMap::new();
            for n in c.serving() {
                let client = Client::connect(c.addr(n)).await.ok()?;
                let p = client.describe_topic("table").await.ok()?.partitions[0].clone();
                if p.high_watermark < hw || p.cleaned_offset == 0 {
                    return None;
                }
                views.insert(n, (p.cleaned_offset, read_table(&client, "table").await));
            }
            let first = views.values().next()?.clone();
            views.values().all(|v| *v == first).then_some(views)
        }
    })
    .await;
    for (n, (_, rows)) in &views {
        check_table(rows, &model, &format!("broker {n}"));
    }
    assert!(
        c.log(follower).contains("installed a snapshot of the leader's segments"),
        "broker {follower} caught up through a snapshot"
    );
    assert!(views[&leader].1.len() < hw as usize / 2, "compacted: {} of {hw}", views[&leader].1.len());
}
