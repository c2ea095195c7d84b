//! `tidelog produce TOPIC`: each stdin line becomes a record (optionally `key<SEP>value`),
//! sent through the SDK producer (batching, compression, idempotent retries). Every delivery
//! is awaited; the command fails if any record was not stored.

use std::time::Duration;

use tidelog::proto::v1::Acks;
use tidelog::{Client, Compression, DeliveryFuture, Producer, ProducerConfig, Record};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

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
    #[arg(long, value_enum, default_value = "lz4")]
    pub compression: CompressionArg,
    /// How long a batch waits for more lines.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Print where each record landed.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    None,
    Lz4,
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.broker.broker).await?;
    let config = ProducerConfig {
        linger: Duration::from_millis(args.linger_ms),
        acks: args.acks.into(),
        // Idempotence needs acks=all; with weaker acks the user chose speed over exactly-once.
        idempotence: args.acks == AcksArg::All,
        compression: args.compression.into(),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await?;
    // Deliveries are awaited in order by a separate task, so reading stdin never waits on acks.
    let (deliveries, mut pending) = mpsc::channel::<DeliveryFuture>(100_000);
    let verbose = args.verbose;
    let results = tokio::spawn(async move {
        let (mut ok, mut first_error) = (0u64, None);
        while let Some(d) = pending.recv().await {
            match d.await {
                Ok(m) => {
                    ok += 1;
                    if verbose {
                        eprintln!("partition={} offset={}", m.partition, m.offset);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        (ok, first_error)
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let record = match args.key_separator.as_deref().and_then(|sep| line.split_once(sep)) {
            Some((k, v)) => Record::new(v.to_string()).with_key(k.to_string()),
            None => Record::new(line),
        };
        let delivery = match args.partition {
            Some(p) => producer.send_to(&args.topic, p, record).await?,
            None => producer.send(&args.topic, record).await?,
        };
        if deliveries.send(delivery).await.is_err() {
            break;
        }
    }
    producer.close().await;
    drop(deliveries);
    let (ok, first_error) = results.await?;
    eprintln!("produced {ok} records to {}", args.topic);
    match first_error {
        Some(e) => anyhow::bail!("some records were not stored; first error: {e}"),
        None => Ok(()),
    }
}
