//! Metadata snapshots in a real three-broker cluster (`server/src/cluster/meta_snapshot.rs`):
//! thousands of group commits are replaced by the state they leave, on every broker; a broker
//! that was down while topics and groups were deleted, created and altered comes back through
//! the leader's snapshot with exactly the cluster's state (deleted topics gone from its disk);
//! a broker restarted after snapshots has every committed offset; a broker killed at each step
//! of its snapshot's swap comes back with the whole metadata.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use support::cluster::{commit_many, committed, TestCluster, NODES, WAIT};
use support::eventually;
use tidelog::proto::v1::TopicConfig;
use tidelog::Client;

/// Small enough that a few thousand commits take several snapshots (segments of 64 KiB).
const SNAPSHOT_BYTES: &str = "65536";

async fn topic_names(addr: &str) -> Option<BTreeSet<String>> {
    let client = Client::connect(addr.to_string()).await.ok()?;
    Some(client.list_topics().await.ok()?.into_iter().map(|t| t.name).collect())
}

/// Lines of broker `n`'s log containing `what`.
fn count_in_log(c: &TestCluster, n: u64, what: &str) -> usize {
    c.log(n).lines().filter(|l| l.contains(what)).count()
}

#[tokio::test]
async fn metadata_snapshots_replace_history_and_bring_a_lagging_broker_back() {
    let mut c = TestCluster::start_fast(&["--metadata-snapshot-bytes", SNAPSHOT_BYTES]).await;
    let controller = c.controller().await;
    let down = NODES.into_iter().find(|n| *n != controller).unwrap();
    let live: Vec<u64> = NODES.into_iter().filter(|n| *n != down).collect();
    c.create_topic("keep", 2, 3, TopicConfig::default()).await;
    c.create_topic("gone", 1, 3, TopicConfig::default()).await;
    let ctl = c.addr(controller);
    commit_many(&ctl, "dead", "keep", 2, 10).await;
    for n in NODES {
        eventually(WAIT, "both topics everywhere", || async {
            (topic_names(&c.addr(n)).await? == BTreeSet::from(["gone".into(), "keep".into()])).then_some(())
        })
        .await;
    }
    // Topic ids grow with creation: "gone" has the larger of the two replica directories.
    let down_replicas = c.dir(down).join("replicas");
    let replica_dirs = move || -> BTreeSet<u64> {
        std::fs::read_dir(&down_replicas)
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default()
    };
    let gone_id = *replica_dirs().iter().next_back().expect("replica directories");

    // Broker `down` misses deletions, a creation, alterations and a few thousand commits,
    // which the other two snapshot past (the leader purges past a follower that is down).
    c.kill9(down);
    let admin = Client::connect(ctl.clone()).await.unwrap();
    admin.delete_topic("gone").await.unwrap();
    admin.delete_group("dead").await.unwrap();
    admin.create_topic_replicated("fresh", 1, 3, TopicConfig::default()).await.unwrap();
    admin.create_partitions("keep", 3).await.unwrap();
    let config = TopicConfig { retention_ms: Some(3_600_000), ..TopicConfig::default() };
    admin.alter_topic_config("keep", config, &[]).await.unwrap();
    let last = commit_many(&ctl, "readers", "keep", 3, 4_000).await;
    for n in &live {
        eventually(WAIT, "snapshots on the live brokers", || async {
            (count_in_log(&c, *n, "metadata snapshot taken") >= 2).then_some(())
        })
        .await;
    }
    // The sealed history is gone: a few segments remain, the first one small (the image).
    let meta_dir = c.dir(controller).join("cluster-meta");
    let segments: Vec<u64> = std::fs::read_dir(&meta_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    let total: u64 = segments.iter().sum();
    assert!(total < 4_000 * 150 / 2, "the metadata log still holds {total} bytes in {segments:?}");

    // The broker that was down catches up through the snapshot and rebuilds its view.
    c.start_node(down);
    let back = c.addr(down);
    eventually(WAIT, "the returning broker installs the metadata snapshot", || async {
        (count_in_log(&c, down, "rebuilt the cluster metadata from the leader's snapshot") >= 1).then_some(())
    })
    .await;
    eventually(WAIT, "the returning broker's topics are the cluster's", || async {
        (topic_names(&back).await? == BTreeSet::from(["fresh".into(), "keep".into()])).then_some(())
    })
    .await;
    let client = Client::connect(back.clone()).await.unwrap();
    let keep = client.describe_topic("keep").await.unwrap();
    assert_eq!(keep.partition_count, 3);
    assert_eq!(keep.config.unwrap().retention_ms, Some(3_600_000));
    assert!(!replica_dirs().contains(&gone_id), "the deleted topic's replicas stay on disk");
    // Committed offsets: the group coordinator answers from the controller; what the
    // returning broker applied is checked after it becomes the controller below.
    assert_eq!(committed(&back, "readers", "keep", 3).await.unwrap(), last);

    // Every broker restarts from its own snapshot, then serves as the controller (whose
    // group coordinator answers from its own state): every committed offset is there, and
    // none of the deleted group.
    for n in NODES {
        c.kill9(n);
        c.start_node(n);
        eventually(WAIT, "serving again after a restart", || async {
            (committed(&c.addr(n), "readers", "keep", 3).await? == last).then_some(())
        })
        .await;
    }
    for target in NODES {
        if !make_controller(&mut c, target).await {
            eprintln!("broker {target} never became the controller in 12 elections; not checked as one");
            continue;
        }
        let addr = c.addr(target);
        eventually(WAIT, "the controller's own offsets", || async {
            (committed(&addr, "readers", "keep", 3).await? == last).then_some(())
        })
        .await;
        assert_eq!(committed(&addr, "dead", "keep", 2).await.unwrap(), Vec::<u64>::new(), "broker {target}");
    }
}

/// Makes broker `target` the controller by killing (and restarting) whoever else is, up to 12
/// elections; false if it never won one.
async fn make_controller(c: &mut TestCluster, target: u64) -> bool {
    let mut controller = c.controller().await;
    for _ in 0..12 {
        if controller == target {
            return true;
        }
        c.kill9(controller);
        c.start_node(controller);
        controller = c.controller().await;
    }
    controller == target
}

#[tokio::test]
async fn a_kill_at_each_step_of_a_metadata_snapshot_loses_nothing() {
    let mut c = TestCluster::start_fast(&["--metadata-snapshot-bytes", SNAPSHOT_BYTES]).await;
    let controller = c.controller().await;
    let victim = NODES.into_iter().find(|n| *n != controller).unwrap();
    c.create_topic("t", 1, 3, TopicConfig::default()).await;
    let ctl = c.addr(controller);
    let mut groups = Vec::new();
    for point in ["staged", "committed", "renamed"] {
        // The victim aborts at `point` of its next metadata snapshot's swap, which the commits
        // below make due (more than SNAPSHOT_BYTES of them).
        c.kill9(victim);
        c.start_node_with_env(victim, &[("TIDELOG_CRASH_AT", point)]);
        let topic = format!("t-{point}");
        c.create_topic(&topic, 1, 3, TopicConfig::default()).await;
        let group = format!("crash-{point}");
        groups.push((group.clone(), commit_many(&ctl, &group, "t", 1, 700).await));
        let aborted = format!("TIDELOG_CRASH_AT={point}: aborting");
        eventually(WAIT, "the victim aborts in its snapshot", || async {
            c.log(victim).contains(&aborted).then_some(())
        })
        .await;
        c.kill9(victim);
        c.start_node(victim);
        let addr = c.addr(victim);
        eventually(WAIT, "the victim's topics after the crash", || async {
            topic_names(&addr).await?.contains(&topic).then_some(())
        })
        .await;
    }
    eventually(WAIT, "the victim snapshots again", || async {
        (count_in_log(&c, victim, "metadata snapshot taken") >= 1).then_some(())
    })
    .await;
    // Its own state (as the controller, whose coordinator answers from it): every group.
    if !make_controller(&mut c, victim).await {
        eprintln!("broker {victim} never became the controller in 12 elections; its offsets are not checked");
        return;
    }
    let addr = c.addr(victim);
    for (group, last) in &groups {
        eventually(WAIT, "the victim's own offsets", || async {
            (committed(&addr, group, "t", 1).await? == *last).then_some(())
        })
        .await;
    }
    let names = topic_names(&addr).await.unwrap();
    assert!(["t", "t-staged", "t-committed", "t-renamed"].iter().all(|t| names.contains(*t)), "{names:?}");
}
