//! Produces `--count` keyed records to a topic (created with 3 partitions if missing) with the
//! SDK's idempotent, batching producer, and waits for every delivery. Each record's `send`
//! span is exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (its context travels in the
//! record's `traceparent` header).
//!
//! ```sh
//! cargo run -p tidelog-examples --bin producer -- --topic orders --count 1000
//! ```

use clap::Parser;
use tidelog::{Client, Producer, ProducerConfig, Record};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:9690")]
    broker: String,
    #[arg(long, default_value = "orders")]
    topic: String,
    #[arg(long, default_value_t = 1000)]
    count: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _tracing = tidelog_examples::init_tracing("producer")?;
    let client = Client::connect(&args.broker).await?;
    if client.describe_topic(&args.topic).await.is_err() {
        client.create_topic(&args.topic, 3).await?;
    }
    let producer = Producer::new(client, ProducerConfig::default()).await?;
    let mut deliveries = Vec::new();
    for i in 0..args.count {
        // Same customer → same partition → that customer's orders stay in order.
        let record = Record::new(format!("order-{i}")).with_key(format!("customer-{}", i % 10));
        deliveries.push(producer.send(&args.topic, record).await?);
    }
    let mut per_partition = std::collections::BTreeMap::new();
    for d in deliveries {
        let m = d.await?;
        *per_partition.entry(m.partition).or_insert(0u64) += 1;
    }
    producer.close().await;
    println!("delivered {} records to {}: {per_partition:?} per partition", args.count, args.topic);
    Ok(())
}
