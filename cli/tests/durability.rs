//! Durability against real process crashes: a broker is SIGKILLed while a producer streams
//! with fsync=always and acks=all; after restart every acknowledged record is at the offset it
//! was acknowledged with, intact, exactly once, and offsets are gap-free. Also: a torn or
//! corrupt tail is repaired, and SIGTERM shuts down cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use support::*;
use tidelog::proto::v1::{FsyncPolicy, TopicConfig};
use tidelog::Record;

const PARTITIONS: u32 = 2;
const PER_BATCH: u64 = 10;

/// (partition, base offset) → batch id, for every acknowledged batch.
type Acked = Arc<Mutex<HashMap<(u32, u64), u64>>>;

/// Streams batches (pipelined, up to 32 in flight) until the broker dies; records acks.
fn spawn_producer(client: tidelog::Client, first_id: u64, acked: Acked) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        let Ok(resp) = client.records().produce(tokio_stream::wrappers::ReceiverStream::new(rx)).await else {
            return first_id;
        };
        let mut resp = resp.into_inner();
        let sender = tokio::spawn(async move {
            let mut id = first_id;
            loop {
                let p = (id % u64::from(PARTITIONS)) as u32;
                let records = (0..PER_BATCH).map(|i| Record::new(format!("b{id}-r{i}"))).collect();
                if tx.send(produce_request(id, "crash", p, records)).await.is_err() {
                    return id;
                }
                id += 1;
            }
        });
        while let Some(Ok(r)) = resp.next().await {
            assert_eq!(r.error_code, 0, "{}", r.error_message);
            acked.lock().unwrap().insert((r.partition, r.base_offset), r.request_id);
        }
        sender.abort();
        sender.await.unwrap_or(first_id + 1_000_000)
    })
}

/// Reads every partition completely and checks the invariants against `acked`.
async fn check_invariants(client: &tidelog::Client, acked: &HashMap<(u32, u64), u64>) -> u64 {
    let mut checked = 0;
    for p in 0..PARTITIONS {
        let hw = high_watermark(client, "crash", p).await;
        let records = read_range(client, "crash", p, 0, hw).await;
        assert_eq!(records.len() as u64, hw);
        let mut seen_batches = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64, "offsets must be gap-free in partition {p}");
            let v = String::from_utf8(r.value.clone().unwrap_or_default().to_vec()).unwrap();
            let (b, rec) = v.split_once('-').unwrap();
            let batch: u64 = b[1..].parse().unwrap();
            let rec: u64 = rec[1..].parse().unwrap();
            if rec == 0 {
                assert!(seen_batches.insert(batch, r.offset).is_none(), "batch {batch} stored twice in partition {p}");
            }
        }
        for ((ap, base), id) in acked.iter().filter(|((ap, _), _)| *ap == p) {
            assert!(*base + PER_BATCH <= hw, "acknowledged batch {id} at {ap}/{base} lost (hw {hw})");
            for i in 0..PER_BATCH {
                let r = &records[(*base + i) as usize];
                assert_eq!(
                    r.value.as_deref(),
                    Some(format!("b{id}-r{i}").as_bytes()),
                    "acknowledged record moved or damaged"
                );
            }
            checked += PER_BATCH;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_produce_keeps_every_acknowledged_record() {
    let seed = seed("sigkill_during_produce");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let acked: Acked = Arc::default();
    let mut next_id = 0;
    let mut broker = BrokerProcess::start(&data, &[]);
    let fsync_policy = FsyncPolicy::Always as i32;
    broker
        .client()
        .await
        .create_topic_with(
            "crash",
            PARTITIONS,
            TopicConfig {
                fsync_policy,
                segment_bytes: Some(64 * 1024),
                max_batch_bytes: Some(16 * 1024),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for round in 0..3 {
        let client = broker.client().await;
        let before = acked.lock().unwrap().len();
        let producer = spawn_producer(client, next_id, acked.clone());
        eventually(Duration::from_secs(30), "some acknowledgements", || {
            let n = acked.lock().unwrap().len();
            async move { (n >= before + 20).then_some(()) }
        })
        .await;
        // The fault: SIGKILL at a random moment while batches are in flight.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        broker.kill9();
        next_id = producer.await.unwrap() + 1;
        broker = BrokerProcess::start(&data, &[]);
        let client = broker.client().await;
        let snapshot = acked.lock().unwrap().clone();
        let checked = check_invariants(&client, &snapshot).await;
        eprintln!("round {round}: {} acknowledged batches, {checked} records checked after SIGKILL", snapshot.len());
    }
}

fn active_segment(data: &std::path::Path, topic: &str, p: u32) -> std::path::PathBuf {
    let dir = data.join("topics").join(topic).join(p.to_string());
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

#[tokio::test]
async fn torn_tail_is_repaired_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut broker = BrokerProcess::start(&data, &[]);
    let client = broker.client().await;
    client.create_topic("torn", 1).await.unwrap();
    let reqs = (0..30).map(|i| produce_request(i, "torn", 0, vec![Record::new(format!("v{i}"))])).collect();
    produce_all(&client, reqs).await;
    broker.kill9();

    // A torn write: a plausible header start, then garbage, as a crash mid-write leaves.
    let seg = active_segment(&data, "torn", 0);
    let before = std::fs::metadata(&seg).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 0, 0, 0, 0xde, 0xad]).unwrap();
    drop(f);

    let broker = BrokerProcess::start(&data, &[]);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), before, "torn tail not cut");
    assert!(broker.log().contains("truncated damaged segment tail"), "{}", broker.log());
    let client = broker.client().await;
    assert_eq!(high_watermark(&client, "torn", 0).await, 30);
    let more = produce_all(&client, vec![produce_request(99, "torn", 0, vec![Record::new("after")])]).await;
    assert_eq!(more[0].base_offset, 30);
    let all = read_range(&client, "torn", 0, 0, 31).await;
    assert_eq!(all[29].value.as_deref(), Some(&b"v29"[..]));
    assert_eq!(all[30].value.as_deref(), Some(&b"after"[..]));
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_restart_needs_no_repair() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut broker = BrokerProcess::start(&data, &[]);
    let client = broker.client().await;
    client.create_topic("clean", 1).await.unwrap();
    produce_all(&client, (0..10).map(|i| produce_request(i, "clean", 0, vec![Record::new("x")])).collect()).await;
    // A live subscription must not hold shutdown up.
    let _sub = tidelog::Subscription::new("clean").open(&client).await.unwrap();
    let started = std::time::Instant::now();
    let status = broker.terminate().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    assert!(status.success(), "exit status {status}");
    assert!(broker.log().contains("stopped"), "{}", broker.log());

    let broker = BrokerProcess::start(&data, &[]);
    assert!(!broker.log().contains("recovered partition log"), "clean shutdown should need no repair");
    assert_eq!(high_watermark(&broker.client().await, "clean", 0).await, 10);
}
