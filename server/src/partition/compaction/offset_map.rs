//! The cleaner's key → latest-offset map (Kafka's `SkimpyOffsetMap`): a fixed-size,
//! open-addressing hash table of 128-bit key digests and offsets, allocated once per cleaning.
//!
//! Memory is bounded by construction: `capacity_bytes / SLOT_BYTES` slots, filled to at most
//! [`MAX_LOAD`]. When it is full the cleaner stops mapping at the batch that did not fit and
//! cleans only below it; the rest stays dirty for the next pass ("full" is never an error
//! unless not even one batch fits).
//!
//! Two different keys with the same 128-bit digest would make the cleaner drop the older one's
//! latest record; at 2^-128 per pair this is ignored (Kafka accepts the same with MD5).

use std::hash::{Hash, Hasher};

/// Bytes per slot: a 16-byte digest and an 8-byte offset.
pub const SLOT_BYTES: usize = 24;
/// The fraction of slots the map fills before it reports full (Kafka's default 0.9).
pub const MAX_LOAD: f64 = 0.9;

/// A key's digest. All-zero marks an empty slot, so a real digest is never all zero.
type Digest = [u64; 2];

/// The digest of `key`: two SipHash values with different prefixes.
pub fn digest(key: &[u8]) -> Digest {
    let h = |seed: u8| {
        let mut s = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut s);
        key.hash(&mut s);
        s.finish()
    };
    let d = [h(1), h(2)];
    if d == [0, 0] {
        [1, 0]
    } else {
        d
    }
}

#[derive(Debug)]
pub struct OffsetMap {
    keys: Vec<Digest>,
    offsets: Vec<u64>,
    used: usize,
    limit: usize,
}

impl OffsetMap {
    /// A map using about `capacity_bytes` (at least 16 slots).
    pub fn new(capacity_bytes: usize) -> Self {
        let slots = (capacity_bytes / SLOT_BYTES).max(16);
        Self {
            keys: vec![[0, 0]; slots],
            offsets: vec![0; slots],
            used: 0,
            limit: ((slots as f64) * MAX_LOAD) as usize,
        }
    }

    /// How many more distinct keys fit before the map is full.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }

    pub fn len(&self) -> usize {
        self.used
    }

    fn slot(&self, d: &Digest) -> (usize, bool) {
        let n = self.keys.len();
        let mut i = (d[0] % n as u64) as usize;
        // Linear probing; the load limit keeps an empty slot reachable.
        loop {
            if self.keys[i] == *d {
                return (i, true);
            }
            if self.keys[i] == [0, 0] {
                return (i, false);
            }
            i = (i + 1) % n;
        }
    }

    /// Records `offset` as the latest for `d` (offsets are put in increasing order). Returns
    /// false, storing nothing, if `d` is new and the map is full.
    pub fn put(&mut self, d: Digest, offset: u64) -> bool {
        let (i, found) = self.slot(&d);
        if !found {
            if self.used >= self.limit {
                return false;
            }
            self.keys[i] = d;
            self.used += 1;
        }
        self.offsets[i] = offset;
        true
    }

    /// The latest offset recorded for `d`.
    pub fn get(&self, d: &Digest) -> Option<u64> {
        let (i, found) = self.slot(d);
        found.then(|| self.offsets[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_offset_per_key_and_reports_full() {
        let mut m = OffsetMap::new(SLOT_BYTES * 20);
        assert_eq!(m.room(), 18);
        for i in 0..18u64 {
            assert!(m.put(digest(format!("k{i}").as_bytes()), i));
        }
        assert!(m.put(digest(b"k3"), 100), "an existing key always fits");
        assert!(!m.put(digest(b"new"), 101), "a new key does not fit a full map");
        assert_eq!(m.get(&digest(b"k3")), Some(100));
        assert_eq!(m.get(&digest(b"k4")), Some(4));
        assert_eq!(m.get(&digest(b"new")), None);
        assert_eq!(m.len(), 18);
        assert_ne!(digest(b""), [0, 0]);
    }
}
