//! Per-topic settings: what a topic is created with, what the metadata store keeps, and what
//! `[topic_defaults]` in the broker config fills in. Converted here to the log's own types (so
//! the log never sees this serde shape) and to and from the proto's `TopicConfig`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidelog_proto::v1::{CleanupPolicy as ProtoCleanup, FsyncPolicy as ProtoFsync, TopicConfig};

use crate::log::format::BATCH_HEADER_LEN;
use crate::log::{FsyncPolicy, LogConfig, Retention};

/// When a partition's appends are fsynced (see [`FsyncPolicy`] for the exact guarantees).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncSetting {
    /// Before acknowledging each batch (group commit across concurrent producers).
    Always,
    /// Every `fsync_interval_ms`, in the background.
    Interval,
    /// Never explicitly.
    Never,
}

impl From<FsyncSetting> for ProtoFsync {
    fn from(f: FsyncSetting) -> Self {
        match f {
            FsyncSetting::Always => Self::Always,
            FsyncSetting::Interval => Self::Interval,
            FsyncSetting::Never => Self::Never,
        }
    }
}

/// What happens to a topic's old records (Kafka's `cleanup.policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupSetting {
    /// Delete whole old segments by age and size.
    Delete,
    /// Keep the latest record per key (log compaction, `compaction`).
    Compact,
    /// Compact, and delete whole old segments by age and size too (`compact_delete`, or
    /// `compact,delete` as the CLI and Kafka spell it).
    #[serde(alias = "compact,delete", alias = "delete,compact")]
    CompactDelete,
}

impl CleanupSetting {
    /// Whether the cleaner compacts the topic (and produce requires keys).
    pub fn compacts(self) -> bool {
        matches!(self, Self::Compact | Self::CompactDelete)
    }

    /// Whether retention deletes old segments by age and size.
    pub fn deletes(self) -> bool {
        matches!(self, Self::Delete | Self::CompactDelete)
    }
}

impl From<CleanupSetting> for ProtoCleanup {
    fn from(c: CleanupSetting) -> Self {
        match c {
            CleanupSetting::Delete => Self::Delete,
            CleanupSetting::Compact => Self::Compact,
            CleanupSetting::CompactDelete => Self::CompactDelete,
        }
    }
}

/// A compacted topic's settings, as the cleaner (`partition::compaction`) uses them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompactionPolicy {
    pub delete_retention_ms: i64,
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
}

/// Settings of one topic. Every field has a documented default (see `Default`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSettings {
    /// Delete segments whose newest batch is older than this; -1 = forever. Default 7 days.
    pub retention_ms: i64,
    /// Delete the oldest segments while a partition is larger than this; -1 = no limit.
    pub retention_bytes: i64,
    /// Roll the active segment at this size. Default 1 GiB.
    pub segment_bytes: u64,
    /// Roll the active segment when its first batch is this old. Default 7 days.
    pub segment_ms: u64,
    /// Default `interval`.
    pub fsync: FsyncSetting,
    /// Period of the background fsync for `fsync = "interval"`. Default 1000 ms.
    pub fsync_interval_ms: u64,
    /// Largest batch payload accepted. Default 1 MiB, at most 8 MiB.
    pub max_batch_bytes: u32,
    /// Delete (default), compact, or both.
    pub cleanup_policy: CleanupSetting,
    /// Compacted topics: a tombstone is kept this long after the cleaner first reaches it.
    /// Default 1 day.
    pub delete_retention_ms: i64,
    /// Compacted topics: clean once this fraction of the log is dirty. Default 0.5.
    pub min_cleanable_dirty_ratio: f64,
    /// Compacted topics: records younger than this are not compacted. Default 0.
    pub min_compaction_lag_ms: i64,
}

// `min_cleanable_dirty_ratio` is validated to a number in (0, 1], never NaN, so equality is an
// equivalence relation.
impl Eq for TopicSettings {}

/// Upper bound for `fsync_interval_ms` (one day); `segment_ms` may be up to ten years.
pub const MAX_INTERVAL_MS: u64 = 24 * 3600 * 1000;

/// Upper bound for `max_batch_bytes`, below the gRPC message limit the server sets.
pub const MAX_BATCH_BYTES_LIMIT: u32 = 8 << 20;

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            fsync: FsyncSetting::Interval,
            fsync_interval_ms: 1000,
            max_batch_bytes: 1 << 20,
            cleanup_policy: CleanupSetting::Delete,
            delete_retention_ms: 24 * 3600 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
        }
    }
}

/// The names of the settings a topic may set, as the proto's `TopicConfig` fields.
pub const KEYS: [&str; 11] = [
    "retention_ms",
    "retention_bytes",
    "segment_bytes",
    "segment_ms",
    "fsync_policy",
    "fsync_interval_ms",
    "max_batch_bytes",
    "cleanup_policy",
    "delete_retention_ms",
    "min_cleanable_dirty_ratio",
    "min_compaction_lag_ms",
];

/// The settings `config` gives (by [`KEYS`] name).
pub fn keys_in(config: Option<&TopicConfig>) -> Vec<String> {
    let Some(c) = config else { return Vec::new() };
    let given = [
        c.retention_ms.is_some(),
        c.retention_bytes.is_some(),
        c.segment_bytes.is_some(),
        c.segment_ms.is_some(),
        c.fsync_policy != ProtoFsync::Unspecified as i32,
        c.fsync_interval_ms.is_some(),
        c.max_batch_bytes.is_some(),
        c.cleanup_policy != ProtoCleanup::Unspecified as i32,
        c.delete_retention_ms.is_some(),
        c.min_cleanable_dirty_ratio.is_some(),
        c.min_compaction_lag_ms.is_some(),
    ];
    KEYS.iter().zip(given).filter(|(_, g)| *g).map(|(k, _)| (*k).to_string()).collect()
}

impl TopicSettings {
    /// Setting `key` (a [`KEYS`] name) copied from `from`.
    fn copy_key(&mut self, from: &Self, key: &str) {
        match key {
            "retention_ms" => self.retention_ms = from.retention_ms,
            "retention_bytes" => self.retention_bytes = from.retention_bytes,
            "segment_bytes" => self.segment_bytes = from.segment_bytes,
            "segment_ms" => self.segment_ms = from.segment_ms,
            "fsync_policy" => self.fsync = from.fsync,
            "fsync_interval_ms" => self.fsync_interval_ms = from.fsync_interval_ms,
            "max_batch_bytes" => self.max_batch_bytes = from.max_batch_bytes,
            "cleanup_policy" => self.cleanup_policy = from.cleanup_policy,
            "delete_retention_ms" => self.delete_retention_ms = from.delete_retention_ms,
            "min_cleanable_dirty_ratio" => self.min_cleanable_dirty_ratio = from.min_cleanable_dirty_ratio,
            "min_compaction_lag_ms" => self.min_compaction_lag_ms = from.min_compaction_lag_ms,
            _ => {}
        }
    }

    /// A topic's settings after an alteration: these defaults, then the topic's `current`
    /// values for the `overrides` it keeps (all but `reset`), then `config` over them. Returns
    /// the (valid) settings and the topic's new overrides, or a message saying what is wrong.
    pub fn altered(
        &self,
        current: &Self,
        overrides: &[String],
        config: Option<&TopicConfig>,
        reset: &[String],
    ) -> Result<(Self, Vec<String>), String> {
        let values = self.merged(config)?;
        self.altered_with(current, overrides, &values, &keys_in(config), reset)
    }

    /// As [`TopicSettings::altered`], with the settings to set given as their names (`set`)
    /// and `values` holding them: the form a cluster's metadata log carries, so every broker
    /// applies an alteration to the topic as it is then, and concurrent alterations compose.
    pub fn altered_with(
        &self,
        current: &Self,
        overrides: &[String],
        values: &Self,
        set: &[String],
        reset: &[String],
    ) -> Result<(Self, Vec<String>), String> {
        if let Some(bad) = reset.iter().chain(set).find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("unknown setting {bad:?}; the settings are {KEYS:?}"));
        }
        if let Some(both) = set.iter().find(|k| reset.contains(k)) {
            return Err(format!("setting {both:?} is both set and reset"));
        }
        let mut kept: Vec<String> = overrides.iter().filter(|k| !reset.contains(k)).cloned().collect();
        let mut s = self.clone();
        for k in &kept {
            s.copy_key(current, k);
        }
        for k in set {
            s.copy_key(values, k);
            if !kept.contains(k) {
                kept.push(k.clone());
            }
        }
        kept.sort_by_key(|k| KEYS.iter().position(|x| x == k));
        s.validate()?;
        Ok((s, kept))
    }

    /// `config`'s fields over these settings (a request's config over the broker's defaults).
    pub fn merged(&self, config: Option<&TopicConfig>) -> Result<Self, String> {
        let mut s = self.clone();
        let Some(c) = config else { return Ok(s) };
        if let Some(v) = c.retention_ms {
            s.retention_ms = v;
        }
        if let Some(v) = c.retention_bytes {
            s.retention_bytes = v;
        }
        if let Some(v) = c.segment_bytes {
            s.segment_bytes = v;
        }
        if let Some(v) = c.segment_ms {
            s.segment_ms = v;
        }
        if let Some(v) = c.fsync_interval_ms {
            s.fsync_interval_ms = v;
        }
        if let Some(v) = c.max_batch_bytes {
            s.max_batch_bytes = v;
        }
        if let Some(v) = c.delete_retention_ms {
            s.delete_retention_ms = v;
        }
        if let Some(v) = c.min_cleanable_dirty_ratio {
            s.min_cleanable_dirty_ratio = v;
        }
        if let Some(v) = c.min_compaction_lag_ms {
            s.min_compaction_lag_ms = v;
        }
        s.cleanup_policy = match ProtoCleanup::try_from(c.cleanup_policy) {
            Ok(ProtoCleanup::Unspecified) => s.cleanup_policy,
            Ok(ProtoCleanup::Delete) => CleanupSetting::Delete,
            Ok(ProtoCleanup::Compact) => CleanupSetting::Compact,
            Ok(ProtoCleanup::CompactDelete) => CleanupSetting::CompactDelete,
            Err(_) => return Err(format!("unknown cleanup_policy {}", c.cleanup_policy)),
        };
        s.fsync = match ProtoFsync::try_from(c.fsync_policy) {
            Ok(ProtoFsync::Unspecified) => s.fsync,
            Ok(ProtoFsync::Always) => FsyncSetting::Always,
            Ok(ProtoFsync::Interval) => FsyncSetting::Interval,
            Ok(ProtoFsync::Never) => FsyncSetting::Never,
            Err(_) => return Err(format!("unknown fsync_policy {}", c.fsync_policy)),
        };
        Ok(s)
    }

    /// Every setting, as the proto's `TopicConfig`.
    pub fn to_proto(&self) -> TopicConfig {
        TopicConfig {
            retention_ms: Some(self.retention_ms),
            retention_bytes: Some(self.retention_bytes),
            segment_bytes: Some(self.segment_bytes),
            segment_ms: Some(self.segment_ms),
            fsync_policy: ProtoFsync::from(self.fsync) as i32,
            fsync_interval_ms: Some(self.fsync_interval_ms),
            max_batch_bytes: Some(self.max_batch_bytes),
            cleanup_policy: ProtoCleanup::from(self.cleanup_policy) as i32,
            delete_retention_ms: Some(self.delete_retention_ms),
            min_cleanable_dirty_ratio: Some(self.min_cleanable_dirty_ratio),
            min_compaction_lag_ms: Some(self.min_compaction_lag_ms),
        }
    }

    pub fn fsync_policy(&self) -> FsyncPolicy {
        match self.fsync {
            FsyncSetting::Always => FsyncPolicy::PerBatch,
            FsyncSetting::Interval => FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms)),
            FsyncSetting::Never => FsyncPolicy::Never,
        }
    }

    /// The log's settings. A `compact`-only topic has no age or size retention: compaction
    /// keeps its latest records forever.
    pub fn log_config(&self) -> LogConfig {
        let deletes = self.cleanup_policy.deletes();
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_max_age: Duration::from_millis(self.segment_ms),
            retention: Retention {
                max_age: u64::try_from(self.retention_ms).ok().filter(|_| deletes).map(Duration::from_millis),
                max_bytes: u64::try_from(self.retention_bytes).ok().filter(|_| deletes),
            },
            ..LogConfig::default()
        }
    }

    /// The cleaner's settings for this topic; `None` when it is not compacted.
    pub fn compaction(&self) -> Option<CompactionPolicy> {
        self.cleanup_policy.compacts().then_some(CompactionPolicy {
            delete_retention_ms: self.delete_retention_ms,
            min_cleanable_dirty_ratio: self.min_cleanable_dirty_ratio,
            min_compaction_lag_ms: self.min_compaction_lag_ms,
        })
    }

    /// Checks every field; the message names the field and the accepted range.
    pub fn validate(&self) -> Result<(), String> {
        if self.retention_ms < -1 || self.retention_ms == 0 {
            return Err(format!("retention_ms must be -1 (forever) or positive, got {}", self.retention_ms));
        }
        if self.retention_bytes < -1 || self.retention_bytes == 0 {
            return Err(format!("retention_bytes must be -1 (no limit) or positive, got {}", self.retention_bytes));
        }
        if self.fsync_interval_ms == 0 || self.fsync_interval_ms > MAX_INTERVAL_MS {
            return Err(format!("fsync_interval_ms must be 1..={MAX_INTERVAL_MS}, got {}", self.fsync_interval_ms));
        }
        if self.segment_ms == 0 || self.segment_ms > MAX_INTERVAL_MS * 3650 {
            return Err(format!("segment_ms must be 1..={}, got {}", MAX_INTERVAL_MS * 3650, self.segment_ms));
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > MAX_BATCH_BYTES_LIMIT {
            return Err(format!("max_batch_bytes must be 1..={MAX_BATCH_BYTES_LIMIT}, got {}", self.max_batch_bytes));
        }
        if self.delete_retention_ms < 0 {
            return Err(format!("delete_retention_ms must be 0 or more, got {}", self.delete_retention_ms));
        }
        if self.min_compaction_lag_ms < 0 {
            return Err(format!("min_compaction_lag_ms must be 0 or more, got {}", self.min_compaction_lag_ms));
        }
        let ratio = self.min_cleanable_dirty_ratio;
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(format!("min_cleanable_dirty_ratio must be above 0 and at most 1, got {ratio}"));
        }
        if u64::from(self.max_batch_bytes) + BATCH_HEADER_LEN as u64 > self.segment_bytes {
            return Err(format!(
                "max_batch_bytes ({}) must not exceed segment_bytes ({})",
                self.max_batch_bytes, self.segment_bytes
            ));
        }
        self.log_config().validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alteration_keeps_the_topics_own_settings_takes_new_ones_and_resets_named_ones() {
        let defaults = TopicSettings::default();
        let created = TopicConfig { retention_ms: Some(1000), segment_bytes: Some(1 << 20), ..TopicConfig::default() };
        let current = defaults.merged(Some(&created)).unwrap();
        let overrides = keys_in(Some(&created));
        assert_eq!(overrides, ["retention_ms", "segment_bytes"]);

        // Defaults that changed since the topic was created apply to what it did not set.
        let newer_defaults = TopicSettings { max_batch_bytes: 4096, retention_ms: 5, ..defaults.clone() };
        let change = TopicConfig { fsync_policy: ProtoFsync::Never as i32, ..TopicConfig::default() };
        let (s, o) = newer_defaults.altered(&current, &overrides, Some(&change), &["segment_bytes".into()]).unwrap();
        assert_eq!(o, ["retention_ms", "fsync_policy"]);
        assert_eq!(s.retention_ms, 1000, "the topic's own setting is kept");
        assert_eq!(s.segment_bytes, defaults.segment_bytes, "a reset setting is the default again");
        assert_eq!(s.max_batch_bytes, 4096, "an unset setting follows the defaults");
        assert_eq!(s.fsync, FsyncSetting::Never);

        let err = defaults.altered(&current, &overrides, None, &["retention".into()]).unwrap_err();
        assert!(err.contains("retention") && err.contains("retention_ms"), "{err}");
        let bad = TopicConfig { fsync_policy: 99, ..TopicConfig::default() };
        assert!(defaults.altered(&current, &overrides, Some(&bad), &[]).is_err());
    }
}
