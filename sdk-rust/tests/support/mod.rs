//! Shared support for the SDK's broker-free tests: [`fake_broker::FakeBroker`] (a scripted,
//! in-process gRPC broker on loopback), a closed loopback port to stand for a dead broker, and
//! `eventually` for waits. Every wait polls with a deadline; nothing sleeps to wait for state.
//!
//! Why integration tests over a fake broker rather than unit tests beside `sender.rs` and
//! `group.rs`: the producer's sender and the group member are driven exactly as an
//! application drives them (`Producer`, `GroupConsumer`), over real gRPC streams, so the tests
//! cover what a unit test would have to mock — a produce stream that cannot be opened
//! (connection refused), a stream the broker hangs up, the order of calls across services —
//! and they need no test hooks or refactoring inside the SDK.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod fake_broker;

use std::time::Duration;

/// How long any single wait in these tests may take before the test fails. Generous: every
/// step is expected to take milliseconds.
pub const WAIT: Duration = Duration::from_secs(5);

/// Polls `check` every 10 ms until it returns `Some`, failing the test after [`WAIT`].
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `http://127.0.0.1:<port>` of a loopback port that was bound and closed: connecting to it is
/// refused at once, as to a broker that died.
pub fn dead_broker() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
