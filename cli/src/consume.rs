//! `tidelog consume TOPIC`: print records (partition, offset, timestamp, key, value) from the
//! beginning, an offset, a time, or the end; with `--group`, as a member of a consumer group
//! (assigned partitions, committed offsets, commits what was printed).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use tidelog::{Client, ConsumedRecord, GroupConfig, GroupConsumer, OffsetReset, StartAt, Subscription};

use super::BrokerArg;

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    pub topic: String,
    #[command(flatten)]
    pub broker: BrokerArg,
    /// Start at the oldest retained record (default: only new records).
    #[arg(long, conflicts_with_all = ["offset", "from_time_ms"])]
    pub from_beginning: bool,
    /// Start at this offset.
    #[arg(long)]
    pub offset: Option<u64>,
    /// Start at the first batch appended at or after this time (ms since the epoch).
    #[arg(long)]
    pub from_time_ms: Option<i64>,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Join this consumer group: read the partitions it assigns, from its committed offsets,
    /// and commit what was printed.
    #[arg(long)]
    pub group: Option<String>,
    /// With --group: how often to commit printed positions (ms).
    #[arg(long, default_value_t = 1000)]
    pub auto_commit_ms: u64,
    /// With --group: the member's session timeout (ms).
    #[arg(long, default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// Exit after this many records.
    #[arg(long)]
    pub max_records: Option<u64>,
    /// Exit when no record arrives for this long (ms).
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// `partition=P offset=O timestamp=T key=K value=V`
    Text,
    /// One JSON object per line.
    Json,
}

fn show(r: &ConsumedRecord, format: Format) -> String {
    let key = r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned());
    let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
    match format {
        Format::Text => format!(
            "partition={} offset={} timestamp={} key={} value={}",
            r.partition,
            r.offset,
            r.timestamp_ms,
            key.as_deref().unwrap_or("(null)"),
            value
        ),
        Format::Json => serde_json::json!({
            "topic": r.topic, "partition": r.partition, "offset": r.offset,
            "timestamp_ms": r.timestamp_ms, "key": key, "value": value,
            "headers": r.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect::<BTreeMap<_, _>>(),
        })
        .to_string(),
    }
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.broker.broker).await?;
    match args.group.clone() {
        Some(group) => run_group(client, group, &args).await,
        None => run_plain(client, &args).await,
    }
}

/// Exit conditions shared by both modes.
struct Limits {
    max_records: Option<u64>,
    idle: Option<Duration>,
}

impl Limits {
    fn done(&self, printed: u64) -> bool {
        self.max_records.is_some_and(|m| printed >= m)
    }
}

/// Without a group: read the chosen partitions from the chosen position.
async fn run_plain(client: Client, args: &ConsumeArgs) -> anyhow::Result<()> {
    let start = match (args.from_beginning, args.offset, args.from_time_ms) {
        (true, _, _) => StartAt::Earliest,
        (_, Some(o), _) => StartAt::Offset(o),
        (_, _, Some(t)) => StartAt::Timestamp(t),
        _ => StartAt::Latest,
    };
    let mut sub = Subscription::new(&args.topic).start_at(start);
    if let Some(p) = args.partition {
        sub = sub.partition(p, None);
    }
    let mut records = sub.open(&client).await?;
    let limits = Limits { max_records: args.max_records, idle: args.idle_timeout_ms.map(Duration::from_millis) };
    let mut printed = 0u64;
    while !limits.done(printed) {
        let next = match limits.idle {
            Some(d) => tokio::time::timeout(d, records.next()).await.unwrap_or(None),
            None => records.next().await,
        };
        let Some(record) = next else { break };
        print_record(&record?, args.format)?;
        printed += 1;
    }
    Ok(())
}

/// As a member of a consumer group: partitions come from the group's assignment, positions
/// from its committed offsets (`--from-beginning` only where there are none), and what was
/// printed is committed (auto-commit, and at exit before leaving the group).
async fn run_group(client: Client, group: String, args: &ConsumeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.offset.is_none() && args.from_time_ms.is_none() && args.partition.is_none(),
        "--group takes its partitions and positions from the group; drop --offset/--from-time-ms/--partition"
    );
    let mut config = GroupConfig::new(group, &[args.topic.as_str()]);
    config.client_id = "tidelog-cli".into();
    config.offset_reset = if args.from_beginning { OffsetReset::Earliest } else { OffsetReset::Latest };
    config.auto_commit_interval = Some(Duration::from_millis(args.auto_commit_ms));
    config.session_timeout = Duration::from_millis(args.session_timeout_ms);
    config.heartbeat_interval = Duration::from_millis((args.session_timeout_ms / 5).max(100));
    let mut consumer = GroupConsumer::join(client, config).await?;
    let limits = Limits { max_records: args.max_records, idle: args.idle_timeout_ms.map(Duration::from_millis) };
    let mut printed = 0u64;
    while !limits.done(printed) {
        let next = match limits.idle {
            Some(d) => tokio::time::timeout(d, consumer.next()).await.unwrap_or(None),
            None => consumer.next().await,
        };
        let Some(record) = next else { break };
        match record {
            Ok(r) => {
                print_record(&r, args.format)?;
                printed += 1;
            }
            // Fetch errors are retried by the consumer; fatal ones end the stream.
            Err(e) => eprintln!("tidelog: {e}"),
        }
    }
    consumer.close().await; // commits what was printed, then leaves the group
    Ok(())
}

fn print_record(r: &ConsumedRecord, format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", show(r, format))?;
    out.flush()?;
    Ok(())
}
