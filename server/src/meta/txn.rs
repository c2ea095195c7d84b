//! A transactional id's coordinator state, as stored (single node: tree `transactions` of the
//! sled store; cluster: `MetaCommand::Txn` entries of the metadata log) and as every broker
//! holds it in memory (`broker::txn_table`). The transitions are the coordinator's
//! (`txn::coordinator`); this module only defines the record and stores it.
//!
//! ```text
//!   Empty ──add partitions/offsets──▶ Ongoing ──end(commit)──▶ PrepareCommit ──markers──▶ CompleteCommit
//!     ▲                                  │      ──end(abort) / timeout──▶ PrepareAbort ──markers──▶ CompleteAbort
//!     └──────────── (next transaction begins from Complete* or Empty) ◀─────────────────────┘
//! ```
//!
//! Invariant: `version` grows by one with every stored change of an id; a change is stored
//! only over the version it was computed from (compare-and-set), so two coordinators (a
//! controller failover) cannot interleave changes of one id.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::StoredOffset;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    /// Decided: markers are being written, and the outcome can no longer change.
    pub fn is_prepared(self) -> bool {
        matches!(self, Self::PrepareCommit | Self::PrepareAbort)
    }

    /// No transaction open or in flight: a new one may begin, the producer may be re-inited.
    pub fn is_idle(self) -> bool {
        matches!(self, Self::Empty | Self::CompleteCommit | Self::CompleteAbort)
    }
}

/// One transactional id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnEntry {
    pub producer_id: i64,
    pub epoch: i16,
    pub status: TxnStatus,
    pub timeout_ms: u32,
    /// When the open transaction began (0 when none is).
    pub started_at_ms: i64,
    pub last_update_ms: i64,
    /// The partitions the open (or prepared) transaction wrote to, by topic.
    #[serde(default)]
    pub partitions: BTreeMap<String, BTreeSet<u32>>,
    /// Group offsets committed if the transaction commits: group -> topic -> offsets.
    #[serde(default)]
    pub offsets: BTreeMap<String, BTreeMap<String, Vec<StoredOffset>>>,
    /// Compare-and-set version (see the module invariant).
    pub version: u64,
}

impl TxnEntry {
    /// Whether the open transaction holds offsets of `group` not yet committed.
    pub fn holds_offsets_of(&self, group: &str) -> bool {
        !self.status.is_idle() && self.offsets.contains_key(group)
    }

    /// Whether the open transaction has outlived its timeout at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.status == TxnStatus::Ongoing && now_ms >= self.started_at_ms + i64::from(self.timeout_ms)
    }

    /// Whether the open transaction includes partition `p` of `topic`.
    pub fn includes(&self, topic: &str, p: u32) -> bool {
        self.partitions.get(topic).is_some_and(|ps| ps.contains(&p))
    }
}

impl super::MetaStore {
    /// Every stored transactional id (a single node's; a cluster keeps them in its metadata log).
    pub fn transactions(&self) -> Result<Vec<(String, TxnEntry)>, super::MetaError> {
        self.txns
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let id = String::from_utf8_lossy(&k).into_owned();
                let entry = serde_json::from_slice(&v)
                    .map_err(|e| super::MetaError::Corrupt(format!("transaction record {id:?}: {e}")))?;
                Ok((id, entry))
            })
            .collect()
    }

    /// Stores a transactional id's state. Durability: flushed before returning.
    pub async fn put_transaction(&self, id: &str, entry: &TxnEntry) -> Result<(), super::MetaError> {
        let v = serde_json::to_vec(entry).map_err(|e| super::MetaError::Corrupt(e.to_string()))?;
        self.txns.insert(id.as_bytes(), v)?;
        self.durable().await?;
        Ok(())
    }
}
