//! Errors of the log library. Callers map them to their own codes; this module knows nothing of
//! gRPC.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A read or write failed (full disk, I/O error, permissions). Retryable: the log is left
    /// consistent (a failed append leaves no partial batch).
    #[error("storage error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// An fsync failed, or a failed append could not be rolled back: what is on disk may differ
    /// from what the log believes. The log must not be used until it is reopened (recovery
    /// then reads what is really on disk).
    #[error("unrecoverable storage error while {context}: {source}; restart to recover")]
    Unrecoverable {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The offset is outside [log start, log end].
    #[error("offset {requested} is out of range: this partition holds offsets [{log_start}, {log_end})")]
    OffsetOutOfRange { requested: u64, log_start: u64, log_end: u64 },
    #[error("invalid log configuration: {0}")]
    Config(String),
    #[error("invalid truncation: {0}")]
    Truncate(String),
    /// A Raft entry appended out of order (its index does not follow the log's last one).
    #[error("raft entry out of order: {0}")]
    RaftOrder(String),
}

impl LogError {
    /// Whether the log must stop being used (see [`LogError::Unrecoverable`]).
    pub fn is_unrecoverable(&self) -> bool {
        matches!(self, Self::Unrecoverable { .. })
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Adds a description of what was being done to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, LogError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, LogError> {
        self.map_err(|e| LogError::io(context(), e))
    }
}

/// For fsyncs and rollbacks, whose failure leaves the on-disk state uncertain.
pub trait FatalContext<T> {
    fn fatal(self, context: impl FnOnce() -> String) -> Result<T, LogError>;
}

impl<T> FatalContext<T> for io::Result<T> {
    fn fatal(self, context: impl FnOnce() -> String) -> Result<T, LogError> {
        self.map_err(|source| LogError::Unrecoverable { context: context(), source })
    }
}
