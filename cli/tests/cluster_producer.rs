//! The Rust SDK's producer against a real three-broker cluster:
//! - bootstrapped at a follower, its first record goes to the leader the follower's NOT_LEADER
//!   names at once, not after the retry backoff;
//! - when the leader dies, a lone record (nothing else pending, so nothing else wakes the
//!   producer's sender) follows the survivors' NOT_LEADER hint to the dead broker, fails to
//!   open a stream there, and must be resent after its backoff to the new leader, not after
//!   its own request timeout (30 s). That wait was a real bug, found by the quiescing test:
//!   the sender slept on a deadline it had computed before the failed open rewound the batch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::cluster::{TestCluster, NODES};
use tidelog::proto::v1::TopicConfig;
use tidelog::{Client, Producer, ProducerConfig, Record};

const TOPIC: &str = "lone";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_record_reaches_the_new_leader_after_its_backoff_not_its_request_timeout() {
    support::init_sdk_log();
    let mut c = TestCluster::start().await;
    c.create_topic(TOPIC, 1, 3, TopicConfig::default()).await;
    let leader = c.leader(TOPIC).await;
    let survivor = NODES.into_iter().find(|n| *n != leader).unwrap();
    let config = ProducerConfig { delivery_timeout: Duration::from_secs(60), ..ProducerConfig::default() };
    assert_eq!(config.request_timeout, Duration::from_secs(30), "the bound below assumes the default");

    // Bootstrapped at a follower: the first batch is refused with the leader's address and
    // resent there at once. A long backoff, so waiting it cannot pass for scheduling noise.
    let backoff = Duration::from_secs(5);
    let first = ProducerConfig { retry_backoff: backoff, ..config.clone() };
    let producer = Producer::new(Client::connect(c.addr(survivor)).await.unwrap(), first).await.unwrap();
    let started = Instant::now();
    producer.send_to(TOPIC, 0, Record::new("before")).await.unwrap().await.unwrap();
    let took = started.elapsed();
    assert!(took < backoff / 2, "the first record took {took:?}: it waited the {backoff:?} backoff");
    producer.close().await;

    // Straight after the kill the survivors still name the dead leader: the first answer is
    // NOT_LEADER pointing at a broker that refuses connections.
    c.kill9(leader);
    let started = Instant::now();
    let producer = Producer::new(Client::connect(c.addr(survivor)).await.unwrap(), config).await.unwrap();
    let sent = producer.send_to(TOPIC, 0, Record::new("after")).await.unwrap().await;
    let took = started.elapsed();
    eprintln!("producer: a lone record after the leader's SIGKILL took {took:?}");
    let meta = sent.unwrap_or_else(|e| panic!("the lone record failed after {took:?}: {e}"));
    assert_eq!(meta.offset, 1, "the record after `before` (offset 0)");
    // An election (about one election timeout) plus a few backoffs of at most 1 s each.
    assert!(took < Duration::from_secs(10), "the lone record took {took:?}: it waited out a timeout");
    producer.close().await;
}
