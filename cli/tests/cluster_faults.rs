//! The cluster fault suite (issue 4): three real broker processes on loopback, RF=3, acks=all,
//! an idempotent Rust SDK producer streaming into one partition and a consumer tailing it, while
//! rounds of faults hit the brokers:
//! 1. SIGKILL of the partition leader (then it restarts);
//! 2. SIGSTOP of a follower, SIGCONT after a while;
//! 3. SIGSTOP of the leader (it wakes up as a stale leader and must step down);
//! 4. the leader cut off from both peers by the TCP proxies its Raft links run through;
//! 5. SIGKILL of the whole cluster, then a restart of all three.
//!
//! Broker-to-broker traffic goes through one proxy per directed link (each broker's `--peers`
//! names the proxies for the others), so a round can partition the network.
//!
//! After every round, the invariants:
//! - the log is gap-free: offsets 0..high watermark, each once;
//! - every acknowledged record is in the log at the offset it was acknowledged with;
//! - no record is stored twice (idempotence across leader changes and resends);
//! - every record the consumer saw is in the log at the offset it saw it at (consumers never
//!   see a record that is later lost);
//! - every replica holds the same records at the same offsets;
//! - committed consumer-group offsets never regress: every broker answers FetchCommitted with
//!   at least the last acknowledged commit (commits are metadata Raft entries, sent through
//!   a rotating broker so most are forwarded to the controller).
//!
//! Each round also reports the longest stall of the producer (no acknowledgement) and of the
//! reader (no record) from the fault until the round's progress. The producer runs with the
//! SDK's default timeouts and the reader relies on the SDK's stall watchdog (a stream silent
//! while another broker holds newer records ends with `Error::Stalled`, and is reopened
//! avoiding that broker); both stalls are asserted within the failover bound (two election
//! timeouts + 1 s) for every fault but the whole cluster's restart.
//! The broker links have TCP_NODELAY, as between real brokers, and carry only broker-to-broker
//! traffic (internal listeners): clients reach every broker directly, so a cut-off leader is
//! cut off from its peers, not from its clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::cluster::{TestCluster, NODES, WAIT};
use support::read_range;
use tidelog::proto::v1::{CommitRequest, ErrorCode, FetchCommittedRequest, FsyncPolicy, PartitionOffset, TopicConfig};
use tidelog::{Client, Producer, ProducerConfig, Record, StartAt, Subscription};

const TOPIC: &str = "faults";
/// Records acknowledged after each round's fault, before its checks: the cluster must make
/// progress again, not only keep what it had.
const PROGRESS: u64 = 100;
/// How long the producer may go without an acknowledgement after a leader is killed, frozen
/// or cut off: two of the brokers' longest election timeouts (2 x 1000 ms) and 1 s.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);
/// Most records the producer sends in the whole test (every loop here is bounded).
const MAX_RECORDS: u64 = 200_000;
/// The group whose commits the suite checks (outside group membership: generation 0).
const GROUP: &str = "faults-group";

async fn high_watermark(addr: &str) -> Option<u64> {
    let client = Client::connect(addr.to_string()).await.ok()?;
    Some(client.describe_topic(TOPIC).await.ok()?.partitions.first()?.high_watermark)
}

/// What the producer and the consumer saw.
#[derive(Default)]
struct Observed {
    /// offset → value of every acknowledged record.
    acked: Mutex<BTreeMap<u64, String>>,
    /// offset → value of every record the consumer received.
    consumed: Mutex<BTreeMap<u64, String>>,
    failed: AtomicU64,
    stop: AtomicBool,
    /// The highest committed offset whose commit was acknowledged, and how many were.
    committed: AtomicU64,
    commits: AtomicU64,
    /// When each acknowledgement, and each record the consumer received, arrived.
    ack_times: Mutex<Vec<Instant>>,
    read_times: Mutex<Vec<Instant>>,
    /// Streams the SDK ended as stalled (the reader then reopened elsewhere).
    stalled_streams: AtomicU64,
}

/// The longest time in `[from, to]` without an event of `times` (sorted).
fn longest_stall(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in times.iter().filter(|t| **t >= from && **t <= to) {
        longest = longest.max(t.duration_since(last));
        last = *t;
    }
    longest.max(to.duration_since(last))
}

impl Observed {
    fn acked(&self) -> u64 {
        self.acked.lock().unwrap().len() as u64
    }
}

/// Streams records `r-0`, `r-1`, … to partition 0 until told to stop, with up to 64 awaiting
/// their acknowledgement.
async fn produce(bootstrap: String, seen: Arc<Observed>) {
    let client = Client::connect(bootstrap).await.unwrap();
    // The SDK's defaults for failover (request timeout, leader probe, keepalive): the bound
    // below holds for them.
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        delivery_timeout: Duration::from_secs(90),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await.unwrap();
    let mut pending = futures::stream::FuturesOrdered::new();
    for i in 0..MAX_RECORDS {
        if seen.stop.load(Ordering::Acquire) {
            break;
        }
        let value = format!("r-{i}");
        let delivery = producer.send_to(TOPIC, 0, Record::new(value.clone())).await.unwrap();
        pending.push_back(async move { (value, delivery.await) });
        while pending.len() >= 64 {
            record(&seen, pending.next().await);
        }
        if i % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await; // bounded pace
        }
    }
    while let Some(done) = pending.next().await {
        record(&seen, Some(done));
    }
}

fn record(seen: &Observed, done: Option<(String, Result<tidelog::RecordMetadata, tidelog::Error>)>) {
    match done {
        Some((value, Ok(meta))) => {
            seen.ack_times.lock().unwrap().push(Instant::now());
            let previous = seen.acked.lock().unwrap().insert(meta.offset, value.clone());
            assert!(previous.is_none(), "offset {} acknowledged twice ({previous:?}, {value})", meta.offset);
        }
        Some((value, Err(e))) if seen.failed.fetch_add(1, Ordering::Relaxed) < 5 => {
            eprintln!("delivery of {value} failed: {e}");
        }
        Some((_, Err(_))) => {}
        None => {}
    }
}

/// Tails partition 0 from offset 0 as an application would with the SDK: a stream that the
/// SDK finds stalled (`Error::Stalled`: its broker went silent while another holds newer
/// records) is reopened avoiding that broker; any other failure moves to the next broker.
async fn consume(addrs: Vec<String>, seen: Arc<Observed>) {
    let mut next = 0u64;
    let mut avoid: Option<String> = None;
    let mut attempt = 0usize;
    while !seen.stop.load(Ordering::Acquire) {
        // The metadata from a broker that is not the stalled one.
        let addr = addrs.iter().cycle().skip(attempt).take(addrs.len()).find(|a| Some(*a) != avoid.as_ref());
        let addr = addr.unwrap_or(&addrs[0]).clone();
        let mut sub = Subscription::new(TOPIC).partition(0, Some(StartAt::Offset(next)));
        if let Some(a) = &avoid {
            sub = sub.avoid(a.clone());
        }
        let opened = async {
            let client = Client::connect(addr.clone()).await.ok()?;
            sub.open(&client).await.ok()
        };
        let Ok(Some(mut stream)) = tokio::time::timeout(Duration::from_secs(2), opened).await else {
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // A backstop only: the SDK's watchdog ends a stalled stream within seconds.
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                Ok(Some(Ok(r))) => {
                    assert_eq!(r.offset, next, "consumer got offset {} after {}", r.offset, next.wrapping_sub(1));
                    seen.read_times.lock().unwrap().push(Instant::now());
                    let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
                    seen.consumed.lock().unwrap().insert(r.offset, value);
                    next = r.offset + 1;
                    if seen.stop.load(Ordering::Acquire) {
                        return;
                    }
                }
                Ok(Some(Err(tidelog::Error::Stalled { broker, message }))) => {
                    eprintln!("reader: {message}; reopening elsewhere");
                    seen.stalled_streams.fetch_add(1, Ordering::Relaxed);
                    avoid = Some(broker);
                    break;
                }
                _ => {
                    attempt += 1;
                    break;
                }
            }
        }
    }
}

/// Commits the consumer's position for `GROUP` every 100 ms, through each broker in turn.
async fn commit_positions(addrs: Vec<String>, seen: Arc<Observed>) {
    for attempt in 0u64.. {
        if seen.stop.load(Ordering::Acquire) {
            return;
        }
        let position = seen.consumed.lock().unwrap().keys().next_back().map_or(0, |o| o + 1);
        let addr = &addrs[attempt as usize % addrs.len()];
        let commit = async {
            let client = Client::connect(addr.clone()).await.ok()?;
            let req = CommitRequest {
                request_id: attempt,
                group: GROUP.into(),
                topic: TOPIC.into(),
                offsets: vec![PartitionOffset { partition: 0, offset: position, metadata: String::new() }],
                generation: 0,
                member_id: String::new(),
            };
            let mut answers = client.offsets().commit(futures::stream::iter([req])).await.ok()?.into_inner();
            answers.message().await.ok()?
        };
        if let Ok(Some(resp)) = tokio::time::timeout(Duration::from_secs(3), commit).await {
            if resp.error_code == ErrorCode::Unspecified as i32 {
                seen.committed.fetch_max(position, Ordering::AcqRel);
                seen.commits.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every serving broker's answer to FetchCommitted for `GROUP` (forwarded to the controller).
async fn check_commits(c: &TestCluster, seen: &Observed, round: &str) {
    let acked = seen.committed.load(Ordering::Acquire);
    for n in c.serving() {
        let client = Client::connect(c.addr(n)).await.unwrap();
        let req = FetchCommittedRequest { group: GROUP.into(), topic: TOPIC.into(), partitions: vec![0] };
        let deadline = Instant::now() + WAIT;
        let fetched = loop {
            match client.offsets().fetch_committed(req.clone()).await {
                Ok(r) => break r.into_inner().offsets.first().map_or(0, |o| o.offset),
                Err(e) => assert!(Instant::now() < deadline, "{round}: broker {n}: fetch committed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(fetched >= acked, "{round}: broker {n} answers committed offset {fetched} < acknowledged {acked}");
    }
}

/// Waits until `n` more records are acknowledged than `from`; on a timeout, shows the
/// brokers' logs.
async fn progress(c: &TestCluster, seen: &Observed, from: u64, n: u64, round: &str) {
    let deadline = Instant::now() + WAIT;
    while seen.acked() < from + n {
        if Instant::now() > deadline {
            c.dump_logs();
            panic!(
                "{round}: no progress: {} acknowledged, {} failed",
                seen.acked(),
                seen.failed.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The producer's and the reader's longest stalls from `fault_at` until now, printed for
/// `round` and kept in `stalls`.
fn stalls_since(seen: &Observed, fault_at: Instant, round: &str, stalls: &mut Vec<(String, Duration, Duration)>) {
    let now = Instant::now();
    let producer = longest_stall(&seen.ack_times.lock().unwrap(), fault_at, now);
    let reader = longest_stall(&seen.read_times.lock().unwrap(), fault_at, now);
    eprintln!("{round}: longest stall: producer {producer:.1?}, reader {reader:.1?}");
    stalls.push((round.to_string(), producer, reader));
}

/// Checks every invariant of the module docs; returns how many records it checked.
async fn check(c: &TestCluster, seen: &Observed, round: &str) -> usize {
    let leader = c.leader(TOPIC).await;
    let acked = seen.acked.lock().unwrap().clone();
    let need = acked.keys().next_back().map_or(0, |o| o + 1);
    // Every replica must reach what was acknowledged (the leader's HW may lag its answers).
    let mut logs = BTreeMap::new();
    for n in c.serving() {
        let addr = c.addr(n);
        let deadline = Instant::now() + WAIT;
        let hw = loop {
            match high_watermark(&addr).await {
                Some(hw) if hw >= need => break hw,
                other => {
                    assert!(Instant::now() < deadline, "{round}: broker {n} stuck at high watermark {other:?} < {need}")
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let client = Client::connect(addr).await.unwrap();
        let records = read_range(&client, TOPIC, 0, 0, need).await;
        let values: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64, "{round}: broker {n}: gap or reorder at {i}");
        }
        logs.insert(n, (hw, values));
    }
    let (_, log) = &logs[&leader];
    for (n, (_, values)) in &logs {
        assert_eq!(values, log, "{round}: broker {n} differs from the leader {leader}");
    }
    for (offset, value) in &acked {
        assert_eq!(log.get(*offset as usize), Some(value), "{round}: acknowledged {value} lost from offset {offset}");
    }
    let mut unique = HashSet::new();
    for (i, v) in log.iter().enumerate() {
        assert!(unique.insert(v), "{round}: {v} stored twice (again at offset {i})");
    }
    for (offset, value) in seen.consumed.lock().unwrap().iter().filter(|(o, _)| **o < need) {
        assert_eq!(log.get(*offset as usize), Some(value), "{round}: consumer saw {value} at {offset}, since lost");
    }
    check_commits(c, seen, round).await;
    log.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_kills_pauses_and_partitions() {
    let started = Instant::now();
    support::init_sdk_log();
    let mut c = TestCluster::start_split(&[]).await;
    let config = TopicConfig { fsync_policy: FsyncPolicy::Always as i32, ..TopicConfig::default() };
    c.create_topic(TOPIC, 1, 0, config).await;
    let seen = Arc::new(Observed::default());
    let producer = tokio::spawn(produce(c.addr(1), Arc::clone(&seen)));
    let consumer = tokio::spawn(consume(NODES.iter().map(|n| c.addr(*n)).collect(), Arc::clone(&seen)));
    let committer = tokio::spawn(commit_positions(NODES.iter().map(|n| c.addr(*n)).collect(), Arc::clone(&seen)));
    progress(&c, &seen, 0, PROGRESS, "warm-up").await;
    let mut checked = check(&c, &seen, "warm-up").await;
    let mut faults = 0;
    let mut stalls = Vec::new();

    // 1. SIGKILL the leader; it comes back and catches up.
    let leader = c.leader(TOPIC).await;
    let fault_at = Instant::now();
    c.kill9(leader);
    faults += 1;
    progress(&c, &seen, seen.acked(), PROGRESS, "leader killed").await;
    stalls_since(&seen, fault_at, "leader killed", &mut stalls);
    c.start_node(leader);
    checked = checked.max(check(&c, &seen, "leader killed").await);

    // 2. SIGSTOP a follower for a few election timeouts.
    let leader = c.leader(TOPIC).await;
    let follower = NODES.into_iter().find(|n| *n != leader).unwrap();
    let fault_at = Instant::now();
    c.pause(follower, true);
    faults += 1;
    progress(&c, &seen, seen.acked(), PROGRESS, "follower paused").await;
    stalls_since(&seen, fault_at, "follower paused", &mut stalls);
    c.pause(follower, false);
    checked = checked.max(check(&c, &seen, "follower paused").await);

    // 3. SIGSTOP the leader: the others elect; the old leader wakes up stale and steps down.
    let leader = c.leader(TOPIC).await;
    let fault_at = Instant::now();
    c.pause(leader, true);
    faults += 1;
    progress(&c, &seen, seen.acked(), PROGRESS, "leader paused").await;
    stalls_since(&seen, fault_at, "leader paused", &mut stalls);
    c.pause(leader, false);
    checked = checked.max(check(&c, &seen, "leader paused").await);

    // 4. Cut the leader off from its peers: the majority side elects and goes on.
    let leader = c.leader(TOPIC).await;
    let fault_at = Instant::now();
    c.isolate(leader, true);
    faults += 1;
    progress(&c, &seen, seen.acked(), PROGRESS, "leader partitioned (majority side)").await;
    stalls_since(&seen, fault_at, "leader partitioned", &mut stalls);
    c.isolate(leader, false);
    checked = checked.max(check(&c, &seen, "leader partitioned").await);

    // 5. The whole cluster dies at once and comes back.
    let fault_at = Instant::now();
    for n in NODES {
        c.kill9(n);
    }
    faults += 1;
    for n in NODES {
        c.start_node(n);
    }
    progress(&c, &seen, seen.acked(), PROGRESS, "cluster restarted").await;
    stalls_since(&seen, fault_at, "cluster restarted", &mut stalls);
    checked = checked.max(check(&c, &seen, "cluster restarted").await);

    seen.stop.store(true, Ordering::Release);
    tokio::time::timeout(WAIT, producer).await.expect("producer stops").unwrap();
    tokio::time::timeout(WAIT, committer).await.expect("committer stops").unwrap();
    consumer.abort();
    if let Err(e) = consumer.await {
        assert!(!e.is_panic(), "the consumer saw offsets out of order: {e}");
    }
    let last = check(&c, &seen, "final").await;
    // Two election timeouts (the longest, 2 x 1000 ms by default) + 1 s: the producer (SDK
    // defaults) reaches the new leader within it, and the reader (the SDK's stall watchdog)
    // a live replica. The whole cluster's restart is bounded by its start-up instead.
    eprintln!("longest stalls per fault (producer bound: {FAILOVER_BOUND:?}):");
    for (round, producer, reader) in &stalls {
        eprintln!("  {round:<20} producer {producer:>8.1?}  reader {reader:>8.1?}");
    }
    eprintln!("reader streams the SDK found stalled: {}", seen.stalled_streams.load(Ordering::Relaxed));
    for (round, producer, reader) in stalls.iter().filter(|(r, _, _)| r != "cluster restarted") {
        assert!(*producer <= FAILOVER_BOUND, "{round}: the producer stalled {producer:?}, over {FAILOVER_BOUND:?}");
        assert!(*reader <= FAILOVER_BOUND, "{round}: the reader stalled {reader:?}, over {FAILOVER_BOUND:?}");
    }
    let commits = seen.commits.load(Ordering::Relaxed);
    assert!(commits > 0, "no commit was acknowledged in the whole run");
    eprintln!(
        "cluster faults: 5 rounds, {faults} faults, {} records acknowledged, {} failed deliveries, {} consumed, {} checked in the final log, {commits} commits acknowledged (last at offset {}), in {:?}",
        seen.acked(),
        seen.failed.load(Ordering::Relaxed),
        seen.consumed.lock().unwrap().len(),
        last.max(checked),
        seen.committed.load(Ordering::Relaxed),
        started.elapsed()
    );
}
