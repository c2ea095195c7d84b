//! Shared support for the integration tests: a real `tidelog` broker process on a free
//! loopback port, and client helpers. Every wait polls with a deadline; nothing sleeps to wait
//! for state.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod certs;
pub mod cluster;
pub mod proxy;
pub mod steady;
pub mod tmpfs;
pub mod txn;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tidelog::proto::wire;
use tidelog::{Client, ConsumedRecord, Record, StartAt, Subscription};

#[allow(unused_imports)] // not every test binary uses each
pub use tidelog_testkit::{eventually, reserve_port, seed};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidelog");

/// A broker child process. Killed (SIGKILL) when dropped.
pub struct BrokerProcess {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
}

impl BrokerProcess {
    /// Starts `tidelog serve` on 127.0.0.1:0 with `data_dir`, waiting (up to 30 s) for the
    /// line that says where it listens. stderr goes to `<data_dir>.log`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_logging_to(data_dir, &data_dir.with_extension("log"), extra)
    }

    /// As [`BrokerProcess::start`], with the broker's stderr appended to `log_path`.
    pub fn start_logging_to(data_dir: &Path, log_path: &Path, extra: &[&str]) -> Self {
        Self::start_listening(data_dir, log_path, "127.0.0.1:0", extra)
    }

    /// As [`BrokerProcess::start_logging_to`], listening on `listen` (a cluster member needs a
    /// fixed port).
    pub fn start_listening(data_dir: &Path, log_path: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, log_path, listen, extra, &[])
    }

    /// As [`BrokerProcess::start_listening`], with extra environment variables.
    pub fn start_with_env(
        data_dir: &Path,
        log_path: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log_path = log_path.to_path_buf();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            // TIDELOG_TEST_BROKER_LOG (an env filter) turns up the brokers' logging for a
            // post-mortem, e.g. `info,tidelog_server::cluster=debug`.
            .env("RUST_LOG", std::env::var("TIDELOG_TEST_BROKER_LOG").unwrap_or_else(|_| "info".into()))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn tidelog");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep draining so the broker never blocks on stdout
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("broker did not start; log:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
            }
        };
        let hostport = line.split_whitespace().nth(3).expect("listen line").to_string();
        Self { child: Some(child), addr: format!("http://{hostport}"), data_dir: data_dir.to_path_buf(), log_path }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr.clone()).await.expect("connect")
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to 20 s for the exit (yielding, so this test's own client
    /// connections keep running and can see the broker close them).
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        signal(c.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "broker ignored SIGTERM for 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `timeout` for the broker to exit by itself; its status, or `None`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size of the broker, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn signal(pid: i32, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a pid we spawned; no memory is shared.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// The test's own (SDK) logging to stderr, if `TIDELOG_TEST_SDK_LOG` names an env filter
/// (e.g. `tidelog=debug`): for a post-mortem of a failing multi-node test.
pub fn init_sdk_log() {
    if let Ok(filter) = std::env::var("TIDELOG_TEST_SDK_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
}

/// A wire produce request carrying `records` uncompressed, with its CRC.
pub fn produce_request(id: u64, topic: &str, partition: u32, records: Vec<Record>) -> wire::ProduceRequest {
    let (bytes, crc) = tidelog::batch::encode_records(records);
    wire::ProduceRequest {
        request_id: id,
        topic: topic.into(),
        partition,
        acks: tidelog::proto::v1::Acks::All as i32,
        payload: Some(wire::produce_request::Payload::Records(bytes)),
        compression: 0,
        record_count: 0,
        crc32c: Some(crc),
        ..Default::default()
    }
}

/// Sends `requests` on one Produce stream and returns the responses in order.
pub async fn produce_all(client: &Client, requests: Vec<wire::ProduceRequest>) -> Vec<wire::ProduceResponse> {
    let n = requests.len();
    let mut stream = client.records().produce(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut out = Vec::with_capacity(n);
    while let Some(r) = stream.next().await {
        out.push(r.unwrap());
    }
    assert_eq!(out.len(), n, "responses missing");
    out
}

/// Reads partition `p` of `topic` from `from` until offset `until` (exclusive), within 30 s.
pub async fn read_range(client: &Client, topic: &str, p: u32, from: u64, until: u64) -> Vec<ConsumedRecord> {
    let mut out = Vec::new();
    if from >= until {
        return out;
    }
    let mut stream = Subscription::new(topic).partition(p, Some(StartAt::Offset(from))).open(client).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.last().is_none_or(|r: &ConsumedRecord| r.offset + 1 < until) {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let r = next.unwrap_or_else(|_| panic!("read {topic}/{p} stalled at {} of {until}", out.len()));
        out.push(r.expect("stream ended").unwrap());
    }
    out
}

/// The partition's high watermark.
pub async fn high_watermark(client: &Client, topic: &str, p: u32) -> u64 {
    client.describe_topic(topic).await.unwrap().partitions[p as usize].high_watermark
}

/// Runs `tidelog ARGS --broker BROKER` with `stdin`, and returns its stdout; fails the test
/// (with its stderr) if it exits non-zero.
pub fn run_cli(broker: &str, args: &[&str], stdin: &str) -> String {
    let out = run_cli_output(broker, args, stdin.as_bytes());
    assert!(out.status.success(), "tidelog {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `tidelog ARGS --broker BROKER` with `stdin` (any bytes): its exit status, stdout and
/// stderr, whatever they are.
pub fn run_cli_output(broker: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--broker", broker])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // Fed from a thread: a child that answers before reading all of its input must not
    // deadlock the test on a full pipe.
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    // Bounded: a CLI that does not exit (a regressed --end, say) fails the test, not hangs it.
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut b).map(|_| b)
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut b).map(|_| b)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tidelog {args:?} did not exit within 120 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = feeder.join();
    std::process::Output { status, stdout: out.join().unwrap().unwrap(), stderr: err.join().unwrap().unwrap() }
}
