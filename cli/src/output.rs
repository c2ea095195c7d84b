//! How the client subcommands print: `--format text` (aligned `key=value` lines for people) or
//! `--format json` (one JSON document per command, or one object per line for streams, for
//! scripts and `jq`). Every list and describe goes through here, so both forms show the same
//! fields.

use serde_json::{json, Value};
use tidelog::proto::v1::{CleanupPolicy, FsyncPolicy, PartitionDescription, TopicDescription};

/// `--format` of the admin subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct OutputArg {
    /// Output: `text` for people, `json` for scripts.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub format: OutputFormat,
}

/// Prints a JSON value on one line.
pub fn print_json(v: &Value) {
    println!("{v}");
}

pub fn fsync_name(policy: i32) -> &'static str {
    match FsyncPolicy::try_from(policy) {
        Ok(FsyncPolicy::Always) => "always",
        Ok(FsyncPolicy::Interval) => "interval",
        Ok(FsyncPolicy::Never) => "never",
        _ => "unspecified",
    }
}

fn cleanup_name(c: i32) -> &'static str {
    match CleanupPolicy::try_from(c) {
        Ok(CleanupPolicy::Delete) => "delete",
        Ok(CleanupPolicy::Compact) => "compact",
        Ok(CleanupPolicy::CompactDelete) => "compact,delete",
        _ => "unspecified",
    }
}

/// Whether the topic is compacted (its partitions then show the cleaner's state).
fn compacted(t: &TopicDescription) -> bool {
    t.config.as_ref().is_some_and(|c| {
        matches!(CleanupPolicy::try_from(c.cleanup_policy), Ok(CleanupPolicy::Compact | CleanupPolicy::CompactDelete))
    })
}

/// A topic's settings as `(name, value, source)`, named as the flags spell them.
pub fn topic_settings(t: &TopicDescription) -> Vec<(&'static str, Value, &'static str)> {
    let Some(c) = &t.config else { return Vec::new() };
    let values = [
        ("retention_ms", json!(c.retention_ms.unwrap_or_default())),
        ("retention_bytes", json!(c.retention_bytes.unwrap_or_default())),
        ("segment_bytes", json!(c.segment_bytes.unwrap_or_default())),
        ("segment_ms", json!(c.segment_ms.unwrap_or_default())),
        ("fsync_policy", json!(fsync_name(c.fsync_policy))),
        ("fsync_interval_ms", json!(c.fsync_interval_ms.unwrap_or_default())),
        ("max_batch_bytes", json!(c.max_batch_bytes.unwrap_or_default())),
        ("cleanup_policy", json!(cleanup_name(c.cleanup_policy))),
        ("delete_retention_ms", json!(c.delete_retention_ms.unwrap_or_default())),
        ("min_cleanable_dirty_ratio", json!(c.min_cleanable_dirty_ratio.unwrap_or_default())),
        ("min_compaction_lag_ms", json!(c.min_compaction_lag_ms.unwrap_or_default())),
    ];
    values
        .into_iter()
        .map(|(k, v)| {
            let source = if t.config_overrides.iter().any(|o| o == k) { "topic" } else { "default" };
            (k, v, source)
        })
        .collect()
}

pub fn partition_json(p: &PartitionDescription) -> Value {
    let mut v = json!({
        "partition": p.partition,
        "leader": p.leader_id,
        "replicas": p.replica_ids,
        "in_sync_replicas": p.in_sync_replica_ids,
        "log_start_offset": p.log_start_offset,
        "high_watermark": p.high_watermark,
        "log_end_offset": p.log_end_offset,
        "size_bytes": p.size_bytes,
        "segments": p.segment_count,
    });
    if p.last_cleaned_ms != 0 || p.dirty_ratio != 0.0 || p.cleaned_offset != 0 {
        v["dirty_ratio"] = json!(p.dirty_ratio);
        v["cleaned_offset"] = json!(p.cleaned_offset);
        v["last_cleaned_ms"] = json!(p.last_cleaned_ms);
    }
    if !p.adding_replica_ids.is_empty() || !p.removing_replica_ids.is_empty() {
        v["adding_replicas"] = json!(p.adding_replica_ids);
        v["removing_replicas"] = json!(p.removing_replica_ids);
    }
    v
}

pub fn topic_json(t: &TopicDescription) -> Value {
    let config: serde_json::Map<String, Value> = topic_settings(t)
        .into_iter()
        .map(|(k, v, source)| (k.to_string(), json!({ "value": v, "source": source })))
        .collect();
    json!({
        "name": t.name,
        "partitions": t.partition_count,
        "replication_factor": t.replication_factor,
        "created_at_ms": t.created_at_ms,
        "config": config,
        "partition_details": t.partitions.iter().map(partition_json).collect::<Vec<_>>(),
    })
}

pub fn print_topic(t: &TopicDescription, format: OutputFormat) {
    if format == OutputFormat::Json {
        return print_json(&topic_json(t));
    }
    println!("topic {} partitions={} replication_factor={}", t.name, t.partition_count, t.replication_factor);
    let shown: Vec<String> = topic_settings(t)
        .into_iter()
        .map(|(k, v, source)| format!("{k}={} ({source})", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
        .collect();
    if !shown.is_empty() {
        println!("  config {}", shown.join(" "));
    }
    for p in &t.partitions {
        let leader = if p.leader_id == 0 { "none".to_string() } else { p.leader_id.to_string() };
        println!(
            "  partition {} log_start={} high_watermark={} log_end={} size_bytes={} segments={} leader={leader} replicas={:?}",
            p.partition, p.log_start_offset, p.high_watermark, p.log_end_offset, p.size_bytes, p.segment_count, p.replica_ids
        );
        if compacted(t) {
            let last = if p.last_cleaned_ms == 0 { "never".to_string() } else { format!("{}ms", p.last_cleaned_ms) };
            println!(
                "    cleaner dirty_ratio={:.3} cleaned_offset={} last_cleaned={last}",
                p.dirty_ratio, p.cleaned_offset
            );
        }
    }
}
