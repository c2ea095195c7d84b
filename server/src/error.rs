//! The broker's error type, and the one table that maps each error to a stable per-batch
//! `ErrorCode` and a gRPC status code. Everything below the api layer reports `BrokerError`;
//! clients switch on the codes, so change a row only with a proto version bump.
//!
//! | error                        | ErrorCode            | gRPC status         | retry? |
//! |------------------------------|----------------------|---------------------|--------|
//! | UnknownTopic                 | UNKNOWN_TOPIC        | NOT_FOUND           | no     |
//! | UnknownPartition             | UNKNOWN_PARTITION    | NOT_FOUND           | no     |
//! | TopicExists                  | INVALID_REQUEST      | ALREADY_EXISTS      | no     |
//! | InvalidArgument              | INVALID_REQUEST      | INVALID_ARGUMENT    | no     |
//! | BatchTooLarge                | BATCH_TOO_LARGE      | INVALID_ARGUMENT    | no     |
//! | CorruptBatch                 | CORRUPT_BATCH        | INVALID_ARGUMENT    | no     |
//! | InvalidRecord (no key, compacted) | INVALID_RECORD  | INVALID_ARGUMENT    | no     |
//! | Log(OffsetOutOfRange)        | OFFSET_OUT_OF_RANGE  | OUT_OF_RANGE        | no     |
//! | AboveHighWatermark           | OFFSET_OUT_OF_RANGE  | OUT_OF_RANGE        | no     |
//! | Log(Io), disk full           | STORAGE_ERROR        | RESOURCE_EXHAUSTED  | yes    |
//! | Log(Io), other               | STORAGE_ERROR        | UNAVAILABLE         | yes    |
//! | Log(Unrecoverable)           | STORAGE_ERROR        | UNAVAILABLE         | after restart |
//! | Log(Config / Truncate)       | STORAGE_ERROR        | INTERNAL            | no     |
//! | Meta, disk full              | STORAGE_ERROR        | RESOURCE_EXHAUSTED  | after restart (the broker stops) |
//! | Meta, other                  | STORAGE_ERROR        | UNAVAILABLE         | yes; after an I/O error the broker stops |
//! | TopicDeleted                 | UNKNOWN_TOPIC        | NOT_FOUND           | no     |
//! | ShuttingDown                 | SHUTTING_DOWN        | UNAVAILABLE         | yes    |
//! | PartitionFailed (fsync)      | STORAGE_ERROR        | UNAVAILABLE         | after restart |
//! | OutOfOrderSequence           | OUT_OF_ORDER_SEQUENCE| FAILED_PRECONDITION | resend earlier |
//! | ProducerFenced               | PRODUCER_FENCED      | FAILED_PRECONDITION | no     |
//! | UnknownProducer              | UNKNOWN_PRODUCER     | FAILED_PRECONDITION | re-init |
//! | IllegalGeneration            | ILLEGAL_GENERATION   | FAILED_PRECONDITION | rejoin |
//! | InconsistentGroup            | INCONSISTENT_GROUP   | FAILED_PRECONDITION | no     |
//! | UnknownGroup                 | UNKNOWN_GROUP        | NOT_FOUND           | no     |
//! | GroupNotEmpty                | NON_EMPTY_GROUP      | FAILED_PRECONDITION | after its members stop |
//! | NotLeader                    | NOT_LEADER           | UNAVAILABLE         | yes, at the leader |
//! | Unauthorized (ACLs)          | AUTHORIZATION_FAILED | PERMISSION_DENIED   | no (ask for an ACL) |
//! | Unauthorized (ACLs not current yet) | NOT_LEADER    | UNAVAILABLE         | yes    |
//! | InvalidTxnState              | INVALID_TXN_STATE    | FAILED_PRECONDITION | abort, or init again |
//! | UnknownTransactionalId       | INVALID_TXN_STATE    | NOT_FOUND           | init first |
//! | ConcurrentTransactions       | CONCURRENT_TRANSACTIONS | UNAVAILABLE      | yes    |
//! | UnstableOffsetCommit         | UNSTABLE_OFFSET_COMMIT | UNAVAILABLE       | yes    |
//! | Forwarded (another broker's) | by its gRPC status   | as it came          | as it says |
//!
//! A failed call also carries its `ErrorCode` name in the `x-tidelog-error-code` metadata.

use tidelog_proto::v1::ErrorCode;
use tonic::{Code, Status};

use crate::log::LogError;
use crate::meta::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("topic '{0}' does not exist; create it first (tidelog topic create {0})")]
    UnknownTopic(String),
    #[error("partition {partition} does not exist: topic '{topic}' has partitions 0..{count}")]
    UnknownPartition { topic: String, partition: u32, count: u32 },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("batch of {size} bytes exceeds the topic's max_batch_bytes ({max}); send smaller batches or raise max_batch_bytes")]
    BatchTooLarge { size: usize, max: u32 },
    #[error("corrupt batch: {0}")]
    CorruptBatch(String),
    /// A record the topic does not accept (a keyless record on a compacted topic).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("topic '{0}' was deleted")]
    TopicDeleted(String),
    #[error("the broker is shutting down; retry after it restarts")]
    ShuttingDown,
    #[error("producer {producer_id}: expected sequence {expected}, got {got}; resend the missing batches first")]
    OutOfOrderSequence { producer_id: i64, expected: i32, got: i32 },
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current}: another instance took over this producer id")]
    ProducerFenced { producer_id: i64, epoch: i16, current: i16 },
    #[error("producer {producer_id} is unknown on this partition and the batch starts at sequence {base_sequence}, not 0: call InitProducer again")]
    UnknownProducer { producer_id: i64, base_sequence: i32 },
    #[error("{0}")]
    IllegalGeneration(String),
    #[error("{0}")]
    InconsistentGroup(String),
    /// A membership change the cluster's state does not allow now (a broker still holding
    /// replicas, the last voter).
    #[error("{0}")]
    MembershipRefused(String),
    #[error("group '{0}' does not exist (it has no members and no committed offsets)")]
    UnknownGroup(String),
    #[error("group '{group}' has {members} member(s); stop its consumers first")]
    GroupNotEmpty { group: String, members: usize },
    /// DeleteRecords asked to delete records consumers have not been allowed to see.
    #[error("cannot delete the records of partition {partition} of topic '{topic}' below offset {offset}: its high watermark is {high_watermark} (use at most that, or -1 for it)")]
    AboveHighWatermark { topic: String, partition: u32, offset: u64, high_watermark: u64 },
    #[error("partition {partition} of topic '{topic}' stopped after an fsync failed; check the disk, then restart the broker")]
    PartitionFailed { topic: String, partition: u32 },
    /// Transactions: the call does not fit the transactional id's state.
    #[error("{0}")]
    InvalidTxnState(String),
    #[error("transactional id {0:?} is unknown to the coordinator: call InitTransactions first")]
    UnknownTransactionalId(String),
    /// Retryable: the transactional id's previous transaction is still completing.
    #[error("{0}")]
    ConcurrentTransactions(String),
    /// Retryable: an open transaction holds offsets of the group not yet committed.
    #[error("group '{0}' has offsets pending in an open transaction; fetch again once it ends")]
    UnstableOffsetCommit(String),
    /// Another broker's answer to a call this broker passed on to it (`broker/route.rs`),
    /// returned to the client as it came.
    #[error("{}", .0.message())]
    Forwarded(Status),
    /// This broker does not lead what the request needs (a partition, or the metadata group);
    /// `leader` is the leader's broker id and client address, when known.
    #[error("this broker does not lead {what}; {}", leader_hint(.leader))]
    NotLeader { what: String, leader: Option<(u64, String)> },
    /// The caller's principal may not do this (`auth`): its message names the principal, the
    /// operation and the resource.
    #[error(transparent)]
    Unauthorized(#[from] crate::auth::Denied),
}

fn leader_hint(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("its leader is broker {id} at {addr}: send it there"),
        None => "no leader is elected right now: retry shortly".to_string(),
    }
}

fn table(e: &BrokerError) -> (ErrorCode, Code) {
    use BrokerError as B;
    match e {
        B::UnknownTopic(_) | B::TopicDeleted(_) => (ErrorCode::UnknownTopic, Code::NotFound),
        B::UnknownPartition { .. } => (ErrorCode::UnknownPartition, Code::NotFound),
        B::TopicExists(_) => (ErrorCode::InvalidRequest, Code::AlreadyExists),
        B::InvalidArgument(_) => (ErrorCode::InvalidRequest, Code::InvalidArgument),
        B::BatchTooLarge { .. } => (ErrorCode::BatchTooLarge, Code::InvalidArgument),
        B::CorruptBatch(_) => (ErrorCode::CorruptBatch, Code::InvalidArgument),
        B::InvalidRecord(_) => (ErrorCode::InvalidRecord, Code::InvalidArgument),
        B::Log(LogError::OffsetOutOfRange { .. }) | B::AboveHighWatermark { .. } => {
            (ErrorCode::OffsetOutOfRange, Code::OutOfRange)
        }
        e if disk_full(e) => (ErrorCode::StorageError, Code::ResourceExhausted),
        B::Log(LogError::Io { .. } | LogError::Unrecoverable { .. }) | B::Meta(_) | B::PartitionFailed { .. } => {
            (ErrorCode::StorageError, Code::Unavailable)
        }
        B::Log(LogError::Config(_) | LogError::Truncate(_) | LogError::RaftOrder(_)) => {
            (ErrorCode::StorageError, Code::Internal)
        }
        B::ShuttingDown => (ErrorCode::ShuttingDown, Code::Unavailable),
        B::OutOfOrderSequence { .. } => (ErrorCode::OutOfOrderSequence, Code::FailedPrecondition),
        B::ProducerFenced { .. } => (ErrorCode::ProducerFenced, Code::FailedPrecondition),
        B::UnknownProducer { .. } => (ErrorCode::UnknownProducer, Code::FailedPrecondition),
        B::IllegalGeneration(_) => (ErrorCode::IllegalGeneration, Code::FailedPrecondition),
        B::InconsistentGroup(_) => (ErrorCode::InconsistentGroup, Code::FailedPrecondition),
        B::MembershipRefused(_) => (ErrorCode::InvalidRequest, Code::FailedPrecondition),
        B::UnknownGroup(_) => (ErrorCode::UnknownGroup, Code::NotFound),
        B::GroupNotEmpty { .. } => (ErrorCode::NonEmptyGroup, Code::FailedPrecondition),
        B::NotLeader { .. } => (ErrorCode::NotLeader, Code::Unavailable),
        B::InvalidTxnState(_) => (ErrorCode::InvalidTxnState, Code::FailedPrecondition),
        B::UnknownTransactionalId(_) => (ErrorCode::InvalidTxnState, Code::NotFound),
        B::ConcurrentTransactions(_) => (ErrorCode::ConcurrentTransactions, Code::Unavailable),
        B::UnstableOffsetCommit(_) => (ErrorCode::UnstableOffsetCommit, Code::Unavailable),
        B::Unauthorized(crate::auth::Denied::Acl { .. }) => (ErrorCode::AuthorizationFailed, Code::PermissionDenied),
        B::Unauthorized(crate::auth::Denied::NotCurrent) => (ErrorCode::NotLeader, Code::Unavailable),
        B::Forwarded(s) => (forwarded_code(s.code()), s.code()),
    }
}

/// Whether `e` is the log's or the metadata store's write failing for want of space.
fn disk_full(e: &BrokerError) -> bool {
    let source = match e {
        BrokerError::Log(LogError::Io { source, .. }) => source,
        BrokerError::Meta(crate::meta::MetaError::Store(sled::Error::Io(source))) => source,
        _ => return false,
    };
    source.raw_os_error() == Some(libc::ENOSPC)
}

/// The error code closest to another broker's gRPC status.
fn forwarded_code(code: Code) -> ErrorCode {
    match code {
        Code::NotFound => ErrorCode::UnknownTopic,
        Code::InvalidArgument | Code::AlreadyExists => ErrorCode::InvalidRequest,
        Code::OutOfRange => ErrorCode::OffsetOutOfRange,
        Code::FailedPrecondition => ErrorCode::IllegalGeneration,
        Code::Unavailable => ErrorCode::NotLeader,
        Code::PermissionDenied => ErrorCode::AuthorizationFailed,
        _ => ErrorCode::StorageError,
    }
}

pub fn error_code(e: &BrokerError) -> ErrorCode {
    table(e).0
}

pub fn status(e: &BrokerError) -> Status {
    if let BrokerError::Forwarded(s) = e {
        return s.clone();
    }
    let (error_code, code) = table(e);
    // Storage errors are the broker's fault, not the client's: log them here.
    if error_code == ErrorCode::StorageError {
        tracing::error!(error = %e, "request failed on the broker side");
    }
    let mut status = Status::new(code, e.to_string());
    // The precise code beside the gRPC one, so clients can tell NOT_LEADER (retry) from other
    // UNAVAILABLE answers without reading the message.
    status
        .metadata_mut()
        .insert(ERROR_CODE_METADATA, tonic::metadata::MetadataValue::from_static(error_code.as_str_name()));
    status
}

/// The metadata key of a failed call's `ErrorCode` name (e.g. `ERROR_CODE_NOT_LEADER`).
pub const ERROR_CODE_METADATA: &str = "x-tidelog-error-code";

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        status(&e)
    }
}
