//! Partition reassignment in a real cluster (`server/src/cluster/reassign.rs`): a partition
//! under a steady idempotent acks=all producer moves between brokers three times, and each
//! move is interrupted by a SIGKILL: of the source (the leader, being removed), of the
//! target (a replica being added, while it catches up), and of the controller. Each move
//! completes; the replica moved away is deleted from its broker; the producer sees no error
//! beyond retries; and at the end every replica holds exactly the acknowledged records at
//! their offsets, each once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use support::cluster::{TestCluster, WAIT};
use support::steady::{self, Acked};
use support::{eventually, read_range, run_cli_output};
use tidelog::proto::v1::{
    AlterPartitionReassignmentsRequest, ListPartitionReassignmentsRequest, OngoingReassignment, PartitionReassignment,
    TopicConfig,
};
use tidelog::{Client, Producer, ProducerConfig, Record};

const TOPIC: &str = "moving";
/// Catch-up pace for the moves: slow enough that each kill lands mid-move.
const THROTTLE: u64 = 512 << 10;

async fn moves(addr: &str) -> Option<Vec<OngoingReassignment>> {
    let client = Client::connect(addr.to_string()).await.ok()?;
    let req = ListPartitionReassignmentsRequest { topic: TOPIC.into() };
    Some(client.admin().list_partition_reassignments(req).await.ok()?.into_inner().reassignments)
}

async fn replicas(addr: &str) -> Option<Vec<u32>> {
    let client = Client::connect(addr.to_string()).await.ok()?;
    let p = client.describe_topic(TOPIC).await.ok()?.partitions.into_iter().next()?;
    p.adding_replica_ids.is_empty().then_some(p.replica_ids)
}

/// Starts moving partition 0 to `target` through `addr`.
async fn reassign(addr: &str, target: &[u32]) {
    let req = AlterPartitionReassignmentsRequest {
        reassignments: vec![PartitionReassignment { topic: TOPIC.into(), partition: 0, replicas: target.to_vec() }],
        throttle_bytes_per_sec: THROTTLE,
    };
    eventually(WAIT, "the move accepted", || async {
        let client = Client::connect(addr.to_string()).await.ok()?;
        client.admin().alter_partition_reassignments(req.clone()).await.ok().map(|_| ())
    })
    .await;
}

/// Waits until some broker of `addrs` leads the move and reports `learner` catching up.
async fn mid_move(addrs: &[String], learner: u32) {
    eventually(WAIT, "the new replica catching up", || async {
        for a in addrs {
            for m in moves(a).await.unwrap_or_default() {
                if m.adding.iter().any(|r| r.broker_id == learner && r.role == "LEARNER" && r.lag_entries > 0) {
                    return Some(());
                }
            }
        }
        None
    })
    .await;
}

/// Waits until the move is done on every broker of `addrs`: replicas are `target`'s brokers.
async fn done(addrs: &[String], target: &[u32]) {
    let want: BTreeSet<u32> = target.iter().copied().collect();
    for a in addrs {
        eventually(Duration::from_secs(120), "the move done", || async {
            let now = replicas(a).await?;
            (now.iter().copied().collect::<BTreeSet<_>>() == want && moves(a).await?.is_empty()).then_some(())
        })
        .await;
    }
}

/// Whether broker data dir `dir` holds a replica of partition 0 of the (only) topic.
fn holds_replica(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("replicas")).into_iter().flatten().flatten().any(|t| t.path().join("0").exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_under_load_through_kills_of_source_target_and_controller() {
    let mut c = TestCluster::start_fast(&[]).await;
    let topic = c.create_topic(TOPIC, 1, 3, TopicConfig::default()).await;
    let first: Vec<u32> = topic.partitions[0].replica_ids.clone();
    let b4 = c.join(4).await;
    let all = |c: &TestCluster| -> Vec<String> {
        c.serving().into_iter().map(|n| c.addr(n)).chain([b4.process.addr.clone()]).collect()
    };
    // History the new replicas must catch up on: 4 MiB that do not compress, 8 s at the
    // throttle.
    let client = Client::connect(c.addr(1)).await.unwrap();
    let producer = Producer::new(client, ProducerConfig::default()).await.unwrap();
    let mut fills = Vec::new();
    let mut x = support::seed("cluster_reassign") | 1;
    for _ in 0..4_000 {
        let fill: Vec<u8> = (0..1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fills.push(producer.send_to(TOPIC, 0, Record::new(fill)).await.unwrap());
    }
    for f in fills {
        f.await.unwrap();
    }
    producer.close().await;
    let seen = Arc::new(Acked::default());
    let writer = tokio::spawn(steady::produce(c.addr(1), TOPIC, 1, "r", Arc::clone(&seen)));

    // 1. The leader is the source: replaced by broker 4, and SIGKILLed mid-move.
    let source = c.leader(TOPIC).await as u32;
    let target: Vec<u32> = first.iter().map(|b| if *b == source { 4 } else { *b }).collect();
    reassign(&c.addr(1), &target).await;
    mid_move(&all(&c), 4).await;
    eprintln!("round 1: killing the source (leader) {source} mid-move to {target:?}; {} acked", seen.count());
    c.kill9(u64::from(source));
    done(&all(&c), &target).await;
    c.start_node(u64::from(source));
    eventually(WAIT, "the source's replica deleted", || async {
        (!holds_replica(&c.dir(u64::from(source)))).then_some(())
    })
    .await;
    assert!(holds_replica(&b4.dir));

    // 2. The target is killed while it catches up: `source` comes back in place of another.
    let back = source;
    let out = *target.iter().find(|b| **b != 4).unwrap();
    let target2: Vec<u32> = target.iter().map(|b| if *b == out { back } else { *b }).collect();
    reassign(&c.addr(2), &target2).await;
    mid_move(&all(&c), back).await;
    eprintln!("round 2: killing the target {back} mid-move to {target2:?}; {} acked", seen.count());
    c.kill9(u64::from(back));
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.start_node(u64::from(back));
    done(&all(&c), &target2).await;

    // 3. The controller is killed mid-move.
    let spare = [1u32, 2, 3, 4].into_iter().find(|b| !target2.contains(b)).unwrap();
    let leaving = *target2.iter().find(|b| **b != 4).unwrap();
    let target3: Vec<u32> = target2.iter().map(|b| if *b == leaving { spare } else { *b }).collect();
    reassign(&c.addr(3), &target3).await;
    if spare != 4 {
        mid_move(&all(&c), spare).await;
    }
    let controller = c.controller().await;
    eprintln!("round 3: killing the controller {controller} mid-move to {target3:?}; {} acked", seen.count());
    c.kill9(controller);
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.start_node(controller);
    done(&all(&c), &target3).await;

    // The CLI shows no move left, and the plan a move would roll back with.
    let out = run_cli_output(&c.addr(1), &["partition", "reassignments"], b"");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no partition moves in progress"));

    seen.stop.store(true, Ordering::Release);
    writer.await.unwrap();
    assert_eq!(seen.failed.load(Ordering::Relaxed), 0, "the producer saw errors beyond retries");
    let acked: std::collections::BTreeMap<u64, String> =
        seen.acked.lock().unwrap().iter().map(|((_, o), v)| (*o, v.clone())).collect();
    assert!(acked.len() > 500, "only {} records acknowledged", acked.len());
    let need = acked.keys().next_back().unwrap() + 1;
    for b in &target3 {
        let addr = if *b == 4 { b4.process.addr.clone() } else { c.addr(u64::from(*b)) };
        let client = Client::connect(addr).await.unwrap();
        let records = eventually(WAIT, "every acknowledged record on the replica", || async {
            let r = read_range(&client, TOPIC, 0, 0, need).await;
            (r.len() as u64 == need).then_some(r)
        })
        .await;
        let mut unique = HashSet::new();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64, "broker {b}: gap at {i}");
            let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
            if v.starts_with("r-") {
                assert!(unique.insert(v.clone()), "broker {b}: {v} stored twice");
            }
            if let Some(a) = acked.get(&r.offset) {
                assert_eq!(&v, a, "broker {b}: acknowledged {a} lost from offset {}", r.offset);
            }
        }
    }
}
