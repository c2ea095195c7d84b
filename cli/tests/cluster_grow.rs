//! Growing a topic in a real three-broker cluster while it is used: partitions added through
//! a non-controller with the CLI reach every broker with leaders; a running keyed producer
//! starts routing keys by the new count once it reads the topic again; a running consumer
//! group is rebalanced onto the new partitions and reads every record; a topic created at one
//! broker is usable through another at once; records deleted through another broker are gone
//! from every replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::cluster::{TestCluster, WAIT};
use support::{eventually, run_cli};
use tidelog::{Client, GroupConfig, GroupConsumer, OffsetReset, Producer, ProducerConfig, Record};

#[tokio::test]
async fn partitions_added_in_a_cluster_get_leaders_records_and_group_members() {
    let c = TestCluster::start().await;
    let controller = c.controller().await;
    let other = (1..=3).find(|n| *n != controller).unwrap();
    c.create_topic("grow", 2, 2, Default::default()).await;

    let mut config = GroupConfig::new("growers", &["grow"]);
    config.offset_reset = OffsetReset::Earliest;
    config.session_timeout = Duration::from_secs(6);
    config.heartbeat_interval = Duration::from_millis(500);
    let mut consumer = GroupConsumer::join(Client::connect(c.addr(other)).await.unwrap(), config).await.unwrap();
    let producer_config = ProducerConfig { metadata_max_age: Duration::from_millis(200), ..ProducerConfig::default() };
    let producer = Producer::new(Client::connect(c.addr(controller)).await.unwrap(), producer_config).await.unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        producer.send("grow", Record::new(format!("before-{k}")).with_key(k.clone())).await.unwrap().await.unwrap();
    }

    // Through a broker that is not the controller (passed on to it).
    let addr = c.addr(other);
    let out =
        tokio::task::spawn_blocking(move || run_cli(&addr, &["topic", "add-partitions", "grow", "--total", "5"], ""))
            .await
            .unwrap();
    assert!(out.starts_with("topic grow partitions=5"), "{out}");
    for n in 1..=3 {
        let client = Client::connect(c.addr(n)).await.unwrap();
        eventually(WAIT, "five partitions with leaders at every broker", || async {
            let t = client.describe_topic("grow").await.ok()?;
            (t.partition_count == 5 && t.partitions.iter().all(|p| p.replica_ids.len() == 2)).then_some(())
        })
        .await;
    }
    // Placement continued: the new partitions' replicas spread over the brokers.
    let t = Client::connect(c.addr(1)).await.unwrap().describe_topic("grow").await.unwrap();
    let hosts: BTreeSet<u32> = t.partitions[2..].iter().flat_map(|p| p.replica_ids.clone()).collect();
    assert_eq!(hosts.len(), 3, "{:?}", t.partitions);

    // The producer reads the new count and keys route by it (murmur2 over 5).
    tokio::time::sleep(Duration::from_millis(300)).await; // past metadata_max_age
    let mut landed = BTreeSet::new();
    for k in &keys {
        let m =
            producer.send("grow", Record::new(format!("after-{k}")).with_key(k.clone())).await.unwrap().await.unwrap();
        assert_eq!(m.partition, tidelog::partitioner::partition_for_key(k.as_bytes(), 5), "key {k}");
        landed.insert(m.partition);
    }
    assert!(landed.iter().any(|p| *p >= 2), "no key reached a new partition: {landed:?}");
    producer.close().await;

    // The group rebalanced onto all five partitions and reads every record.
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < keys.len() * 2 {
        assert!(tokio::time::Instant::now() < deadline, "consumed {} of {}", seen.len(), keys.len() * 2);
        if let Ok(Some(Ok(r))) = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
            seen.insert(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    let (_, assigned) = consumer.assignment();
    assert_eq!(assigned.len(), 5, "{assigned:?}");
    consumer.close().await;

    // A topic created at one broker is usable at once through another (which may not have
    // applied it yet: clients ask again for a moment rather than call it unknown).
    let third = (1..=3).find(|n| *n != controller && *n != other).unwrap();
    Client::connect(c.addr(other)).await.unwrap().create_topic("fresh", 1).await.unwrap();
    let at_third = Client::connect(c.addr(third)).await.unwrap();
    let fresh = Producer::new(at_third.clone(), ProducerConfig::default()).await.unwrap();
    fresh.send("fresh", Record::new("first")).await.unwrap().await.unwrap();
    fresh.close().await;

    // Records deleted through the third broker are gone everywhere.
    let addr = c.addr(third);
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&addr, &["topic", "delete-records", "grow", "--before", "end", "--format", "json"], "")
    })
    .await
    .unwrap();
    assert!(out.contains("log_start_offset"), "{out}");
    for n in 1..=3 {
        let client = Client::connect(c.addr(n)).await.unwrap();
        eventually(WAIT, "log starts at the high watermarks on every replica", || async {
            let t = client.describe_topic("grow").await.ok()?;
            // As each replica knows its own partitions (others describe none of their offsets).
            let mut held = t.partitions.iter().filter(|p| p.replica_ids.contains(&(n as u32)));
            held.all(|p| p.high_watermark > 0 && p.log_start_offset == p.high_watermark).then_some(())
        })
        .await;
    }
}
