//! The one table that maps broker errors to the stable per-batch `ErrorCode` and to gRPC
//! status codes. Clients switch on these; change a row only with a proto version bump.
//!
//! | error                        | ErrorCode            | gRPC status         | retry? |
//! |------------------------------|----------------------|---------------------|--------|
//! | UnknownTopic                 | UNKNOWN_TOPIC        | NOT_FOUND           | no     |
//! | UnknownPartition             | UNKNOWN_PARTITION    | NOT_FOUND           | no     |
//! | TopicExists                  | INVALID_REQUEST      | ALREADY_EXISTS      | no     |
//! | InvalidArgument              | INVALID_REQUEST      | INVALID_ARGUMENT    | no     |
//! | BatchTooLarge                | BATCH_TOO_LARGE      | INVALID_ARGUMENT    | no     |
//! | CorruptBatch                 | CORRUPT_BATCH        | INVALID_ARGUMENT    | no     |
//! | Log(OffsetOutOfRange)        | OFFSET_OUT_OF_RANGE  | OUT_OF_RANGE        | no     |
//! | Log(Io), disk full           | STORAGE_ERROR        | RESOURCE_EXHAUSTED  | yes    |
//! | Log(Io), other               | STORAGE_ERROR        | UNAVAILABLE         | yes    |
//! | Log(Unrecoverable)           | STORAGE_ERROR        | UNAVAILABLE         | after restart |
//! | Log(Config / Truncate)       | STORAGE_ERROR        | INTERNAL            | no     |
//! | Meta                         | STORAGE_ERROR        | UNAVAILABLE         | yes    |
//! | TopicDeleted                 | UNKNOWN_TOPIC        | NOT_FOUND           | no     |
//! | ShuttingDown                 | SHUTTING_DOWN        | UNAVAILABLE         | yes    |
//! | PartitionFailed (fsync)      | STORAGE_ERROR        | UNAVAILABLE         | after restart |
//! | OutOfOrderSequence           | OUT_OF_ORDER_SEQUENCE| FAILED_PRECONDITION | resend earlier |
//! | ProducerFenced               | PRODUCER_FENCED      | FAILED_PRECONDITION | no     |
//! | UnknownProducer              | UNKNOWN_PRODUCER     | FAILED_PRECONDITION | re-init |
//! | IllegalGeneration            | ILLEGAL_GENERATION   | FAILED_PRECONDITION | rejoin |
//! | InconsistentGroup            | INCONSISTENT_GROUP   | FAILED_PRECONDITION | no     |
//! | NotLeader                    | NOT_LEADER           | UNAVAILABLE         | yes, at the leader |

use tidelog_proto::v1::ErrorCode;
use tonic::{Code, Status};

use crate::broker::BrokerError;
use crate::log::LogError;

fn table(e: &BrokerError) -> (ErrorCode, Code) {
    use BrokerError as B;
    match e {
        B::UnknownTopic(_) | B::TopicDeleted(_) => (ErrorCode::UnknownTopic, Code::NotFound),
        B::UnknownPartition { .. } => (ErrorCode::UnknownPartition, Code::NotFound),
        B::TopicExists(_) => (ErrorCode::InvalidRequest, Code::AlreadyExists),
        B::InvalidArgument(_) => (ErrorCode::InvalidRequest, Code::InvalidArgument),
        B::BatchTooLarge { .. } => (ErrorCode::BatchTooLarge, Code::InvalidArgument),
        B::CorruptBatch(_) => (ErrorCode::CorruptBatch, Code::InvalidArgument),
        B::Log(LogError::OffsetOutOfRange { .. }) => (ErrorCode::OffsetOutOfRange, Code::OutOfRange),
        B::Log(LogError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC) => {
            (ErrorCode::StorageError, Code::ResourceExhausted)
        }
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
        B::NotLeader { .. } => (ErrorCode::NotLeader, Code::Unavailable),
    }
}

pub fn error_code(e: &BrokerError) -> ErrorCode {
    table(e).0
}

pub fn status(e: &BrokerError) -> Status {
    let (error_code, code) = table(e);
    // Storage errors are the broker's fault, not the client's: log them here.
    if error_code == ErrorCode::StorageError {
        tracing::error!(error = %e, "request failed on the broker side");
    }
    Status::new(code, e.to_string())
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        status(&e)
    }
}
