//! Shared support for the broker library's in-process tests: real brokers (`node::Node`, the
//! same composition `tidelog serve` runs) inside the test process, on loopback, with real
//! gRPC between them, in each implementation of the broker's seam:
//!
//! - [`Mode::Local`]: a single node (sled control plane, direct appends);
//! - [`Mode::Raft(n)`]: a cluster of `n` brokers (metadata group, partition Raft groups).
//!
//! Tests written against [`Brokers`] run once per mode (the `every_seam!` macro), as
//! nats-server runs its store tests against every store. Every wait polls with a deadline.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidelog_server::broker::seam::Acks;
use tidelog_server::broker::Broker;
use tidelog_server::config::{ClusterSettings, Config};
use tidelog_server::error::BrokerError;
use tidelog_server::log::{AppendBatch, Appended};
use tidelog_server::node::Node;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

/// Which implementation of the seam the brokers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Local,
    Raft(u64),
}

/// Runs `$test(mode)` as one `#[tokio::test]` per implementation of the seam.
#[macro_export]
macro_rules! every_seam {
    ($($test:ident),* $(,)?) => {
        $(mod $test {
            use super::support::Mode;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single_node() { super::$test(Mode::Local).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn raft_one_broker() { super::$test(Mode::Raft(1)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn raft_three_brokers() { super::$test(Mode::Raft(3)).await }
        })*
    };
}

/// A running broker of a test.
struct Running {
    broker: Arc<Broker>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The brokers of one test, in one mode.
pub struct Brokers {
    pub mode: Mode,
    root: tempfile::TempDir,
    /// Per broker (id = index + 1): its listen port (fixed across restarts in a cluster).
    ports: Vec<u16>,
    running: Vec<Running>,
}

#[allow(unused_imports)] // not every test binary uses each
pub use tidelog_testkit::{eventually, reserve_port};

impl Brokers {
    pub async fn start(mode: Mode) -> Self {
        let root = tempfile::tempdir().unwrap();
        let n = match mode {
            Mode::Local => 1,
            Mode::Raft(n) => n,
        };
        // Cluster members need fixed ports: take free ones, release them just before use.
        let held: Vec<std::net::TcpListener> = (0..n).map(|_| reserve_port()).collect();
        let ports = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(held);
        let mut b = Self { mode, root, ports, running: Vec::new() };
        b.start_all().await;
        b
    }

    fn config(&self, id: u64) -> Config {
        let mut c = Config { data_dir: self.dir(id), node_id: id as u32, ..Config::default() };
        match self.mode {
            Mode::Local => c.listen = "127.0.0.1:0".parse().unwrap(),
            Mode::Raft(_) => {
                c.listen = format!("127.0.0.1:{}", self.ports[id as usize - 1]).parse().unwrap();
                c.cluster = ClusterSettings {
                    peers: self.ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect(),
                    heartbeat_ms: 100,
                    election_timeout_ms: 500,
                    ..ClusterSettings::default()
                };
            }
        }
        c
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node-{id}"))
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    async fn start_all(&mut self) {
        for id in 1..=self.ports.len() as u64 {
            // After a restart, the stopped broker's last tasks may still hold the store's
            // file lock for a moment: retry until they let go.
            let node = eventually(WAIT, "the data directory free to open", || async {
                match Node::start(self.config(id)).await {
                    Ok(node) => Some(node),
                    Err(e) if format!("{e:#}").contains("could not acquire lock") => None,
                    Err(e) => panic!("broker {id} did not start: {e:#}"),
                }
            })
            .await;
            let broker = Arc::clone(node.broker());
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(node.serve(async move {
                let _ = stopped.await;
            }));
            self.running.push(Running { broker, stop, task });
        }
        if let Mode::Raft(_) = self.mode {
            // Ready once every broker knows the controller and applied the metadata log.
            eventually(WAIT, "a controller every broker knows", || async {
                let all = self.brokers().iter().all(|b| b.describe_cluster().is_ok_and(|v| v.controller.is_some()));
                all.then_some(())
            })
            .await;
        }
    }

    /// Stops every broker gracefully (as SIGTERM does).
    pub async fn stop_all(&mut self) {
        for r in self.running.drain(..) {
            let _ = r.stop.send(());
            tokio::time::timeout(Duration::from_secs(20), r.task).await.unwrap().unwrap().unwrap();
        }
    }

    /// Stops every broker gracefully and starts them again on the same data and ports.
    pub async fn restart_all(&mut self) {
        self.stop_all().await;
        self.start_all().await;
    }

    pub fn brokers(&self) -> Vec<Arc<Broker>> {
        self.running.iter().map(|r| Arc::clone(&r.broker)).collect()
    }

    /// The broker that coordinates groups (the controller in a cluster).
    pub async fn coordinator(&self) -> Arc<Broker> {
        eventually(WAIT, "a group coordinator", || async {
            for b in self.brokers() {
                if let Ok(tidelog_server::broker::route::Route::Here) =
                    b.coordinator_route(tidelog_server::broker::route::Origin::Forwarded).await
                {
                    return Some(b);
                }
            }
            None
        })
        .await
    }

    /// Writes one batch of `payload` to partition `p` at its leader (waiting for one) and
    /// returns where it landed once acknowledged with `acks`.
    pub async fn write(&self, topic: &str, p: u32, payload: &[u8], acks: Acks) -> Appended {
        self.write_as(topic, p, payload, acks, (-1, -1, -1), 0).await
    }

    /// As [`Brokers::write`], as producer `(id, epoch, base sequence)` with header `flags`.
    pub async fn write_as(
        &self,
        topic: &str,
        p: u32,
        payload: &[u8],
        acks: Acks,
        producer: (i64, i16, i32),
        flags: u16,
    ) -> Appended {
        let payload = Bytes::copy_from_slice(payload);
        eventually(WAIT, "an acknowledged write", || async {
            for b in self.brokers() {
                let Ok(t) = b.topic(topic) else { continue };
                let Ok((_, writer)) = t.held(p) else { continue };
                if writer.leader() != Some(b.node_id()) {
                    continue;
                }
                let batch = AppendBatch {
                    payload: &payload,
                    record_count: 1,
                    compression: 0,
                    payload_crc: tidelog_proto::checksum::crc32c(&payload),
                    raft: None,
                    producer_id: producer.0,
                    producer_epoch: producer.1,
                    base_sequence: producer.2,
                    flags,
                };
                match writer.write(batch, &payload, acks).await {
                    Ok(answer) => match answer.await {
                        Ok(Ok(appended)) => return Some(appended),
                        Ok(Err(rejected)) => panic!("write rejected: {rejected:?}"),
                        Err(BrokerError::NotLeader { .. }) => {}
                        Err(e) => panic!("write failed: {e}"),
                    },
                    Err(BrokerError::NotLeader { .. }) => {}
                    Err(e) => panic!("write failed: {e}"),
                }
            }
            None
        })
        .await
    }
}
