//! Consumer groups and graceful shutdown in a real three-broker cluster (issue 4):
//! - placement: a topic with two replicas per partition on three brokers spreads replicas and
//!   preferred leaders, and its leaders settle on the preferred replicas; a topic created
//!   while a broker is down still gets a leader for the partitions that broker should lead
//!   (their other replicas start the group once it did not); a topic deleted and created
//!   again is, after a broker restart (which re-applies the metadata log), its last
//!   incarnation there;
//! - one group whose members connect to different brokers is one group: every broker proxies
//!   sessions to the coordinator on the controller and forwards commits and fetches there,
//!   and members read partitions their own broker does not hold from brokers that do;
//! - committed offsets are metadata Raft entries: after the controller is SIGKILLed, the
//!   members rejoin through the survivors, nothing committed is lost, and a commit from the
//!   old coordinator's generation is fenced;
//! - a rolling restart by SIGTERM hands every leadership over before a broker stops, so the
//!   partition has a new leader at once (well inside an election timeout) and an idempotent
//!   producer streaming through it loses, duplicates and fails nothing; afterwards the
//!   leadership returns to the partition's preferred replica.

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
    offset_spec, CommitRequest, DescribeGroupRequest, DescribeGroupResponse, ErrorCode, FetchCommittedRequest,
    ListOffsetsRequest, OffsetSpec, PartitionOffset, TopicConfig,
};
use tidelog::{
    Client, GroupConfig, GroupConsumer, OffsetReset, Producer, ProducerConfig, Record, StartAt, Subscription,
};

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

/// Each partition's high watermark, by ListOffsets(latest) at broker `addr` (which asks the
/// replicas of the partitions it does not hold), once they add up to `total` (a follower's
/// high watermark may trail the leader's acknowledgements briefly).
async fn high_watermarks(addr: &str, topic: &str, total: u64) -> BTreeMap<u32, u64> {
    let client = Client::connect(addr.to_string()).await.unwrap();
    eventually(WAIT, "the high watermarks cover every acknowledged record", || {
        let client = client.clone();
        async move {
            let req = ListOffsetsRequest {
                topic: topic.into(),
                partitions: vec![],
                spec: Some(OffsetSpec { spec: Some(offset_spec::Spec::Latest(true)) }),
                isolation_level: 0,
            };
            let offsets = client.admin().list_offsets(req).await.ok()?.into_inner().offsets;
            let hw: BTreeMap<u32, u64> = offsets.iter().map(|o| (o.partition, o.offset)).collect();
            (hw.len() == PARTITIONS as usize && hw.values().sum::<u64>() == total).then_some(hw)
        }
    })
    .await
}

/// Produces `n` keyed records (keys spread them over the partitions); on a failed delivery,
/// shows the brokers' logs.
async fn produce_keyed(c: &TestCluster, bootstrap: u64, topic: &str, from: u32, n: u32) {
    let config = ProducerConfig { delivery_timeout: Duration::from_secs(30), ..ProducerConfig::default() };
    let producer = Producer::new(Client::connect(c.addr(bootstrap)).await.unwrap(), config).await.unwrap();
    let mut pending = Vec::new();
    for i in from..from + n {
        let record = Record::new(format!("v-{i}")).with_key(format!("k-{i}"));
        pending.push(producer.send(topic, record).await.unwrap());
    }
    for d in pending {
        if let Err(e) = d.await {
            c.dump_logs();
            panic!("delivery failed: {e}");
        }
    }
    producer.close().await;
}

/// Every (partition, offset) below the high watermarks.
fn all_below(hw: &BTreeMap<u32, u64>) -> BTreeSet<(u32, u64)> {
    hw.iter().flat_map(|(p, h)| (0..*h).map(move |o| (*p, o))).collect()
}

/// A running group of one member per broker (two of them reach the coordinator through a
/// proxying broker), with what it consumed.
struct Members {
    seen: Consumed,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Members {
    fn start(c: &TestCluster, group: &str, topic: &str) -> Self {
        let (seen, stop): (Consumed, _) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let tasks =
            NODES.iter().map(|n| member(c.addr(*n), group, topic, Arc::clone(&seen), Arc::clone(&stop))).collect();
        Self { seen, stop, tasks }
    }

    /// Waits until every record below `hw` was consumed and its commit is readable through
    /// every serving broker.
    async fn consume_and_commit(&self, c: &TestCluster, group: &str, topic: &str, hw: &BTreeMap<u32, u64>) {
        eventually(WAIT, "every record consumed", || {
            let done = self.seen.lock().unwrap().is_superset(&all_below(hw));
            async move { done.then_some(()) }
        })
        .await;
        for n in c.serving() {
            eventually(WAIT, "commits reach the high watermarks, read through every broker", || {
                let addr = c.addr(n);
                async move { committed(&addr, group, topic).await.filter(|o| o == hw) }
            })
            .await;
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for m in self.tasks {
            tokio::time::timeout(WAIT, m).await.expect("member stops").unwrap();
        }
    }
}

/// The group as every serving broker describes it, once all agree it is settled with three
/// members.
async fn settled_everywhere(c: &TestCluster, group: &str) -> DescribeGroupResponse {
    eventually(WAIT, "every broker describes one settled group of three", || {
        let addrs: Vec<String> = c.serving().iter().map(|n| c.addr(*n)).collect();
        async move {
            let mut views = Vec::new();
            for a in &addrs {
                views.push(describe_group(a, group).await.filter(|d| settled(d, 3))?);
            }
            let first = views[0].clone();
            views.iter().all(|v| v.generation == first.generation && v.members == first.members).then_some(first)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_replicas_and_leaders_and_a_group_reads_across_brokers() {
    let (topic, group) = ("placed", "readers");
    let c = TestCluster::start().await;
    // Two replicas of each partition on three brokers: every broker lacks some partitions,
    // so members read (and the brokers answer offsets and lag) across brokers.
    let desc = c.create_topic(topic, PARTITIONS, 2, TopicConfig::default()).await;
    let placed: Vec<&Vec<u32>> = desc.partitions.iter().map(|p| &p.replica_ids).collect();
    assert!(placed.iter().all(|r| r.len() == 2 && r[0] != r[1]), "placement {placed:?}");
    let preferred: BTreeSet<u32> = placed.iter().map(|r| r[0]).collect();
    assert_eq!(preferred.len(), 3, "preferred leaders are not spread: {placed:?}");
    // Each new group's preferred leader stood for election first.
    for (p, replicas) in placed.iter().enumerate() {
        let preferred = replicas[0];
        let addr = c.addr(u64::from(preferred));
        eventually(WAIT, "every partition led by its preferred replica", || {
            let addr = addr.clone();
            async move {
                let client = Client::connect(addr).await.ok()?;
                let d = client.describe_topic(topic).await.ok()?;
                (d.partitions[p].leader_id == preferred).then_some(())
            }
        })
        .await;
    }
    produce_keyed(&c, 1, topic, 0, 300).await;
    let hw = high_watermarks(&c.addr(1), topic, 300).await;
    assert!(hw.values().all(|h| *h > 0), "keys did not reach every partition: {hw:?}");
    // A subscription to the whole topic at any broker reads the partitions that broker lacks
    // from their replicas.
    for n in NODES {
        let client = Client::connect(c.addr(n)).await.unwrap();
        let mut stream = Subscription::new(topic).start_at(StartAt::Earliest).open(&client).await.unwrap();
        let mut read = BTreeSet::new();
        while read.len() < 300 {
            let r = tokio::time::timeout(WAIT, stream.next()).await.expect("records keep coming").unwrap().unwrap();
            assert!(read.insert((r.partition, r.offset)), "broker {n}: {}/{} read twice", r.partition, r.offset);
        }
        assert_eq!(read, all_below(&hw), "broker {n}");
    }
    let members = Members::start(&c, group, topic);
    settled_everywhere(&c, group).await;
    members.consume_and_commit(&c, group, topic, &hw).await;
    // Lag, from any broker: the coordinator asks the replicas for the high watermarks.
    for n in NODES {
        let d = describe_group(&c.addr(n), group).await.unwrap();
        let lag: BTreeMap<u32, (u64, u64)> =
            d.partitions.iter().map(|l| (l.partition, (l.high_watermark, l.lag))).collect();
        let want: BTreeMap<u32, (u64, u64)> = hw.iter().map(|(p, h)| (*p, (*h, 0))).collect();
        assert_eq!(lag, want, "broker {n} describes the group's lag");
    }
    members.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commits_survive_controller_loss_and_stale_generations_are_fenced() {
    let (topic, group) = ("orders", "billing");
    let mut c = TestCluster::start().await;
    // Three replicas: every partition survives losing one broker (two replicas would not: a
    // two-voter Raft group needs both).
    c.create_topic(topic, PARTITIONS, 3, TopicConfig::default()).await;
    produce_keyed(&c, 1, topic, 0, 300).await;
    let hw = high_watermarks(&c.addr(1), topic, 300).await;
    let members = Members::start(&c, group, topic);
    let before = settled_everywhere(&c, group).await;
    members.consume_and_commit(&c, group, topic, &hw).await;

    // The controller dies; the members rejoin at the new one, through the survivors.
    let controller = c.controller().await;
    c.kill9(controller);
    let survivor = c.serving()[0];
    let after = settled_everywhere(&c, group).await;
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
    assert!(
        after.generation > before.generation,
        "generations go backwards across the failover: {} -> {}",
        before.generation,
        after.generation
    );

    // The group goes on: new records are consumed and committed.
    produce_keyed(&c, survivor, topic, 300, 200).await;
    let hw = high_watermarks(&c.addr(survivor), topic, 500).await;
    members.consume_and_commit(&c, group, topic, &hw).await;
    members.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_by_sigterm_moves_leaders_without_failed_deliveries() {
    let topic = "rolling";
    let mut c = TestCluster::start_with(&["--leader-rebalance-ms", "500"]).await;
    let desc = c.create_topic(topic, 1, 0, TopicConfig::default()).await;
    let preferred = u64::from(desc.partitions[0].replica_ids[0]);
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
    // Every broker in turn, as an operator would: SIGTERM, restart, wait until it is back.
    let mut handed_over = Vec::new();
    for n in NODES {
        let leader = c.leader(topic).await;
        tokio::time::sleep(Duration::from_millis(300)).await; // records flow meanwhile
        let status = c.terminate(n).await;
        assert!(status.success(), "broker {n} exited with {status}");
        if n == leader {
            // The hand-over happened before the exit: a survivor leads now, without waiting
            // out an election timeout (1-2 s).
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
        }
        c.start_node(n);
        eventually(WAIT, "the restarted broker follows a leader again", || {
            let addr = c.addr(n);
            async move { describe_leader(&addr, topic).await }
        })
        .await;
    }
    // The preferred leader leads until its own restart, so at least that one was of the
    // leader (another may be too, if the leadership was not back at the preferred yet).
    assert!(!handed_over.is_empty(), "no restart hit the leader");
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
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(log.len() as u64, end, "gap in the log");
    for (offset, value) in &acked {
        assert_eq!(&log[*offset as usize], value, "acknowledged {value} is not at offset {offset}");
    }
    let distinct: BTreeSet<&String> = log.iter().collect();
    assert_eq!(distinct.len(), log.len(), "a record was stored twice");
    // Once every broker is back, the leadership returns to the preferred replica.
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.leader(topic).await != preferred {
        assert!(Instant::now() < deadline, "the leadership did not return to preferred broker {preferred}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "rolling restart: {} records acknowledged, 0 failed; hand-overs (old, new, seen after exit): {handed_over:?}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_while_a_broker_is_down_gets_a_leader_for_every_partition() {
    let mut c = TestCluster::start().await;
    let controller = c.controller().await;
    let down = NODES.into_iter().find(|n| *n != controller).unwrap();
    c.kill9(down);
    // Round-robin placement over all three brokers: one partition's preferred leader is down.
    let topic = c.create_topic("while-down", 3, 3, TopicConfig::default()).await;
    let orphaned: Vec<u32> = topic
        .partitions
        .iter()
        .filter(|p| p.replica_ids.first() == Some(&(down as u32)))
        .map(|p| p.partition)
        .collect();
    assert_eq!(orphaned.len(), 1, "placement: {:?}", topic.partitions);
    let started = Instant::now();
    for meta in c.write_each(controller, "while-down", 3, "r").await {
        assert_eq!(meta.offset, 0);
    }
    eprintln!(
        "placement: every partition of a topic created with broker {down} down took a write in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_its_last_incarnation_after_a_restart() {
    let mut c = TestCluster::start().await;
    c.create_topic("again", 2, 3, TopicConfig::default()).await;
    let admin = Client::connect(c.addr(1)).await.unwrap();
    let delete = tidelog::proto::v1::DeleteTopicRequest { name: "again".into() };
    admin.admin().delete_topic(delete).await.unwrap();
    // The name is free once the delete is applied; the second incarnation has 3 partitions.
    eventually(WAIT, "the topic recreated", || {
        let c = &c;
        async move {
            let req = tidelog::proto::v1::CreateTopicRequest {
                name: "again".into(),
                partitions: 3,
                replication_factor: 3,
                config: Some(TopicConfig::default()),
            };
            let admin = Client::connect(c.addr(1)).await.ok()?;
            admin.admin().create_topic(req).await.ok().map(|_| ())
        }
    })
    .await;
    produce_keyed(&c, 1, "again", 0, 30).await;
    // Broker 3 re-applies create, delete, create from its metadata log on start.
    c.kill9(3);
    c.start_node(3);
    let d = eventually(WAIT, "broker 3 describes the topic again", || {
        let addr = c.addr(3);
        async move {
            let d = Client::connect(addr).await.ok()?.describe_topic("again").await.ok()?;
            (d.partitions.iter().map(|p| p.high_watermark).sum::<u64>() == 30).then_some(d)
        }
    })
    .await;
    assert_eq!(d.partition_count, 3, "broker 3 serves the last incarnation: {d:?}");
}
