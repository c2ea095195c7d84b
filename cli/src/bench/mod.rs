//! `tidelog bench produce|consume|e2e`: the load tool. Owns the command-line arguments, topic
//! set-up, the record payloads and the dispatch to each mode; the modes live in `produce.rs`,
//! `consume.rs` and `e2e.rs`, the progress line, histogram and final table in `report.rs`.
//!
//! Every run is bounded by a record count and by `--duration` (seconds), and talks to one
//! broker (loopback in `scripts/bench.sh`). Latencies go into an HDR histogram; with a target
//! `--rate`, they are measured from each batch's *intended* send time, so a stalled broker
//! shows up as latency instead of silently lowering the offered load (coordinated omission).

mod consume;
mod e2e;
mod produce;
mod report;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tidelog::proto::v1::{Acks, FsyncPolicy, TopicConfig};
use tidelog::{Client, Compression};

use super::produce::{AcksArg, CompressionArg};
use super::BrokerArg;
use crate::FsyncArg;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Throughput of producers (pre-encoded batches on raw Produce streams, or the SDK).
    Produce,
    /// Read a topic from the earliest offset to its end as fast as possible (pre-fills it).
    Consume,
    /// Produce at `--rate` and measure produce→deliver latency through a live subscription.
    E2e,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    #[command(flatten)]
    pub broker: BrokerArg,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of the topic if the bench creates it.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Records to produce, exactly (consume: to read, pre-filling the topic up to this many).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Delete the topic after the run, if the bench created it.
    #[arg(long)]
    pub delete_topic: bool,
    /// Stop after this many seconds even if `--records` are not done.
    #[arg(long, alias = "max-seconds", default_value_t = 60)]
    pub duration: u64,
    /// Value bytes per record.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records per batch (raw mode; with --sdk the batch size limit is derived from it).
    #[arg(long, default_value_t = 256)]
    pub batch_records: usize,
    /// Raw produce: give records keys `key-00000000`.. cycling over this many (0 = no keys), for
    /// compacted topics. Each key's value is rewritten once per cycle.
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// Batches in flight per producer stream (raw mode).
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
    /// Concurrent producers, each with its own connection and Produce stream.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Concurrent consumers (consume, e2e); the partitions are split among them.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Default `leader`, unlike `produce`'s `all`: the bench measures the broker's append
    /// path; `--acks all` measures the replicated (and, with --sdk, idempotent) one.
    #[arg(long, value_enum, default_value = "leader")]
    pub acks: AcksArg,
    /// fsync policy of the topic if the bench creates it.
    #[arg(long, value_enum, default_value = "interval")]
    pub fsync: FsyncArg,
    /// Batch compression. Default `none`, unlike `produce`'s and the SDKs' `lz4`: so the
    /// figures are the broker's, not the compressor's (the payload is text-like and
    /// compresses about 2-3x with lz4).
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    /// Target records/s over all producers (0 = as fast as possible). Latency is then measured
    /// from each batch's intended send time (corrected for coordinated omission).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Produce through the SDK producer (per-record `send`, accumulator, idempotence) instead
    /// of pre-encoded batches on raw streams; consume record by record through the SDK's
    /// `Subscription::open` stream instead of counting raw batches.
    #[arg(long)]
    pub sdk: bool,
    /// With --sdk: linger in ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// consume: bytes per Subscribe response (the broker caps it at 8 MiB).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_bytes: u32,
    /// consume: decode every batch into records (CRC check, protobuf decode) as an application
    /// would, instead of counting records from the batch header.
    #[arg(long)]
    pub decode: bool,
    /// e2e: seconds at the start whose records are not in the latency histogram.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// With --sdk: a transactional producer, committing every this many records (0: none).
    /// Needs --acks all.
    #[arg(long, default_value_t = 0)]
    pub transaction_records: u64,
    /// e2e: which records the subscriptions read (read-committed: only committed transactions).
    #[arg(long, value_enum, default_value = "read-uncommitted")]
    pub isolation_level: crate::consume::Isolation,
    /// Print the final result as one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    fn compression(&self) -> Compression {
        self.compression.into()
    }

    fn acks(&self) -> Acks {
        self.acks.into()
    }

    /// The SDK producer's settings for `--sdk` runs (idempotence goes with acks=all, as in
    /// the SDK's defaults; batches sized from `--batch-records`).
    fn producer_config(&self, producer: usize) -> tidelog::ProducerConfig {
        let acks = self.acks();
        let transactional_id =
            (self.transaction_records > 0).then(|| format!("bench-{}-{producer}", std::process::id()));
        tidelog::ProducerConfig {
            transactional_id,
            acks,
            idempotence: acks == Acks::All,
            compression: self.compression(),
            linger: std::time::Duration::from_millis(self.linger_ms),
            max_batch_bytes: (self.batch_records * (self.record_size + 16)).min(900 * 1024),
            ..tidelog::ProducerConfig::default()
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.acks != AcksArg::None, "bench needs acknowledgements: use --acks leader or all");
    anyhow::ensure!(args.producers >= 1 && args.consumers >= 1, "--producers and --consumers must be at least 1");
    anyhow::ensure!(
        args.batch_records >= 1 && args.in_flight >= 1,
        "--batch-records and --in-flight must be at least 1"
    );
    anyhow::ensure!(
        args.transaction_records == 0 || (args.sdk && args.acks == AcksArg::All),
        "--transaction-records needs --sdk and --acks all"
    );
    let client = args.broker.connect().await?;
    let created = ensure_topic(&client, &args).await?;
    let summary = match args.mode {
        Mode::Produce => produce::run(&args).await,
        Mode::Consume => consume::run(&client, &args).await,
        Mode::E2e => e2e::run(&client, &args).await,
    };
    if args.delete_topic && created {
        let req = tidelog::proto::v1::DeleteTopicRequest { name: args.topic.clone() };
        client.admin().delete_topic(req).await?;
        if !args.quiet {
            eprintln!("deleted topic {}", args.topic);
        }
    }
    summary?.print(args.json)
}

/// Creates the topic with the bench's partitions and fsync policy unless it exists; whether
/// it did.
async fn ensure_topic(client: &Client, args: &BenchArgs) -> anyhow::Result<bool> {
    if client.describe_topic(&args.topic).await.is_ok() {
        return Ok(false);
    }
    let fsync_policy = FsyncPolicy::from(args.fsync) as i32;
    client.create_topic_with(&args.topic, args.partitions, TopicConfig { fsync_policy, ..Default::default() }).await?;
    Ok(true)
}

/// Record values: text-like bytes (words from a small vocabulary), so compression has
/// something realistic to do — neither one repeated byte nor incompressible noise.
fn values(size: usize, count: usize, seed: u64) -> Vec<Bytes> {
    const WORDS: &[&str] = &[
        "order",
        "user",
        "id",
        "amount",
        "currency",
        "EUR",
        "USD",
        "status",
        "paid",
        "shipped",
        "true",
        "false",
        "timestamp",
        "region",
        "eu-west",
        "us-east",
        "sku",
        "qty",
        "price",
        "cart",
        "session",
        "click",
        "view",
        "null",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut v = Vec::with_capacity(size + 16);
            while v.len() < size {
                v.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes());
                v.push(if rng.gen_bool(0.5) { b' ' } else { b':' });
                let n: u32 = rng.gen_range(0..100_000);
                v.extend_from_slice(n.to_string().as_bytes());
                v.push(b',');
            }
            v.truncate(size);
            Bytes::from(v)
        })
        .collect()
}
