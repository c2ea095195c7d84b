//! A real three-broker cluster for the multi-node tests: separate `tidelog serve` processes
//! on loopback, every broker-to-broker link through its own TCP proxy (each broker's
//! `--peers` names the proxies for the others), so a test can SIGKILL, SIGSTOP, SIGTERM or cut
//! off any broker. Clients talk to the brokers directly.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tidelog::proto::v1::{
    AddBrokerRequest, CommitRequest, CreateTopicRequest, DescribeClusterRequest, ErrorCode, FetchCommittedRequest,
    PartitionOffset, TopicConfig, TopicDescription,
};
use tidelog::{Client, Producer, ProducerConfig, Record, RecordMetadata};

use super::proxy::Proxy;
use super::{signal, BrokerProcess};

pub const NODES: [u64; 3] = [1, 2, 3];
/// How long any wait for the cluster may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct TestCluster {
    pub root: tempfile::TempDir,
    ports: BTreeMap<u64, u16>,
    /// `proxies[(from, to)]` carries broker `from`'s Raft and forwarding traffic to `to`.
    proxies: BTreeMap<(u64, u64), Proxy>,
    procs: BTreeMap<u64, BrokerProcess>,
    stopped: HashSet<u64>,
    /// Extra `tidelog serve` arguments for every broker.
    extra: Vec<String>,
    /// With split listeners: each broker's internal (peer) port; the proxies lead there, and
    /// clients are told the brokers' own client ports (so cutting links never cuts clients).
    internal: Option<BTreeMap<u64, u16>>,
}

impl TestCluster {
    /// Starts the three brokers (they elect a controller by themselves).
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// As [`TestCluster::start`], with extra `tidelog serve` arguments for every broker.
    pub async fn start_with(extra: &[&str]) -> Self {
        Self::start_links(extra, false, false).await
    }

    /// As [`TestCluster::start_with`], with TCP_NODELAY on the links (`Proxy::start_with`):
    /// Raft round trips as fast as between the brokers directly.
    pub async fn start_fast(extra: &[&str]) -> Self {
        Self::start_links(extra, true, false).await
    }

    /// As [`TestCluster::start_fast`], with each broker's peer traffic on its own internal
    /// listener (`--internal-listen`), the only traffic through the proxies: clients reach
    /// every broker directly, as they would real brokers whose links are cut. (Brokers that
    /// join with `--join` cannot use internal listeners yet: not for [`TestCluster::join`].)
    pub async fn start_split(extra: &[&str]) -> Self {
        Self::start_links(extra, true, true).await
    }

    async fn start_links(extra: &[&str], nodelay: bool, split: bool) -> Self {
        let root = tempfile::tempdir().unwrap();
        // Held until the proxies have their ports, so no proxy can take a broker's port.
        let bind = super::reserve_port;
        let held: Vec<std::net::TcpListener> = NODES.iter().map(|_| bind()).collect();
        let held_internal: Vec<std::net::TcpListener> = NODES.iter().filter(|_| split).map(|_| bind()).collect();
        let ports: BTreeMap<u64, u16> =
            NODES.iter().zip(&held).map(|(n, l)| (*n, l.local_addr().unwrap().port())).collect();
        let internal: Option<BTreeMap<u64, u16>> = split
            .then(|| NODES.iter().zip(&held_internal).map(|(n, l)| (*n, l.local_addr().unwrap().port())).collect());
        let mut proxies = BTreeMap::new();
        for from in NODES {
            for to in NODES.iter().filter(|t| **t != from) {
                let port = internal.as_ref().map_or(ports[to], |i| i[to]);
                proxies.insert((from, *to), Proxy::start_with(&format!("http://127.0.0.1:{port}"), nodelay).await);
            }
        }
        drop(held);
        drop(held_internal);
        let extra = extra.iter().map(|a| a.to_string()).collect();
        let mut c = Self { root, ports, proxies, procs: BTreeMap::new(), stopped: HashSet::new(), extra, internal };
        for n in NODES {
            c.start_node(n);
        }
        c
    }

    /// Broker `n`'s data directory.
    pub fn dir(&self, n: u64) -> PathBuf {
        self.root.path().join(format!("node-{n}"))
    }

    pub fn start_node(&mut self, n: u64) {
        self.start_node_with_env(n, &[]);
    }

    /// As [`TestCluster::start_node`], with extra environment variables (`TIDELOG_CRASH_AT`).
    pub fn start_node_with_env(&mut self, n: u64, env: &[(&str, &str)]) {
        let peers: Vec<String> = NODES
            .iter()
            .map(|m| match self.proxies.get(&(n, *m)) {
                Some(p) => format!("{m}={}", p.addr.trim_start_matches("http://")),
                None => format!("{m}=127.0.0.1:{}", self.ports[m]),
            })
            .collect();
        let listen = format!("127.0.0.1:{}", self.ports[&n]);
        let log = self.root.path().join(format!("node-{n}.log"));
        let mut args: Vec<String> = ["--node-id", &n.to_string()].map(String::from).to_vec();
        match &self.internal {
            None => args.extend(["--peers".to_string(), peers.join(",")]),
            Some(internal) => {
                // Clients are told the brokers' own ports; peers call each other through the
                // proxies, at their internal listeners.
                let clients: Vec<String> = NODES.iter().map(|m| format!("{m}=127.0.0.1:{}", self.ports[m])).collect();
                let peers = peers.iter().map(|p| {
                    let own = format!("{n}=127.0.0.1:{}", self.ports[&n]);
                    if *p == own {
                        format!("{n}=127.0.0.1:{}", internal[&n])
                    } else {
                        p.clone()
                    }
                });
                args.extend(["--peers".to_string(), clients.join(",")]);
                args.extend(["--internal-listen".to_string(), format!("127.0.0.1:{}", internal[&n])]);
                args.extend(["--internal-peers".to_string(), peers.collect::<Vec<_>>().join(",")]);
            }
        }
        let args: Vec<&str> = args.iter().chain(&self.extra).map(String::as_str).collect();
        let p = BrokerProcess::start_with_env(&self.dir(n), &log, &listen, &args, env);
        self.procs.insert(n, p);
    }

    pub fn addr(&self, n: u64) -> String {
        format!("http://127.0.0.1:{}", self.ports[&n])
    }

    pub fn kill9(&mut self, n: u64) {
        if let Some(mut p) = self.procs.remove(&n) {
            p.kill9();
        }
        self.stopped.remove(&n);
    }

    /// SIGTERM (a graceful shutdown) and waits for the exit.
    pub async fn terminate(&mut self, n: u64) -> std::process::ExitStatus {
        let mut p = self.procs.remove(&n).expect("running");
        self.stopped.remove(&n);
        p.terminate().await
    }

    pub fn pause(&mut self, n: u64, paused: bool) {
        signal(self.procs[&n].pid(), if paused { libc::SIGSTOP } else { libc::SIGCONT });
        if paused {
            self.stopped.insert(n);
        } else {
            self.stopped.remove(&n);
        }
    }

    /// Cuts (or heals) every link to and from broker `n`.
    pub fn isolate(&self, n: u64, cut: bool) {
        for ((from, to), p) in &self.proxies {
            if *from == n || *to == n {
                p.block(cut);
            }
        }
    }

    /// Broker `n`'s whole log.
    pub fn log(&self, n: u64) -> String {
        std::fs::read_to_string(self.root.path().join(format!("node-{n}.log"))).unwrap_or_default()
    }

    /// The end of every broker's log, for a failure message.
    pub fn dump_logs(&self) {
        for n in NODES {
            let log = std::fs::read_to_string(self.root.path().join(format!("node-{n}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!("--- broker {n} (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    /// The brokers that run and are not paused.
    /// Waits up to `timeout` for broker `n` to exit by itself (a removed broker); its status.
    /// It is no longer one of the cluster's brokers after.
    pub async fn wait_exit(&mut self, n: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self.procs.get_mut(&n)?.wait_exit(timeout).await;
        if status.is_some() {
            self.procs.remove(&n);
        }
        status
    }

    pub fn serving(&self) -> Vec<u64> {
        self.procs.keys().copied().filter(|n| !self.stopped.contains(n)).collect()
    }

    /// Creates a topic with `rf` replicas per partition (0: the default) once the metadata
    /// group has its first controller.
    pub async fn create_topic(&self, topic: &str, partitions: u32, rf: u32, config: TopicConfig) -> TopicDescription {
        let admin = Client::connect(self.addr(self.serving()[0])).await.unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let req =
                CreateTopicRequest { name: topic.into(), partitions, replication_factor: rf, config: Some(config) };
            match admin.admin().create_topic(req).await {
                Ok(resp) => return resp.into_inner().topic.unwrap(),
                Err(e) => assert!(Instant::now() < deadline, "create topic {topic}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One acks=all record (`{tag}-{p}`) to each of `topic`'s partitions `0..partitions`
    /// through `bootstrap`, each delivered within 30 s or the test fails naming it; their
    /// metadata, by partition.
    pub async fn write_each(&self, bootstrap: u64, topic: &str, partitions: u32, tag: &str) -> Vec<RecordMetadata> {
        let config = ProducerConfig { delivery_timeout: Duration::from_secs(30), ..ProducerConfig::default() };
        let producer = Producer::new(Client::connect(self.addr(bootstrap)).await.unwrap(), config).await.unwrap();
        let mut pending = Vec::new();
        for p in 0..partitions {
            pending.push(producer.send_to(topic, p, Record::new(format!("{tag}-{p}"))).await.unwrap());
        }
        let mut out = Vec::new();
        for (p, d) in pending.into_iter().enumerate() {
            out.push(d.await.unwrap_or_else(|e| panic!("{tag}: partition {p}: delivery failed: {e}")));
        }
        producer.close().await;
        out
    }

    /// The leader of `topic`'s partition 0, as the leader itself reports it.
    pub async fn leader(&self, topic: &str) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            for n in self.serving() {
                if describe_leader(&self.addr(n), topic).await == Some(n) {
                    return n;
                }
            }
            assert!(Instant::now() < deadline, "no leader of {topic} within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The controller (metadata leader), as the controller itself reports it.
    pub async fn controller(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            for n in self.serving() {
                if describe_controller(&self.addr(n)).await == Some(n) {
                    return n;
                }
            }
            assert!(Instant::now() < deadline, "no controller within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A broker started with `--join` and added to a [`TestCluster`] (not behind a proxy).
pub struct Joined {
    pub id: u64,
    pub process: BrokerProcess,
    pub listen: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// Its `tidelog serve` arguments, to restart it with.
    pub args: Vec<String>,
}

impl Joined {
    pub fn restart(&mut self) {
        self.process.kill9();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = BrokerProcess::start_listening(&self.dir, &self.log, &self.listen, &args);
    }
}

impl TestCluster {
    /// Starts broker `id` with `--join` (and the cluster's extra arguments), adds it, and
    /// waits until every broker lists it.
    pub async fn join(&self, id: u64) -> Joined {
        let listen = format!("127.0.0.1:{}", super::reserve_port().local_addr().unwrap().port());
        let (dir, log) = (self.dir(id), self.root.path().join(format!("node-{id}.log")));
        let member = self.addr(self.controller().await).trim_start_matches("http://").to_string();
        let mut args: Vec<String> = ["--node-id", &id.to_string(), "--join", &member].map(String::from).to_vec();
        args.extend(self.extra.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = BrokerProcess::start_listening(&dir, &log, &listen, &argv);
        let req = AddBrokerRequest { id: id as u32, address: listen.clone(), internal_address: String::new() };
        super::eventually(WAIT, "the joining broker added", || async {
            let client = Client::connect(self.addr(1)).await.ok()?;
            client.admin().add_broker(req.clone()).await.ok().map(|_| ())
        })
        .await;
        for n in self.serving().into_iter().chain([id]) {
            let addr = if n == id { process.addr.clone() } else { self.addr(n) };
            super::eventually(WAIT, "every broker lists the joined one", || async {
                let client = Client::connect(addr.clone()).await.ok()?;
                let view = client.admin().describe_cluster(DescribeClusterRequest {}).await.ok()?.into_inner();
                view.brokers.iter().any(|b| u64::from(b.id) == id).then_some(())
            })
            .await;
        }
        Joined { id, process, listen, dir, log, args }
    }
}

impl Drop for TestCluster {
    /// A failing test shows the end of every broker's log and keeps the directory (data and
    /// full logs) for a post-mortem; `TIDELOG_TEST_KEEP` keeps it for a passing one too.
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            self.dump_logs();
        }
        if failed || std::env::var("TIDELOG_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0") {
            self.root.disable_cleanup(true);
            eprintln!("--- cluster data and full logs kept in {} ---", self.root.path().display());
        }
    }
}

/// `topic`'s partition-0 leader as broker `addr` sees it; `None` if it knows none or does not
/// answer within 2 s (a paused broker never answers).
pub async fn describe_leader(addr: &str, topic: &str) -> Option<u64> {
    let client = tokio::time::timeout(Duration::from_secs(2), Client::connect(addr.to_string())).await.ok()?.ok()?;
    let desc = tokio::time::timeout(Duration::from_secs(2), client.describe_topic(topic)).await.ok()?.ok()?;
    desc.partitions.first().map(|p| u64::from(p.leader_id)).filter(|l| *l != 0)
}

async fn describe_controller(addr: &str) -> Option<u64> {
    let client = tokio::time::timeout(Duration::from_secs(2), Client::connect(addr.to_string())).await.ok()?.ok()?;
    let req = tidelog::proto::v1::DescribeClusterRequest {};
    let resp = tokio::time::timeout(Duration::from_secs(2), client.admin().describe_cluster(req)).await.ok()?.ok()?;
    Some(u64::from(resp.into_inner().controller_id)).filter(|c| *c != 0)
}

/// Commits `count` positions of `group` on `topic`'s partitions `0..partitions` through
/// `addr`, pipelined on one stream; every one must be accepted. Returns the last position
/// committed per partition.
pub async fn commit_many(addr: &str, group: &str, topic: &str, partitions: u32, count: u64) -> Vec<u64> {
    let client = Client::connect(addr.to_string()).await.unwrap();
    let requests: Vec<CommitRequest> = (0..count)
        .map(|i| CommitRequest {
            request_id: i,
            group: group.into(),
            topic: topic.into(),
            offsets: vec![PartitionOffset {
                partition: (i % u64::from(partitions)) as u32,
                offset: i,
                metadata: String::new(),
            }],
            generation: 0,
            member_id: String::new(),
        })
        .collect();
    let mut answers = client.offsets().commit(futures::stream::iter(requests)).await.unwrap().into_inner();
    for _ in 0..count {
        let a = tokio::time::timeout(WAIT, answers.message()).await.expect("commit answered").unwrap().unwrap();
        assert_eq!(a.error_code, ErrorCode::Unspecified as i32, "commit {}: {}", a.request_id, a.error_message);
    }
    (0..u64::from(partitions)).map(|p| (0..count).filter(|i| i % u64::from(partitions) == p).max().unwrap()).collect()
}

pub async fn committed(addr: &str, group: &str, topic: &str, partitions: u32) -> Option<Vec<u64>> {
    let client = Client::connect(addr.to_string()).await.ok()?;
    let req = FetchCommittedRequest { group: group.into(), topic: topic.into(), partitions: (0..partitions).collect() };
    let offsets = client.offsets().fetch_committed(req).await.ok()?.into_inner().offsets;
    Some(offsets.iter().map(|o| o.offset).collect())
}
