//! Exactly once through a three-broker cluster (RF=3): the consume-transform-produce
//! application (examples/rust/src/bin/exactly_once.rs) runs in rounds while, per round, the
//! transaction coordinator's broker (the controller), an output partition's leader or the
//! application itself is SIGKILLed, or a broker is cut off from the others. At the end a
//! read_committed reader sees every input record transformed exactly once, in input order per
//! key, and nothing of an aborted transaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::cluster::{TestCluster, NODES};
use support::txn::*;
use support::*;
use tidelog::proto::v1::TopicConfig;
use tidelog::{Client, IsolationLevel};

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillController,
    KillOutputLeader,
    Isolate,
    AppOnly,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_coordinator_and_leader_failures() {
    init_sdk_log();
    let seed = seed("exactly_once_through_coordinator_and_leader_failures");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = TestCluster::start().await;
    c.create_topic("in", 2, 3, TopicConfig::default()).await;
    c.create_topic("out", 2, 3, TopicConfig::default()).await;
    const N: usize = 1500;
    fill_input(&Client::connect(c.addr(1)).await.unwrap(), N).await;
    let app_log = c.root.path().join("app.log");

    let faults = [Fault::KillController, Fault::KillOutputLeader, Fault::Isolate, Fault::AppOnly];
    for (round, fault) in faults.iter().enumerate() {
        let controller = c.controller().await;
        let out_leader = c.leader("out").await;
        // The application starts at a broker the fault leaves alone (it fails over anyway).
        let victim = match fault {
            Fault::KillController => Some(controller),
            Fault::KillOutputLeader => Some(out_leader),
            Fault::Isolate => Some(NODES[rng.gen_range(0..3)]),
            Fault::AppOnly => None,
        };
        let bootstrap = NODES.into_iter().find(|n| Some(*n) != victim).unwrap();
        eprintln!("round {round}: {fault:?} (broker {victim:?}), application at broker {bootstrap}");
        let mut app = start_app(&c.addr(bootstrap), 50, None, &app_log);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
        match (fault, victim) {
            (Fault::Isolate, Some(n)) => {
                c.isolate(n, true);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(2000..4000))).await;
                c.isolate(n, false);
            }
            (_, Some(n)) => c.kill9(n),
            (_, None) => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
        signal(app.id() as i32, libc::SIGKILL);
        let _ = app.wait();
        if let (Fault::KillController | Fault::KillOutputLeader, Some(n)) = (fault, victim) {
            c.start_node(n);
        }
    }
    // Finally the application runs, undisturbed, until the input is drained.
    let mut app = start_app(&c.addr(1), 50, Some(6000), &app_log);
    wait_exit(&mut app, Duration::from_secs(180)).await;

    let client = Client::connect(c.addr(2)).await.unwrap();
    let input = snapshot(&client, "in", IsolationLevel::ReadUncommitted, Duration::from_millis(500)).await;
    assert_eq!(input.len(), N);
    let output = snapshot(&client, "out", IsolationLevel::ReadCommitted, Duration::from_millis(800)).await;
    let checked = std::panic::catch_unwind(|| check_exactly_once(&input, &output));
    if checked.is_err() {
        c.dump_logs();
        let app_said = std::fs::read_to_string(&app_log).unwrap_or_default();
        panic!("seed {seed}; application log:\n{app_said}");
    }
    let all = snapshot(&client, "out", IsolationLevel::ReadUncommitted, Duration::from_millis(500)).await;
    eprintln!("read_committed: {} records; read_uncommitted: {}", output.len(), all.len());
}
