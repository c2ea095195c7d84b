//! A consumer-group member: prints every record of its assigned partitions and the
//! assignments it gets. Run several at once with the same `--group` to split the partitions;
//! stop one and the others take over its partitions. Exits after `--idle-ms` without records
//! (if given), committing what it printed and leaving the group.
//!
//! ```sh
//! cargo run -p tidelog-examples --bin group_consumer -- --topic orders --group billing
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tidelog::{Client, GroupConfig, GroupConsumer, OffsetReset, RebalanceListener, TopicPartition};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:9690")]
    broker: String,
    #[arg(long, default_value = "orders")]
    topic: String,
    #[arg(long, default_value = "billing")]
    group: String,
    /// Exit after this long without a record.
    #[arg(long)]
    idle_ms: Option<u64>,
}

struct PrintAssignments;

impl RebalanceListener for PrintAssignments {
    fn on_assigned(&self, generation: u32, partitions: &[TopicPartition]) {
        eprintln!("generation {generation}: assigned {partitions:?}");
    }
    fn on_revoked(&self, generation: u32, partitions: &[TopicPartition]) {
        eprintln!("generation {generation}: revoked {partitions:?}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _tracing = tidelog_examples::init_tracing("group_consumer")?;
    let client = Client::connect(&args.broker).await?;
    let mut config = GroupConfig::new(&args.group, &[args.topic.as_str()]);
    config.offset_reset = OffsetReset::Earliest;
    config.listener = Some(Arc::new(PrintAssignments));
    let mut consumer = GroupConsumer::join(client, config).await?;
    loop {
        let next = match args.idle_ms {
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), consumer.next()).await.unwrap_or(None),
            None => consumer.next().await,
        };
        let Some(record) = next else { break };
        // Fetch errors are retried by the consumer (and reported here); fatal ones end it.
        let r = match record {
            Ok(r) => r,
            Err(e) => {
                eprintln!("consumer: {e}");
                continue;
            }
        };
        // Handled inside the record's `process` span: a child of its producer's span, so this
        // service's work shows in the producer's trace.
        let _span = tidelog::trace::process_span(&r, Some(&args.group)).entered();
        tracing::info!(partition = r.partition, offset = r.offset, "processing");
        println!(
            "{}/{} key={} value={}",
            r.partition,
            r.offset,
            String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()),
            String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
        );
    }
    consumer.close().await;
    Ok(())
}
