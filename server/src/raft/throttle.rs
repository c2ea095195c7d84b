//! The catch-up throttle: a cap, in bytes per second, on what this broker's leaders send to
//! replicas that are catching up for a partition move (Kafka's
//! `leader.replication.throttled.rate`), so a move does not starve produce and the
//! replication of the voters.
//!
//! The move driver (`cluster/reassign.rs`) marks which `(group, node)` pairs catch up; the
//! network (`network.rs`) passes every AppendEntries and snapshot chunk for a marked pair
//! through [`Throttle::pace`] before sending it. The rate is one budget for the whole broker,
//! shared by every move it leads.
//!
//! A marked pair replicates one unary AppendEntries at a time (a pipelined stream to it ends
//! once it is marked), each cut to [`Throttle::request_budget`] (the network
//! answers the rest as a partial success), so pacing is smooth instead of one long wait per
//! `max_payload_entries` entries.
//!
//! Invariants: an unmarked pair (every voter) never waits; the wait for one send is bounded
//! by what it carries at the current rate (a debt model: a send may go at once and the next
//! ones wait it off), and by [`MAX_WAIT`], so a replication session is never held longer.
//! Never: drop or reorder what it paces.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The longest one send waits (a huge entry at a small rate is late, not stuck).
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Sending may run this far ahead of the rate (a burst), so small sends do not wait.
const BURST: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub struct Throttle {
    /// `(group, node)` -> its rate in bytes/s (0: unthrottled).
    marked: Mutex<HashMap<(u64, u64), u64>>,
    /// The default rate for a move that names none (bytes/s; 0: unthrottled).
    default_rate: AtomicU64,
    /// When the budget spent so far is paid off.
    paid_until: Mutex<Option<Instant>>,
}

impl Throttle {
    pub fn set_default_rate(&self, bytes_per_sec: u64) {
        self.default_rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Marks `nodes` of `group` as catching up at `rate` bytes/s (0: the default), and
    /// unmarks the group's other nodes.
    pub fn mark(&self, group: u64, nodes: &HashSet<u64>, rate: u64) {
        let rate = if rate == 0 { self.default_rate.load(Ordering::Relaxed) } else { rate };
        let mut marked = self.marked.lock().unwrap_or_else(PoisonError::into_inner);
        marked.retain(|(g, n), _| *g != group || nodes.contains(n));
        for n in nodes {
            marked.insert((group, *n), rate);
        }
    }

    /// Unmarks every node of `group`.
    pub fn unmark(&self, group: u64) {
        self.marked.lock().unwrap_or_else(PoisonError::into_inner).retain(|(g, _), _| *g != group);
    }

    /// Unmarks every group but those of `groups` (the ones whose moves this broker leads).
    pub fn keep_only(&self, groups: &HashSet<u64>) {
        self.marked.lock().unwrap_or_else(PoisonError::into_inner).retain(|(g, _), _| groups.contains(g));
    }

    /// Whether any pair is marked (for tests and metrics).
    pub fn marked(&self, group: u64, node: u64) -> bool {
        self.marked.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&(group, node))
    }

    /// The most one AppendEntries to `node` of `group` should carry while it is marked (a
    /// tenth of a second at its rate, at least 64 KiB); `None` when unmarked or unthrottled.
    pub fn request_budget(&self, group: u64, node: u64) -> Option<usize> {
        match self.marked.lock().unwrap_or_else(PoisonError::into_inner).get(&(group, node)) {
            Some(r) if *r > 0 => Some(usize::try_from(*r / 10).unwrap_or(usize::MAX).max(64 << 10)),
            _ => None,
        }
    }

    /// How long a send of `bytes` to `node` of `group` must wait first (zero unless marked);
    /// counts the bytes as sent.
    fn charge(&self, group: u64, node: u64, bytes: usize) -> Duration {
        let rate = match self.marked.lock().unwrap_or_else(PoisonError::into_inner).get(&(group, node)) {
            Some(r) if *r > 0 => *r,
            _ => return Duration::ZERO,
        };
        let now = Instant::now();
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let mut paid = self.paid_until.lock().unwrap_or_else(PoisonError::into_inner);
        // Idle time is not saved up beyond one burst.
        let from = paid.map_or(now, |p| p.max(now.checked_sub(BURST).unwrap_or(now)));
        let until = from + cost;
        *paid = Some(until);
        until.saturating_duration_since(now + BURST).min(MAX_WAIT)
    }

    /// Waits until `bytes` for `node` of `group` may go (at once unless the pair is marked).
    pub async fn pace(&self, group: u64, node: u64, bytes: usize) {
        let wait = self.charge(group, node, bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pacing arithmetic, without waiting: what each send is told to wait.
    #[test]
    fn marked_pairs_go_at_the_rate_and_others_never_wait() {
        let t = Throttle::default();
        t.set_default_rate(1 << 20); // 1 MiB/s
        t.mark(7, &HashSet::from([4]), 0);
        assert!(t.marked(7, 4) && !t.marked(7, 2) && !t.marked(8, 4));
        let mut waited = Duration::ZERO;
        for _ in 0..10 {
            waited = t.charge(7, 4, 256 << 10); // 2.5 MiB in all, sent back to back
            assert_eq!(t.charge(7, 2, 1 << 30), Duration::ZERO, "a voter never waits");
        }
        // The tenth send waits until 2.5 s of budget are paid, less one burst.
        let want = Duration::from_millis(2_500) - BURST;
        assert!(waited <= want && waited + Duration::from_millis(100) >= want, "{waited:?}");
        // Unmarked: free again; a huge send at a tiny rate waits at most the cap.
        t.unmark(7);
        assert_eq!(t.charge(7, 4, 1 << 30), Duration::ZERO);
        assert_eq!(t.request_budget(7, 4), None);
        t.mark(1, &HashSet::from([2]), 1);
        assert_eq!(t.request_budget(1, 2), Some(64 << 10));
        assert_eq!(t.charge(1, 2, 1 << 30), MAX_WAIT);
        // Groups this broker no longer leads moves for are unmarked.
        t.keep_only(&HashSet::from([9]));
        assert!(!t.marked(1, 2));
    }

    #[tokio::test]
    async fn pacing_really_waits() {
        let t = Throttle::default();
        t.mark(1, &HashSet::from([2]), 10 << 20); // 10 MiB/s
        let start = Instant::now();
        for _ in 0..10 {
            t.pace(1, 2, 256 << 10).await; // 2.5 MiB: 250 ms
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(190) && took < Duration::from_secs(5), "{took:?}");
    }
}
