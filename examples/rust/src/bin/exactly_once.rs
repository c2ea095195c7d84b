//! Exactly once, consume-transform-produce: reads `--input` as a member of `--group`
//! (read_committed), writes each record transformed to `--output` with the same key, and
//! commits the consumed offsets in the same transaction as the output. Killed at any moment
//! and started again with the same `--transactional-id`, it neither loses nor duplicates a
//! record: the new instance fences the old one and aborts its open transaction, and resumes
//! from the offsets of the last committed transaction.
//!
//! The transform: value `v` of input partition `p` at offset `o` becomes `V|p:o` (`v`
//! upper-cased, then where it came from), so a checker can tell every input record's output.
//!
//! ```sh
//! cargo run -p tidelog-examples --bin exactly_once -- --input orders --output orders-upper \
//!     --group upper --transactional-id upper-1
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use tidelog::{
    Client, Error, GroupConfig, GroupConsumer, IsolationLevel, OffsetReset, Producer, ProducerConfig, Record,
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:9690")]
    broker: String,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    transactional_id: String,
    /// Most records per transaction.
    #[arg(long, default_value_t = 100)]
    per_transaction: usize,
    /// Exit after this long without a record.
    #[arg(long)]
    idle_ms: Option<u64>,
    /// Pretend each record takes this long to process (to watch a kill land mid-transaction).
    #[arg(long, default_value_t = 0)]
    process_ms: u64,
}

/// What one input record becomes.
fn transform(r: &tidelog::ConsumedRecord) -> Record {
    let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_uppercase();
    let mut out = Record::new(format!("{value}|{}:{}", r.partition, r.offset));
    out.key.clone_from(&r.key);
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _tracing = tidelog_examples::init_tracing("exactly_once")?;
    let client = Client::connect(&args.broker).await?;
    let config = ProducerConfig {
        transactional_id: Some(args.transactional_id.clone()),
        transaction_timeout: Duration::from_secs(10),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await?;
    producer.init_transactions().await?;
    let mut group = GroupConfig::new(&args.group, &[args.input.as_str()]);
    group.offset_reset = OffsetReset::Earliest;
    group.isolation = IsolationLevel::ReadCommitted;
    // Offsets are committed only in the producer's transactions.
    group.auto_commit_interval = None;
    group.commit_on_revoke = false;
    let mut consumer = GroupConsumer::join(client, group).await?;
    let idle = Duration::from_millis(args.idle_ms.unwrap_or(u64::MAX / 4));
    loop {
        // Wait for a first record before opening a transaction.
        let first = match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(Ok(r))) => r,
            Ok(Some(Err(e))) => {
                eprintln!("consumer: {e}");
                continue;
            }
            Ok(None) | Err(_) => break,
        };
        let metadata = consumer.group_metadata();
        producer.begin_transaction().await?;
        let mut records = vec![first];
        while records.len() < args.per_transaction {
            match tokio::time::timeout(Duration::from_millis(20), consumer.next()).await {
                Ok(Some(Ok(r))) => records.push(r),
                _ => break,
            }
        }
        let outcome = async {
            for r in &records {
                // Delivery is checked by the commit (it fails if a record was not delivered).
                drop(producer.send(&args.output, transform(r)).await?);
                if args.process_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(args.process_ms)).await;
                }
            }
            // A rebalance (or a lost group session) meanwhile: these records may be someone
            // else's now; abort and let their owner process them from the committed offsets.
            if consumer.group_metadata() != metadata {
                return Err(Error::InvalidArgument("the group rebalanced during the transaction".into()));
            }
            // The offsets of exactly these records (not the consumer's positions now, which a
            // rebalance may have moved): the next offset of each partition they came from.
            let mut next: BTreeMap<(String, u32), u64> = BTreeMap::new();
            for r in &records {
                let at = next.entry((r.topic.to_string(), r.partition)).or_default();
                *at = (*at).max(r.offset + 1);
            }
            let offsets: Vec<(String, u32, u64)> = next.into_iter().map(|((t, p), o)| (t, p, o)).collect();
            producer.send_offsets_to_transaction(&offsets, &metadata).await?;
            producer.commit_transaction().await
        }
        .await;
        match outcome {
            Ok(()) => eprintln!("committed {} records", records.len()),
            Err(e) => {
                eprintln!("transaction failed ({e}); aborting and resuming from the committed offsets");
                if let Err(e) = producer.abort_transaction().await {
                    // Fenced: a newer instance with this transactional id took over.
                    anyhow::bail!("cannot abort: {e}");
                }
                consumer.rewind_to_committed().await?;
            }
        }
    }
    consumer.close().await;
    producer.close().await;
    Ok(())
}
