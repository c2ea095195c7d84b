//! The consumer-group member (`src/consumer/group.rs`) against a fake broker whose group
//! coordinator is this test (see `support/fake_broker.rs`), no real broker. One member goes
//! through three generations: it fetches only its assigned partitions from the committed
//! offsets (or the reset policy); on a rebalance it stops, commits exactly what the
//! application received, tells the listener, and only then rejoins, never handing out records
//! fetched for the old generation; a commit fenced with ILLEGAL_GENERATION makes it rejoin on a
//! new session; as the leader it computes the assignment itself; at-least-once holds across
//! all of it (what was never committed is delivered again).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::fake_broker::{values, Event, FakeBroker, SeenCommit};
use support::{eventually, WAIT};
use tidelog::proto::v1::{
    session_request, session_response, Assignment, ErrorCode, GroupMember, JoinGroup, Joined, MemberAssignment,
    Rebalance, TopicPartitionCount, TopicPartitions,
};
use tidelog::{Client, Error, GroupConfig, GroupConsumer, OffsetReset, RebalanceListener, TopicPartition};

const GROUP: &str = "g";
const TOPIC: &str = "t";
const PARTITIONS: u32 = 4;
const MEMBER: &str = "m-1";

/// What the listener was told, in order.
#[derive(Debug, PartialEq, Eq)]
enum Told {
    Assigned(u32, Vec<u32>),
    /// Also: how many commits the broker had received by then.
    Revoked(u32, Vec<u32>, usize),
}

struct Listener {
    told: Arc<Mutex<Vec<Told>>>,
    broker: FakeBroker,
}

fn partitions_of(tps: &[TopicPartition]) -> Vec<u32> {
    assert!(tps.iter().all(|(t, _)| t == TOPIC));
    tps.iter().map(|(_, p)| *p).collect()
}

impl RebalanceListener for Listener {
    fn on_assigned(&self, generation: u32, partitions: &[TopicPartition]) {
        self.told.lock().unwrap().push(Told::Assigned(generation, partitions_of(partitions)));
    }
    fn on_revoked(&self, generation: u32, partitions: &[TopicPartition]) {
        let commits = self.broker.commits().len();
        self.told.lock().unwrap().push(Told::Revoked(generation, partitions_of(partitions), commits));
    }
}

fn tps(partitions: &[u32]) -> TopicPartitions {
    TopicPartitions { topic: TOPIC.into(), partitions: partitions.to_vec() }
}

fn commit(generation: u32, offsets: &[(u32, u64)], answer: ErrorCode) -> SeenCommit {
    SeenCommit {
        group: GROUP.into(),
        topic: TOPIC.into(),
        generation,
        member_id: MEMBER.into(),
        offsets: offsets.iter().copied().collect(),
        answer,
    }
}

/// `Joined` for this member, led by `leader`; the leader also gets the members and topics.
fn joined(generation: u32, leader: &str) -> session_response::Kind {
    let leads = leader == MEMBER;
    session_response::Kind::Joined(Joined {
        generation,
        member_id: MEMBER.into(),
        leader_id: leader.into(),
        assignor: "range".into(),
        members: if leads {
            vec![GroupMember { member_id: MEMBER.into(), topics: vec![TOPIC.into()], ..Default::default() }]
        } else {
            vec![]
        },
        topic_partitions: if leads {
            vec![TopicPartitionCount { topic: TOPIC.into(), partitions: PARTITIONS }]
        } else {
            vec![]
        },
    })
}

fn assignment(generation: u32, partitions: Vec<TopicPartitions>) -> session_response::Kind {
    session_response::Kind::Assignment(Assignment { generation, partitions })
}

async fn expect_join(broker: &FakeBroker) -> JoinGroup {
    match broker.next_session_request().await {
        session_request::Kind::Join(j) => j,
        other => panic!("expected a JoinGroup, got {other:?}"),
    }
}

/// The next `n` records the application gets, as (partition, offset, value), sorted; each must
/// come within [`WAIT`].
async fn receive(consumer: &mut GroupConsumer, n: usize) -> Vec<(u32, u64, String)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records within {WAIT:?}: {out:?}", out.len()))
            .expect("the consumer closed")
            .unwrap();
        assert_eq!(&*r.topic, TOPIC);
        out.push((r.partition, r.offset, String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()));
    }
    out.sort();
    out
}

/// (partition, offset, value) of the seeded records `p<partition>-<offset>`.
fn records(partition: u32, offsets: std::ops::Range<u64>) -> Vec<(u32, u64, String)> {
    offsets.map(|o| (partition, o, format!("p{partition}-{o}"))).collect()
}

fn subscriptions(broker: &FakeBroker) -> Vec<BTreeMap<u32, u64>> {
    broker
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Subscribe(topic, starts) if topic == TOPIC => Some(starts),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn member_commits_before_revoking_and_rejoins_when_fenced() {
    let broker = FakeBroker::start().await;
    broker.add_topic(TOPIC, PARTITIONS);
    for p in 0..PARTITIONS {
        broker.append(TOPIC, p, &values(&format!("p{p}"), 3));
    }
    broker.set_committed(GROUP, TOPIC, 0, 1);
    let told = Arc::new(Mutex::new(Vec::new()));
    let mut config = GroupConfig::new(GROUP, &[TOPIC]);
    config.offset_reset = OffsetReset::Earliest;
    // Commits happen only on revoke and on `commit()`: each one is asserted below.
    config.auto_commit_interval = None;
    config.heartbeat_interval = Duration::from_millis(100);
    config.listener = Some(Arc::new(Listener { told: Arc::clone(&told), broker: broker.clone() }));
    let client = Client::connect(broker.addr()).await.unwrap();
    let mut consumer = GroupConsumer::join(client, config).await.unwrap();

    // Generation 1: another member leads and gives this one partitions 0 and 2.
    let join = expect_join(&broker).await;
    assert_eq!((join.group.as_str(), join.topics.as_slice()), (GROUP, [TOPIC.to_string()].as_slice()));
    assert!(join.owned.is_empty());
    broker.push(joined(1, "m-0"));
    broker.push(assignment(1, vec![tps(&[0, 2])]));
    let got = receive(&mut consumer, 5).await;
    assert_eq!(got, [records(0, 1..3), records(2, 0..3)].concat(), "from the committed offset, else the earliest");
    assert_eq!(consumer.assignment(), (1, vec![(TOPIC.to_string(), 0), (TOPIC.to_string(), 2)]));
    assert_eq!(subscriptions(&broker), [BTreeMap::from([(0, 1), (2, 0)])], "only the assigned partitions");

    // Two more records reach the member, but the application does not take them before the
    // rebalance: they must be neither committed nor handed out in the next generation.
    broker.append(TOPIC, 0, &["p0-3".to_string(), "p0-4".to_string()]);
    eventually("the new records served", || (broker.served(TOPIC, 0) == 4).then_some(())).await;

    // Rebalance: commit what the application got, tell the listener, then rejoin.
    broker.push(session_response::Kind::Rebalance(Rebalance { reason: "a member joined".into() }));
    let join = expect_join(&broker).await;
    assert_eq!(join.owned, [tps(&[0, 2])]);
    assert_eq!(broker.commits(), [commit(1, &[(0, 3), (2, 3)], ErrorCode::Unspecified)]);
    let order: Vec<&str> = broker
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Join(_) => Some("join"),
            Event::Commit(_) => Some("commit"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["join", "commit", "join"], "committed before rejoining");

    // Generation 2: partitions 1 and 3; nothing fetched for generation 1 comes out any more.
    broker.push(joined(2, "m-0"));
    broker.push(assignment(2, vec![tps(&[1, 3])]));
    let got = receive(&mut consumer, 6).await;
    assert_eq!(got, [records(1, 0..3), records(3, 0..3)].concat());
    assert_eq!(consumer.assignment().0, 2);

    // The coordinator moved on without this member: its commit is fenced and it rejoins.
    broker.set_generation(3);
    match consumer.commit().await {
        Err(Error::Broker { code: ErrorCode::IllegalGeneration, .. }) => {}
        other => panic!("expected ILLEGAL_GENERATION, got {other:?}"),
    }
    let join = expect_join(&broker).await;
    assert_eq!(broker.sessions(), 2, "rejoined on a new session");
    assert_eq!(join.owned, [tps(&[1, 3])]);

    // Generation 3: this member leads, so it computes the assignment and syncs it.
    broker.push(joined(3, MEMBER));
    let sync = match broker.next_session_request().await {
        session_request::Kind::Sync(s) => s,
        other => panic!("expected a SyncGroup, got {other:?}"),
    };
    assert_eq!(sync.generation, 3);
    assert_eq!(sync.assignments, [MemberAssignment { member_id: MEMBER.into(), partitions: vec![tps(&[0, 1, 2, 3])] }]);
    broker.push(assignment(3, sync.assignments[0].partitions.clone()));
    // At least once: p0's records never handed out, and p1 and p3 again (their commit was
    // fenced); p2 was committed to its end.
    let got = receive(&mut consumer, 8).await;
    assert_eq!(got, [records(0, 3..5), records(1, 0..3), records(3, 0..3)].concat());
    assert_eq!(
        subscriptions(&broker),
        [
            BTreeMap::from([(0, 1), (2, 0)]),
            BTreeMap::from([(1, 0), (3, 0)]),
            BTreeMap::from([(0, 3), (1, 0), (2, 3), (3, 0)]),
        ]
    );
    consumer.commit().await.unwrap();
    consumer.close().await;

    assert_eq!(
        broker.commits(),
        [
            commit(1, &[(0, 3), (2, 3)], ErrorCode::Unspecified),
            commit(2, &[(1, 3), (3, 3)], ErrorCode::IllegalGeneration),
            commit(3, &[(0, 5), (1, 3), (3, 3)], ErrorCode::Unspecified),
        ]
    );
    // Closed: the coordinator learns the member is gone from the end of its session (the
    // LeaveGroup the member queues on closing does not reliably get out before the session is
    // dropped; the broker removes a member either way).
    eventually("every session of the member ended", || {
        let ended = broker.events().iter().filter(|e| matches!(e, Event::SessionEnded)).count();
        (ended == broker.sessions()).then_some(())
    })
    .await;
    let joins = broker.events().iter().filter(|e| matches!(e, Event::Join(_))).count();
    assert_eq!(joins, 3);
    let heartbeats = broker.heartbeats();
    assert!(!heartbeats.is_empty() && heartbeats.iter().all(|g| *g <= 3), "heartbeats: {heartbeats:?}");
    assert_eq!(
        *told.lock().unwrap(),
        [
            Told::Assigned(1, vec![0, 2]),
            Told::Revoked(1, vec![0, 2], 1),
            Told::Assigned(2, vec![1, 3]),
            Told::Revoked(2, vec![1, 3], 2),
            Told::Assigned(3, vec![0, 1, 2, 3]),
            Told::Revoked(3, vec![0, 1, 2, 3], 3),
        ],
        "each revoke after its commit"
    );
}
