//! The broker's behaviour through its seam, once per implementation (`support::Mode`): a
//! single node, a one-broker Raft cluster and a three-broker Raft cluster, all in-process with
//! real gRPC between brokers. What a request does must not depend on the mode; a test here
//! that passes for one implementation and fails for another is a bug in that implementation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::{eventually, Brokers, Mode};
use tidelog_proto::v1::TopicConfig;
use tidelog_server::broker::route::{Origin, Route};
use tidelog_server::broker::seam::{Acks, NewTopic};
use tidelog_server::clock::now_ms;
use tidelog_server::error::BrokerError;
use tidelog_server::meta::StoredOffset;

const WAIT: Duration = Duration::from_secs(20);

fn new_topic(name: &str, partitions: u32) -> NewTopic {
    NewTopic { name: name.into(), partitions, ..NewTopic::default() }
}

fn brokers_in(mode: Mode) -> usize {
    match mode {
        Mode::Local => 1,
        Mode::Raft(n) => n as usize,
    }
}

every_seam!(
    topics_are_created_written_read_and_deleted,
    bad_creates_and_unknown_partitions_are_refused,
    committed_offsets_and_topics_survive_a_restart,
    producer_ids_are_unique_and_group_calls_have_one_coordinator,
    a_recreated_topic_starts_without_the_deleted_ones_offsets,
    a_deleted_group_loses_its_offsets_everywhere_and_for_good,
    topic_settings_change_everywhere_and_stay_changed,
    partitions_are_added_everywhere_and_stay_added,
    records_are_deleted_below_an_offset_everywhere_and_for_good,
    transactions_commit_everywhere_and_survive_a_restart,
    compacted_topics_keep_the_latest_value_per_key_everywhere,
);

async fn topics_are_created_written_read_and_deleted(mode: Mode) {
    let c = Brokers::start(mode).await;
    let all = c.brokers();
    // Created at the last broker: in a three-broker cluster usually not the controller, so
    // the create is passed on; it returns once the topic is usable where it was asked.
    let created = all.last().unwrap().create_topic(new_topic("orders", 2), Origin::Client).await.unwrap();
    assert_eq!(created.record.partitions, 2);
    for b in &all {
        eventually(WAIT, "the topic on every broker", || async { b.topic("orders").ok() }).await;
    }
    let view = all[0].describe_cluster().unwrap();
    assert_eq!(view.brokers.len(), brokers_in(mode), "{view:?}");

    for p in 0..2 {
        for i in 0..3u64 {
            let acks = if i % 2 == 0 { Acks::All } else { Acks::Leader };
            let a = c.write("orders", p, format!("p{p}-r{i}").as_bytes(), acks).await;
            assert_eq!((a.base_offset, a.next_offset), (i, i + 1), "partition {p}");
        }
    }
    // Every broker holding a partition serves what was written, in order, once committed.
    for b in &all {
        let t = b.topic("orders").unwrap();
        for p in 0..2 {
            let Ok(log) = t.partition(p) else { continue }; // held elsewhere
            let batches = eventually(WAIT, "committed batches", || async {
                let read = log.read(0, 1 << 20).unwrap();
                (read.len() == 3).then_some(read)
            })
            .await;
            let payloads: Vec<_> = batches.iter().map(|s| String::from_utf8_lossy(&s.payload).into_owned()).collect();
            assert_eq!(payloads, [0, 1, 2].map(|i| format!("p{p}-r{i}")));
            assert_eq!(log.offsets().high_watermark.0, 3);
        }
    }

    let held: Vec<_> = all.iter().filter_map(|b| b.topic("orders").ok()?.partition(0).ok().cloned()).collect();
    assert!(!held.is_empty());
    all[0].delete_topic("orders", Origin::Client).await.unwrap();
    for b in &all {
        eventually(WAIT, "the topic gone everywhere", || async {
            matches!(b.topic("orders"), Err(BrokerError::UnknownTopic(_))).then_some(())
        })
        .await;
    }
    for log in held {
        assert!(log.check_open().is_err(), "a deleted topic's partition still serves");
    }
    assert!(matches!(all[0].delete_topic("orders", Origin::Client).await, Err(BrokerError::UnknownTopic(_))));

    // A new incarnation starts empty.
    all[0].create_topic(new_topic("orders", 1), Origin::Client).await.unwrap();
    let a = c.write("orders", 0, b"again", Acks::All).await;
    assert_eq!(a.base_offset, 0);
}

async fn bad_creates_and_unknown_partitions_are_refused(mode: Mode) {
    let c = Brokers::start(mode).await;
    let b = &c.brokers()[0];
    b.create_topic(new_topic("t", 1), Origin::Client).await.unwrap();
    let again = b.create_topic(new_topic("t", 3), Origin::Client).await;
    assert!(matches!(again, Err(BrokerError::TopicExists(_))), "{again:?}");
    let bad_name = b.create_topic(new_topic("no spaces", 1), Origin::Client).await;
    assert!(matches!(bad_name, Err(BrokerError::InvalidArgument(_))), "{bad_name:?}");
    let zero = b.create_topic(new_topic("zero", 0), Origin::Client).await;
    assert!(matches!(zero, Err(BrokerError::InvalidArgument(_))), "{zero:?}");
    let too_many = NewTopic { replication_factor: brokers_in(mode) as u32 + 1, ..new_topic("rf", 1) };
    let rf = b.create_topic(too_many, Origin::Client).await;
    assert!(matches!(&rf, Err(BrokerError::InvalidArgument(m)) if m.contains("replication_factor")), "{rf:?}");
    let bad_settings = NewTopic {
        config: Some(TopicConfig { max_batch_bytes: Some(0), ..TopicConfig::default() }),
        ..new_topic("s", 1)
    };
    assert!(matches!(b.create_topic(bad_settings, Origin::Client).await, Err(BrokerError::InvalidArgument(_))));

    assert!(matches!(b.topic("missing"), Err(BrokerError::UnknownTopic(_))));
    let t = b.topic("t").unwrap();
    let unknown = t.held(1).map(|_| ());
    assert!(matches!(unknown, Err(BrokerError::UnknownPartition { partition: 1, count: 1, .. })), "{unknown:?}");
    for name in ["zero", "rf", "s", "no spaces"] {
        assert!(b.topic(name).is_err(), "a refused create left topic {name}");
    }
}

async fn committed_offsets_and_topics_survive_a_restart(mode: Mode) {
    let mut c = Brokers::start(mode).await;
    let coordinator = c.coordinator().await;
    let events = coordinator.create_topic(new_topic("events", 2), Origin::Client).await.unwrap();
    for i in 0..2 {
        c.write("events", 1, format!("r{i}").as_bytes(), Acks::All).await;
    }
    let offsets = |o: u64| {
        vec![
            StoredOffset { partition: 0, offset: o, commit_time_ms: now_ms(), metadata: "m".into() },
            StoredOffset { partition: 1, offset: o + 1, commit_time_ms: now_ms(), metadata: String::new() },
        ]
    };
    coordinator.commit_offsets("billing", &events, offsets(1)).await.unwrap();
    coordinator.commit_offsets("billing", &events, offsets(7)).await.unwrap();
    // Readable where it was committed as soon as the commit returns; everywhere once applied.
    let here = coordinator.committed_offsets("billing", "events").unwrap();
    assert_eq!(here.iter().map(|o| (o.partition, o.offset)).collect::<Vec<_>>(), [(0, 7), (1, 8)]);
    for b in c.brokers() {
        eventually(WAIT, "the commit applied everywhere", || async {
            (b.committed_offsets("billing", "events").unwrap().len() == 2).then_some(())
        })
        .await;
    }

    drop((coordinator, events)); // the old brokers' stores must be released for the restart
    c.restart_all().await;
    for b in c.brokers() {
        let t = eventually(WAIT, "the topic after a restart", || async { b.topic("events").ok() }).await;
        assert_eq!(t.record.partitions, 2);
        let got = eventually(WAIT, "committed offsets after a restart", || async {
            let got = b.committed_offsets("billing", "events").unwrap();
            (got.len() == 2).then_some(got)
        })
        .await;
        assert_eq!(
            got.iter().map(|o| (o.partition, o.offset, o.metadata.as_str())).collect::<Vec<_>>(),
            [(0, 7, "m"), (1, 8, "")]
        );
        if let Ok(log) = t.partition(1) {
            eventually(WAIT, "the log after a restart", || async {
                (log.offsets().high_watermark.0 == 2).then_some(())
            })
            .await;
        }
    }
    let a = c.write("events", 1, b"after", Acks::All).await;
    assert_eq!(a.base_offset, 2, "offsets go on after a restart");
}

async fn producer_ids_are_unique_and_group_calls_have_one_coordinator(mode: Mode) {
    let c = Brokers::start(mode).await;
    let mut ids = HashSet::new();
    for b in c.brokers() {
        for _ in 0..3 {
            let id = b.next_producer_id().await.unwrap();
            assert!(id > 0 && ids.insert(id), "producer id {id} handed out twice");
        }
    }
    let coordinator = c.coordinator().await;
    for b in c.brokers() {
        match b.coordinator_route(Origin::Client).await.unwrap() {
            Route::Here => assert_eq!(b.node_id(), coordinator.node_id()),
            Route::To(_, id) => assert_eq!(id, coordinator.node_id()),
        }
        if b.node_id() != coordinator.node_id() {
            // A passed-on call is never passed on again.
            let again = b.coordinator_route(Origin::Forwarded).await;
            assert!(matches!(again, Err(BrokerError::NotLeader { .. })), "{again:?}");
        }
    }
}

/// Regression: a group's committed offsets outlived `topic delete`, so a consumer of the
/// recreated topic started at the old position and skipped its first records.
async fn a_recreated_topic_starts_without_the_deleted_ones_offsets(mode: Mode) {
    let mut c = Brokers::start(mode).await;
    let coordinator = c.coordinator().await;
    let old = coordinator.create_topic(new_topic("t", 1), Origin::Client).await.unwrap();
    let other = coordinator.create_topic(new_topic("kept", 1), Origin::Client).await.unwrap();
    let at = |o: u64| vec![StoredOffset { partition: 0, offset: o, commit_time_ms: now_ms(), metadata: String::new() }];
    for group in ["sg", "other"] {
        coordinator.commit_offsets(group, &old, at(3)).await.unwrap();
        coordinator.commit_offsets(group, &other, at(5)).await.unwrap();
    }
    coordinator.delete_topic("t", Origin::Client).await.unwrap();
    let new = coordinator.create_topic(new_topic("t", 1), Origin::Client).await.unwrap();
    for b in c.brokers() {
        eventually(WAIT, "the recreated topic everywhere", || async { b.topic("t").ok() }).await;
        for group in ["sg", "other"] {
            assert!(b.committed_offsets(group, "t").unwrap().is_empty(), "{group} kept the deleted topic's offsets");
            let kept = b.committed_offsets(group, "kept").unwrap();
            assert_eq!(kept.iter().map(|o| o.offset).collect::<Vec<_>>(), [5], "another topic's offsets went too");
        }
    }
    // A commit for the deleted incarnation (a consumer that looked the topic up before the
    // delete) is refused and stores nothing; one for the new incarnation is kept.
    let stale = coordinator.commit_offsets("sg", &old, at(3)).await;
    assert!(matches!(stale, Err(BrokerError::TopicDeleted(_))), "{stale:?}");
    assert!(coordinator.committed_offsets("sg", "t").unwrap().is_empty());
    coordinator.commit_offsets("sg", &new, at(1)).await.unwrap();

    // And after a restart (a cluster re-applies its whole metadata log).
    drop((coordinator, old, other, new));
    c.restart_all().await;
    for b in c.brokers() {
        let got = eventually(WAIT, "the new incarnation's commit after a restart", || async {
            let got = b.committed_offsets("sg", "t").unwrap();
            (!got.is_empty()).then_some(got)
        })
        .await;
        assert_eq!(got.iter().map(|o| o.offset).collect::<Vec<_>>(), [1]);
        assert!(b.committed_offsets("other", "t").unwrap().is_empty());
    }
}

async fn a_deleted_group_loses_its_offsets_everywhere_and_for_good(mode: Mode) {
    let mut c = Brokers::start(mode).await;
    let coordinator = c.coordinator().await;
    let topics = [
        coordinator.create_topic(new_topic("a", 2), Origin::Client).await.unwrap(),
        coordinator.create_topic(new_topic("b", 1), Origin::Client).await.unwrap(),
    ];
    let at = |p: u32| StoredOffset { partition: p, offset: 4, commit_time_ms: now_ms(), metadata: String::new() };
    for group in ["old", "older", "kept"] {
        for t in &topics {
            let offsets = (0..t.record.partitions).map(at).collect();
            coordinator.commit_offsets(group, t, offsets).await.unwrap();
        }
    }
    assert_eq!(coordinator.delete_group("old").await.unwrap(), 3);
    drop((coordinator, topics));
    c.restart_all().await;
    // Every broker converges on: "old" gone, "older" (a name it prefixes) and "kept" whole.
    for b in c.brokers() {
        eventually(WAIT, "only the deleted group gone after a restart", || async {
            let groups: Vec<String> = b.groups_with_offsets().unwrap().into_iter().collect();
            let whole = b.committed_offsets("older", "a").unwrap().len() == 2;
            (groups == ["kept", "older"] && whole && !b.group_has_offsets("old").unwrap()).then_some(())
        })
        .await;
    }
}

async fn topic_settings_change_everywhere_and_stay_changed(mode: Mode) {
    use tidelog_proto::v1::FsyncPolicy as Fsync;
    use tidelog_server::broker::seam::AlterTopic;
    use tidelog_server::log::FsyncPolicy;
    use tidelog_server::topic_config::{FsyncSetting, TopicSettings};

    let mut c = Brokers::start(mode).await;
    let all = c.brokers();
    let created = all[0]
        .create_topic(
            NewTopic {
                config: Some(TopicConfig { retention_ms: Some(60_000), ..TopicConfig::default() }),
                ..new_topic("cfg", 2)
            },
            Origin::Client,
        )
        .await
        .unwrap();
    assert_eq!(created.record.own_settings(), ["retention_ms"]);
    let id = created.topic_id;
    for b in &all {
        eventually(WAIT, "the topic on every broker", || async { b.topic("cfg").ok() }).await;
    }

    // Set two more, at another broker (passed on to the controller in a cluster).
    let alter = AlterTopic {
        name: "cfg".into(),
        config: Some(TopicConfig {
            fsync_policy: Fsync::Always as i32,
            max_batch_bytes: Some(2048),
            ..TopicConfig::default()
        }),
        reset: vec![],
    };
    let altered = all.last().unwrap().alter_topic(alter, Origin::Client).await.unwrap();
    assert_eq!(altered.topic_id, id, "an alteration is the same incarnation");
    assert_eq!(altered.record.own_settings(), ["retention_ms", "fsync_policy", "max_batch_bytes"]);
    let s = &altered.record.settings;
    assert_eq!((s.retention_ms, s.fsync, s.max_batch_bytes), (60_000, FsyncSetting::Always, 2048));
    let settled = |b: std::sync::Arc<tidelog_server::broker::Broker>, fsync: FsyncPolicy, retention: i64| async move {
        eventually(WAIT, "the new settings on every broker and partition", || async {
            let t = b.topic("cfg").ok()?;
            let partitions_ok = t.local().all(|(p, _)| p.fsync_policy() == fsync);
            (t.record.settings.retention_ms == retention && partitions_ok).then_some(())
        })
        .await;
    };
    for b in &all {
        settled(std::sync::Arc::clone(b), FsyncPolicy::PerBatch, 60_000).await;
    }
    // Writes and commits go on (same incarnation).
    c.write("cfg", 0, b"after-alter", Acks::All).await;
    let at = vec![StoredOffset { partition: 0, offset: 1, commit_time_ms: now_ms(), metadata: String::new() }];
    c.coordinator().await.commit_offsets("g", &altered, at).await.unwrap();

    // Two alterations at once, of different settings, at different brokers: both take effect.
    let (first, last) = (std::sync::Arc::clone(&all[0]), std::sync::Arc::clone(all.last().unwrap()));
    let one = AlterTopic {
        name: "cfg".into(),
        config: Some(TopicConfig { segment_ms: Some(3_600_000), ..TopicConfig::default() }),
        reset: vec![],
    };
    let two = AlterTopic {
        name: "cfg".into(),
        config: Some(TopicConfig { retention_bytes: Some(1 << 30), ..TopicConfig::default() }),
        reset: vec![],
    };
    let (a, b) = tokio::join!(first.alter_topic(one, Origin::Client), last.alter_topic(two, Origin::Client));
    a.unwrap();
    b.unwrap();
    for b in &all {
        eventually(WAIT, "both concurrent alterations", || async {
            let s = b.topic("cfg").ok()?.record.settings.clone();
            (s.segment_ms == 3_600_000 && s.retention_bytes == 1 << 30).then_some(())
        })
        .await;
    }

    // Back to the default, and refusals.
    let reset = AlterTopic { name: "cfg".into(), config: None, reset: vec!["retention_ms".into()] };
    let back = all[0].alter_topic(reset, Origin::Client).await.unwrap();
    assert_eq!(back.record.own_settings(), ["retention_bytes", "segment_ms", "fsync_policy", "max_batch_bytes"]);
    assert_eq!(back.record.settings.retention_ms, TopicSettings::default().retention_ms);
    let unknown_key = AlterTopic { name: "cfg".into(), config: None, reset: vec!["nope".into()] };
    assert!(matches!(all[0].alter_topic(unknown_key, Origin::Client).await, Err(BrokerError::InvalidArgument(_))));
    let invalid = AlterTopic {
        name: "cfg".into(),
        config: Some(TopicConfig { max_batch_bytes: Some(0), ..TopicConfig::default() }),
        reset: vec![],
    };
    assert!(matches!(all[0].alter_topic(invalid, Origin::Client).await, Err(BrokerError::InvalidArgument(_))));
    let missing = AlterTopic { name: "missing".into(), ..AlterTopic::default() };
    assert!(matches!(all[0].alter_topic(missing, Origin::Client).await, Err(BrokerError::UnknownTopic(_))));

    // Durable: after a restart every broker opens the topic with its altered settings.
    drop((all, created, altered, back, first, last));
    c.restart_all().await;
    for b in c.brokers() {
        settled(b, FsyncPolicy::PerBatch, TopicSettings::default().retention_ms).await;
    }
}

async fn partitions_are_added_everywhere_and_stay_added(mode: Mode) {
    let mut c = Brokers::start(mode).await;
    let all = c.brokers();
    let created = all[0].create_topic(new_topic("grow", 1), Origin::Client).await.unwrap();
    for b in &all {
        eventually(WAIT, "the topic on every broker", || async { b.topic("grow").ok() }).await;
    }
    c.write("grow", 0, b"before", Acks::All).await;

    // At another broker (passed on to the controller in a cluster).
    let grown = all.last().unwrap().add_partitions("grow", 3, Origin::Client).await.unwrap();
    assert_eq!((grown.record.partitions, grown.slots.len()), (3, 3));
    assert_eq!(grown.topic_id, created.topic_id, "the same incarnation");
    // Asked where the growth is applied (another broker may not have applied it yet, and
    // would then propose an add that the applied one already covers).
    eventually(WAIT, "the new count at broker 0", || async {
        all[0].topic("grow").ok().filter(|t| t.record.partitions == 3)
    })
    .await;
    for (n, what) in [(3, "the same count"), (2, "fewer"), (0, "none")] {
        let refused = all[0].add_partitions("grow", n, Origin::Client).await.map(|_| ());
        assert!(matches!(refused, Err(BrokerError::InvalidArgument(_))), "{what}: {refused:?}");
    }
    let unknown = all[0].add_partitions("nope", 3, Origin::Client).await.map(|_| ());
    assert!(matches!(unknown, Err(BrokerError::UnknownTopic(_))), "{unknown:?}");

    let ids: Vec<u64> = all.iter().map(|b| b.node_id()).collect();
    for b in &all {
        let t = eventually(WAIT, "the new partitions on every broker", || async {
            b.topic("grow").ok().filter(|t| t.record.partitions == 3)
        })
        .await;
        for p in 0..3 {
            // Held here exactly where placement put a replica (every broker, with no placement).
            let replicas = t.record.replicas_in(p, ids.iter().copied());
            assert_eq!(t.partition(p).is_ok(), replicas.contains(&b.node_id()), "partition {p} on {}", b.node_id());
        }
    }
    for p in 1..3 {
        assert_eq!(c.write("grow", p, b"new", Acks::All).await.base_offset, 0, "partition {p} starts empty");
    }
    assert_eq!(c.write("grow", 0, b"old", Acks::All).await.base_offset, 1, "partition 0 keeps its records");

    drop((all, created, grown));
    c.restart_all().await;
    for b in c.brokers() {
        let t = eventually(WAIT, "the topic after a restart", || async { b.topic("grow").ok() }).await;
        assert_eq!(t.record.partitions, 3, "added partitions survive a restart");
    }
    assert_eq!(c.write("grow", 2, b"after", Acks::All).await.base_offset, 1);
}

async fn records_are_deleted_below_an_offset_everywhere_and_for_good(mode: Mode) {
    let mut c = Brokers::start(mode).await;
    let all = c.brokers();
    all[0].create_topic(new_topic("trim", 2), Origin::Client).await.unwrap();
    for b in &all {
        eventually(WAIT, "the topic on every broker", || async { b.topic("trim").ok() }).await;
    }
    for i in 0..5 {
        c.write("trim", 0, format!("r{i}").as_bytes(), Acks::All).await;
    }
    for i in 0..2 {
        c.write("trim", 1, format!("r{i}").as_bytes(), Acks::All).await;
    }
    let at = |p: u32, ok: fn(&tidelog_server::log::PartitionOffsets) -> bool| {
        let all = all.clone();
        async move {
            for b in &all {
                let t = b.topic("trim").unwrap();
                let Ok(log) = t.partition(p) else { continue };
                eventually(WAIT, "the partition's offsets on every replica", || async {
                    let o = log.offsets();
                    ok(&o).then_some(())
                })
                .await;
            }
        }
    };
    at(0, |o| o.high_watermark.0 == 5).await;
    at(1, |o| o.high_watermark.0 == 2).await;

    // Refused as a whole, changing nothing: above the high watermark, an unknown partition,
    // a partition twice, none.
    let last = all.last().unwrap();
    let above = last.delete_records("trim", &[(1, Some(1)), (0, Some(6))], Origin::Client).await;
    assert!(matches!(above, Err(BrokerError::AboveHighWatermark { partition: 0, offset: 6, .. })), "{above:?}");
    let unknown = last.delete_records("trim", &[(2, Some(0))], Origin::Client).await;
    assert!(matches!(unknown, Err(BrokerError::UnknownPartition { partition: 2, .. })), "{unknown:?}");
    for bad in [vec![(0, Some(1)), (0, Some(2))], vec![]] {
        let refused = last.delete_records("trim", &bad, Origin::Client).await;
        assert!(matches!(refused, Err(BrokerError::InvalidArgument(_))), "{bad:?}: {refused:?}");
    }
    at(1, |o| o.log_start.0 == 0).await;

    // At a broker that is usually not the controller: offset 3 of partition 0, and all of 1.
    let lows = last.delete_records("trim", &[(0, Some(3)), (1, None)], Origin::Client).await.unwrap();
    assert_eq!(lows, [(0, 3), (1, 2)]);
    at(0, |o| o.log_start.0 == 3).await;
    at(1, |o| o.log_start.0 == 2).await;
    for b in &all {
        let t = b.topic("trim").unwrap();
        let Ok(log) = t.partition(0) else { continue };
        let below = log.read(2, 1 << 20).map(|_| ());
        assert!(matches!(below, Err(BrokerError::Log(_))), "read below the log start: {below:?}");
        let first = log.read(3, 1 << 20).unwrap();
        assert_eq!(first[0].payload.as_ref(), b"r3");
    }
    // Never down.
    let lows = all[0].delete_records("trim", &[(0, Some(1))], Origin::Client).await.unwrap();
    assert_eq!(lows, [(0, 3)]);

    drop(all);
    c.restart_all().await;
    for b in c.brokers() {
        let t = eventually(WAIT, "the topic after a restart", || async { b.topic("trim").ok() }).await;
        let Ok(log) = t.partition(0) else { continue };
        eventually(WAIT, "the log start after a restart", || async { (log.offsets().log_start.0 == 3).then_some(()) })
            .await;
    }
    assert_eq!(c.write("trim", 0, b"after", Acks::All).await.base_offset, 5);
}

/// A record batch as a transactional producer's: its encoded records.
fn txn_payload(value: &str) -> Vec<u8> {
    use prost::Message;
    let record = tidelog_proto::v1::Record { value: value.as_bytes().to_vec().into(), ..Default::default() };
    tidelog_proto::v1::RecordBatch { records: vec![record] }.encode_to_vec()
}

async fn transactions_commit_everywhere_and_survive_a_restart(mode: Mode) {
    use tidelog_server::log::format::FLAG_TRANSACTIONAL;
    use tidelog_server::meta::txn::TxnStatus;
    use tidelog_server::txn::TxnCoordinator;
    let mut c = Brokers::start(mode).await;
    let coordinator = c.coordinator().await;
    coordinator.create_topic(new_topic("tx", 2), Origin::Client).await.unwrap();
    let txns = TxnCoordinator::new(std::sync::Arc::clone(&coordinator));
    let (pid, first) = txns.init("app", 0).await.unwrap();
    let (same, epoch) = txns.init("app", 0).await.unwrap();
    assert_eq!((same, epoch), (pid, first + 1), "a second init bumps the epoch of the same producer id");
    txns.add_partitions("app", pid, epoch, &[("tx".into(), vec![0, 1])]).await.unwrap();
    for p in 0..2 {
        c.write_as("tx", p, &txn_payload("in-txn"), Acks::All, (pid, epoch, 0), FLAG_TRANSACTIONAL).await;
    }
    // Every replica holds the last stable offset at the open transaction's first offset.
    for b in c.brokers() {
        let t = eventually(WAIT, "the topic everywhere", || async { b.topic("tx").ok() }).await;
        for (log, _) in t.local() {
            eventually(WAIT, "the batch replicated", || async { (log.offsets().high_watermark.0 == 1).then_some(()) })
                .await;
            assert_eq!(log.last_stable_offset(), 0, "broker {}: LSO passed an open transaction", b.node_id());
        }
    }
    let offset = StoredOffset { partition: 0, offset: 5, commit_time_ms: now_ms(), metadata: String::new() };
    txns.add_offsets("app", pid, epoch, "g", vec![("tx".into(), vec![offset])]).await.unwrap();
    assert!(coordinator.committed_offsets("g", "tx").unwrap().is_empty(), "offsets before the commit");
    // The zombie of the first epoch is fenced.
    let fenced = txns.end("app", pid, first, true).await;
    assert!(matches!(fenced, Err(BrokerError::ProducerFenced { .. })), "{fenced:?}");
    // The broker's own sweeper (a second coordinator here) may complete the prepared
    // transaction between this end's steps: the end then answers ConcurrentTransactions,
    // which is retryable, and the retry finds the transaction complete, as a client's would.
    let ended = eventually(WAIT, "the transaction ended", || async {
        match txns.end("app", pid, epoch, true).await {
            Err(BrokerError::ConcurrentTransactions(_)) => None,
            other => Some(other),
        }
    })
    .await;
    assert_eq!(ended.unwrap(), 0, "every marker written");
    assert_eq!(coordinator.committed_offsets("g", "tx").unwrap()[0].offset, 5, "offsets committed with it");
    for b in c.brokers() {
        let t = b.topic("tx").unwrap();
        for (log, _) in t.local() {
            // At least one marker (the broker's own sweeper, a second coordinator here, may
            // complete the prepared transaction too: a second marker is harmless).
            eventually(WAIT, "the commit marker everywhere", || async {
                let hw = log.offsets().high_watermark.0;
                (hw >= 2 && log.last_stable_offset() == hw && log.open_transactions().is_empty()).then_some(())
            })
            .await;
        }
        eventually(WAIT, "the coordinator's state everywhere", || async {
            let e = b.transactions().get("app")?;
            (e.status == TxnStatus::CompleteCommit).then_some(())
        })
        .await;
    }
    // A change computed from a stale version is refused, everywhere alike.
    let stale = coordinator.transactions().get("app").unwrap();
    let stale = tidelog_server::meta::txn::TxnEntry { version: stale.version - 1, ..stale };
    assert!(!coordinator.store_transaction("app", stale).await.unwrap());

    drop((coordinator, txns));
    c.restart_all().await;
    for b in c.brokers() {
        let e = eventually(WAIT, "the coordinator's state after a restart", || async {
            b.transactions().get("app").filter(|e| e.status == TxnStatus::CompleteCommit)
        })
        .await;
        assert_eq!((e.producer_id, e.epoch), (pid, epoch));
    }
}

/// A keyed record batch of one record (`None` = a tombstone).
fn keyed_payload(key: &str, value: Option<&str>) -> Vec<u8> {
    use prost::Message;
    let record = tidelog_proto::v1::Record {
        key: Some(key.as_bytes().to_vec().into()),
        value: value.unwrap_or_default().as_bytes().to_vec().into(),
        null_value: value.is_none(),
        ..Default::default()
    };
    tidelog_proto::v1::RecordBatch { records: vec![record] }.encode_to_vec()
}

/// Every (key, value) a consumer reads from the log start, in offset order.
fn table_rows(log: &tidelog_server::partition::Partition) -> Vec<(u64, String, Option<String>)> {
    use prost::Message;
    use tidelog_server::partition::Isolation;
    let mut out = Vec::new();
    let mut at = log.offsets().log_start.0;
    for _ in 0..10_000 {
        let read = log.read_for_consumer(at, 1 << 20, Isolation::ReadUncommitted).unwrap();
        for b in &read.batches {
            let batch = tidelog_proto::v1::RecordBatch::decode(b.payload.as_ref()).unwrap();
            for (i, r) in batch.records.into_iter().enumerate() {
                let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                let value = (!r.null_value).then(|| String::from_utf8(r.value.to_vec()).unwrap());
                out.push((b.header.base_offset + i as u64, key, value));
            }
        }
        if read.next == at || read.next >= read.bound {
            return out;
        }
        at = read.next;
    }
    panic!("read did not finish");
}

async fn compacted_topics_keep_the_latest_value_per_key_everywhere(mode: Mode) {
    use tidelog_proto::v1::CleanupPolicy;
    use tidelog_server::partition::compaction::{CleanerOptions, CompactionPolicy};
    let mut c = Brokers::start(mode).await;
    let config = TopicConfig {
        cleanup_policy: CleanupPolicy::Compact as i32,
        segment_bytes: Some(1024),
        max_batch_bytes: Some(512),
        ..TopicConfig::default()
    };
    let coordinator = c.coordinator().await;
    coordinator.create_topic(NewTopic { config: Some(config), ..new_topic("table", 1) }, Origin::Client).await.unwrap();
    let mut model = std::collections::BTreeMap::new();
    for i in 0..120 {
        let key = format!("k{}", i % 10);
        let value = (i % 9 != 8).then(|| format!("v{i}-{}", "x".repeat(40)));
        c.write("table", 0, &keyed_payload(&key, value.as_deref()), Acks::All).await;
        model.insert(key, value);
    }
    let policy =
        CompactionPolicy { delete_retention_ms: 3_600_000, min_cleanable_dirty_ratio: 0.5, min_compaction_lag_ms: 0 };
    let check = |rows: &[(u64, String, Option<String>)], what: &str| {
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "{what}: offsets increase");
        let mut last = std::collections::BTreeMap::new();
        for (_, k, v) in rows {
            last.insert(k.clone(), v.clone());
        }
        assert_eq!(last, model, "{what}: the latest value per key");
    };
    // Each replica cleans through its own writer (a replicated one purges its Raft log first).
    for b in c.brokers() {
        let t = eventually(WAIT, "the topic everywhere", || async { b.topic("table").ok() }).await;
        for (log, writer) in t.local() {
            eventually(WAIT, "every record replicated", || async {
                (log.offsets().high_watermark.0 == 120).then_some(())
            })
            .await;
            let stats = eventually(WAIT, "a cleaning", || async {
                writer.compact(now_ms(), policy, &CleanerOptions::default(), true).await.ok().flatten()
            })
            .await;
            assert!(stats.records_removed > 0, "broker {}: {stats:?}", b.node_id());
            let rows = table_rows(log);
            check(&rows, &format!("broker {}", b.node_id()));
            assert!(rows.len() < 60, "broker {}: compacted to {} rows", b.node_id(), rows.len());
            assert_eq!(log.offsets().log_start.0, 0, "compaction never moves the log start");
        }
    }
    drop(coordinator);
    c.restart_all().await;
    for b in c.brokers() {
        let t = eventually(WAIT, "the topic after a restart", || async { b.topic("table").ok() }).await;
        for (log, _) in t.local() {
            eventually(WAIT, "recovered", || async { (log.offsets().high_watermark.0 == 120).then_some(()) }).await;
            check(&table_rows(log), &format!("broker {} after a restart", b.node_id()));
        }
    }
    assert_eq!(c.write("table", 0, &keyed_payload("k0", Some("after")), Acks::All).await.base_offset, 120);
}
