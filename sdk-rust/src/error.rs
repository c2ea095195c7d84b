//! SDK errors: transport failures, gRPC statuses from the broker, per-batch broker error codes,
//! and data that does not decode. [`Error::is_retryable`] separates what may succeed if retried.

use tidelog_proto::v1::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is the error's `source()` (shown by `{:#}` with anyhow), not repeated here.
    #[error("cannot connect to the broker")]
    Transport(#[from] tonic::transport::Error),
    /// Not a `source()`: the status's code and message are all there is to say, said once.
    #[error("broker answered {:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("broker rejected the batch ({code:?}): {message}")]
    Broker { code: ErrorCode, message: String },
    #[error("cannot decode a batch from the broker: {0}")]
    Decode(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// `send` waited `waited` for buffer memory. `last_error`: a partition whose batches the
    /// broker keeps refusing with a retryable error (a full disk, no leader), and its last
    /// refusal; `None` if the broker is just slow or unreachable.
    #[error("the producer's buffer stayed full for {waited:?}; {}", buffer_full_cause(.last_error))]
    BufferFull { waited: std::time::Duration, last_error: Option<String> },
    #[error("the producer is closed")]
    Closed,
    #[error("delivery failed: {0}")]
    Delivery(String),
    /// A subscription's broker went silent while another broker holds records it did not
    /// deliver (frozen, or cut off from its peers): reopen avoiding `broker`
    /// (`Subscription::avoid`). Retryable.
    #[error("subscription stalled at {broker}: {message}")]
    Stalled { broker: String, message: String },
}

fn buffer_full_cause(last_error: &Option<String>) -> String {
    match last_error {
        Some(e) => format!("the broker keeps refusing batches of {e}"),
        None => "the broker is slower than the producer or unreachable".to_string(),
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Self::Status(s)
    }
}

/// Whether a broker error code is retryable (the proto marks these): the same request may
/// succeed later.
pub fn retryable_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::StorageError
            | ErrorCode::NotLeader
            | ErrorCode::ShuttingDown
            | ErrorCode::ConcurrentTransactions
            | ErrorCode::UnstableOffsetCommit
    )
}

/// A broker error code as received (unknown numbers read as `InvalidRequest`).
pub(crate) fn error_code(code: i32) -> ErrorCode {
    ErrorCode::try_from(code).unwrap_or(ErrorCode::InvalidRequest)
}

impl Error {
    /// The error for a broker error code in a response body.
    pub(crate) fn broker(code: i32, message: String) -> Self {
        Error::Broker { code: error_code(code), message }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Status(s) => matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::DeadlineExceeded
            ),
            Error::Broker { code, .. } => retryable_code(*code),
            Error::BufferFull { .. } | Error::Stalled { .. } => true,
            Error::Decode(_) | Error::InvalidArgument(_) | Error::Closed | Error::Delivery(_) => false,
        }
    }
}
