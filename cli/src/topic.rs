//! `tidelog topic create|list|describe|delete`.

use clap::Subcommand;
use tidelog::proto::v1::{DeleteTopicRequest, FsyncPolicy, ListTopicsRequest, TopicConfig, TopicDescription};
use tidelog::Client;

use crate::FsyncArg;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: u32,
        /// Replicas of each partition in a cluster (0 = 3, or the cluster size if smaller).
        #[arg(long, short = 'r', default_value_t = 0)]
        replication_factor: u32,
        /// Keep data this long (ms); -1 = forever.
        #[arg(long, allow_hyphen_values = true)]
        retention_ms: Option<i64>,
        /// Keep at most this many bytes per partition; -1 = no limit.
        #[arg(long, allow_hyphen_values = true)]
        retention_bytes: Option<i64>,
        #[arg(long)]
        segment_bytes: Option<u64>,
        #[arg(long)]
        segment_ms: Option<u64>,
        #[arg(long, value_enum)]
        fsync: Option<FsyncArg>,
        #[arg(long)]
        fsync_interval_ms: Option<u64>,
        #[arg(long)]
        max_batch_bytes: Option<u32>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions, offsets and settings.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

fn print_topic(t: &TopicDescription) {
    println!("topic {} partitions={} replication_factor={}", t.name, t.partition_count, t.replication_factor);
    if let Some(c) = &t.config {
        println!(
            "  config retention_ms={} retention_bytes={} segment_bytes={} segment_ms={} fsync={:?} fsync_interval_ms={} max_batch_bytes={}",
            c.retention_ms.unwrap_or_default(),
            c.retention_bytes.unwrap_or_default(),
            c.segment_bytes.unwrap_or_default(),
            c.segment_ms.unwrap_or_default(),
            FsyncPolicy::try_from(c.fsync_policy).unwrap_or(FsyncPolicy::Unspecified),
            c.fsync_interval_ms.unwrap_or_default(),
            c.max_batch_bytes.unwrap_or_default()
        );
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
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            retention_ms,
            retention_bytes,
            segment_bytes,
            segment_ms,
            fsync,
            fsync_interval_ms,
            max_batch_bytes,
        } => {
            let config = TopicConfig {
                retention_ms,
                retention_bytes,
                segment_bytes,
                segment_ms,
                fsync_policy: fsync.map_or(FsyncPolicy::Unspecified, FsyncPolicy::from) as i32,
                fsync_interval_ms,
                max_batch_bytes,
            };
            let t = client.create_topic_replicated(&name, partitions, replication_factor, config).await?;
            print_topic(&t);
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
