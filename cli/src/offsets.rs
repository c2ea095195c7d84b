//! `tidelog offsets TOPIC`: each partition's earliest and latest offsets (log start and high
//! watermark), or with `--time`, the first offset appended at or after a time (Kafka's
//! ListOffsets; `kafka-get-offsets`, `rpk topic describe -p`).

use serde_json::json;
use tidelog::{Client, OffsetSpecKind};

use crate::output::{print_json, OutputFormat};
use crate::BrokerArg;

#[derive(Debug, clap::Args)]
pub struct OffsetsArgs {
    pub topic: String,
    #[command(flatten)]
    pub broker: BrokerArg,
    /// The first offset appended at or after this time (ms since the epoch); a partition
    /// with nothing that new answers its high watermark.
    #[arg(long)]
    pub time: Option<i64>,
    /// Only these partitions (repeat, or comma-separated); default every partition.
    #[arg(long = "partition", short = 'p', value_delimiter = ',')]
    pub partitions: Vec<u32>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

async fn list(
    client: &Client,
    args: &OffsetsArgs,
    spec: OffsetSpecKind,
) -> anyhow::Result<Vec<(u32, u64, Option<i64>)>> {
    Ok(client.list_offsets(&args.topic, &args.partitions, spec).await?)
}

pub async fn run(args: OffsetsArgs) -> anyhow::Result<()> {
    let client = args.broker.connect().await?;
    let topic = &args.topic;
    if let Some(t) = args.time {
        let found = list(&client, &args, OffsetSpecKind::TimestampMs(t)).await?;
        for (p, offset, ts) in found {
            match args.format {
                OutputFormat::Json => {
                    print_json(&json!({"topic": topic, "partition": p, "offset": offset, "timestamp_ms": ts}));
                }
                OutputFormat::Text => match ts {
                    Some(ts) => println!("{topic}/{p} offset={offset} timestamp={ts}"),
                    None => println!("{topic}/{p} offset={offset} (nothing at or after {t})"),
                },
            }
        }
        return Ok(());
    }
    let earliest = list(&client, &args, OffsetSpecKind::Earliest(true)).await?;
    let latest = list(&client, &args, OffsetSpecKind::Latest(true)).await?;
    for ((p, start, _), (_, end, _)) in earliest.into_iter().zip(latest) {
        match args.format {
            OutputFormat::Json => {
                print_json(&json!({"topic": topic, "partition": p, "earliest": start, "latest": end}));
            }
            OutputFormat::Text => {
                println!("{topic}/{p} earliest={start} latest={end} records={}", end.saturating_sub(start))
            }
        }
    }
    Ok(())
}
