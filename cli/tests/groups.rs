//! Consumer groups against a real broker: three members (two in this process, one a
//! `tidelog consume --group` child process) split 12 partitions disjointly and completely; the
//! child is SIGKILLed (no leave) and its partitions move to the others after the session
//! timeout; a fourth member joins later and triggers a rebalance; every produced record is
//! processed at least once; in every generation no partition has two owners; stale commits
//! are fenced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use support::*;
use tidelog::proto::v1::{CommitRequest, DescribeGroupRequest, DescribeGroupResponse, ErrorCode, PartitionOffset};
use tidelog::{
    Client, GroupConfig, GroupConsumer, OffsetReset, Producer, ProducerConfig, RebalanceListener, Record,
    TopicPartition,
};

const PARTITIONS: u32 = 12;

type Processed = Arc<Mutex<HashSet<(u32, u64)>>>;

/// Records every (generation, member, partitions) assignment an in-process member receives.
#[derive(Default)]
struct Log(Mutex<Vec<(u32, String, Vec<TopicPartition>)>>);

struct Listener {
    name: String,
    log: Arc<Log>,
}

impl RebalanceListener for Listener {
    fn on_assigned(&self, generation: u32, partitions: &[TopicPartition]) {
        self.log.0.lock().unwrap().push((generation, self.name.clone(), partitions.to_vec()));
    }
}

fn config(name: &str, log: &Arc<Log>) -> GroupConfig {
    let mut c = GroupConfig::new("workers", &["jobs"]);
    c.offset_reset = OffsetReset::Earliest;
    c.session_timeout = Duration::from_millis(1500);
    c.heartbeat_interval = Duration::from_millis(200);
    c.auto_commit_interval = Some(Duration::from_millis(200));
    c.client_id = name.into();
    c.listener = Some(Arc::new(Listener { name: name.into(), log: log.clone() }));
    c
}

/// Runs a member in this process until `stop` is dropped, adding what it processes.
fn spawn_member(
    client: Client,
    cfg: GroupConfig,
    processed: Processed,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut consumer = GroupConsumer::join(client, cfg).await.unwrap();
        loop {
            tokio::select! {
                r = consumer.next() => match r {
                    Some(Ok(r)) => { processed.lock().unwrap().insert((r.partition, r.offset)); }
                    Some(Err(e)) => panic!("member error: {e}"),
                    None => break,
                },
                _ = &mut stopped => break,
            }
        }
        consumer.close().await;
    });
    (stop, task)
}

/// A `tidelog consume --group` child process; what it prints counts as processed.
fn spawn_child(broker: &str, processed: &Processed) -> std::process::Child {
    let mut child = Command::new(BIN)
        .args(["consume", "jobs", "--group", "workers", "--from-beginning", "--format", "json"])
        .args(["--auto-commit-ms", "200", "--session-timeout-ms", "1500", "--broker", broker])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let sink = processed.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            sink.lock().unwrap().insert((v["partition"].as_u64().unwrap() as u32, v["offset"].as_u64().unwrap()));
        }
    });
    child
}

async fn next_record(c: &mut GroupConsumer) -> tidelog::ConsumedRecord {
    tokio::time::timeout(Duration::from_secs(10), c.next()).await.expect("no record").unwrap().unwrap()
}

/// The group as the broker describes it; before its first member joined (NOT_FOUND), a group
/// in no state.
async fn describe(client: &Client) -> DescribeGroupResponse {
    match client.groups().describe_group(DescribeGroupRequest { group: "workers".into() }).await {
        Ok(resp) => resp.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => DescribeGroupResponse::default(),
        Err(s) => panic!("describe group: {s}"),
    }
}

/// The current assignment if the group is stable with `members` members, checked disjoint and
/// complete.
fn stable_assignment(d: &DescribeGroupResponse, members: usize) -> Option<BTreeMap<String, BTreeSet<u32>>> {
    if d.state != "stable" || d.members.len() != members {
        return None;
    }
    let mut owner = BTreeMap::new();
    let mut all = BTreeSet::new();
    for m in &d.members {
        let parts: BTreeSet<u32> = m.owned.iter().flat_map(|t| t.partitions.clone()).collect();
        for p in &parts {
            assert!(all.insert(*p), "partition {p} has two owners in generation {}", d.generation);
        }
        owner.insert(m.member_id.clone(), parts);
    }
    assert_eq!(all.len() as u32, PARTITIONS, "generation {} leaves partitions unassigned: {owner:?}", d.generation);
    Some(owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_assigns_fails_over_and_rebalances_without_losing_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("jobs", PARTITIONS).await.unwrap();
    let processed: Processed = Arc::default();
    let log = Arc::new(Log::default());

    // Three members: a, b in process; c a separate process we can SIGKILL.
    let (stop_a, a) = spawn_member(broker.client().await, config("a", &log), processed.clone());
    let (stop_b, b) = spawn_member(broker.client().await, config("b", &log), processed.clone());
    let mut child = spawn_child(&broker.addr, &processed);
    let three = eventually(Duration::from_secs(20), "3 members with a complete, disjoint assignment", || {
        let client = client.clone();
        async move { stable_assignment(&describe(&client).await, 3) }
    })
    .await;
    assert!(three.values().all(|p| p.len() == 4), "12 partitions over 3 members: {three:?}");

    // Produce while the group changes: 4000 records in 4 waves.
    let producer = Producer::new(broker.client().await, ProducerConfig::default()).await.unwrap();
    let mut produced = Vec::new();
    let wave = |n: u64, producer: Producer| async move {
        let mut ds = Vec::new();
        for i in 0..n {
            ds.push(producer.send("jobs", Record::new(format!("job-{i}")).with_key(format!("k{i}"))).await.unwrap());
        }
        let mut out = Vec::new();
        for d in ds {
            let m = d.await.unwrap();
            out.push((m.partition, m.offset));
        }
        out
    };
    produced.extend(wave(1000, producer.clone()).await);

    // Kill c without a leave: its partitions move to a and b after the session timeout.
    let generation_before = describe(&client).await.generation;
    child.kill().unwrap();
    child.wait().unwrap();
    produced.extend(wave(1000, producer.clone()).await);
    let two = eventually(Duration::from_secs(20), "failover to 2 members", || {
        let client = client.clone();
        async move { stable_assignment(&describe(&client).await, 2) }
    })
    .await;
    assert!(two.values().all(|p| p.len() == 6), "{two:?}");
    assert!(describe(&client).await.generation > generation_before);
    produced.extend(wave(1000, producer.clone()).await);

    // A member that hangs (SIGSTOP: connection open, no heartbeats) is removed after the
    // session timeout; resumed, it learns it was evicted and rejoins instead of consuming on.
    let mut hung = spawn_child(&broker.addr, &processed);
    eventually(Duration::from_secs(20), "3 members again", || {
        let client = client.clone();
        async move { stable_assignment(&describe(&client).await, 3) }
    })
    .await;
    signal(hung.id() as i32, libc::SIGSTOP);
    let stopped_at = std::time::Instant::now();
    eventually(Duration::from_secs(20), "the hung member to be removed", || {
        let client = client.clone();
        async move { stable_assignment(&describe(&client).await, 2) }
    })
    .await;
    assert!(stopped_at.elapsed() >= Duration::from_millis(1000), "removed before its session timeout");
    produced.extend(wave(500, producer.clone()).await);
    signal(hung.id() as i32, libc::SIGCONT);
    eventually(Duration::from_secs(20), "the resumed member to rejoin", || {
        let client = client.clone();
        async move { stable_assignment(&describe(&client).await, 3) }
    })
    .await;
    hung.kill().unwrap();
    hung.wait().unwrap();

    // A member joining later triggers a rebalance back to 3.
    let (stop_d, d) = spawn_member(broker.client().await, config("d", &log), processed.clone());
    eventually(Duration::from_secs(20), "rebalance after a join", || {
        let client = client.clone();
        async move { stable_assignment(&describe(&client).await, 3) }
    })
    .await;
    produced.extend(wave(1000, producer.clone()).await);
    producer.close().await;

    // At least once, none lost.
    let want: HashSet<(u32, u64)> = produced.iter().copied().collect();
    eventually(Duration::from_secs(30), "every produced record processed", || {
        let missing = want.difference(&processed.lock().unwrap()).count();
        async move { (missing == 0).then_some(()) }
    })
    .await;

    // Exclusivity per generation among the in-process members' assignments.
    let mut by_generation: BTreeMap<u32, Vec<(String, Vec<TopicPartition>)>> = BTreeMap::new();
    for (g, name, parts) in log.0.lock().unwrap().iter() {
        by_generation.entry(*g).or_default().push((name.clone(), parts.clone()));
    }
    for (g, members) in &by_generation {
        let mut seen = HashSet::new();
        for (name, parts) in members {
            for tp in parts {
                assert!(seen.insert(tp.clone()), "generation {g}: {tp:?} owned twice (second owner {name})");
            }
        }
    }
    assert!(by_generation.len() >= 3, "expected several generations, saw {:?}", by_generation.keys());

    // Fencing: a commit from an old generation, or from outside the group, is refused.
    let current = describe(&client).await;
    let member = current.members[0].member_id.clone();
    for (generation, member_id) in
        [(current.generation - 1, member.clone()), (0, String::new()), (current.generation, "stranger".to_string())]
    {
        let req = CommitRequest {
            request_id: 1,
            group: "workers".into(),
            topic: "jobs".into(),
            offsets: vec![PartitionOffset { partition: 0, offset: 0, metadata: String::new() }],
            generation,
            member_id,
        };
        let mut resp = client.offsets().commit(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
        let r = resp.next().await.unwrap().unwrap();
        assert_eq!(r.error_code, ErrorCode::IllegalGeneration as i32, "{}", r.error_message);
    }

    // Lag: the group caught up, so every partition's committed offset reaches its end.
    for (stop, task) in [(stop_a, a), (stop_b, b), (stop_d, d)] {
        let _ = stop.send(());
        task.await.unwrap();
    }
    let after = eventually(Duration::from_secs(10), "the group to empty after its members left", || {
        let client = client.clone();
        async move { Some(describe(&client).await).filter(|d| d.state == "empty") }
    })
    .await;
    assert_eq!(after.partitions.len() as u32, PARTITIONS);
    assert!(after.partitions.iter().all(|p| p.lag == 0), "{:?}", after.partitions);
    eprintln!("generations {:?}; {} records, all processed", by_generation.keys().collect::<Vec<_>>(), want.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_pause_resume_lag_and_commits_that_only_move_back_after_seek() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("ctl", 1).await.unwrap();
    let reqs = (0..100).map(|i| produce_request(i, "ctl", 0, vec![Record::new(format!("v{i}"))])).collect();
    produce_all(&client, reqs).await;

    let mut cfg = GroupConfig::new("solo", &["ctl"]);
    cfg.offset_reset = OffsetReset::Earliest;
    cfg.auto_commit_interval = None;
    let mut consumer = GroupConsumer::join(broker.client().await, cfg).await.unwrap();
    for i in 0..50 {
        assert_eq!(next_record(&mut consumer).await.offset, i);
    }
    consumer.commit().await.unwrap();
    let committed = |client: Client| async move {
        let req =
            tidelog::proto::v1::FetchCommittedRequest { group: "solo".into(), topic: "ctl".into(), partitions: vec![] };
        client.offsets().fetch_committed(req).await.unwrap().into_inner().offsets[0].offset
    };
    assert_eq!(committed(client.clone()).await, 50);
    assert_eq!(consumer.lag(&client).await.unwrap(), vec![(("ctl".to_string(), 0), 50)]);

    // Seek back: the next record is the target, and the commit may now move backwards.
    consumer.seek("ctl", 0, 10).unwrap();
    assert_eq!(next_record(&mut consumer).await.offset, 10);
    consumer.commit().await.unwrap();
    assert_eq!(committed(client.clone()).await, 11);

    // Pause: nothing arrives (bounded wait); resume: it continues where it was.
    consumer.pause(&[("ctl".to_string(), 0)]).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next()).await.is_err(),
        "paused partition delivered"
    );
    consumer.resume(&[("ctl".to_string(), 0)]).unwrap();
    assert_eq!(next_record(&mut consumer).await.offset, 11);

    // Seek by time to the first record appended at or after the 90th record's time.
    let t = read_range(&client, "ctl", 0, 90, 91).await[0].append_time_ms;
    consumer.seek_to_timestamp(&client, "ctl", 0, t).await.unwrap();
    let r = next_record(&mut consumer).await;
    assert!(r.offset <= 90 && r.append_time_ms >= t, "offset {} time {} for target {t}", r.offset, r.append_time_ms);
    consumer.close().await;
}
