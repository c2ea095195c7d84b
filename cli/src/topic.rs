//! `tidelog topic create|list|describe|alter|add-partitions|delete-records|delete`.
//! `describe` says where each setting comes from: `(topic)` for one set on the topic,
//! `(default)` for the broker's default. `create` and `delete` take several names (one call
//! each, all sent at once; every failure is reported, and the command fails if any did).

use clap::Subcommand;
use serde_json::json;
use tidelog::proto::v1::{CleanupPolicy, FsyncPolicy, TopicConfig};
use tidelog_server::broker::MAX_PARTITIONS;

use crate::output::{print_json, print_topic, topic_json, OutputFormat};
use crate::FsyncArg;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create one or more topics (all with the same settings).
    Create {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, short = 'p', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PARTITIONS)))]
        partitions: u32,
        /// Replicas of each partition in a cluster (0 = 3, or the cluster size if smaller).
        #[arg(long, short = 'r', default_value_t = 0)]
        replication_factor: u32,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List topics.
    List,
    /// Show a topic's partitions, offsets and settings (with where each comes from).
    Describe { name: String },
    /// Change a topic's settings: the ones given become the topic's own; `--reset NAME` sets
    /// one back to the broker's default (names as `describe` prints them).
    Alter {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
        /// A setting to set back to the broker's default (repeat, or comma-separated).
        #[arg(long, value_delimiter = ',')]
        reset: Vec<String>,
    },
    /// Add partitions to a topic (never removes any). Keyed records then route by the new
    /// count, so a key's later records may land in another partition than its earlier ones.
    AddPartitions {
        name: String,
        /// How many partitions to add (as rpk's --num).
        #[arg(long, short = 'n', conflicts_with = "total", required_unless_present = "total",
              value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PARTITIONS)))]
        num: Option<u32>,
        /// The partition count the topic should have (as kafka-topics --alter --partitions).
        #[arg(long)]
        total: Option<u32>,
    },
    /// Delete the records below an offset (Kafka's DeleteRecords): the partitions' log start
    /// moves up, and reads below it fail as out of range.
    DeleteRecords {
        name: String,
        /// Delete below this offset; `end` (or -1) = below the high watermark (everything
        /// there is now). At most the high watermark.
        #[arg(long, allow_hyphen_values = true)]
        before: String,
        /// Only these partitions (repeat, or comma-separated); default every partition.
        #[arg(long = "partition", short = 'p', value_delimiter = ',')]
        partitions: Vec<u32>,
    },
    /// Delete one or more topics and their data.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// A topic's settings on the command line (each optional: absent = unchanged / default).
#[derive(Debug, clap::Args)]
pub struct SettingsArgs {
    /// Keep data this long (ms); -1 = forever.
    #[arg(long, allow_hyphen_values = true)]
    retention_ms: Option<i64>,
    /// Keep at most this many bytes per partition; -1 = no limit.
    #[arg(long, allow_hyphen_values = true)]
    retention_bytes: Option<i64>,
    /// Roll a segment at this size.
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Roll a segment this long after its first batch.
    #[arg(long)]
    segment_ms: Option<u64>,
    #[arg(long, value_enum)]
    fsync: Option<FsyncArg>,
    #[arg(long)]
    fsync_interval_ms: Option<u64>,
    #[arg(long)]
    max_batch_bytes: Option<u32>,
    /// `delete` (by age and size), `compact` (latest value per key, forever), or
    /// `compact,delete` (both).
    #[arg(long, value_parser = parse_cleanup_policy)]
    cleanup_policy: Option<CleanupPolicy>,
    /// Compacted topics: keep a tombstone this long (ms) after the cleaner first reaches it.
    #[arg(long)]
    delete_retention_ms: Option<i64>,
    /// Compacted topics: clean once this fraction of a partition is dirty (0 < r <= 1).
    #[arg(long)]
    min_cleanable_dirty_ratio: Option<f64>,
    /// Compacted topics: never compact records younger than this (ms).
    #[arg(long)]
    min_compaction_lag_ms: Option<i64>,
}

/// `delete`, `compact`, `compact,delete` (either order), as Kafka spells `cleanup.policy`.
fn parse_cleanup_policy(s: &str) -> Result<CleanupPolicy, String> {
    let mut parts: Vec<&str> = s.split(',').map(str::trim).collect();
    parts.sort_unstable();
    match parts.as_slice() {
        ["delete"] => Ok(CleanupPolicy::Delete),
        ["compact"] => Ok(CleanupPolicy::Compact),
        ["compact", "delete"] => Ok(CleanupPolicy::CompactDelete),
        _ => Err(format!("{s:?}: use delete, compact, or compact,delete")),
    }
}

impl SettingsArgs {
    fn config(&self) -> TopicConfig {
        TopicConfig {
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            fsync_policy: self.fsync.map_or(FsyncPolicy::Unspecified, FsyncPolicy::from) as i32,
            fsync_interval_ms: self.fsync_interval_ms,
            max_batch_bytes: self.max_batch_bytes,
            cleanup_policy: self.cleanup_policy.unwrap_or(CleanupPolicy::Unspecified) as i32,
            delete_retention_ms: self.delete_retention_ms,
            min_cleanable_dirty_ratio: self.min_cleanable_dirty_ratio,
            min_compaction_lag_ms: self.min_compaction_lag_ms,
        }
    }
}

/// `end`/`-1` → `None` (the high watermark), else an offset.
fn parse_before(s: &str) -> anyhow::Result<Option<u64>> {
    match s {
        "end" | "-1" | "hw" => Ok(None),
        o => o.parse().map(Some).map_err(|_| {
            anyhow::anyhow!("--before {o:?} is not an offset: use a number, or `end` for the high watermark")
        }),
    }
}

pub async fn run(broker: &crate::BrokerArg, command: TopicCommand, format: OutputFormat) -> anyhow::Result<()> {
    let client = broker.connect().await?;
    match command {
        TopicCommand::Create { names, partitions, replication_factor, settings } => {
            let config = settings.config();
            let creates = names.iter().map(|name| {
                let client = client.clone();
                async move { client.create_topic_replicated(name, partitions, replication_factor, config).await }
            });
            let results = futures::future::join_all(creates).await;
            report_each(&names, results, |_, t| print_topic(&t, format), format)?;
        }
        TopicCommand::Alter { name, settings, reset } => {
            print_topic(&client.alter_topic_config(&name, settings.config(), &reset).await?, format);
        }
        TopicCommand::AddPartitions { name, num, total } => {
            let total = match (num, total) {
                (_, Some(t)) => t,
                (Some(n), None) => {
                    let now = client.describe_topic(&name).await?.partition_count;
                    now.checked_add(n).ok_or_else(|| anyhow::anyhow!("--num {n} is too many partitions"))?
                }
                (None, None) => anyhow::bail!("give --num or --total"),
            };
            print_topic(&client.create_partitions(&name, total).await?, format);
        }
        TopicCommand::DeleteRecords { name, before, partitions } => {
            let before = parse_before(&before)?;
            let partitions = if partitions.is_empty() {
                (0..client.describe_topic(&name).await?.partition_count).collect()
            } else {
                partitions
            };
            let asked: Vec<(u32, Option<u64>)> = partitions.iter().map(|p| (*p, before)).collect();
            let lows = client.delete_records(&name, &asked).await?;
            match format {
                OutputFormat::Json => print_json(&json!(lows
                    .iter()
                    .map(|(p, low)| json!({"topic": name, "partition": p, "log_start_offset": low}))
                    .collect::<Vec<_>>())),
                OutputFormat::Text => {
                    for (p, low) in lows {
                        println!("{name}/{p} log_start={low}");
                    }
                }
            }
        }
        TopicCommand::List => {
            let topics = client.list_topics().await?;
            match format {
                OutputFormat::Json => print_json(&json!(topics.iter().map(topic_json).collect::<Vec<_>>())),
                OutputFormat::Text => {
                    for t in topics {
                        println!(
                            "{}\tpartitions={} replication_factor={}",
                            t.name, t.partition_count, t.replication_factor
                        );
                    }
                }
            }
        }
        TopicCommand::Describe { name } => print_topic(&client.describe_topic(&name).await?, format),
        TopicCommand::Delete { names } => {
            let deletes = names.iter().map(|name| {
                let client = client.clone();
                async move { client.delete_topic(name).await }
            });
            let results = futures::future::join_all(deletes).await;
            report_each(
                &names,
                results,
                |name, ()| match format {
                    OutputFormat::Json => print_json(&json!({"topic": name, "deleted": true})),
                    OutputFormat::Text => println!("deleted topic {name}"),
                },
                format,
            )?;
        }
    }
    Ok(())
}

/// Reports the outcome of one call per name: each success with `ok`, each failure on stderr
/// (in JSON mode, as an object on stdout); fails if any call did.
fn report_each<T, E: Into<anyhow::Error>>(
    names: &[String],
    results: Vec<Result<T, E>>,
    ok: impl Fn(&str, T),
    format: OutputFormat,
) -> anyhow::Result<()> {
    let mut failed = 0;
    for (name, result) in names.iter().zip(results) {
        match result {
            Ok(v) => ok(name, v),
            Err(e) => {
                failed += 1;
                let message = crate::error_text(&e.into());
                match format {
                    OutputFormat::Json => print_json(&json!({"topic": name, "error": message})),
                    OutputFormat::Text => eprintln!("tidelog: error: {message}"),
                }
            }
        }
    }
    if failed > 0 {
        return Err(crate::Reported(format!("{failed} of {} topics failed", names.len())).into());
    }
    Ok(())
}
