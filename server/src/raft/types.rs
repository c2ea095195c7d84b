//! The Raft type configuration of a partition group, and what one entry carries.
//!
//! One Raft entry is one stored batch (docs/RAFT_PLAN.md §2). A log id is (term, index) — the
//! `leader_id_std` flavour, whose committed leader id is the term alone — so the two numbers in
//! every batch header (`raft_term`, `raft_index`) are the whole log id.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::log::format::CompressionCodec;
use crate::log::StoredBatch;
pub use crate::partition::{ProduceOutcome, Rejection};

openraft::declare_raft_types!(
    /// Type configuration of a partition's Raft group.
    pub PartitionTc:
        D = BatchData,
        R = ProduceOutcome,
        NodeId = u64,
        Node = openraft::EmptyNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

pub type Entry = openraft::type_config::alias::EntryOf<PartitionTc>;
pub type LogId = openraft::type_config::alias::LogIdOf<PartitionTc>;
pub type Vote = openraft::type_config::alias::VoteOf<PartitionTc>;
pub type Membership = openraft::Membership<u64, openraft::EmptyNode>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<PartitionTc>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<PartitionTc>;
pub type EntryPayload = openraft::EntryPayload<BatchData, u64, openraft::EmptyNode>;

/// The application data of a partition entry: a record batch.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchData {
    /// A batch proposed on the leader: its log store assigns the offset and append time when
    /// it appends the entry, so offsets follow the Raft log and never have gaps.
    Proposed(ProposedBatch),
    /// A batch as the leader stored it (read back for replication): followers store it
    /// verbatim, header included, so every replica holds the same bytes at the same offsets.
    Stored(StoredBatch),
}

/// Fires once the leader has appended the entry (and fsynced it under fsync=always): the
/// acks=leader answer. Leader-local and never encoded: replicas read entries back from the log.
#[derive(Clone, Default)]
pub struct AppendHook(Option<Arc<Mutex<Option<oneshot::Sender<ProduceOutcome>>>>>);

impl AppendHook {
    pub fn new() -> (Self, oneshot::Receiver<ProduceOutcome>) {
        let (tx, rx) = oneshot::channel();
        (Self(Some(Arc::new(Mutex::new(Some(tx))))), rx)
    }

    /// Answers the waiter, once; later calls do nothing.
    pub fn fire(&self, outcome: ProduceOutcome) {
        if let Some(slot) = &self.0 {
            if let Some(tx) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = tx.send(outcome);
            }
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

impl fmt::Debug for AppendHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_set() { "AppendHook(set)" } else { "AppendHook(none)" })
    }
}

/// A hook is not part of the entry's value.
impl PartialEq for AppendHook {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for AppendHook {}

/// The producer's batch, validated by the broker, before it has an offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposedBatch {
    pub payload: Bytes,
    pub record_count: u32,
    pub compression: CompressionCodec,
    /// CRC32C of `payload`, already checked.
    pub payload_crc: u32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// Transaction bits of the batch's header (`log::format::FLAG_TRANSACTIONAL`, ...); 0 for
    /// a plain batch.
    pub flags: u16,
    /// acks=leader: answered at the leader's append.
    pub on_append: AppendHook,
}

impl fmt::Display for BatchData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Proposed(b) => write!(f, "proposed batch of {} records, {} bytes", b.record_count, b.payload.len()),
            Self::Stored(b) => write!(
                f,
                "batch at offset {} of {} records, {} bytes",
                b.header.base_offset,
                b.header.record_count,
                b.payload.len()
            ),
        }
    }
}

/// A log id from the numbers stored in a batch header.
pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(openraft::vote::leader_id_std::CommittedLeaderId::new(term), index)
}
