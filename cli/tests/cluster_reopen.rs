//! A broker restarting with many replicas (cluster/opening.rs): it publishes its topics before
//! it has reopened their replicas, and opens first the replicas clients ask for, of whichever
//! topic, so a produce to any partition is answered after one group's opening, not after all
//! of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::cluster::{TestCluster, WAIT};
use support::eventually;
use tidelog::proto::v1::TopicConfig;
use tidelog::{Client, Producer, ProducerConfig, Record};

const TOPIC: &str = "wide";
/// Created after [`TOPIC`], so its replicas come after all of [`TOPIC`]'s in the opening.
const LATER: &str = "later";
/// Each broker holds a third of them (one replica each): enough that reopening them takes a
/// debug build seconds, so a produce that waited for all of them would be answered after the
/// restart's "topic replicas started" line.
const PARTITIONS: u32 = 3000;

/// Lines of broker `n`'s log that say its replicas of [`TOPIC`] are all open (one per start).
fn opened_lines(c: &TestCluster, n: u64) -> usize {
    c.log(n).lines().filter(|l| l.contains("topic replicas started") && l.contains(&format!("topic={TOPIC} "))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_serves_the_partition_asked_for_before_it_reopened_the_rest() {
    support::init_sdk_log();
    let mut c = TestCluster::start().await;
    c.create_topic(TOPIC, PARTITIONS, 1, TopicConfig::default()).await;
    let desc = c.create_topic(LATER, 6, 1, TopicConfig::default()).await;
    // The last partition in broker 2's opening order: only it holds it (one replica).
    let target = desc.partitions.iter().filter(|p| p.replica_ids == [2]).map(|p| p.partition).max().unwrap();
    eventually(WAIT, "broker 2 opened its replicas", || async { (opened_lines(&c, 2) == 1).then_some(()) }).await;

    c.kill9(2);
    c.start_node(2);
    let started = Instant::now();
    let config = ProducerConfig { delivery_timeout: Duration::from_secs(30), ..ProducerConfig::default() };
    let client = eventually(WAIT, "broker 2 listening again", || async { Client::connect(c.addr(2)).await.ok() }).await;
    let producer = Producer::new(client, config).await.unwrap();
    let delivered = producer.send_to(LATER, target, Record::new("after-restart")).await.unwrap().await;
    let answered = started.elapsed();
    let still_opening = opened_lines(&c, 2) == 1;
    producer.close().await;
    if delivered.is_err() {
        c.dump_logs();
    }
    assert!(delivered.is_ok(), "partition {target} through the restarted broker: {delivered:?}");
    // Usually answered while the rest still open (0.3 s against ~1 s of opening in a debug
    // build); on a loaded machine the two can meet, so this is reported, and the opening
    // order is checked from the broker's own account below.
    eprintln!("reopen: partition {target} answered after {answered:?}; broker 2 still opening then: {still_opening}");

    // The rest open too, and the log says one replica was opened early.
    eventually(WAIT, "broker 2 reopened every replica", || async { (opened_lines(&c, 2) == 2).then_some(()) }).await;
    // The request reached the broker before the replica's turn (the last of the opening)
    // and moved it to the front, ahead of replicas of the earlier topic still waiting: the
    // broker's log says how many replicas it had taken before it. (A request that reached
    // the broker only after every replica was taken — a heavily loaded machine — leaves no
    // such line: reported, not failed; the order itself is unit-tested in `opening.rs`.)
    let log = c.log(2);
    let line = format!("opening first a replica a client asked for topic={LATER} partition={target} before=");
    let before: Option<usize> =
        log.split(&line).nth(1).and_then(|rest| rest.split_whitespace().next()).and_then(|n| n.parse().ok());
    let held = (PARTITIONS / 3) as usize; // broker 2's replicas of TOPIC
    match before {
        Some(before) => assert!(
            before < held,
            "partition {target} of {LATER} was opened only after {before} replicas, not ahead of {TOPIC}'s {held} \
             (answered after {answered:?})"
        ),
        None => eprintln!("reopen: the request reached broker 2 after its opening (answered after {answered:?})"),
    }
    // Served after the opening too: the partition asked for keeps its record, and partitions
    // at both ends of the opening order take writes (through broker 2, which sends those
    // it does not hold to their brokers).
    let config = ProducerConfig { delivery_timeout: Duration::from_secs(30), ..ProducerConfig::default() };
    let producer = Producer::new(Client::connect(c.addr(2)).await.unwrap(), config).await.unwrap();
    let partitions = [0, PARTITIONS / 2, PARTITIONS - 1];
    for p in partitions {
        let written = producer.send_to(TOPIC, p, Record::new("reopened")).await.unwrap().await;
        assert_eq!(written.map(|m| m.offset).ok(), Some(0), "partition {p} of {TOPIC} after the opening");
    }
    let written = producer.send_to(LATER, target, Record::new("reopened")).await.unwrap().await;
    assert_eq!(written.map(|m| m.offset).ok(), Some(1), "partition {target} of {LATER} keeps its record");
    producer.close().await;
}
