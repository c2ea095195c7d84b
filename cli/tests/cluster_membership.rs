//! Brokers join and leave a running three-broker cluster (`server/src/cluster/members.rs`): a
//! fourth broker started with `--join` is added with `tidelog cluster add-broker`, catches up
//! through the metadata snapshot, observes the metadata group, and takes replicas of new
//! topics; removing it moves its replicas to the other brokers first; once removed it stops,
//! and restarted under its old id it refuses to serve until it is added again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::cluster::{commit_many, committed, TestCluster, WAIT};
use support::{eventually, read_range, run_cli_output, BrokerProcess};
use tidelog::proto::v1::{DescribeClusterRequest, DescribeClusterResponse, TopicConfig};
use tidelog::Client;

async fn describe(addr: &str) -> Option<DescribeClusterResponse> {
    let client = Client::connect(addr.to_string()).await.ok()?;
    Some(client.admin().describe_cluster(DescribeClusterRequest {}).await.ok()?.into_inner())
}

fn role(view: &DescribeClusterResponse, id: u32) -> Option<String> {
    view.brokers.iter().find(|b| b.id == id).map(|b| b.role.clone())
}

/// `tidelog cluster ...` through `addr` on a blocking thread: (success, stdout + stderr).
async fn cluster_cli(addr: &str, args: &[&str]) -> (bool, String) {
    let (addr, args): (String, Vec<String>) = (addr.to_string(), args.iter().map(|a| a.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = std::iter::once("cluster").chain(args.iter().map(String::as_str)).collect();
        let out = run_cli_output(&addr, &args, b"");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_broker_joins_through_the_snapshot_takes_replicas_and_leaves_for_good() {
    let c = TestCluster::start_fast(&["--metadata-snapshot-bytes", "65536"]).await;
    let controller = c.controller().await;
    let ctl = c.addr(controller);
    c.create_topic("before", 1, 3, TopicConfig::default()).await;
    // History the new broker can only get as a snapshot: the brokers purge it.
    let last = commit_many(&ctl, "readers", "before", 1, 2_000).await;
    eventually(WAIT, "a metadata snapshot on the controller", || async {
        c.log(controller).contains("metadata snapshot taken").then_some(())
    })
    .await;

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = c.root.path().join("node-4");
    let log = c.root.path().join("node-4.log");
    let join = ["--node-id", "4", "--join", ctl.trim_start_matches("http://"), "--metadata-snapshot-bytes", "65536"];
    let mut b4 = BrokerProcess::start_listening(&dir, &log, &listen, &join);
    let (ok, out) = cluster_cli(&c.addr(1), &["add-broker", &format!("4={listen}")]).await;
    assert!(ok && out.contains("broker 4") && out.contains("added"), "{out}");

    // It caught up through the snapshot, knows every broker, and observes (three voters).
    eventually(WAIT, "broker 4 rebuilt from the snapshot", || async {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("rebuilt the cluster metadata from the leader's snapshot")
            .then_some(())
    })
    .await;
    for addr in [b4.addr.clone(), c.addr(1), c.addr(2), c.addr(3)] {
        eventually(WAIT, "every broker lists broker 4 as an observer", || async {
            let view = describe(&addr).await?;
            (view.brokers.len() == 4 && role(&view, 4)? == "observer" && role(&view, 1)? == "voter").then_some(())
        })
        .await;
    }
    assert_eq!(committed(&b4.addr, "readers", "before", 1).await.unwrap(), last);
    let (_, out) = cluster_cli(&b4.addr, &["describe"]).await;
    assert!(out.contains(&format!("broker 4 {listen} up observer")), "{out}");

    // New topics are placed over four brokers; broker 4 serves its replicas.
    c.create_topic("after", 4, 3, TopicConfig::default()).await;
    let client4 = Client::connect(b4.addr.clone()).await.unwrap();
    let topic =
        eventually(WAIT, "the topic at broker 4", || async { client4.describe_topic("after").await.ok() }).await;
    let held: Vec<u32> = topic.partitions.iter().filter(|p| p.replica_ids.contains(&4)).map(|p| p.partition).collect();
    assert_eq!(held.len(), 3, "{:?}", topic.partitions);
    let written = c.write_each(controller, "after", 4, "grown").await;
    for p in &held {
        let offset = written[*p as usize].offset;
        let got = eventually(WAIT, "broker 4 serves its replica", || async {
            let r = read_range(&client4, "after", *p, offset, offset + 1).await;
            (!r.is_empty()).then_some(r)
        })
        .await;
        assert_eq!(got[0].value.as_deref(), Some(format!("grown-{p}").as_bytes()));
    }

    // Restarted with the same command line (kill -9), it is a member again at once.
    b4.kill9();
    b4 = BrokerProcess::start_listening(&dir, &log, &listen, &join);
    eventually(WAIT, "broker 4 back after a restart", || async {
        let view = describe(&b4.addr).await?;
        (view.brokers.len() == 4 && role(&view, 4)? == "observer").then_some(())
    })
    .await;

    // Its replicas move to the other brokers first (the CLI waits for them); then removed,
    // it stops.
    let (ok, out) = cluster_cli(&c.addr(2), &["remove-broker", "4"]).await;
    assert!(ok && out.contains("moving them to other brokers") && out.contains("broker 4 removed"), "{out}");
    let client1 = Client::connect(c.addr(1)).await.unwrap();
    let moved = client1.describe_topic("after").await.unwrap();
    for p in &moved.partitions {
        assert!(!p.replica_ids.contains(&4) && p.replica_ids.len() == 3, "{:?}", moved.partitions);
        let offset = written[p.partition as usize].offset;
        let got = read_range(&client1, "after", p.partition, offset, offset + 1).await;
        assert_eq!(got[0].value.as_deref(), Some(format!("grown-{}", p.partition).as_bytes()));
    }
    let Some(status) = b4.wait_exit(WAIT).await else {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "the removed broker did not stop; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    assert!(!status.success());
    for n in [1, 2, 3] {
        eventually(WAIT, "broker 4 gone from every broker", || async {
            (describe(&c.addr(n)).await?.brokers.len() == 3).then_some(())
        })
        .await;
    }

    // Restarted under its old id, it refuses to serve.
    std::fs::write(&log, "").unwrap();
    let mut again = BrokerProcess::start_listening(&dir, &log, &listen, &join);
    let status = again.wait_exit(Duration::from_secs(40)).await.expect("a removed broker does not serve");
    assert!(!status.success());
    assert!(std::fs::read_to_string(&log).unwrap().contains("was removed from the cluster"));

    // Added again, it returns with its data and serves.
    let (ok, out) = cluster_cli(&c.addr(3), &["add-broker", &format!("4={listen}")]).await;
    assert!(ok, "{out}");
    let back = BrokerProcess::start_listening(&dir, &log, &listen, &join);
    eventually(WAIT, "broker 4 serves again once added again", || async {
        let view = describe(&back.addr).await?;
        let names: Vec<String> = Client::connect(back.addr.clone())
            .await
            .ok()?
            .list_topics()
            .await
            .ok()?
            .into_iter()
            .map(|t| t.name)
            .collect();
        (view.brokers.len() == 4 && names == ["after", "before"]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await; // past the removal grace: it still runs
    let (_, out) = cluster_cli(&back.addr, &["describe"]).await;
    assert!(out.contains(&format!("broker 4 {listen} up observer")), "{out}");
}

/// A one-broker cluster grows: the added broker catches up and is promoted to a metadata voter
/// (fewer than three voted), then topics placed on both brokers are served by both.
#[tokio::test]
async fn a_broker_added_to_a_small_cluster_becomes_a_metadata_voter() {
    let root = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let (l1, l2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let peers = format!("1={l1}");
    let b1 = BrokerProcess::start_listening(
        &root.path().join("n1"),
        &root.path().join("n1.log"),
        &l1,
        &["--node-id", "1", "--peers", &peers],
    );
    eventually(WAIT, "broker 1 leads its metadata group", || async {
        (describe(&b1.addr).await?.controller_id == 1).then_some(())
    })
    .await;
    let b2 = BrokerProcess::start_listening(
        &root.path().join("n2"),
        &root.path().join("n2.log"),
        &l2,
        &["--node-id", "2", "--join", &l1],
    );
    let (ok, out) = cluster_cli(&b1.addr, &["add-broker", &format!("2={l2}")]).await;
    assert!(ok, "{out}");
    for addr in [&b1.addr, &b2.addr] {
        eventually(WAIT, "broker 2 votes", || async {
            let view = describe(addr).await?;
            (role(&view, 1)? == "voter" && role(&view, 2)? == "voter").then_some(())
        })
        .await;
    }
    let client = Client::connect(b2.addr.clone()).await.unwrap();
    let topic = client.create_topic_replicated("both", 2, 2, TopicConfig::default()).await.unwrap();
    assert!(topic.partitions.iter().all(|p| p.replica_ids.len() == 2), "{:?}", topic.partitions);
}
