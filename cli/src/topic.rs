//! `tidelog topic create|list|describe|alter|delete`. `describe` says where each setting
//! comes from: `(topic)` for one set on the topic, `(default)` for the broker's default.

use clap::Subcommand;
use tidelog::proto::v1::{DeleteTopicRequest, FsyncPolicy, ListTopicsRequest, TopicConfig, TopicDescription};
use tidelog::Client;
use tidelog_server::broker::MAX_PARTITIONS;

use crate::FsyncArg;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
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
    /// Delete a topic and its data.
    Delete { name: String },
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
        }
    }
}

fn fsync_name(policy: i32) -> &'static str {
    match FsyncPolicy::try_from(policy) {
        Ok(FsyncPolicy::Always) => "always",
        Ok(FsyncPolicy::Interval) => "interval",
        Ok(FsyncPolicy::Never) => "never",
        _ => "unspecified",
    }
}

fn print_topic(t: &TopicDescription) {
    println!("topic {} partitions={} replication_factor={}", t.name, t.partition_count, t.replication_factor);
    if let Some(c) = &t.config {
        let values = [
            ("retention_ms", c.retention_ms.unwrap_or_default().to_string()),
            ("retention_bytes", c.retention_bytes.unwrap_or_default().to_string()),
            ("segment_bytes", c.segment_bytes.unwrap_or_default().to_string()),
            ("segment_ms", c.segment_ms.unwrap_or_default().to_string()),
            ("fsync_policy", fsync_name(c.fsync_policy).to_string()),
            ("fsync_interval_ms", c.fsync_interval_ms.unwrap_or_default().to_string()),
            ("max_batch_bytes", c.max_batch_bytes.unwrap_or_default().to_string()),
        ];
        let shown: Vec<String> = values
            .iter()
            .map(|(k, v)| {
                let source = if t.config_overrides.iter().any(|o| o == k) { "topic" } else { "default" };
                format!("{k}={v} ({source})")
            })
            .collect();
        println!("  config {}", shown.join(" "));
    }
    for p in &t.partitions {
        println!(
            "  partition {} log_start={} high_watermark={} log_end={} size_bytes={} segments={} leader={} replicas={:?}",
            p.partition,
            p.log_start_offset,
            p.high_watermark,
            p.log_end_offset,
            p.size_bytes,
            p.segment_count,
            p.leader_id,
            p.replica_ids
        );
    }
}

pub async fn run(broker: &str, command: TopicCommand) -> anyhow::Result<()> {
    let client = Client::connect(broker).await?;
    match command {
        TopicCommand::Create { name, partitions, replication_factor, settings } => {
            let t = client.create_topic_replicated(&name, partitions, replication_factor, settings.config()).await?;
            print_topic(&t);
        }
        TopicCommand::Alter { name, settings, reset } => {
            print_topic(&client.alter_topic_config(&name, settings.config(), &reset).await?);
        }
        TopicCommand::List => {
            for t in client.admin().list_topics(ListTopicsRequest {}).await?.into_inner().topics {
                println!("{}\tpartitions={}", t.name, t.partition_count);
            }
        }
        TopicCommand::Describe { name } => print_topic(&client.describe_topic(&name).await?),
        TopicCommand::Delete { name } => {
            client.admin().delete_topic(DeleteTopicRequest { name: name.clone() }).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}
