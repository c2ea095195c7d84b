//! Every transactional id's coordinator state as this broker knows it: on a single node the
//! store's copy, in a cluster the metadata log's as applied here. The coordinator
//! (`txn::coordinator`) decides changes; control planes store them with
//! [`TxnTable::compare_and_set`] once durable; partition leaders read it to check that a
//! transactional batch belongs to an open transaction that includes its partition.
//!
//! Invariant: an entry only ever replaces the one with the version right below it (see
//! `meta::txn`), so applying the same sequence of changes in the same order gives every
//! broker the same table.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError, RwLock};

use tokio::sync::watch;

use crate::meta::txn::{TxnEntry, TxnStatus};

/// Compare-and-set outcomes remembered by log position, for a proposer waiting on its own.
const OUTCOMES_KEPT: usize = 1024;

/// The entries, and which transactional id holds each producer id.
#[derive(Debug, Default)]
struct Entries {
    by_id: BTreeMap<String, TxnEntry>,
    by_producer: HashMap<i64, String>,
}

impl Entries {
    fn insert(&mut self, id: String, entry: TxnEntry) {
        self.by_producer.insert(entry.producer_id, id.clone());
        self.by_id.insert(id, entry);
    }
}

/// What [`TxnTable::admission`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// A newer epoch (this one) holds the producer id.
    Fenced(i16),
    /// No open transaction of this epoch includes the partition, as far as this copy knows.
    NotYet,
}

#[derive(Debug)]
pub struct TxnTable {
    entries: RwLock<Entries>,
    /// Bumped on every stored change, to wake whoever waits for one.
    changes: watch::Sender<u64>,
    /// (metadata log offset, whether its compare-and-set applied), newest last.
    outcomes: Mutex<VecDeque<(u64, bool)>>,
}

impl Default for TxnTable {
    fn default() -> Self {
        Self { entries: RwLock::default(), changes: watch::channel(0).0, outcomes: Mutex::default() }
    }
}

impl TxnTable {
    pub fn get(&self, id: &str) -> Option<TxnEntry> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).by_id.get(id).cloned()
    }

    pub fn all(&self) -> Vec<(String, TxnEntry)> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.by_id.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Stores `entry` for `id` if the stored one has version `entry.version - 1` (0: none is
    /// stored). Returns whether it did.
    pub fn compare_and_set(&self, id: &str, entry: TxnEntry) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let current = entries.by_id.get(id).map_or(0, |e| e.version);
        if entry.version != current + 1 {
            return false;
        }
        entries.insert(id.to_string(), entry);
        drop(entries);
        self.changes.send_modify(|v| *v += 1);
        true
    }

    /// [`TxnTable::compare_and_set`] for the change stored at metadata log `offset`; its
    /// outcome is kept for [`TxnTable::outcome_at`].
    pub fn compare_and_set_at(&self, offset: u64, id: &str, entry: TxnEntry) -> bool {
        let applied = self.compare_and_set(id, entry);
        let mut outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        if outcomes.len() == OUTCOMES_KEPT {
            outcomes.pop_front();
        }
        outcomes.push_back((offset, applied));
        applied
    }

    /// Whether the change stored at metadata log `offset` applied (`None`: not applied here
    /// yet, or too long ago).
    pub fn outcome_at(&self, offset: u64) -> Option<bool> {
        let outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        outcomes.iter().rev().find(|(o, _)| *o == offset).map(|(_, applied)| *applied)
    }

    /// Stores `entry` for `id` whatever the stored version (a metadata snapshot's state).
    pub fn put(&self, id: &str, entry: TxnEntry) {
        self.entries.write().unwrap_or_else(PoisonError::into_inner).insert(id.to_string(), entry);
        self.changes.send_modify(|v| *v += 1);
    }

    /// Replaces every entry (a single node loading its store, a cluster broker rebuilding
    /// from the metadata log).
    pub fn replace_all(&self, all: impl IntoIterator<Item = (String, TxnEntry)>) {
        let mut entries = Entries::default();
        for (id, entry) in all {
            entries.insert(id, entry);
        }
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = entries;
        self.changes.send_modify(|v| *v += 1);
    }

    /// The ids the coordinator must act on at `now_ms`: open longer than their timeout, or
    /// prepared and not completed. Filtered under the lock (most ids need nothing).
    pub fn needing_attention(&self, now_ms: i64) -> Vec<String> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries
            .by_id
            .iter()
            .filter(|(_, e)| e.status.is_prepared() || e.expired(now_ms))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether any open transaction holds uncommitted offsets of `group`.
    pub fn holds_offsets_of(&self, group: &str) -> bool {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.by_id.values().any(|e| e.holds_offsets_of(group))
    }

    /// Whether a transactional batch of producer `producer_id` at `epoch` for partition `p`
    /// of `topic` may be appended: its open transaction includes the partition.
    pub fn admission(&self, producer_id: i64, epoch: i16, topic: &str, p: u32) -> Admission {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.by_producer.get(&producer_id).and_then(|id| entries.by_id.get(id));
        match entry {
            Some(e) if e.epoch > epoch => Admission::Fenced(e.epoch),
            Some(e) if e.epoch == epoch && e.status == TxnStatus::Ongoing && e.includes(topic, p) => {
                Admission::Admitted
            }
            // Not (yet) here: this broker's copy may lag the coordinator's.
            _ => Admission::NotYet,
        }
    }

    /// A receiver that changes with every stored change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
