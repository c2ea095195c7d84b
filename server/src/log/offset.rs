//! One type per kind of offset, so that a log end offset can never be passed where a high
//! watermark is meant. Their order is an invariant of every partition:
//!
//! `LogStartOffset <= HighWatermark <= LogEndOffset`
//!
//! - log start: the oldest retained record (retention moves it up, never down);
//! - high watermark: records below it are visible to consumers (on one node, equal to the log
//!   end; with Raft, the committed index);
//! - log end: the offset the next appended record gets.

use std::fmt;

macro_rules! offset_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

offset_type!(
    /// The first offset still stored.
    LogStartOffset
);
offset_type!(
    /// Records below this offset are visible to consumers.
    HighWatermark
);
offset_type!(
    /// The offset the next appended record gets.
    LogEndOffset
);

/// A consistent snapshot of a partition's offsets, with their order checked (in debug builds;
/// the code that moves each offset keeps the order: retention stops at the high watermark, the
/// high watermark stops at the log end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start: LogStartOffset,
    pub high_watermark: HighWatermark,
    pub log_end: LogEndOffset,
}

impl PartitionOffsets {
    pub fn new(log_start: LogStartOffset, high_watermark: HighWatermark, log_end: LogEndOffset) -> Self {
        debug_assert!(
            log_start.0 <= high_watermark.0 && high_watermark.0 <= log_end.0,
            "offset order violated: start {log_start} hw {high_watermark} end {log_end}"
        );
        Self { log_start, high_watermark, log_end }
    }
}
