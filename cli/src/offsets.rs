//! `tidelog offsets TOPIC`: each partition's earliest and latest offsets (log start and high
//! watermark), or with `--time`, the first offset appended at or after a time (Kafka's
//! ListOffsets; `kafka-get-offsets`, `rpk topic describe -p`).

use serde_json::json;
use tidelog::proto::v1::{offset_spec, ListOffsetsRequest, OffsetSpec};
use tidelog::Client;

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

async fn list(client: &Client, args: &OffsetsArgs, spec: offset_spec::Spec) -> anyhow::Result<Vec<(u32, u64, i64)>> {
    let req = ListOffsetsRequest {
        topic: args.topic.clone(),
        partitions: args.partitions.clone(),
        spec: Some(OffsetSpec { spec: Some(spec) }),
    };
    let offsets = client.admin().list_offsets(req).await?.into_inner().offsets;
    Ok(offsets.into_iter().map(|o| (o.partition, o.offset, o.timestamp_ms)).collect())
}

pub async fn run(args: OffsetsArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.broker.broker).await?;
    let topic = &args.topic;
    if let Some(t) = args.time {
        let found = list(&client, &args, offset_spec::Spec::TimestampMs(t)).await?;
        for (p, offset, ts) in found {
            match args.format {
                OutputFormat::Json => print_json(
                    &json!({"topic": topic, "partition": p, "offset": offset, "timestamp_ms": (ts >= 0).then_some(ts)}),
                ),
                OutputFormat::Text if ts < 0 => println!("{topic}/{p} offset={offset} (nothing at or after {t})"),
                OutputFormat::Text => println!("{topic}/{p} offset={offset} timestamp={ts}"),
            }
        }
        return Ok(());
    }
    let earliest = list(&client, &args, offset_spec::Spec::Earliest(true)).await?;
    let latest = list(&client, &args, offset_spec::Spec::Latest(true)).await?;
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
