//! Regression, through the CLI against real broker processes: a group's committed offsets
//! used to outlive `topic delete`, so after a delete and recreate `tidelog consume --group`
//! started at the old position and silently skipped the new topic's first records. Deleting a
//! topic deletes every group's offsets for it, on a single node and in a cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::cluster::TestCluster;
use support::{run_cli, BrokerProcess};

/// The scenario of the bug report, with each step at the broker `at(step)` names (`brokers`
/// of them). After a create or delete the next step waits until every broker shows it (a
/// cluster applies metadata on each broker a moment apart).
fn consume_delete_recreate_consume(brokers: usize, at: impl Fn(usize) -> String) {
    let run = |step: usize, args: &[&str], stdin: &str| run_cli(&at(step), args, stdin);
    let settle = |present: bool| {
        for b in 0..brokers {
            let deadline = Instant::now() + Duration::from_secs(20);
            while run(b, &["topic", "list"], "").contains("t\tpartitions") != present {
                assert!(Instant::now() < deadline, "broker {b} did not apply the topic's {present} in time");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    run(0, &["topic", "create", "t", "--partitions", "1"], "");
    settle(true);
    run(1, &["produce", "t"], "a\nb\nc\n");
    let first = run(2, &["consume", "t", "--group", "sg", "--from-beginning", "--max-records", "3"], "");
    assert_eq!(first.lines().count(), 3, "{first}");
    let described = run(0, &["group", "describe", "sg"], "");
    assert!(described.contains("committed=3"), "the group did not commit: {described}");

    run(1, &["topic", "delete", "t"], "");
    settle(false);
    run(2, &["topic", "create", "t", "--partitions", "1"], "");
    settle(true);
    let fresh: String = (0..5).map(|i| format!("new{i}\n")).collect();
    run(0, &["produce", "t"], &fresh);
    let again = run(
        1,
        &["consume", "t", "--group", "sg", "--from-beginning", "--max-records", "5", "--idle-timeout-ms", "5000"],
        "",
    );
    let offsets: Vec<&str> = again.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(offsets, ["offset=0", "offset=1", "offset=2", "offset=3", "offset=4"], "{again}");
    let values: Vec<&str> = again.lines().filter_map(|l| l.rsplit_once("value=").map(|(_, v)| v)).collect();
    assert_eq!(values, ["new0", "new1", "new2", "new3", "new4"]);
}

#[tokio::test]
async fn single_node_a_recreated_topic_is_consumed_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    consume_delete_recreate_consume(1, |_| broker.addr.clone());
}

#[tokio::test]
async fn cluster_a_recreated_topic_is_consumed_from_its_start() {
    let c = TestCluster::start().await;
    c.controller().await; // elected (the CLI retries NOT_LEADER for a while, not forever)
                          // Each step at another broker: creates, deletes and group calls are passed on to the
                          // controller, and every broker must have dropped the offsets.
    tokio::task::spawn_blocking(move || consume_delete_recreate_consume(3, |step| c.addr(step as u64 % 3 + 1)))
        .await
        .unwrap();
}
