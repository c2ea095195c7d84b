//! `tidelog consume TOPIC`: print records from the beginning, an offset, the last N per
//! partition, a time, or the end (kcat's `-o`), until `--end` (the high watermarks at start),
//! a count or an idle timeout; with `--group`, as a member of a consumer group (assigned
//! partitions, committed offsets, commits what was printed).
//!
//! Output: `--format text` (`partition=P offset=O ...`), `json` (one object per line), or a
//! kcat format string (`--format '%k=%v\n'`, `render.rs`); keys and values as text, hex,
//! base64 or raw bytes (`--key-encoding`, `--value-encoding`).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use tidelog::proto::v1::{offset_spec, ListOffsetsRequest, OffsetSpec};
use tidelog::{Client, ConsumedRecord, GroupConfig, GroupConsumer, IsolationLevel, OffsetReset, StartAt, Subscription};

use super::BrokerArg;
use crate::render::{Encoding, Template};

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    pub topic: String,
    #[command(flatten)]
    pub broker: BrokerArg,
    /// Start at the oldest retained record (default: only new records).
    #[arg(long, conflicts_with_all = ["offset", "from_time_ms"])]
    pub from_beginning: bool,
    /// Where to start, per partition: `beginning`, `end`, an offset `N`, `-N` (the last N
    /// records), or `@MS` (the first record at or after a time, ms since the epoch).
    #[arg(long, short = 'o', allow_hyphen_values = true)]
    pub offset: Option<String>,
    /// Start at the first batch appended at or after this time (ms since the epoch).
    #[arg(long)]
    pub from_time_ms: Option<i64>,
    /// Read only this partition.
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// Exit once every partition's high watermark at start is reached (kcat's -e).
    #[arg(long, short = 'e', conflicts_with = "group")]
    pub end: bool,
    /// Join this consumer group: read the partitions it assigns, from its committed offsets,
    /// and commit what was printed.
    #[arg(long, short = 'g')]
    pub group: Option<String>,
    /// With --group: how often to commit printed positions (ms).
    #[arg(long, default_value_t = 1000)]
    pub auto_commit_ms: u64,
    /// With --group: the member's session timeout (ms).
    #[arg(long, default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// Exit after this many records.
    #[arg(long, short = 'c')]
    pub max_records: Option<u64>,
    /// Exit when no record arrives for this long (ms).
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// `text`, `json` (one object per line), or a format string such as '%p:%o %k=%v\n'
    /// (tokens: %t %p %o %k %v %T %h %K %S %%).
    #[arg(long, short = 'f', default_value = "text")]
    pub format: String,
    #[arg(long, value_enum, default_value = "text")]
    pub key_encoding: Encoding,
    #[arg(long, value_enum, default_value = "text")]
    pub value_encoding: Encoding,
    /// Which records to read (Kafka's isolation.level): `read_uncommitted` (everything below
    /// the high watermark) or `read_committed` (only committed transactions' records, up to
    /// the last stable offset).
    #[arg(long, value_enum, default_value = "read-uncommitted", conflicts_with = "end")]
    pub isolation_level: Isolation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    ReadUncommitted,
    ReadCommitted,
}

impl Isolation {
    pub fn level(self) -> IsolationLevel {
        match self {
            Self::ReadUncommitted => IsolationLevel::ReadUncommitted,
            Self::ReadCommitted => IsolationLevel::ReadCommitted,
        }
    }
}

/// How records are printed.
enum Printer {
    Text,
    Json,
    Template(Template),
}

impl Printer {
    fn new(args: &ConsumeArgs) -> anyhow::Result<Self> {
        let printer = match args.format.as_str() {
            "text" => Self::Text,
            "json" => Self::Json,
            f if f.contains('%') => Self::Template(Template::parse(f).map_err(|e| anyhow::anyhow!("--format: {e}"))?),
            f => anyhow::bail!("--format {f:?}: use text, json, or a format string with %-tokens such as '%k %v\\n'"),
        };
        if matches!(printer, Self::Json) && [args.key_encoding, args.value_encoding].contains(&Encoding::Raw) {
            anyhow::bail!("--format json cannot carry raw bytes: use text, hex or base64 encoding");
        }
        Ok(printer)
    }

    fn print(&self, r: &ConsumedRecord, keys: Encoding, values: Encoding, out: &mut Vec<u8>) {
        match self {
            Self::Template(t) => t.render(r, keys, values, out),
            Self::Text => {
                let show = |b: &Option<bytes::Bytes>, e: Encoding, out: &mut Vec<u8>| match b {
                    Some(b) => e.encode(b, out),
                    None => out.extend_from_slice(b"(null)"),
                };
                out.extend_from_slice(
                    format!("partition={} offset={} timestamp={} key=", r.partition, r.offset, r.timestamp_ms)
                        .as_bytes(),
                );
                show(&r.key, keys, out);
                out.extend_from_slice(b" value=");
                show(&r.value, values, out);
                out.push(b'\n');
            }
            Self::Json => {
                let headers: BTreeMap<&str, String> =
                    r.headers.iter().map(|(k, v)| (k.as_str(), values.encode_string(v))).collect();
                let line = serde_json::json!({
                    "topic": &*r.topic, "partition": r.partition, "offset": r.offset,
                    "timestamp_ms": r.timestamp_ms,
                    "key": r.key.as_ref().map(|k| keys.encode_string(k)),
                    "value": r.value.as_ref().map(|v| values.encode_string(v)),
                    "headers": headers,
                });
                out.extend_from_slice(line.to_string().as_bytes());
                out.push(b'\n');
            }
        }
    }
}

/// Where to start, as `-o` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    At(StartAt),
    /// The last N records of each partition.
    Last(u64),
}

fn parse_start(args: &ConsumeArgs) -> anyhow::Result<Start> {
    if args.from_beginning {
        return Ok(Start::At(StartAt::Earliest));
    }
    if let Some(t) = args.from_time_ms {
        return Ok(Start::At(StartAt::Timestamp(t)));
    }
    let Some(o) = args.offset.as_deref() else { return Ok(Start::At(StartAt::Latest)) };
    let bad = || anyhow::anyhow!("--offset {o:?}: use beginning, end, an offset, -N (the last N) or @MS (a time)");
    Ok(match o {
        "beginning" | "earliest" | "start" => Start::At(StartAt::Earliest),
        "end" | "latest" => Start::At(StartAt::Latest),
        o if o.starts_with('-') => Start::Last(o[1..].parse().map_err(|_| bad())?),
        o if o.starts_with('@') => Start::At(StartAt::Timestamp(o[1..].parse().map_err(|_| bad())?)),
        o => Start::At(StartAt::Offset(o.parse().map_err(|_| bad())?)),
    })
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = args.broker.connect().await?;
    let printer = Printer::new(&args)?;
    let start = parse_start(&args)?;
    match args.group.clone() {
        Some(group) => run_group(client, group, &args, &printer, start).await,
        None => run_plain(client, &args, &printer, start).await,
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

/// Each partition's log start and high watermark (ListOffsets: answered for partitions held
/// on other brokers too).
async fn bounds(client: &Client, topic: &str, partitions: &[u32]) -> anyhow::Result<BTreeMap<u32, (u64, u64)>> {
    let ask = |spec| ListOffsetsRequest {
        topic: topic.to_string(),
        partitions: partitions.to_vec(),
        spec: Some(OffsetSpec { spec: Some(spec) }),
        isolation_level: 0,
    };
    let earliest = client.admin().list_offsets(ask(offset_spec::Spec::Earliest(true))).await?.into_inner();
    let latest = client.admin().list_offsets(ask(offset_spec::Spec::Latest(true))).await?.into_inner();
    let mut out: BTreeMap<u32, (u64, u64)> = earliest.offsets.iter().map(|o| (o.partition, (o.offset, 0))).collect();
    for o in latest.offsets {
        out.entry(o.partition).or_default().1 = o.offset;
    }
    Ok(out)
}

/// Without a group: read the chosen partitions from the chosen position.
async fn run_plain(client: Client, args: &ConsumeArgs, printer: &Printer, start: Start) -> anyhow::Result<()> {
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => (0..client.describe_topic(&args.topic).await?.partition_count).collect(),
    };
    // Only when needed: relative starts and --end read the offsets first.
    let marks = if args.end || matches!(start, Start::Last(_)) {
        bounds(&client, &args.topic, &partitions).await?
    } else {
        BTreeMap::new()
    };
    let mut sub = Subscription::new(&args.topic).isolation(args.isolation_level.level());
    for p in &partitions {
        let at = match start {
            Start::At(at) => at,
            Start::Last(n) => {
                let (log_start, hw) = marks.get(p).copied().unwrap_or_default();
                StartAt::Offset(hw.saturating_sub(n).max(log_start))
            }
        };
        sub = sub.partition(*p, Some(at));
    }
    // --end: each partition's high watermark at start; a partition is done once reached.
    let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
    if args.end {
        for p in &partitions {
            let (log_start, hw) = marks.get(p).copied().unwrap_or_default();
            let from = match start {
                Start::At(StartAt::Earliest) => log_start,
                Start::At(StartAt::Offset(o)) => o,
                Start::Last(n) => hw.saturating_sub(n).max(log_start),
                Start::At(StartAt::Latest) => hw,
                // Unknown until read; a partition with nothing new ends at once below.
                Start::At(StartAt::Timestamp(_)) => log_start,
            };
            if from < hw {
                pending.insert(*p, hw);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
    }
    let mut records = sub.open(&client).await?;
    let limits = Limits { max_records: args.max_records, idle: args.idle_timeout_ms.map(Duration::from_millis) };
    let mut printed = 0u64;
    let mut out = Vec::with_capacity(4096);
    while !limits.done(printed) {
        let next = match limits.idle {
            Some(d) => tokio::time::timeout(d, records.next()).await.unwrap_or(None),
            None => records.next().await,
        };
        let Some(record) = next else { break };
        let r = record?;
        if args.end {
            match pending.get(&r.partition) {
                Some(end) if r.offset < *end => {}
                _ => continue, // beyond the end at start
            }
        }
        let _span = tidelog::trace::process_span(&r, None).entered();
        out.clear();
        printer.print(&r, args.key_encoding, args.value_encoding, &mut out);
        write_out(&out)?;
        printed += 1;
        if args.end && pending.get(&r.partition).is_some_and(|end| r.offset + 1 >= *end) {
            pending.remove(&r.partition);
            if pending.is_empty() {
                break;
            }
        }
    }
    Ok(())
}

/// As a member of a consumer group: partitions come from the group's assignment, positions
/// from its committed offsets (`--from-beginning` only where there are none), and what was
/// printed is committed (auto-commit, and at exit before leaving the group).
async fn run_group(
    client: Client,
    group: String,
    args: &ConsumeArgs,
    printer: &Printer,
    start: Start,
) -> anyhow::Result<()> {
    // Where the group has no committed offset; otherwise it resumes where it left off.
    let reset = match start {
        Start::At(StartAt::Earliest) => OffsetReset::Earliest,
        Start::At(StartAt::Latest) => OffsetReset::Latest,
        _ => anyhow::bail!(
            "--group resumes from the group's committed offsets; -o beginning|end only says where it has none (to move them: tidelog group reset-offsets)"
        ),
    };
    anyhow::ensure!(args.partition.is_none(), "--group takes its partitions from the group; drop --partition");
    let consumer_group = group.clone();
    let mut config = GroupConfig::new(group, &[args.topic.as_str()]);
    config.client_id = "tidelog-cli".into();
    config.offset_reset = reset;
    config.isolation = args.isolation_level.level();
    config.auto_commit_interval = Some(Duration::from_millis(args.auto_commit_ms));
    config.session_timeout = Duration::from_millis(args.session_timeout_ms);
    config.heartbeat_interval = Duration::from_millis((args.session_timeout_ms / 5).max(100));
    let mut consumer = GroupConsumer::join(client, config).await?;
    let limits = Limits { max_records: args.max_records, idle: args.idle_timeout_ms.map(Duration::from_millis) };
    let mut printed = 0u64;
    let mut out = Vec::with_capacity(4096);
    while !limits.done(printed) {
        let next = match limits.idle {
            Some(d) => tokio::time::timeout(d, consumer.next()).await.unwrap_or(None),
            None => consumer.next().await,
        };
        let Some(record) = next else { break };
        match record {
            Ok(r) => {
                let _span = tidelog::trace::process_span(&r, Some(consumer_group.as_str())).entered();
                out.clear();
                printer.print(&r, args.key_encoding, args.value_encoding, &mut out);
                write_out(&out)?;
                printed += 1;
            }
            // Fetch errors are retried by the consumer; fatal ones end the stream.
            Err(e) => eprintln!("tidelog: {e}"),
        }
    }
    // What was printed is committed before the group is left; a commit that fails is an error
    // (the group would read those records again), not something `close` keeps to itself.
    let committed = consumer.commit().await;
    consumer.close().await;
    committed.map_err(|e| anyhow::anyhow!("the printed positions were not committed: {e}"))
}

fn write_out(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}
