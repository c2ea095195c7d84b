//! Group administration against real broker processes, on a single node and through a
//! non-controller broker of a 3-broker cluster (the calls are passed on to the coordinator):
//! list groups, describe an unknown group (NOT_FOUND), delete a group (refused while it has
//! members), reset committed offsets to earliest / latest / an offset / a time / by a shift,
//! dry run first; and the same through the `tidelog group` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::cluster::TestCluster;
use support::{eventually, high_watermark, run_cli, BrokerProcess};
use tidelog::proto::v1::FetchCommittedRequest;
use tidelog::{Client, GroupConfig, GroupConsumer, OffsetReset, Producer, ProducerConfig, Record, ResetTo};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

async fn committed(client: &Client, group: &str, topic: &str) -> BTreeMap<u32, u64> {
    let req = FetchCommittedRequest { group: group.into(), topic: topic.into(), partitions: vec![] };
    client
        .offsets()
        .fetch_committed(req)
        .await
        .unwrap()
        .into_inner()
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect()
}

fn status_code(e: &tidelog::Error) -> Option<Code> {
    match e {
        tidelog::Error::Status(s) => Some(s.code()),
        _ => None,
    }
}

/// The scenario, with `client` at the broker under test and `addr` its address for the CLI.
async fn administer_groups(client: &Client, addr: &str) {
    // 10 records in each of 2 partitions (the producer finds each partition's leader).
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..20u32 {
        sent.push(producer.send_to("admin", i % 2, Record::new(format!("v{i}"))).await.unwrap());
    }
    for d in sent {
        tokio::time::timeout(WAIT, d).await.expect("delivered in time").unwrap();
    }
    producer.close().await;
    for p in 0..2 {
        eventually(WAIT, "the high watermarks", || async {
            (high_watermark(client, "admin", p).await == 10).then_some(())
        })
        .await;
    }

    // A live member: listed with its state and assignor; delete and reset are refused.
    let mut cfg = GroupConfig::new("billing", &["admin"]);
    cfg.offset_reset = OffsetReset::Earliest;
    cfg.auto_commit_interval = None;
    let mut consumer = GroupConsumer::join(client.clone(), cfg).await.unwrap();
    for _ in 0..6 {
        tokio::time::timeout(WAIT, consumer.next()).await.expect("a record").unwrap().unwrap();
    }
    consumer.commit().await.unwrap();
    let listed = eventually(WAIT, "the group listed as stable", || async {
        let groups = client.list_groups().await.unwrap();
        groups.into_iter().find(|g| g.group == "billing" && g.state == "stable")
    })
    .await;
    assert_eq!(listed.members, 1);
    assert!(["range", "roundrobin", "sticky"].contains(&listed.protocol.as_str()), "{listed:?}");
    let refused = client.delete_group("billing").await.unwrap_err();
    assert_eq!(status_code(&refused), Some(Code::FailedPrecondition), "{refused}");
    assert!(refused.to_string().contains("stop its consumers"), "{refused}");
    let refused = client.reset_offsets("billing", "admin", &[], ResetTo::Earliest(true), true).await.unwrap_err();
    assert_eq!(status_code(&refused), Some(Code::FailedPrecondition), "{refused}");
    let before = committed(client, "billing", "admin").await;
    assert_eq!(before.values().sum::<u64>(), 6, "{before:?}");
    consumer.close().await;
    eventually(WAIT, "the group empty after its member left", || async {
        let groups = client.list_groups().await.unwrap();
        groups.iter().any(|g| g.group == "billing" && g.state == "empty" && g.members == 0).then_some(())
    })
    .await;

    // Unknown groups are NOT_FOUND, not "empty".
    let unknown = client.describe_group("nobody").await.unwrap_err();
    assert_eq!(status_code(&unknown), Some(Code::NotFound), "{unknown}");
    let unknown = client.delete_group("nobody").await.unwrap_err();
    assert_eq!(status_code(&unknown), Some(Code::NotFound), "{unknown}");

    // Dry run: before/after shown, nothing changes.
    let plan = client.reset_offsets("billing", "admin", &[], ResetTo::Earliest(true), true).await.unwrap();
    assert_eq!(
        plan.iter().map(|r| (r.partition, r.before, r.after)).collect::<Vec<_>>(),
        [(0, before.get(&0).copied(), 0), (1, before.get(&1).copied(), 0)]
    );
    assert_eq!(committed(client, "billing", "admin").await, before);

    // Each target, executed; out-of-range targets are clamped into the log.
    let cases: [(ResetTo, &[u32], [u64; 2]); 5] = [
        (ResetTo::Earliest(true), &[], [0, 0]),
        (ResetTo::ShiftBy(3), &[1], [0, 3]),
        (ResetTo::Offset(1000), &[0], [10, 3]),
        (ResetTo::ShiftBy(-100), &[0, 1], [0, 0]),
        (ResetTo::Latest(true), &[], [10, 10]),
    ];
    for (to, partitions, want) in cases {
        let applied = client.reset_offsets("billing", "admin", partitions, to, false).await.unwrap();
        assert_eq!(applied.len(), if partitions.is_empty() { 2 } else { partitions.len() });
        let got = committed(client, "billing", "admin").await;
        assert_eq!(got, BTreeMap::from([(0, want[0]), (1, want[1])]), "after {to:?} on {partitions:?}");
    }
    let far_future = ResetTo::TimestampMs(i64::MAX / 2);
    let at_end = client.reset_offsets("billing", "admin", &[], far_future, false).await.unwrap();
    assert!(at_end.iter().all(|r| r.after == 10), "{at_end:?}");
    let from_start = client.reset_offsets("billing", "admin", &[], ResetTo::TimestampMs(0), false).await.unwrap();
    assert!(from_start.iter().all(|r| r.after == 0), "{from_start:?}");

    // The CLI: a dry run unless --execute, list, delete, describe of an unknown group fails.
    let dry = run_cli(addr, &["group", "reset-offsets", "billing", "--topic", "admin", "--to-offset", "4"], "");
    assert!(dry.contains("admin/0 before=0 after=4") && dry.contains("dry run"), "{dry}");
    assert_eq!(committed(client, "billing", "admin").await, BTreeMap::from([(0, 0), (1, 0)]));
    let args = ["group", "reset-offsets", "billing", "--topic", "admin", "--partition", "1", "--shift-by", "-1"];
    let executed = run_cli(addr, &[&args[..], &["--execute"]].concat(), "");
    assert!(executed.contains("admin/1 before=0 after=0") && executed.contains("committed"), "{executed}");
    let listed = run_cli(addr, &["group", "list"], "");
    assert!(listed.contains("billing\tstate=empty members=0"), "{listed}");
    let deleted = run_cli(addr, &["group", "delete", "billing"], "");
    assert!(deleted.contains("deleted group billing (2 committed offsets)"), "{deleted}");
    assert!(committed(client, "billing", "admin").await.is_empty());
    assert!(!client.list_groups().await.unwrap().iter().any(|g| g.group == "billing"));
    let out = std::process::Command::new(support::BIN)
        .args(["group", "describe", "billing", "--broker", addr])
        .output()
        .unwrap();
    assert!(!out.status.success(), "describe of a deleted group succeeded");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_group_administration() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("admin", 2).await.unwrap();
    administer_groups(&client, &broker.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_group_administration_through_a_non_controller() {
    let c = TestCluster::start().await;
    let controller = c.controller().await;
    let other = (1..=3).find(|n| *n != controller).unwrap();
    c.create_topic("admin", 2, 3, Default::default()).await;
    let addr = c.addr(other);
    let client = Client::connect(addr.clone()).await.unwrap();
    eventually(WAIT, "the topic at the non-controller", || async { client.describe_topic("admin").await.ok() }).await;
    administer_groups(&client, &addr).await;
}
