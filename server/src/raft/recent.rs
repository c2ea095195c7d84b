//! Recent entries: the last entries a partition group's replica appended, kept in memory for
//! the reads that follow moments later: a leader's replication streams sending them to the
//! followers, and every replica's apply (openraft reads committed entries back from the log).
//! Without it a replica reads back from the page cache what it has just written (a `pread`, a
//! copy of every byte and a header scan: about a tenth of a leader's CPU at full speed,
//! docs/PERFORMANCE.md). Redpanda's batch cache serves the log's tail from memory the same way.
//!
//! Invariants (kept by `raft/log_store.rs`, which alone changes the cache):
//! - the cache holds a gap-free run of entries `first..=last` that ends at the log's last
//!   entry, each equal to what a read of the log returns for its index (the stored header and
//!   the payload's very bytes). An append the cache does not take (one with no header) empties
//!   it; a truncation cuts it; a vote change or a snapshot install empties it;
//! - bounded: at most [`GROUP_BYTES`] per group and [`TOTAL_BYTES`] for all groups of the
//!   process together, counting each entry's stored bytes and its slot in the ring (an entry
//!   that does not fit is simply not kept: reads then go to disk); entries older than
//!   [`MAX_AGE`] are dropped at the next append, and a group's entries when it falls asleep,
//!   as leader or follower;
//! - an emptied cache holds no memory: the ring's slots are freed with its last entry, and a
//!   ring that held many entries gives back slots once it holds far fewer (a busy group's
//!   slots would otherwise stay for as long as the group lives, asleep or not:
//!   docs/PERFORMANCE.md, "Memory per partition").
//!
//! Never: serve an entry the log no longer holds as it is (truncated, purged, replaced by a
//! snapshot), or block: a miss is a read of the log, as before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::types::Entry;
use crate::log::format::BATCH_HEADER_LEN;

/// Per group: eight of the SDK's largest batches (900 KiB). A follower is often more than two
/// such batches behind the leader's appends: with 2 MiB a leader read half its entries from
/// disk (docs/PERFORMANCE.md, "Recent entries in memory").
pub const GROUP_BYTES: usize = 8 << 20;
/// All groups of the process together.
pub const TOTAL_BYTES: usize = 256 << 20;
/// Older entries have been sent already, or their follower is so far behind that a read of
/// the log costs nothing next to its catching up.
pub const MAX_AGE: Duration = Duration::from_secs(2);

/// Bytes held by every group's cache in this process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// One group's recent entries.
#[derive(Debug, Default)]
pub struct RecentEntries {
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    /// Entries in index order, without gaps, with their size and when they were kept.
    entries: VecDeque<(Entry, usize, Instant)>,
    bytes: usize,
}

impl Ring {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _, _)| e.log_id.index)
    }

    fn pop_front(&mut self) {
        let popped = self.entries.pop_front();
        self.release(popped);
    }

    fn pop_back(&mut self) {
        let popped = self.entries.pop_back();
        self.release(popped);
    }

    /// Gives a dropped entry's bytes back, to the group and to the process.
    fn release(&mut self, popped: Option<(Entry, usize, Instant)>) {
        if let Some((_, size, _)) = popped {
            self.bytes -= size;
            give_back(size);
        }
    }

    fn clear(&mut self) {
        give_back(self.bytes);
        self.entries = VecDeque::new();
        self.bytes = 0;
    }

    /// Gives back slots once the ring holds under a quarter of what it has room for (after
    /// old entries aged out), keeping room for twice what it holds.
    fn shrink(&mut self) {
        let (len, capacity) = (self.entries.len(), self.entries.capacity());
        if capacity > MIN_SLOTS && len < capacity / 4 {
            self.entries.shrink_to((len * 2).max(MIN_SLOTS));
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A ring's slots, kept even when it shrinks: room for the entries of a few appends.
const MIN_SLOTS: usize = 16;

/// One slot of the ring, in bytes: the entry with its header, its size and when it was kept.
const SLOT_BYTES: usize = std::mem::size_of::<(Entry, usize, Instant)>();

/// An entry's size in the cache's accounting: its stored bytes (the payload is shared with the
/// request it came in, not copied) and its slot in the ring (for small entries the larger
/// part).
pub fn entry_size(payload_len: usize) -> usize {
    SLOT_BYTES + BATCH_HEADER_LEN + payload_len
}

impl RecentEntries {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `entry`, just appended to the log after every entry the cache holds; `None`: an
    /// entry appended that the cache cannot serve, which empties it (it must stay gap-free).
    pub fn push(&self, entry: Option<(Entry, usize)>, now: Instant) {
        let mut ring = self.ring();
        let Some((entry, size)) = entry else {
            ring.clear();
            return;
        };
        let follows = ring.entries.back().is_none_or(|(last, _, _)| last.log_id.index + 1 == entry.log_id.index);
        if !follows {
            ring.clear();
        }
        while ring.entries.front().is_some_and(|(_, _, at)| now.saturating_duration_since(*at) > MAX_AGE) {
            ring.pop_front();
        }
        while !ring.entries.is_empty() && ring.bytes + size > GROUP_BYTES {
            ring.pop_front();
        }
        ring.shrink();
        // Over the process's budget the entry is not kept, and neither are those before it
        // (the run must end at the log's last entry).
        if size > GROUP_BYTES || !reserve(size) {
            ring.clear();
            return;
        }
        ring.bytes += size;
        ring.entries.push_back((entry, size, now));
    }

    /// Appends to `out` the kept entries from index `from` on, below `end`, while `bytes` (the
    /// total so far, updated) is under `max_bytes` (at least one entry); returns the index after
    /// the last one taken, or `None` if `from` is not kept.
    pub fn read(&self, from: u64, end: u64, max_bytes: usize, out: &mut Vec<Entry>, bytes: &mut usize) -> Option<u64> {
        let ring = self.ring();
        let first = ring.first()?;
        let skip = usize::try_from(from.checked_sub(first)?).ok()?;
        if skip >= ring.entries.len() {
            return None;
        }
        let mut next = from;
        for (entry, size, _) in ring.entries.range(skip..) {
            if next >= end || (next > from && *bytes >= max_bytes) {
                break;
            }
            out.push(entry.clone());
            *bytes += size;
            next += 1;
        }
        Some(next)
    }

    /// Drops the entries after `index` (all of them for `None`): the log was truncated there.
    pub fn truncate_after(&self, index: Option<u64>) {
        let mut ring = self.ring();
        while ring.entries.back().is_some_and(|(last, _, _)| index.is_none_or(|i| last.log_id.index > i)) {
            ring.pop_back();
        }
    }

    /// Drops the entries at or below `index`: purged from the log.
    pub fn purge_through(&self, index: u64) {
        let mut ring = self.ring();
        while ring.first().is_some_and(|f| f <= index) {
            ring.pop_front();
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.ring().clear();
    }

    /// Entries kept (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.ring().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots the ring has room for (tests).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.ring().entries.capacity()
    }
}

/// Takes `size` bytes of the process's budget, if they are free.
fn reserve(size: usize) -> bool {
    let fits = HELD.fetch_add(size, Ordering::Relaxed) + size <= TOTAL_BYTES;
    if fits {
        held_gauge().inc_by(gauge_bytes(size));
    } else {
        HELD.fetch_sub(size, Ordering::Relaxed);
    }
    fits
}

/// Gives `size` bytes back to the process's budget.
fn give_back(size: usize) {
    HELD.fetch_sub(size, Ordering::Relaxed);
    held_gauge().dec_by(gauge_bytes(size));
}

/// `tidelog_raft_recent_bytes`: [`HELD`], changed by the same amounts (so exact at rest).
fn held_gauge() -> &'static prometheus_client::metrics::gauge::Gauge {
    &crate::telemetry::metrics::instruments().raft_recent_bytes
}

fn gauge_bytes(size: usize) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// Bytes held by every group's cache in this process.
#[cfg(test)]
fn held_bytes() -> usize {
    HELD.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{log_id, EntryPayload};

    fn blank(index: u64) -> Entry {
        Entry { log_id: log_id(1, index), payload: EntryPayload::Blank }
    }

    fn indexes(out: &[Entry]) -> Vec<u64> {
        out.iter().map(|e| e.log_id.index).collect()
    }

    fn read(c: &RecentEntries, from: u64, end: u64, max_bytes: usize) -> (Option<u64>, Vec<u64>) {
        let (mut out, mut bytes) = (Vec::new(), 0);
        let next = c.read(from, end, max_bytes, &mut out, &mut bytes);
        (next, indexes(&out))
    }

    #[test]
    fn serves_a_gap_free_run_and_misses_outside_it() {
        let c = RecentEntries::default();
        let now = Instant::now();
        for i in 5..=9 {
            c.push(Some((blank(i), 100)), now);
        }
        assert_eq!(read(&c, 4, 100, usize::MAX), (None, vec![]));
        assert_eq!(read(&c, 10, 100, usize::MAX), (None, vec![]));
        assert_eq!(read(&c, 6, 100, usize::MAX), (Some(10), vec![6, 7, 8, 9]));
        assert_eq!(read(&c, 6, 8, usize::MAX), (Some(8), vec![6, 7]));
        // At least one entry, then up to the byte limit.
        assert_eq!(read(&c, 6, 100, 1), (Some(7), vec![6]));
        assert_eq!(read(&c, 6, 100, 250), (Some(9), vec![6, 7, 8]));
        // A gap empties the cache: it must end at the log's last entry without holes.
        c.push(Some((blank(11), 100)), now);
        assert_eq!(read(&c, 9, 100, usize::MAX), (None, vec![]));
        assert_eq!(read(&c, 11, 100, usize::MAX), (Some(12), vec![11]));
        // An entry the cache cannot serve empties it.
        c.push(None, now);
        assert!(c.is_empty());
    }

    #[test]
    fn truncation_purge_and_age_drop_entries() {
        let c = RecentEntries::default();
        let t0 = Instant::now();
        for i in 1..=6 {
            c.push(Some((blank(i), 10)), t0);
        }
        c.truncate_after(Some(4));
        assert_eq!(read(&c, 1, 100, usize::MAX), (Some(5), vec![1, 2, 3, 4]));
        c.purge_through(2);
        assert_eq!(read(&c, 2, 100, usize::MAX), (None, vec![]));
        assert_eq!(read(&c, 3, 100, usize::MAX), (Some(5), vec![3, 4]));
        c.push(Some((blank(5), 10)), t0 + MAX_AGE + Duration::from_millis(1));
        assert_eq!(read(&c, 3, 100, usize::MAX), (None, vec![]));
        assert_eq!(read(&c, 5, 100, usize::MAX), (Some(6), vec![5]));
        c.truncate_after(None);
        assert!(c.is_empty());
    }

    #[test]
    fn holds_at_most_its_group_share_and_gives_bytes_back() {
        let c = RecentEntries::default();
        let now = Instant::now();
        let size = GROUP_BYTES / 4;
        for i in 1..=10 {
            c.push(Some((blank(i), size)), now);
        }
        assert_eq!(c.len(), 4);
        assert_eq!(read(&c, 7, 100, usize::MAX), (Some(11), vec![7, 8, 9, 10]));
        // Larger than a group's share: not kept, and nothing before it either.
        c.push(Some((blank(11), GROUP_BYTES + 1)), now);
        assert!(c.is_empty());
        c.push(Some((blank(12), 10)), now);
        drop(c);
        // Other tests' caches share the counter: this one's bytes are all given back.
        assert!(held_bytes() < TOTAL_BYTES);
    }

    #[test]
    fn an_emptied_or_aged_ring_gives_its_slots_back() {
        let c = RecentEntries::default();
        let t0 = Instant::now();
        for i in 1..=10_000 {
            c.push(Some((blank(i), entry_size(100))), t0);
        }
        assert_eq!(c.len(), 10_000);
        assert!(c.slots() >= 10_000);
        // Every entry but the new one aged out: the slots shrink with them.
        c.push(Some((blank(10_001), entry_size(100))), t0 + MAX_AGE + Duration::from_millis(1));
        assert_eq!(c.len(), 1);
        assert!(c.slots() <= 4 * MIN_SLOTS, "{} slots kept for one entry", c.slots());
        // Asleep (or cleared for any reason): nothing kept, not even slots.
        c.clear();
        assert_eq!(c.slots(), 0);
    }

    #[test]
    fn small_entries_are_bounded_by_their_slots() {
        // Entries of one byte: counted by their bytes alone, a group's share would hold over
        // a hundred thousand of them, whose slots alone would be about twice the share.
        let c = RecentEntries::default();
        let now = Instant::now();
        for i in 1..=(GROUP_BYTES / SLOT_BYTES + 100) as u64 {
            c.push(Some((blank(i), entry_size(1))), now);
        }
        assert!(c.len() * SLOT_BYTES <= GROUP_BYTES, "{} entries of {SLOT_BYTES} bytes kept", c.len());
    }
}
