//! Consumer groups and graceful shutdown in a real three-broker cluster (issue 4):
//! - one group whose members connect to different brokers is one group: every broker proxies
//!   sessions to the coordinator on the controller and forwards commits and fetches there;
//! - committed offsets are metadata Raft entries: after the controller is SIGKILLed, the
//!   members rejoin through the survivors, nothing committed is lost, and a commit from the
//!   old coordinator's generation is fenced;
//! - a rolling restart by SIGTERM hands every leadership over before a broker stops, so the
//!   partition has a new leader at once (well inside an election timeout) and an idempotent
//!   producer streaming through it loses, duplicates and fails nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::cluster::{describe_leader, TestCluster, NODES, WAIT};
use support::{eventually, read_range};
use tidelog::proto::v1::{
    CommitRequest, DescribeGroupRequest, DescribeGroupResponse, ErrorCode, FetchCommittedRequest, PartitionOffset,
    TopicConfig,
};
use tidelog::{Client, GroupConfig, GroupConsumer, OffsetReset, Producer, ProducerConfig, Record};

const PARTITIONS: u32 = 4;

/// Every (partition, offset) any member consumed.
type Consumed = Arc<Mutex<BTreeSet<(u32, u64)>>>;

/// A member that consumes into `seen` and auto-commits every 200 ms until `stop`.
fn member(
    bootstrap: String,
    group: &str,
    topic: &str,
    seen: Consumed,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let mut config = GroupConfig::new(group, &[topic]);
    config.offset_reset = OffsetReset::Earliest;
    config.auto_commit_interval = Some(Duration::from_millis(200));
    config.session_timeout = Duration::from_secs(6);
    config.heartbeat_interval = Duration::from_millis(500);
    tokio::spawn(async move {
        let client = Client::connect(bootstrap).await.unwrap();
        let mut consumer = GroupConsumer::join(client, config).await.unwrap();
        while !stop.load(Ordering::Acquire) {
            if let Ok(Some(Ok(r))) = tokio::time::timeout(Duration::from_millis(100), consumer.next()).await {
                seen.lock().unwrap().insert((r.partition, r.offset));
            }
        }
        consumer.close().await;
    })
}

async fn describe_group(addr: &str, group: &str) -> Option<DescribeGroupResponse> {
    let client = Client::connect(addr.to_string()).await.ok()?;
    let req = DescribeGroupRequest { group: group.into() };
    Some(
        tokio::time::timeout(Duration::from_secs(3), client.groups().describe_group(req))
            .await
            .ok()?
            .ok()?
            .into_inner(),
    )
}

/// Stable, `members` members, each partition owned by exactly one of them.
fn settled(d: &DescribeGroupResponse, members: usize) -> bool {
    let owned: Vec<u32> = d.members.iter().flat_map(|m| m.owned.iter().flat_map(|t| t.partitions.clone())).collect();
    let distinct: BTreeSet<u32> = owned.iter().copied().collect();
    d.state == "stable"
        && d.members.len() == members
        && owned.len() == distinct.len()
        && distinct.len() == PARTITIONS as usize
}

/// Committed offset per partition, as broker `addr` answers (forwarded to the controller).
async fn committed(addr: &str, group: &str, topic: &str) -> Option<BTreeMap<u32, u64>> {
    let client = Client::connect(addr.to_string()).await.ok()?;
    let req = FetchCommittedRequest { group: group.into(), topic: topic.into(), partitions: vec![] };
    let resp = tokio::time::timeout(Duration::from_secs(3), client.offsets().fetch_committed(req)).await.ok()?.ok()?;
    Some(resp.into_inner().offsets.into_iter().map(|o| (o.partition, o.offset)).collect())
}

/// Each partition's high watermark at broker `addr`, once they add up to `total` (a
/// follower's high watermark may trail the leader's acknowledgements briefly).
async fn high_watermarks(addr: &str, topic: &str, total: u64) -> BTreeMap<u32, u64> {
    let client = Client::connect(addr.to_string()).await.unwrap();
    eventually(WAIT, "the high watermarks cover every acknowledged record", || {
        let client = client.clone();
        async move {
            let desc = client.describe_topic(topic).await.ok()?;
            let hw: BTreeMap<u32, u64> = desc.partitions.iter().map(|p| (p.partition, p.high_watermark)).collect();
            (hw.values().sum::<u64>() == total).then_some(hw)
        }
    })
    .await
}

async fn produce_keyed(bootstrap: String, topic: &str, from: u32, n: u32) {
    let producer = Producer::new(Client::connect(bootstrap).await.unwrap(), ProducerConfig::default()).await.unwrap();
    let mut pending = Vec::new();
    for i in from..from + n {
        let record = Record::new(format!("v-{i}")).with_key(format!("k-{i}"));
        pending.push(producer.send(topic, record).await.unwrap());
    }
    for d in pending {
        d.await.unwrap();
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_across_brokers_keeps_its_commits_through_controller_loss() {
    let (topic, group) = ("orders", "billing");
    let mut c = TestCluster::start().await;
    c.create_topic(topic, PARTITIONS, TopicConfig::default()).await;
    produce_keyed(c.addr(1), topic, 0, 300).await;

    // One member per broker: two of them reach the coordinator through a proxying broker.
    let seen: Consumed = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let members: Vec<_> =
        NODES.iter().map(|n| member(c.addr(*n), group, topic, Arc::clone(&seen), Arc::clone(&stop))).collect();
    let hw = high_watermarks(&c.addr(1), topic, 300).await;
    let all = |hw: &BTreeMap<u32, u64>| -> BTreeSet<(u32, u64)> {
        hw.iter().flat_map(|(p, h)| (0..*h).map(move |o| (*p, o))).collect()
    };
    let before = eventually(WAIT, "every broker describes one settled group of three", || {
        let addrs: Vec<String> = NODES.iter().map(|n| c.addr(*n)).collect();
        async move {
            let mut views = Vec::new();
            for a in &addrs {
                views.push(describe_group(a, group).await.filter(|d| settled(d, 3))?);
            }
            let first = views[0].clone();
            views.iter().all(|v| v.generation == first.generation && v.members == first.members).then_some(first)
        }
    })
    .await;
    eventually(WAIT, "every record consumed", || {
        let done = seen.lock().unwrap().is_superset(&all(&hw));
        async move { done.then_some(()) }
    })
    .await;
    for n in NODES {
        let addr = c.addr(n);
        eventually(WAIT, "commits reach the high watermarks, read through every broker", || {
            let (addr, hw) = (addr.clone(), hw.clone());
            async move { committed(&addr, group, topic).await.filter(|o| *o == hw) }
        })
        .await;
    }

    // The controller dies; the members rejoin at the new one, through the survivors.
    let controller = c.controller().await;
    c.kill9(controller);
    let survivor = c.serving()[0];
    let after = eventually(WAIT, "the group settles again at the new controller", || {
        let addr = c.addr(survivor);
        async move { describe_group(&addr, group).await.filter(|d| settled(d, 3)) }
    })
    .await;
    assert_eq!(committed(&c.addr(survivor), group, topic).await.unwrap(), hw, "a committed offset was lost");

    // The old coordinator's generation is fenced at the new one.
    let old = &before.members[0];
    let stale = CommitRequest {
        request_id: 1,
        group: group.into(),
        topic: topic.into(),
        offsets: vec![PartitionOffset { partition: 0, offset: 0, metadata: String::new() }],
        generation: before.generation,
        member_id: old.member_id.clone(),
    };
    let client = Client::connect(c.addr(survivor)).await.unwrap();
    let resp = client.offsets().commit(futures::stream::iter([stale])).await.unwrap().into_inner().next().await;
    let resp = resp.unwrap().unwrap();
    assert_eq!(resp.error_code, ErrorCode::IllegalGeneration as i32, "stale commit: {resp:?}");
    assert!(after.members.iter().all(|m| m.member_id != old.member_id));

    // The group goes on: new records are consumed and committed.
    produce_keyed(c.addr(survivor), topic, 300, 200).await;
    let hw = high_watermarks(&c.addr(survivor), topic, 500).await;
    eventually(WAIT, "every new record consumed", || {
        let done = seen.lock().unwrap().is_superset(&all(&hw));
        async move { done.then_some(()) }
    })
    .await;
    eventually(WAIT, "the new commits reach the high watermarks", || {
        let (addr, hw) = (c.addr(survivor), hw.clone());
        async move { committed(&addr, group, topic).await.filter(|o| *o == hw) }
    })
    .await;
    stop.store(true, Ordering::Release);
    for m in members {
        tokio::time::timeout(WAIT, m).await.expect("member stops").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_by_sigterm_moves_leaders_without_failed_deliveries() {
    let topic = "rolling";
    let mut c = TestCluster::start().await;
    c.create_topic(topic, 1, TopicConfig::default()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (bootstrap, stop) = (c.addr(1), Arc::clone(&stop));
        tokio::spawn(async move {
            let config = ProducerConfig { linger: Duration::from_millis(2), ..ProducerConfig::default() };
            let producer = Producer::new(Client::connect(bootstrap).await.unwrap(), config).await.unwrap();
            let mut results = Vec::new();
            let mut pending = futures::stream::FuturesOrdered::new();
            for i in 0..50_000u32 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let value = format!("r-{i}");
                let d = producer.send_to(topic, 0, Record::new(value.clone())).await.unwrap();
                pending.push_back(async move { (value, d.await) });
                while pending.len() >= 32 {
                    results.push(pending.next().await.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(1)).await; // bounded pace
            }
            while let Some(r) = pending.next().await {
                results.push(r);
            }
            producer.close().await;
            results
        })
    };
    let mut handed_over = Vec::new();
    for _ in NODES {
        let leader = c.leader(topic).await;
        // Let some records through this leader first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = c.terminate(leader).await;
        assert!(status.success(), "broker {leader} exited with {status}");
        // The hand-over happened before the exit: a survivor leads now, without waiting out
        // an election timeout (1-2 s).
        let started = Instant::now();
        let new = eventually(Duration::from_millis(700), "a new leader right after the old one exited", || {
            let addrs: Vec<(u64, String)> = c.serving().into_iter().map(|n| (n, c.addr(n))).collect();
            async move {
                for (n, a) in addrs {
                    if describe_leader(&a, topic).await == Some(n) {
                        return Some(n);
                    }
                }
                None
            }
        })
        .await;
        handed_over.push((leader, new, started.elapsed()));
        c.start_node(leader);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    let results = tokio::time::timeout(WAIT, producer).await.expect("producer stops").unwrap();
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).take(3).collect();
    assert!(failed.is_empty(), "deliveries failed during the rolling restart: {failed:?}");
    let acked: BTreeMap<u64, String> = results.into_iter().map(|(v, r)| (r.unwrap().offset, v)).collect();
    let end = acked.keys().next_back().unwrap() + 1;
    let leader = c.leader(topic).await;
    let client = Client::connect(c.addr(leader)).await.unwrap();
    eventually(WAIT, "the leader's high watermark covers every acknowledged record", || {
        let client = client.clone();
        async move { (client.describe_topic(topic).await.ok()?.partitions[0].high_watermark >= end).then_some(()) }
    })
    .await;
    let log: Vec<String> = read_range(&client, topic, 0, 0, end)
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(log.len() as u64, end, "gap in the log");
    for (offset, value) in &acked {
        assert_eq!(&log[*offset as usize], value, "acknowledged {value} is not at offset {offset}");
    }
    let distinct: BTreeSet<&String> = log.iter().collect();
    assert_eq!(distinct.len(), log.len(), "a record was stored twice");
    eprintln!(
        "rolling restart: {} records acknowledged, 0 failed; hand-overs (old, new, seen after exit): {handed_over:?}",
        acked.len()
    );
}
