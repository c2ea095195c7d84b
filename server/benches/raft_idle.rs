//! CPU used by idle Raft groups: three brokers' worth of partition groups in one process,
//! talking real gRPC on 127.0.0.1, with the production timing (heartbeat 500 ms). Reports the
//! process CPU over an idle window, per broker, as a share of one core.
//!
//! Run: `RAFT_GROUPS=1000 cargo bench -p tidelog-server --bench raft_idle`
//! (`IDLE_SECS` sets the window, default 10; `HEARTBEAT_MS` the heartbeat, default 500.)
#![allow(clippy::expect_used, clippy::unwrap_used)] // a measurement that cannot set up should stop loudly

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{Config, Raft, SnapshotPolicy};
use tidelog_proto::internal::raft_transport_server::RaftTransportServer;
use tidelog_server::log::{FsyncPolicy, LogConfig};
use tidelog_server::meta::MetaStore;
use tidelog_server::partition::Partition;
use tidelog_server::raft::network::Peers;
use tidelog_server::raft::open_storage;
use tidelog_server::raft::transport::{GroupHandle, PartitionRaft, RaftGroups, RaftTransportService};

const NODES: [u64; 3] = [1, 2, 3];

/// Process CPU time (user + system) from /proc/self/stat, in seconds (USER_HZ is 100).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let groups = env("RAFT_GROUPS", 1000);
    let idle_secs = env("IDLE_SECS", 10);
    let root = tempfile::tempdir().expect("tempdir");
    // HEARTBEAT_MS scales the timing (elections at 5-10 heartbeats).
    let heartbeat = env("HEARTBEAT_MS", 500);
    let config = Config {
        heartbeat_interval: heartbeat,
        election_timeout_min: heartbeat * 5,
        election_timeout_max: heartbeat * 10,
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        ..Config::default()
    };
    let config = Arc::new(config.validate().expect("raft config"));

    let mut addresses = BTreeMap::new();
    let mut registries = BTreeMap::new();
    for id in NODES {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addresses.insert(id, format!("http://{}", listener.local_addr().unwrap()));
        let registry = RaftGroups::default();
        let service = RaftTransportServer::new(RaftTransportService::new(registry.clone()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        registries.insert(id, registry);
    }
    let peers = Peers::new(addresses);

    let started = Instant::now();
    let mut rafts: Vec<PartitionRaft> = Vec::new();
    for id in NODES {
        let dir = root.path().join(format!("node-{id}"));
        let meta = MetaStore::open(&dir.join("meta")).unwrap();
        for g in 1..=groups {
            let (p, _) = Partition::open(
                &dir.join(format!("t-{g}")),
                "t",
                g as u32,
                LogConfig::default(),
                FsyncPolicy::PerBatch,
            )
            .unwrap();
            let (log, sm) = open_storage(Arc::new(p), meta.raft_state(g).unwrap()).unwrap();
            let store = log.clone();
            let raft = Raft::new(id, Arc::clone(&config), peers.group(g), log, sm).await.unwrap();
            registries[&id].insert(g, GroupHandle::new(raft.clone(), store, dir.join(format!("in-{g}"))));
            rafts.push(raft);
        }
    }
    // Spread the initial leaders: group g starts on node g % 3 + 1.
    let members: BTreeSet<u64> = NODES.into_iter().collect();
    for g in 1..=groups {
        let node = g % 3 + 1;
        let raft = &rafts[((node - 1) * groups + g - 1) as usize];
        raft.initialize(members.clone()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let led = rafts.iter().filter(|r| r.metrics().borrow_watched().current_leader.is_some()).count();
        if led == rafts.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {led} of {} replicas know a leader", rafts.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{groups} groups x 3 replicas up with leaders in {:.1} s; measuring {idle_secs} s of idleness",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // settle
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let share = cpu / wall;
    println!(
        "idle CPU: {:.1}% of one core for the process (3 brokers), {:.1}% per broker; {:.2} ms CPU per group-replica per second",
        share * 100.0,
        share * 100.0 / 3.0,
        cpu * 1000.0 / wall / (groups * 3) as f64
    );
    for r in rafts {
        let _ = r.shutdown().await;
    }
}
