//! The elastic cluster end to end (docs/CLUSTER.md, "Adding and removing brokers" and
//! "Moving partitions"): a three-broker cluster grows to five under an idempotent acks=all
//! producer and a consumer group, is rebalanced (`tidelog cluster rebalance`), then two of
//! the original brokers are removed (`tidelog cluster remove-broker`, which moves their
//! replicas away first; one of them is likely the controller). Throughout: the producer sees
//! no error beyond retries, the group's committed offsets never go back, and at the end every
//! acknowledged record is readable at its offset, exactly once, from every replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::cluster::{committed, TestCluster, WAIT};
use support::steady::{self, Acked};
use support::{eventually, read_range, run_cli_output};
use tidelog::proto::v1::TopicConfig;
use tidelog::{Client, GroupConfig, GroupConsumer, OffsetReset};

const TOPIC: &str = "elastic";
const GROUP: &str = "elastic-readers";
const PARTITIONS: u32 = 4;

#[derive(Default)]
struct Seen {
    /// Values the group consumer received.
    consumed: Mutex<HashSet<String>>,
    stop: AtomicBool,
    /// Set when the group's committed offsets went back.
    regressed: Mutex<Option<String>>,
}

/// A group member reading everything, committing every second.
async fn consume(addr: String, seen: Arc<Seen>) {
    let mut config = GroupConfig::new(GROUP, &[TOPIC]);
    config.offset_reset = OffsetReset::Earliest;
    config.session_timeout = Duration::from_secs(6);
    config.heartbeat_interval = Duration::from_millis(500);
    config.auto_commit_interval = Some(Duration::from_secs(1));
    let client = Client::connect(addr).await.unwrap();
    let mut consumer = eventually(WAIT, "the group joined", || async {
        GroupConsumer::join(client.clone(), config.clone()).await.ok()
    })
    .await;
    while !seen.stop.load(Ordering::Acquire) {
        if let Ok(Some(Ok(r))) = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
            let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
            seen.consumed.lock().unwrap().insert(v);
        }
    }
    consumer.close().await;
}

/// Polls the group's committed offsets through `addr`; records any that went back.
async fn watch_commits(addr: String, seen: Arc<Seen>) {
    let mut highest = vec![0u64; PARTITIONS as usize];
    while !seen.stop.load(Ordering::Acquire) {
        if let Some(now) = committed(&addr, GROUP, TOPIC, PARTITIONS).await {
            for (p, (h, n)) in highest.iter_mut().zip(&now).enumerate() {
                if *n < *h {
                    *seen.regressed.lock().unwrap() = Some(format!("partition {p}: committed {n} after {h}"));
                }
                *h = (*h).max(*n);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `tidelog <args>` through `addr` on a blocking thread: (success, stdout + stderr).
async fn cli(addr: &str, args: &[&str]) -> (bool, String) {
    let (addr, args): (String, Vec<String>) = (addr.to_string(), args.iter().map(|a| a.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_cli_output(&addr, &args, b"");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

/// Replicas per broker of the topic, as `addr` describes it.
async fn load(addr: &str) -> BTreeMap<u32, usize> {
    let t = Client::connect(addr.to_string()).await.unwrap().describe_topic(TOPIC).await.unwrap();
    let mut load = BTreeMap::new();
    for p in &t.partitions {
        for b in &p.replica_ids {
            *load.entry(*b).or_default() += 1;
        }
    }
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_grows_to_five_rebalances_and_shrinks_to_three_under_load() {
    let mut c = TestCluster::start_fast(&["--leader-rebalance-ms", "1000"]).await;
    c.create_topic(TOPIC, PARTITIONS, 3, TopicConfig::default()).await;
    let seen = Arc::new(Seen::default());
    let acks = Arc::new(Acked::default());
    let writer = tokio::spawn(steady::produce(c.addr(3), TOPIC, PARTITIONS, "v", Arc::clone(&acks)));
    let reader = tokio::spawn(consume(c.addr(3), Arc::clone(&seen)));
    let watcher = tokio::spawn(watch_commits(c.addr(3), Arc::clone(&seen)));

    // Grow: two brokers join; the balancer spreads the 12 replicas over five.
    let b4 = c.join(4).await;
    let b5 = c.join(5).await;
    let (ok, out) = cli(&c.addr(3), &["cluster", "rebalance", "--wait", "--timeout", "120"]).await;
    assert!(ok && out.contains("every partition move is done"), "{out}");
    let spread = load(&c.addr(3)).await;
    assert_eq!(spread.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5], "{spread:?}");
    assert!(spread.values().max().unwrap() - spread.values().min().unwrap() <= 1, "{spread:?}");
    let (ok, out) = cli(&c.addr(3), &["cluster", "rebalance", "--dry-run"]).await;
    assert!(ok && out.contains("balanced: nothing to move"), "{out}");
    eprintln!("grown and rebalanced: {spread:?}; {} acked", acks.count());

    // Shrink: brokers 1 and 2 go (their replicas move to 3, 4 and 5 first).
    for gone in [1u64, 2] {
        let (ok, out) = cli(&c.addr(3), &["cluster", "remove-broker", &gone.to_string(), "--timeout", "120"]).await;
        assert!(ok && out.contains(&format!("broker {gone} removed")), "{out}");
        assert!(c.wait_exit(gone, WAIT).await.is_some(), "broker {gone} still runs after its removal");
        eprintln!("broker {gone} removed; {} acked", acks.count());
    }
    let spread = load(&c.addr(3)).await;
    assert_eq!(spread, BTreeMap::from([(3, 4), (4, 4), (5, 4)]), "every partition on the three left");

    // A little more load on the shrunk cluster, then stop and check.
    let before = acks.count();
    eventually(WAIT, "the producer goes on", || async { (acks.count() > before + 200).then_some(()) }).await;
    let acked_values: HashSet<String> = {
        acks.stop.store(true, Ordering::Release);
        seen.stop.store(true, Ordering::Release);
        writer.await.unwrap();
        acks.acked.lock().unwrap().values().cloned().collect()
    };
    reader.await.unwrap();
    watcher.await.unwrap();
    assert_eq!(acks.failed.load(Ordering::Relaxed), 0, "the producer saw errors beyond retries");
    assert_eq!(*seen.regressed.lock().unwrap(), None, "the group's committed offsets went back");
    assert!(acked_values.len() > 1_000, "only {} acknowledged", acked_values.len());
    let consumed = seen.consumed.lock().unwrap().len();
    assert!(consumed > acked_values.len() / 2, "the group read {consumed} of {}", acked_values.len());

    let acked = acks.acked.lock().unwrap().clone();
    for (n, addr) in [(3, c.addr(3)), (4, b4.process.addr.clone()), (5, b5.process.addr.clone())] {
        let client = Client::connect(addr).await.unwrap();
        for p in 0..PARTITIONS {
            let need = acked.range((p, 0)..(p + 1, 0)).next_back().map_or(0, |((_, o), _)| o + 1);
            let records = eventually(WAIT, "every acknowledged record on the replica", || async {
                let r = read_range(&client, TOPIC, p, 0, need).await;
                (r.len() as u64 == need).then_some(r)
            })
            .await;
            let mut unique = BTreeSet::new();
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.offset, i as u64, "broker {n} partition {p}: gap at {i}");
                let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
                assert!(unique.insert(v.clone()), "broker {n} partition {p}: {v} stored twice");
                if let Some(a) = acked.get(&(p, r.offset)) {
                    assert_eq!(&v, a, "broker {n} partition {p}: acknowledged {a} lost from offset {}", r.offset);
                }
            }
        }
    }
}
