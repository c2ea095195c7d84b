//! `tidelog produce TOPIC`: each stdin line becomes a record (optionally `key<SEP>value`).
//! Lines are batched: a batch is sent when `--batch-records` lines are queued or when stdin
//! has been quiet for `--linger-ms`, so both pipes and typing work.

use std::time::Duration;

use tidelog::proto::v1::Acks;
use tidelog::{Client, Producer, Record};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::BrokerArg;

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    pub topic: String,
    #[command(flatten)]
    pub broker: BrokerArg,
    /// Split each line at the first occurrence of this into key and value.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Send every record to this partition (default: by key, keyless records sticky).
    #[arg(long)]
    pub partition: Option<u32>,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    #[arg(long, default_value_t = 50)]
    pub linger_ms: u64,
    /// Print where each batch landed.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AcksArg {
    None,
    Leader,
    All,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Self {
        match a {
            AcksArg::None => Acks::None,
            AcksArg::Leader => Acks::Leader,
            AcksArg::All => Acks::All,
        }
    }
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.broker.broker).await?;
    let mut producer = Producer::new(client, &args.topic)
        .await?
        .with_acks(args.acks.into());
    if let Some(p) = args.partition {
        anyhow::ensure!(
            p < producer.partitions(),
            "partition {p} does not exist: topic has {}",
            producer.partitions()
        );
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut queued = 0usize;
    let mut total = 0u64;
    loop {
        let line = if queued == 0 {
            lines.next_line().await?
        } else {
            match tokio::time::timeout(Duration::from_millis(args.linger_ms), lines.next_line())
                .await
            {
                Ok(line) => line?,
                Err(_) => {
                    total += flush(&mut producer, args.verbose).await?;
                    queued = 0;
                    continue;
                }
            }
        };
        let Some(line) = line else { break };
        let record = match args
            .key_separator
            .as_deref()
            .and_then(|sep| line.split_once(sep))
        {
            Some((k, v)) => Record::new(v.to_string()).with_key(k.to_string()),
            None => Record::new(line),
        };
        match args.partition {
            Some(p) => producer.send_to(p, record),
            None => {
                producer.send(record);
            }
        }
        queued += 1;
        if queued >= args.batch_records {
            total += flush(&mut producer, args.verbose).await?;
            queued = 0;
        }
    }
    total += flush(&mut producer, args.verbose).await?;
    eprintln!("produced {total} records to {}", args.topic);
    Ok(())
}

async fn flush(producer: &mut Producer, verbose: bool) -> anyhow::Result<u64> {
    let delivered = producer.flush().await?;
    if verbose {
        for d in &delivered {
            eprintln!(
                "partition={} base_offset={} records={}",
                d.partition, d.base_offset, d.record_count
            );
        }
    }
    Ok(delivered.iter().map(|d| u64::from(d.record_count)).sum())
}
