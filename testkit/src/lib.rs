//! Test support shared by the integration tests of the broker library (`server/tests`) and of
//! the binary (`cli/tests`): what every multi-broker test needs and nothing about brokers.
//! Each crate's own `tests/support` module builds its brokers on top of this.
//!
//! - [`reserve_port`]: a loopback port fixed before a broker starts, safe from other tests;
//! - [`eventually`]: polls with a deadline (tests never sleep to wait for state);
//! - [`seed`]: a random seed, printed so a failing run can be replayed.
//!
//! Never: a dependency of anything but tests (`[dev-dependencies]` only).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] asks again.
const POLL: Duration = Duration::from_millis(20);

/// A listener on a free loopback port below Linux's ephemeral range (32768-60999 by default),
/// for a broker that needs its port fixed before it starts. Released and bound again by the
/// broker, a port from `127.0.0.1:0` (that range) could be taken in between by an outgoing
/// connection of a concurrent test ("Address already in use"); one from here cannot, and it
/// stays this process's for its whole life ([`claim`]), so a broker restarted on it finds it
/// free.
pub fn reserve_port() -> std::net::TcpListener {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Concurrent test processes start at different places of the span.
    let base = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let port = LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        if !claim(port) {
            continue;
        }
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// Claims `port` for this test process until it exits: an exclusive `flock` on a file named
/// after it, held open for the process's life (the kernel releases it when the process ends,
/// however it ends). A port is then never handed to two test processes, even while one of
/// them has killed its broker and not yet started it again on the same port: binding alone
/// could not tell, and another test's broker once took a port in that second.
fn claim(port: u32) -> bool {
    use std::os::fd::AsRawFd;
    use std::sync::Mutex;
    static CLAIMED: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("tidelog-test-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true; // no claims possible here: binding alone decides, as before
    }
    let Ok(file) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(port.to_string())) else {
        return true;
    };
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    #[allow(unsafe_code)]
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if locked {
        CLAIMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(file);
    }
    locked
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test (naming `what`) after
/// `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A seed for randomized tests: `TIDELOG_TEST_SEED` or the clock; always printed so a failure
/// can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("TIDELOG_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("{test}: seed {seed} (replay with TIDELOG_TEST_SEED={seed})");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_and_below_the_ephemeral_range() {
        let (a, b) = (reserve_port(), reserve_port());
        let (pa, pb) = (a.local_addr().unwrap().port(), b.local_addr().unwrap().port());
        assert_ne!(pa, pb);
        for p in [pa, pb] {
            assert!((20_000..32_000).contains(&p), "port {p}");
        }
    }

    /// A port another holder has claimed (here a second open of its lock file, as another
    /// test process would hold it) is refused, and one claimed here stays claimed after its
    /// listener is dropped, while no broker holds it.
    #[test]
    fn a_claimed_port_is_never_handed_out_again() {
        use std::os::fd::AsRawFd;
        let port = u32::from(reserve_port().local_addr().unwrap().port());
        assert!(!claim(port), "claimed by this process already, listener dropped or not");
        let other = 31_999;
        let dir = std::env::temp_dir().join("tidelog-test-ports");
        let held = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(other.to_string())).unwrap();
        #[allow(unsafe_code)]
        let locked = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            assert!(!claim(other), "a port another holder claimed");
        }
    }

    #[tokio::test]
    async fn eventually_returns_the_first_answer_and_fails_at_the_deadline() {
        let mut asked = 0;
        let got = eventually(Duration::from_secs(5), "the third try", || {
            asked += 1;
            let answer = (asked == 3).then_some(asked);
            async move { answer }
        })
        .await;
        assert_eq!(got, 3);
        let never = tokio::spawn(eventually(Duration::from_millis(50), "nothing", || async { None::<()> }));
        let err = never.await.expect_err("the wait fails");
        assert!(err.is_panic(), "a failed wait fails the test");
    }
}
