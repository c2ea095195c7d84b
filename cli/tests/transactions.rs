//! Transactions on a single node, against real broker processes: commit and abort with
//! read_committed and read_uncommitted readers, the last stable offset, zombie fencing, the
//! coordinator's timeout, state across kill -9, a seeded model check of markers and the LSO,
//! and a consume-transform-produce application SIGKILLed mid-transaction in rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::txn::*;
use support::*;
use tidelog::proto::v1::TransactionState;
use tidelog::{Client, Error, IsolationLevel, Producer, Record};

const RC: IsolationLevel = IsolationLevel::ReadCommitted;
const RU: IsolationLevel = IsolationLevel::ReadUncommitted;
const QUIET: Duration = Duration::from_millis(300);

async fn send_n(p: &Producer, topic: &str, partition: u32, tag: &str, n: usize) {
    for i in 0..n {
        p.send_to(topic, partition, Record::new(format!("{tag}-{i}"))).await.unwrap();
    }
    p.flush().await;
}

#[tokio::test]
async fn commit_abort_and_the_last_stable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("t", 2).await.unwrap();
    let committed = Reader::start(&client, "t", RC).await;
    let uncommitted = Reader::start(&client, "t", RU).await;
    let p = txn_producer(&client, "app", Duration::from_secs(60)).await;

    p.begin_transaction().await.unwrap();
    send_n(&p, "t", 0, "a0", 10).await;
    send_n(&p, "t", 1, "a1", 10).await;
    // Open: read_uncommitted sees it, read_committed does not; the LSO holds at its start.
    uncommitted.wait_for(20, Duration::from_secs(10)).await;
    let open = stability(&client, "t").await;
    assert_eq!(open[&0], (0, 10, vec![0]), "p0: LSO at the transaction's first offset");
    assert_eq!(open[&1], (0, 10, vec![0]));
    tokio::time::sleep(QUIET).await; // a negative check: nothing may arrive meanwhile
    assert_eq!(committed.len(), 0, "read_committed served an open transaction's records");
    let t = &transactions(&client).await["app"];
    assert_eq!(state(t), TransactionState::Ongoing);
    assert_eq!(t.partitions.iter().map(|tp| tp.partitions.len()).sum::<usize>(), 2);

    p.commit_transaction().await.unwrap();
    committed.wait_for(20, Duration::from_secs(10)).await;
    // The marker took one offset on each partition; nothing is open.
    let done = stability(&client, "t").await;
    assert_eq!(done[&0], (11, 11, vec![]));
    assert_eq!(done[&1], (11, 11, vec![]));
    assert_eq!(state(&transactions(&client).await["app"]), TransactionState::CompleteCommit);

    // Aborted: never served to read_committed; read_uncommitted sees it.
    p.begin_transaction().await.unwrap();
    send_n(&p, "t", 0, "aborted", 5).await;
    p.abort_transaction().await.unwrap();
    p.begin_transaction().await.unwrap();
    send_n(&p, "t", 0, "after", 3).await;
    p.commit_transaction().await.unwrap();
    committed.wait_for(23, Duration::from_secs(10)).await;
    uncommitted.wait_for(28, Duration::from_secs(10)).await;
    tokio::time::sleep(QUIET).await;
    let values = committed.values();
    assert_eq!(values.len(), 23, "{values:?}");
    assert!(values.iter().all(|v| !v.starts_with("aborted")), "{values:?}");
    assert!(uncommitted.values().iter().filter(|v| v.starts_with("aborted")).count() == 5);
    // Offsets increase with gaps (markers, the aborted batch) for read_committed.
    let p0: Vec<u64> =
        committed.records.lock().unwrap().iter().filter(|r| r.partition == 0).map(|r| r.offset).collect();
    assert!(p0.windows(2).all(|w| w[0] < w[1]), "{p0:?}");
    assert_eq!(&p0[10..], &[17, 18, 19], "after: past the commit marker (10), aborted 11-15, abort marker 16");

    // Outside a transaction a transactional producer sends nothing.
    let refused = p.send_to("t", 0, Record::new("stray")).await;
    assert!(matches!(refused, Err(Error::InvalidArgument(_))), "{refused:?}");
    // A raw transactional batch for a partition not in a transaction is refused.
    let mut raw = produce_request(1, "t", 1, vec![Record::new("raw")]);
    raw.producer_id = p.producer_id();
    raw.transactional = true;
    let resp = produce_all(&client, vec![raw]).await.remove(0);
    assert_eq!(resp.error_code, tidelog::proto::v1::ErrorCode::InvalidTxnState as i32, "{}", resp.error_message);
}

#[tokio::test]
async fn a_newer_instance_fences_the_zombie() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("t", 1).await.unwrap();
    let zombie = txn_producer(&client, "app", Duration::from_secs(60)).await;
    zombie.begin_transaction().await.unwrap();
    send_n(&zombie, "t", 0, "zombie", 4).await;
    let fresh = txn_producer(&client, "app", Duration::from_secs(60)).await;
    assert_eq!(fresh.producer_id(), zombie.producer_id(), "same transactional id, same producer id");
    // The zombie's open transaction was aborted by the init, and it can commit nothing more.
    let commit = zombie.commit_transaction().await;
    assert!(commit.is_err(), "a fenced producer committed");
    assert!(format!("{:?}", commit.unwrap_err()).contains("fenced"), "the error says it was fenced");
    assert!(zombie.abort_transaction().await.is_err(), "a fenced producer aborted");
    // Its batches are refused as fenced at once (not after the wait for a lagging copy).
    let mut raw = produce_request(1, "t", 0, vec![Record::new("zombie-raw")]);
    (raw.producer_id, raw.producer_epoch, raw.base_sequence, raw.transactional) = (zombie.producer_id(), 0, 4, true);
    let started = std::time::Instant::now();
    let resp = produce_all(&client, vec![raw]).await.remove(0);
    assert_eq!(resp.error_code, tidelog::proto::v1::ErrorCode::ProducerFenced as i32, "{}", resp.error_message);
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    assert!(zombie.send_to("t", 0, Record::new("late")).await.is_err(), "a fenced producer joined a partition");

    fresh.begin_transaction().await.unwrap();
    send_n(&fresh, "t", 0, "fresh", 2).await;
    fresh.commit_transaction().await.unwrap();
    let seen = snapshot(&client, "t", RC, QUIET).await;
    let values: Vec<String> =
        seen.iter().map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()).collect();
    assert_eq!(values, vec!["fresh-0", "fresh-1"]);
}

#[tokio::test]
async fn an_abandoned_transaction_is_aborted_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("t", 1).await.unwrap();
    let p = txn_producer(&client, "slow", Duration::from_millis(1000)).await;
    let epoch = transactions(&client).await["slow"].producer_epoch;
    p.begin_transaction().await.unwrap();
    send_n(&p, "t", 0, "abandoned", 3).await;
    assert_eq!(stability(&client, "t").await[&0].0, 0, "the LSO holds while it is open");
    let t = eventually(Duration::from_secs(15), "the coordinator to abort it", || async {
        let t = transactions(&client).await.remove("slow").unwrap();
        (state(&t) == TransactionState::CompleteAbort).then_some(t)
    })
    .await;
    assert_eq!(t.producer_epoch, epoch + 1, "the abort fenced the producer");
    assert_eq!(stability(&client, "t").await[&0], (4, 4, vec![]), "the LSO moved past the abort marker");
    assert!(p.commit_transaction().await.is_err(), "the timed-out producer committed");
    assert!(snapshot(&client, "t", RC, QUIET).await.is_empty());
    assert_eq!(snapshot(&client, "t", RU, QUIET).await.len(), 3);
}

#[tokio::test]
async fn transactions_survive_kill9_of_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut broker = BrokerProcess::start(&data, &[]);
    let client = broker.client().await;
    client.create_topic("t", 1).await.unwrap();
    let done = txn_producer(&client, "done", Duration::from_secs(60)).await;
    done.begin_transaction().await.unwrap();
    send_n(&done, "t", 0, "kept", 3).await;
    done.commit_transaction().await.unwrap();
    let open = txn_producer(&client, "open", Duration::from_secs(3)).await;
    open.begin_transaction().await.unwrap();
    send_n(&open, "t", 0, "open", 2).await;
    broker.kill9();

    let broker = BrokerProcess::start(&data, &[]);
    let client = broker.client().await;
    // The partition rebuilt its open transaction from the log; the coordinator its state.
    assert_eq!(stability(&client, "t").await[&0], (4, 6, vec![4]));
    assert_eq!(state(&transactions(&client).await["open"]), TransactionState::Ongoing);
    assert_eq!(state(&transactions(&client).await["done"]), TransactionState::CompleteCommit);
    // Its timeout still applies after the restart.
    eventually(Duration::from_secs(15), "the open transaction's abort", || async {
        (stability(&client, "t").await[&0] == (7, 7, vec![])).then_some(())
    })
    .await;
    let values: Vec<String> = snapshot(&client, "t", RC, QUIET)
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(values, vec!["kept-0", "kept-1", "kept-2"]);
}

/// A seeded random run of transactions by three producers over three partitions, against a
/// model: while transactions are open the LSO never passes the first offset of any of them;
/// at the end read_committed is exactly the committed records in order, and every partition
/// has one marker per transaction that touched it.
#[tokio::test]
async fn model_markers_and_the_last_stable_offset() {
    let seed = seed("model_markers_and_the_last_stable_offset");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("m", 3).await.unwrap();
    let mut producers = Vec::new();
    for i in 0..3 {
        producers.push(txn_producer(&client, &format!("m{i}"), Duration::from_secs(60)).await);
    }
    // Per partition: the committed values with their append order (read_committed serves in
    // offset order, not commit order), and how many transactions touched it.
    let mut model: BTreeMap<u32, Vec<(usize, String)>> = BTreeMap::new();
    let mut appended = 0usize;
    let mut markers: BTreeMap<u32, usize> = BTreeMap::new();
    let mut pending: Vec<Option<Vec<(u32, usize, String)>>> = vec![None, None, None];
    for step in 0..40 {
        let i = rng.gen_range(0..3usize);
        match pending[i].take() {
            None => {
                producers[i].begin_transaction().await.unwrap();
                let mut sent = Vec::new();
                for _ in 0..rng.gen_range(1..4) {
                    let p = rng.gen_range(0..3u32);
                    let v = format!("s{step}-m{i}-p{p}-{}", sent.len());
                    producers[i].send_to("m", p, Record::new(v.clone())).await.unwrap();
                    producers[i].flush().await; // appended in send order across producers
                    appended += 1;
                    sent.push((p, appended, v));
                }
                pending[i] = Some(sent);
            }
            Some(sent) => {
                let commit = rng.gen_bool(0.6);
                if commit {
                    producers[i].commit_transaction().await.unwrap();
                    for (p, at, v) in &sent {
                        model.entry(*p).or_default().push((*at, v.clone()));
                    }
                } else {
                    producers[i].abort_transaction().await.unwrap();
                }
                let touched: std::collections::BTreeSet<u32> = sent.iter().map(|(p, _, _)| *p).collect();
                for p in touched {
                    *markers.entry(p).or_default() += 1;
                }
            }
        }
        // The LSO never passes an open transaction's first offset.
        for (p, (lso, hw, open)) in stability(&client, "m").await {
            assert!(lso <= hw, "p{p}: LSO {lso} above HW {hw}");
            if let Some(first) = open.iter().min() {
                assert_eq!(lso, *first, "p{p}: LSO {lso}, open transactions from {open:?} (seed {seed})");
            } else {
                assert_eq!(lso, hw, "p{p}: nothing open, yet LSO {lso} < HW {hw} (seed {seed})");
            }
        }
    }
    for (i, sent) in pending.iter_mut().enumerate() {
        if let Some(sent) = sent.take() {
            producers[i].commit_transaction().await.unwrap();
            for (p, at, v) in &sent {
                model.entry(*p).or_default().push((*at, v.clone()));
            }
            let touched: std::collections::BTreeSet<u32> = sent.iter().map(|(p, _, _)| *p).collect();
            for p in touched {
                *markers.entry(p).or_default() += 1;
            }
        }
    }
    let committed = snapshot(&client, "m", RC, QUIET).await;
    let all = snapshot(&client, "m", RU, QUIET).await;
    for p in 0..3u32 {
        let got: Vec<String> = committed
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect();
        let mut want = model.get(&p).cloned().unwrap_or_default();
        want.sort();
        let want: Vec<String> = want.into_iter().map(|(_, v)| v).collect();
        assert_eq!(got, want, "p{p} (seed {seed})");
        // Every offset below the HW is a data record (read_uncommitted) or a marker.
        let data = all.iter().filter(|r| r.partition == p).count() as u64;
        let hw = stability(&client, "m").await[&p].1;
        assert_eq!(hw - data, markers.get(&p).copied().unwrap_or(0) as u64, "p{p}: markers (seed {seed})");
    }
}

/// A free port on 127.0.0.1 (for a broker that must come back at the same address).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn consume_transform_produce_survives_sigkill_of_app_and_broker() {
    init_sdk_log();
    let seed = seed("consume_transform_produce_survives_sigkill_of_app_and_broker");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let app_log = dir.path().join("app.log");
    let listen = format!("127.0.0.1:{}", free_port());
    let log = data.with_extension("log");
    let mut broker = BrokerProcess::start_listening(&data, &log, &listen, &[]);
    let client = broker.client().await;
    client.create_topic("in", 2).await.unwrap();
    client.create_topic("out", 2).await.unwrap();
    const N: usize = 2000;
    fill_input(&client, N).await;

    for round in 0..5 {
        let mut app = start_app(&broker.addr, 50, None, &app_log);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
        signal(app.id() as i32, libc::SIGKILL);
        let _ = app.wait();
        if round == 2 {
            broker.kill9();
            broker = BrokerProcess::start_listening(&data, &log, &listen, &[]);
        }
    }
    // Finally the application runs until the input is drained.
    let mut app = start_app(&broker.addr, 50, Some(4000), &app_log);
    wait_exit(&mut app, Duration::from_secs(120)).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    let input = snapshot(&client, "in", RU, QUIET).await;
    assert_eq!(input.len(), N);
    let output = snapshot(&client, "out", RC, Duration::from_millis(500)).await;
    let app_said = std::fs::read_to_string(&app_log).unwrap_or_default();
    let n = std::panic::catch_unwind(|| check_exactly_once(&input, &output))
        .unwrap_or_else(|_| panic!("seed {seed}; application log:\n{app_said}"));
    assert_eq!(n, N);
    let all = snapshot(&client, "out", RU, QUIET).await;
    eprintln!("read_committed: {n} records; read_uncommitted: {} (aborted ones included)", all.len());
    assert!(all.len() > n, "no kill landed inside a transaction: the test did not test (seed {seed})");
}

#[tokio::test]
async fn the_cli_lists_describes_finds_and_aborts_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("t", 2).await.unwrap();
    let p = txn_producer(&client, "cli-app", Duration::from_secs(60)).await;
    p.begin_transaction().await.unwrap();
    send_n(&p, "t", 1, "open", 2).await;
    let (pid, epoch) = (p.producer_id(), transactions(&client).await["cli-app"].producer_epoch);

    let list = run_cli(&broker.addr, &["txn", "list"], "");
    assert!(list.contains("cli-app") && list.contains("state=Ongoing") && list.contains("t[1]"), "{list}");
    let json: serde_json::Value =
        serde_json::from_str(&run_cli(&broker.addr, &["txn", "describe", "cli-app", "--format", "json"], "")).unwrap();
    assert_eq!(json[0]["state"], "Ongoing");
    assert_eq!(json[0]["producer_id"], pid);
    let unknown = run_cli_output(&broker.addr, &["txn", "describe", "nobody"], b"");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("InitTransactions"), "an actionable message");

    // A group's lag shows where a read_committed member's ends: the last stable offset.
    run_cli(&broker.addr, &["group", "reset-offsets", "g", "--topic", "t", "--to-earliest", "--execute"], "");
    let described: serde_json::Value =
        serde_json::from_str(&run_cli(&broker.addr, &["group", "describe", "g", "--format", "json"], "")).unwrap();
    let p1 = described["partitions"].as_array().unwrap().iter().find(|p| p["partition"] == 1).unwrap();
    assert_eq!((p1["high_watermark"].as_u64(), p1["last_stable_offset"].as_u64()), (Some(2), Some(0)), "{p1}");
    let found = run_cli(&broker.addr, &["txn", "find-hanging", "--topic", "t"], "");
    assert!(found.contains(&format!("t/1 open transaction: producer={pid}/{epoch} first_offset=0")), "{found}");
    assert!(!found.contains("HANGING"), "the coordinator knows it: not hanging\n{found}");
    assert!(found.contains("t/1 last_stable_offset=0 high_watermark=2"), "{found}");

    // An abort marker written straight to the partition ends it there (a hanging
    // transaction's remedy); the coordinator's abort ends it everywhere and fences the producer.
    let args = ["txn", "abort", "--topic", "t", "--partition", "1", "--producer-id", &pid.to_string()];
    run_cli(&broker.addr, &[&args[..], &["--producer-epoch", &epoch.to_string()]].concat(), "");
    assert_eq!(stability(&client, "t").await[&1], (3, 3, vec![]));
    let out = run_cli(&broker.addr, &["txn", "abort", "cli-app"], "");
    assert!(out.contains("aborted the open transaction of cli-app"), "{out}");
    assert_eq!(state(&transactions(&client).await["cli-app"]), TransactionState::CompleteAbort);
    assert!(p.commit_transaction().await.is_err(), "the aborted producer was not fenced");
    // Consumed with the CLI, read_committed: nothing.
    let consumed = run_cli(
        &broker.addr,
        &["consume", "t", "--from-beginning", "--isolation-level", "read-committed", "--idle-timeout-ms", "500"],
        "",
    );
    assert!(consumed.is_empty(), "{consumed}");
}
