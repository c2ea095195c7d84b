//! `tidelog consume TOPIC`: print records (partition, offset, timestamp, key, value) from the
//! beginning, an offset, a time, or the end; with `--group`, start from the group's committed
//! offsets and commit what was printed.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use tidelog::proto::v1::{CommitRequest, ErrorCode, FetchCommittedRequest, PartitionOffset};
use tidelog::{Client, ConsumedRecord, StartAt, Subscription};
use tokio::sync::mpsc;

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
    /// Consumer group: start from its committed offsets and commit what was printed.
    #[arg(long)]
    pub group: Option<String>,
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
    let value = String::from_utf8_lossy(&r.value);
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
    let start = match (args.from_beginning, args.offset, args.from_time_ms) {
        (true, _, _) => StartAt::Earliest,
        (_, Some(o), _) => StartAt::Offset(o),
        (_, _, Some(t)) => StartAt::Timestamp(t),
        _ => StartAt::Latest,
    };
    let topic = client.describe_topic(&args.topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => (0..topic.partition_count).collect(),
    };
    let mut sub = Subscription::new(&args.topic).start_at(start);
    let committed: BTreeMap<u32, u64> = match &args.group {
        Some(group) => client
            .offsets()
            .fetch_committed(FetchCommittedRequest {
                group: group.clone(),
                topic: args.topic.clone(),
                partitions: vec![],
            })
            .await?
            .into_inner()
            .offsets
            .into_iter()
            .map(|o| (o.partition, o.offset))
            .collect(),
        None => BTreeMap::new(),
    };
    for p in &partitions {
        sub = sub.partition(*p, committed.get(p).map(|o| StartAt::Offset(*o)));
    }
    let mut records = sub.open(&client).await?;

    // Commits go over one stream; the last printed offset per partition is committed after
    // each record burst (at-least-once: only what was printed).
    let (commit_tx, commit_rx) = mpsc::channel::<CommitRequest>(16);
    let commit_task = args.group.clone().map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut resp =
                client.offsets().commit(tokio_stream::wrappers::ReceiverStream::new(commit_rx)).await?.into_inner();
            while let Some(r) = resp.next().await {
                let r = r?;
                anyhow::ensure!(r.error_code == ErrorCode::Unspecified as i32, "commit failed: {}", r.error_message);
            }
            anyhow::Ok(())
        })
    });

    let mut printed = 0u64;
    let mut to_commit: BTreeMap<u32, u64> = BTreeMap::new();
    let mut request_id = 0u64;
    let idle = args.idle_timeout_ms.map(Duration::from_millis);
    let stdout = std::io::stdout();
    loop {
        if args.max_records.is_some_and(|m| printed >= m) {
            break;
        }
        let next = match idle {
            Some(d) => match tokio::time::timeout(d, records.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => records.next().await,
        };
        let Some(record) = next else { break };
        let record = record?;
        writeln!(stdout.lock(), "{}", show(&record, args.format))?;
        printed += 1;
        to_commit.insert(record.partition, record.offset + 1);
        // Commit after every 100 records and when the stream goes quiet (checked below).
        if args.group.is_some() && printed.is_multiple_of(100) {
            request_id += 1;
            send_commit(&commit_tx, args.group.as_deref(), &args.topic, &mut to_commit, request_id).await;
        }
    }
    if args.group.is_some() {
        request_id += 1;
        send_commit(&commit_tx, args.group.as_deref(), &args.topic, &mut to_commit, request_id).await;
    }
    drop(commit_tx);
    if let Some(task) = commit_task {
        task.await??;
    }
    Ok(())
}

async fn send_commit(
    tx: &mpsc::Sender<CommitRequest>,
    group: Option<&str>,
    topic: &str,
    offsets: &mut BTreeMap<u32, u64>,
    request_id: u64,
) {
    let (Some(group), false) = (group, offsets.is_empty()) else {
        return;
    };
    let req = CommitRequest {
        request_id,
        group: group.into(),
        topic: topic.into(),
        offsets: std::mem::take(offsets)
            .into_iter()
            .map(|(partition, offset)| PartitionOffset { partition, offset, metadata: String::new() })
            .collect(),
        ..Default::default()
    };
    let _ = tx.send(req).await;
}
