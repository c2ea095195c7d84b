//! Settings of one partition log, and the durability vocabulary (fsync policies).

use std::time::Duration;

use super::format::MAX_SEGMENT_BYTES;

/// When appended bytes are forced to disk. Each level is named after what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before a batch is acknowledged. Concurrent appends share one fsync (group commit),
    /// so throughput is bounded by fsync rate x batches per fsync, not one fsync per request.
    /// An acknowledged batch survives a power loss.
    PerBatch,
    /// fsync in the background at this interval. An acknowledged batch survives a process
    /// crash (it is in the OS page cache); a power loss or kernel crash may lose up to one
    /// interval of acknowledged batches.
    Interval(Duration),
    /// Never fsync explicitly (sealed segments are still fsynced when the log rolls). Survives a
    /// process crash; after a power loss, whatever the OS had not written back is lost.
    Never,
}

/// How long data is kept. `None` = no limit of that kind. Whole segments are deleted, never
/// the active one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete a segment once its newest batch is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest segments while the log without them is still at least this large.
    pub max_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment before the active one would exceed this size.
    pub segment_bytes: u64,
    /// Roll to a new segment when the active one's first batch is older than this.
    pub segment_max_age: Duration,
    /// One sparse index entry per this many bytes of log.
    pub index_interval_bytes: u64,
    pub retention: Retention,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_max_age: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            retention: Retention::default(),
        }
    }
}

impl LogConfig {
    /// Checks the settings, with a message that says which one is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < 1024 || self.segment_bytes > MAX_SEGMENT_BYTES / 2 {
            return Err(format!(
                "segment_bytes must be between 1024 and {} (got {})",
                MAX_SEGMENT_BYTES / 2,
                self.segment_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err("index_interval_bytes must be at least 1".into());
        }
        if self.segment_max_age.is_zero() {
            return Err("segment_ms must be at least 1".into());
        }
        Ok(())
    }
}
