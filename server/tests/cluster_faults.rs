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
//! - every replica holds the same records at the same offsets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::proxy::Proxy;
use support::{read_range, signal, BrokerProcess};
use tidelog::proto::v1::{FsyncPolicy, TopicConfig};
use tidelog::{Client, Producer, ProducerConfig, Record, StartAt, Subscription};

const NODES: [u64; 3] = [1, 2, 3];
const TOPIC: &str = "faults";
/// Records acknowledged after each round's fault, before its checks: the cluster must make
/// progress again, not only keep what it had.
const PROGRESS: u64 = 100;
const WAIT: Duration = Duration::from_secs(60);
/// Most records the producer sends in the whole test (every loop here is bounded).
const MAX_RECORDS: u64 = 200_000;

struct TestCluster {
    root: tempfile::TempDir,
    ports: BTreeMap<u64, u16>,
    /// `proxies[(from, to)]` carries broker `from`'s Raft and forwarding traffic to `to`.
    proxies: BTreeMap<(u64, u64), Proxy>,
    procs: BTreeMap<u64, BrokerProcess>,
    stopped: HashSet<u64>,
}

impl TestCluster {
    async fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        // Held until the proxies have their ports, so no proxy can take a broker's port.
        let held: Vec<std::net::TcpListener> =
            NODES.iter().map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports: BTreeMap<u64, u16> =
            NODES.iter().zip(&held).map(|(n, l)| (*n, l.local_addr().unwrap().port())).collect();
        let mut proxies = BTreeMap::new();
        for from in NODES {
            for to in NODES.iter().filter(|t| **t != from) {
                proxies.insert((from, *to), Proxy::start(&format!("http://127.0.0.1:{}", ports[to])).await);
            }
        }
        drop(held);
        let mut c = Self { root, ports, proxies, procs: BTreeMap::new(), stopped: HashSet::new() };
        for n in NODES {
            c.start_node(n);
        }
        c
    }

    fn dir(&self, n: u64) -> PathBuf {
        self.root.path().join(format!("node-{n}"))
    }

    fn start_node(&mut self, n: u64) {
        let peers: Vec<String> = NODES
            .iter()
            .map(|m| match self.proxies.get(&(n, *m)) {
                Some(p) => format!("{m}={}", p.addr.trim_start_matches("http://")),
                None => format!("{m}=127.0.0.1:{}", self.ports[m]),
            })
            .collect();
        let listen = format!("127.0.0.1:{}", self.ports[&n]);
        let log = self.root.path().join(format!("node-{n}.log"));
        let args = ["--node-id", &n.to_string(), "--peers", &peers.join(",")].map(String::from);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = BrokerProcess::start_listening(&self.dir(n), &log, &listen, &args);
        self.procs.insert(n, p);
    }

    fn addr(&self, n: u64) -> String {
        format!("http://127.0.0.1:{}", self.ports[&n])
    }

    fn kill9(&mut self, n: u64) {
        if let Some(mut p) = self.procs.remove(&n) {
            p.kill9();
        }
        self.stopped.remove(&n);
    }

    fn pause(&mut self, n: u64, paused: bool) {
        signal(self.procs[&n].pid(), if paused { libc::SIGSTOP } else { libc::SIGCONT });
        if paused {
            self.stopped.insert(n);
        } else {
            self.stopped.remove(&n);
        }
    }

    /// Cuts (or heals) every link to and from broker `n`.
    fn isolate(&self, n: u64, cut: bool) {
        for ((from, to), p) in &self.proxies {
            if *from == n || *to == n {
                p.block(cut);
            }
        }
    }

    /// The end of every broker's log, for a failure message.
    fn dump_logs(&self) {
        for n in NODES {
            let log = std::fs::read_to_string(self.root.path().join(format!("node-{n}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!("--- broker {n} (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    fn serving(&self) -> Vec<u64> {
        self.procs.keys().copied().filter(|n| !self.stopped.contains(n)).collect()
    }

    /// The partition's leader, as the leader itself reports it.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            for n in self.serving() {
                if let Some(l) = describe_leader(&self.addr(n)).await {
                    if l == n {
                        return n;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn describe_leader(addr: &str) -> Option<u64> {
    let client = tokio::time::timeout(Duration::from_secs(2), Client::connect(addr.to_string())).await.ok()?.ok()?;
    let desc = tokio::time::timeout(Duration::from_secs(2), client.describe_topic(TOPIC)).await.ok()?.ok()?;
    desc.partitions.first().map(|p| u64::from(p.leader_id)).filter(|l| *l != 0)
}

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
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        delivery_timeout: Duration::from_secs(90),
        request_timeout: Duration::from_secs(3),
        retry_backoff: Duration::from_millis(20),
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

/// Tails partition 0 from offset 0, moving to the next broker whenever a stream fails.
async fn consume(addrs: Vec<String>, seen: Arc<Observed>) {
    let mut next = 0u64;
    for attempt in 0.. {
        if seen.stop.load(Ordering::Acquire) {
            return;
        }
        let addr = &addrs[attempt % addrs.len()];
        let opened = async {
            let client = Client::connect(addr.clone()).await.ok()?;
            Subscription::new(TOPIC).partition(0, Some(StartAt::Offset(next))).open(&client).await.ok()
        };
        let Ok(Some(mut stream)) = tokio::time::timeout(Duration::from_secs(2), opened).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // A paused broker never answers: give up on a silent stream after a while.
        while let Ok(Some(Ok(r))) = tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
            assert_eq!(r.offset, next, "consumer got offset {} after {}", r.offset, next.wrapping_sub(1));
            seen.consumed.lock().unwrap().insert(r.offset, String::from_utf8_lossy(&r.value).into_owned());
            next = r.offset + 1;
            if seen.stop.load(Ordering::Acquire) {
                return;
            }
        }
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

/// Checks every invariant of the module docs; returns how many records it checked.
async fn check(c: &TestCluster, seen: &Observed, round: &str) -> usize {
    let leader = c.leader().await;
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
        let values: Vec<String> = records.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect();
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
    log.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_kills_pauses_and_partitions() {
    let started = Instant::now();
    let mut c = TestCluster::start().await;
    let admin = Client::connect(c.addr(1)).await.unwrap();
    let config = TopicConfig { fsync_policy: FsyncPolicy::Always as i32, ..TopicConfig::default() };
    let deadline = Instant::now() + WAIT;
    // The metadata group needs its first controller before topics can be created.
    while let Err(e) = admin.create_topic_with(TOPIC, 1, config).await {
        assert!(Instant::now() < deadline, "create topic: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = Arc::new(Observed::default());
    let producer = tokio::spawn(produce(c.addr(1), Arc::clone(&seen)));
    let consumer = tokio::spawn(consume(NODES.iter().map(|n| c.addr(*n)).collect(), Arc::clone(&seen)));
    progress(&c, &seen, 0, PROGRESS, "warm-up").await;
    let mut checked = check(&c, &seen, "warm-up").await;
    let mut faults = 0;

    // 1. SIGKILL the leader; it comes back and catches up.
    let leader = c.leader().await;
    c.kill9(leader);
    faults += 1;
    progress(&c, &seen, seen.acked(), PROGRESS, "leader killed").await;
    c.start_node(leader);
    checked = checked.max(check(&c, &seen, "leader killed").await);

    // 2. SIGSTOP a follower for a few election timeouts.
    let leader = c.leader().await;
    let follower = NODES.into_iter().find(|n| *n != leader).unwrap();
    c.pause(follower, true);
    faults += 1;
    progress(&c, &seen, seen.acked(), PROGRESS, "follower paused").await;
    c.pause(follower, false);
    checked = checked.max(check(&c, &seen, "follower paused").await);

    // 3. SIGSTOP the leader: the others elect; the old leader wakes up stale and steps down.
    let leader = c.leader().await;
    c.pause(leader, true);
    faults += 1;
    progress(&c, &seen, seen.acked(), PROGRESS, "leader paused").await;
    c.pause(leader, false);
    checked = checked.max(check(&c, &seen, "leader paused").await);

    // 4. Cut the leader off from its peers: the majority side elects and goes on.
    let leader = c.leader().await;
    c.isolate(leader, true);
    faults += 1;
    progress(&c, &seen, seen.acked(), PROGRESS, "leader partitioned (majority side)").await;
    c.isolate(leader, false);
    checked = checked.max(check(&c, &seen, "leader partitioned").await);

    // 5. The whole cluster dies at once and comes back.
    for n in NODES {
        c.kill9(n);
    }
    faults += 1;
    for n in NODES {
        c.start_node(n);
    }
    progress(&c, &seen, seen.acked(), PROGRESS, "cluster restarted").await;
    checked = checked.max(check(&c, &seen, "cluster restarted").await);

    seen.stop.store(true, Ordering::Release);
    tokio::time::timeout(WAIT, producer).await.expect("producer stops").unwrap();
    consumer.abort();
    if let Err(e) = consumer.await {
        assert!(!e.is_panic(), "the consumer saw offsets out of order: {e}");
    }
    let last = check(&c, &seen, "final").await;
    eprintln!(
        "cluster faults: 5 rounds, {faults} faults, {} records acknowledged, {} failed deliveries, {} consumed, {} checked in the final log, in {:?}",
        seen.acked(),
        seen.failed.load(Ordering::Relaxed),
        seen.consumed.lock().unwrap().len(),
        last.max(checked),
        started.elapsed()
    );
}
