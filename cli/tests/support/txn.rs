//! Transactions in tests: a transactional producer, read_committed / read_uncommitted readers,
//! the coordinator's and the partitions' views, and the consume-transform-produce checker.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use tidelog::proto::v1::transaction_service_client::TransactionServiceClient;
use tidelog::proto::v1::{
    DescribeOpenTransactionsRequest, ListTransactionsRequest, TransactionDescription, TransactionState,
};
use tidelog::{Client, ConsumedRecord, IsolationLevel, Producer, ProducerConfig, StartAt, Subscription};

pub fn coordinator(client: &Client) -> TransactionServiceClient<tidelog::Channel> {
    TransactionServiceClient::new(client.channel())
}

/// A transactional producer, initialised (older instances with `id` fenced).
pub async fn txn_producer(client: &Client, id: &str, timeout: Duration) -> Producer {
    let config = ProducerConfig {
        transactional_id: Some(id.to_string()),
        transaction_timeout: timeout,
        linger: Duration::from_millis(1),
        ..ProducerConfig::default()
    };
    let p = Producer::new(client.clone(), config).await.unwrap();
    p.init_transactions().await.unwrap();
    p
}

/// A reader of every partition of `topic` from the start, collecting into a shared vector.
pub struct Reader {
    pub records: std::sync::Arc<std::sync::Mutex<Vec<ConsumedRecord>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    pub async fn start(client: &Client, topic: &str, isolation: IsolationLevel) -> Self {
        let mut stream =
            Subscription::new(topic).start_at(StartAt::Earliest).isolation(isolation).open(client).await.unwrap();
        let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&records);
        let task = tokio::spawn(async move {
            while let Some(Ok(r)) = stream.next().await {
                sink.lock().unwrap().push(r);
            }
        });
        Self { records, task }
    }

    pub fn len(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    pub fn values(&self) -> Vec<String> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }

    /// Waits (bounded) until at least `n` records arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) {
        super::eventually(timeout, &format!("{n} records"), || async { (self.len() >= n).then_some(()) }).await;
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every record of `topic` (all partitions) below each partition's bound as of now, read
/// with `isolation`: read until the stream is quiet for `quiet` (bounded by 30 s).
pub async fn snapshot(client: &Client, topic: &str, isolation: IsolationLevel, quiet: Duration) -> Vec<ConsumedRecord> {
    let mut stream =
        Subscription::new(topic).start_at(StartAt::Earliest).isolation(isolation).open(client).await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(quiet, stream.next()).await {
            Ok(Some(Ok(r))) => out.push(r),
            Ok(Some(Err(e))) => panic!("reading {topic}: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// The coordinator's view of every transactional id.
pub async fn transactions(client: &Client) -> BTreeMap<String, TransactionDescription> {
    let resp = coordinator(client).list_transactions(ListTransactionsRequest {}).await.unwrap().into_inner();
    resp.transactions.into_iter().map(|t| (t.transactional_id.clone(), t)).collect()
}

pub fn state(t: &TransactionDescription) -> TransactionState {
    TransactionState::try_from(t.state).unwrap()
}

/// Per partition held by the broker: (last stable offset, high watermark, open transactions'
/// first offsets).
pub async fn stability(client: &Client, topic: &str) -> BTreeMap<u32, (u64, u64, Vec<u64>)> {
    let req = DescribeOpenTransactionsRequest { topic: topic.into(), partitions: vec![] };
    let resp = coordinator(client).describe_open_transactions(req).await.unwrap().into_inner();
    let mut out: BTreeMap<u32, (u64, u64, Vec<u64>)> =
        resp.partitions.iter().map(|p| (p.partition, (p.last_stable_offset, p.high_watermark, vec![]))).collect();
    for t in resp.transactions {
        out.entry(t.partition).or_default().2.push(t.first_offset);
    }
    out
}

/// The consume-transform-produce check: `output` (read_committed) holds every `input` record
/// transformed exactly once (`VALUE|p:o`, see examples/rust/src/bin/exactly_once.rs), in input
/// order per key. Returns how many output records there are.
pub fn check_exactly_once(input: &[ConsumedRecord], output: &[ConsumedRecord]) -> usize {
    let mut expected: HashMap<(u32, u64), String> = HashMap::new();
    for r in input {
        let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_uppercase();
        expected.insert((r.partition, r.offset), v);
    }
    let mut seen: HashMap<(u32, u64), usize> = HashMap::new();
    let mut last_per_key: HashMap<Vec<u8>, (u32, u64)> = HashMap::new();
    for r in output {
        let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
        let (value, from) = v.rsplit_once('|').unwrap_or_else(|| panic!("output value {v:?} has no provenance"));
        let (p, o) = from.split_once(':').unwrap();
        let key = (p.parse::<u32>().unwrap(), o.parse::<u64>().unwrap());
        assert_eq!(
            expected.get(&key).map(String::as_str),
            Some(value),
            "output {v:?} is not input {key:?} transformed"
        );
        *seen.entry(key).or_default() += 1;
        let k = r.key.clone().unwrap_or_default().to_vec();
        if let Some(prev) = last_per_key.insert(k.clone(), key) {
            assert!(prev.0 != key.0 || prev.1 < key.1, "key {k:?}: input {key:?} came out after {prev:?}");
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "input records transformed more than once: {dups:?}");
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains_key(k)).collect();
    assert!(missing.is_empty(), "{} input records never came out, e.g. {:?}", missing.len(), missing.first());
    output.len()
}

/// The example application (examples/rust/src/bin/exactly_once.rs, built beside `tidelog` by
/// `cargo build --workspace`): reads topic `in` as group `eos`, writes `out` with transactional
/// id `eos-1`, `per_txn` records per transaction, 1 ms of pretend work per record; exits after
/// `idle_ms` without input if given. Its stderr is appended to `log`.
pub fn start_app(broker: &str, per_txn: usize, idle_ms: Option<u64>, log: &std::path::Path) -> std::process::Child {
    let bin = std::path::Path::new(super::BIN).with_file_name("exactly_once");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["--broker", broker, "--input", "in", "--output", "out", "--group", "eos"])
        .args(["--transactional-id", "eos-1", "--per-transaction", &per_txn.to_string(), "--process-ms", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log));
    if let Some(ms) = idle_ms {
        cmd.args(["--idle-ms", &ms.to_string()]);
    }
    cmd.spawn().expect("spawn exactly_once (built by `cargo build --workspace`)")
}

/// Waits (bounded) for the application to exit on its own.
pub async fn wait_exit(app: &mut std::process::Child, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while app.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the application did not finish within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces `n` records `v<i>` keyed `k<i % 13>` to topic `in`.
pub async fn fill_input(client: &Client, n: usize) {
    let p = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    for i in 0..n {
        p.send("in", tidelog::Record::new(format!("v{i}")).with_key(format!("k{}", i % 13))).await.unwrap();
    }
    p.flush().await;
    p.close().await;
}
