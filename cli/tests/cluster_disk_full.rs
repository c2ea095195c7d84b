//! One broker of three runs out of disk under a producer (RF=3, acks=all): its replica of the
//! partition stops (an ERROR in its log names the file and the full disk), the other two keep
//! a majority, so every record is still acknowledged, and `tidelog cluster health` reports the
//! partition under-replicated. Given space and restarted, the broker catches up and holds every
//! acknowledged record, as Kafka's brokers do after an offline log directory.
//!
//! Needs permission to mount tmpfs (root, as on CI); `TIDELOG_SKIP_DISK_FULL=1` skips it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::cluster::{TestCluster, WAIT};
use support::tmpfs::{skip_disk_full, Tmpfs};
use support::*;
use tidelog::proto::v1::TopicConfig;
use tidelog::{Client, Compression, Producer, ProducerConfig, Record};

const RECORD: usize = 1024;
/// Room broker 3 gets beyond what it holds at the start: the records below need twice that.
const ROOM_MIB: u64 = 6;
const RECORDS: usize = 12 * 1024;

fn du_kib(dir: &Path) -> u64 {
    let out = Command::new("du").arg("-sk").arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status().unwrap();
    assert!(status.success(), "copying {} failed", from.display());
}

fn in_sync(desc: &tidelog::proto::v1::TopicDescription) -> Vec<u32> {
    let mut ids = desc.partitions[0].in_sync_replica_ids.clone();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn a_broker_out_of_disk_leaves_the_in_sync_set_and_catches_up_with_space() {
    if skip_disk_full() {
        return;
    }
    let mut c = TestCluster::start().await;
    // Broker 3's data moves onto a small filesystem: what it holds now, plus ROOM_MIB.
    c.kill9(3);
    let dir = c.dir(3);
    let held = dir.with_extension("held");
    std::fs::rename(&dir, &held).unwrap();
    let tmpfs = Tmpfs::mount(&dir, &format!("{}k", du_kib(&held) + ROOM_MIB * 1024));
    copy_dir(&held, &dir);
    c.start_node(3);
    let cfg = TopicConfig { segment_bytes: Some(1 << 20), max_batch_bytes: Some(128 * 1024), ..Default::default() };
    c.create_topic("t", 1, 3, cfg).await;
    // The leader knows which replicas are in sync.
    let leader = c.leader("t").await;
    let client = Client::connect(c.addr(leader)).await.unwrap();
    eventually(WAIT, "all three replicas in sync", || async {
        let d = client.describe_topic("t").await.ok()?;
        (in_sync(&d) == [1, 2, 3]).then_some(())
    })
    .await;

    // Twice the room: broker 3 fills up half way. Every record is acknowledged all the same.
    let config = ProducerConfig { compression: Compression::None, ..ProducerConfig::default() };
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let mut value = format!("{i:08}").into_bytes();
        value.resize(RECORD, b'.');
        deliveries.push(producer.send_to("t", 0, Record::new(value)).await.unwrap());
    }
    for (i, d) in deliveries.into_iter().enumerate() {
        let m = d.await.unwrap_or_else(|e| panic!("record {i} not acknowledged: {e}"));
        assert_eq!(m.offset, i as u64, "offsets follow the sends");
    }
    producer.close().await;
    assert!(c.log(3).contains("No space left"), "broker 3's log names the full disk");
    let leader = c.leader("t").await;
    let client = Client::connect(c.addr(leader)).await.unwrap();
    eventually(WAIT, "broker 3 out of the in-sync replicas", || async {
        let d = client.describe_topic("t").await.ok()?;
        (in_sync(&d).len() == 2 && !in_sync(&d).contains(&3)).then_some(())
    })
    .await;
    let health = Command::new(BIN).args(["cluster", "health", "-b", &c.addr(leader)]).output().unwrap();
    let said = String::from_utf8_lossy(&health.stdout);
    assert_eq!(health.status.code(), Some(2), "unhealthy: {said}");
    assert!(said.contains("under-replicated") && said.contains("t/0"), "{said}");

    // Space again, and a restart (a replica stopped by its disk stays stopped until then).
    tmpfs.resize("256m");
    c.kill9(3);
    c.start_node(3);
    eventually(WAIT, "broker 3 back in sync", || async {
        let d = client.describe_topic("t").await.ok()?;
        (in_sync(&d) == [1, 2, 3]).then_some(())
    })
    .await;
    // Its own replica (a broker serves reads from the replica it holds) has every record.
    let own = Client::connect(c.addr(3)).await.unwrap();
    eventually(WAIT, "broker 3's replica at the high watermark", || async {
        (high_watermark(&own, "t", 0).await == RECORDS as u64).then_some(())
    })
    .await;
    let stored = read_range(&own, "t", 0, 0, RECORDS as u64).await;
    assert_eq!(stored.len(), RECORDS);
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        let value = r.value.as_deref().unwrap();
        assert_eq!((value.len(), &value[..8]), (RECORD, format!("{i:08}").as_bytes()), "record {i}");
    }
    drop(c); // the brokers go before the filesystem under one of them
}
