//! `tidelog bench consume`: read a topic from the earliest offset to its end as fast as the
//! broker serves it. The topic is first pre-filled with raw producers up to `--records` (a
//! topic left by `bench produce` is reused). `--consumers N` split the partitions, each with
//! its own connection and Subscribe stream, `--max-bytes` per response.
//!
//! By default records are counted from each batch's header (what a broker-to-broker copy or
//! a mirror would do); `--decode` makes every consumer check the CRC, decode the protobuf
//! records and touch every value; `--sdk` reads them as an application does, one
//! `ConsumedRecord` at a time from the SDK's `Subscription::open` stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tidelog::batch::decode_batch;
use tidelog::proto::wire;
use tidelog::{Client, StartAt, Subscription};

use super::produce::{produce_raw, summary};
use super::report::{Counters, Progress, Summary};
use super::BenchArgs;

/// One consumer's partitions: (partition, first offset, end offset).
type Ranges = Vec<(u32, u64, u64)>;

pub(super) async fn run(client: &Client, args: &BenchArgs) -> anyhow::Result<Summary> {
    let mut notes = Vec::new();
    let available = |d: &tidelog::proto::v1::TopicDescription| -> u64 {
        d.partitions.iter().map(|p| p.high_watermark - p.log_start_offset).sum()
    };
    let have = available(&client.describe_topic(&args.topic).await?);
    if have < args.records {
        let (n, _, elapsed) = produce_raw(args, args.records - have, 0, true).await?;
        notes.push(format!(
            "pre-filled {n} records in {:.1} s ({:.0} records/s)",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64()
        ));
    }
    let desc = client.describe_topic(&args.topic).await?;
    // Each partition's share of `--records`, from its log start.
    let per_partition = args.records.div_ceil(u64::from(desc.partition_count.max(1)));
    let mut ranges: Vec<Ranges> = vec![Vec::new(); args.consumers];
    for p in &desc.partitions {
        let end = p.high_watermark.min(p.log_start_offset + per_partition);
        if end > p.log_start_offset {
            ranges[p.partition as usize % args.consumers].push((p.partition, p.log_start_offset, end));
        }
    }
    let counters = Arc::new(Counters::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    let mut consumers = Vec::new();
    for r in ranges.into_iter().filter(|r| !r.is_empty()) {
        consumers.push((args.broker.connect().await?, r));
    }
    // Timing starts once every consumer is connected.
    let start = Instant::now();
    let progress = Progress::start("consume", Arc::clone(&counters), args.quiet);
    for (client, r) in consumers {
        let job = Job {
            client,
            topic: args.topic.clone(),
            ranges: r,
            max_bytes: args.max_bytes,
            decode: args.decode,
            record_size: args.record_size as u64,
            counters: Arc::clone(&counters),
            deadline,
        };
        tasks.push(tokio::spawn(if args.sdk { consume_sdk(job).boxed() } else { consume(job).boxed() }));
    }
    let (mut records, mut wire_bytes) = (0, 0);
    for t in tasks {
        let (n, b) = t.await??;
        records += n;
        wire_bytes += b;
    }
    let elapsed = start.elapsed();
    drop(progress);
    let mut s = summary(args, "consume", "");
    s.set_throughput(records, records * args.record_size as u64, elapsed);
    s.partitions = desc.partition_count;
    s.rate = 0;
    s.corrected_for_coordinated_omission = false;
    notes.push(format!(
        "{:.1} MB/s of batch payload bytes; {}; max_bytes {}",
        wire_bytes as f64 / elapsed.as_secs_f64() / 1e6,
        if args.sdk {
            "records read one by one from the SDK's Subscription::open stream"
        } else if args.decode {
            "every batch decoded (CRC + protobuf)"
        } else {
            "records counted from batch headers"
        },
        args.max_bytes
    ));
    s.notes = notes;
    Ok(s)
}

#[derive(Debug)]
struct Job {
    client: Client,
    topic: String,
    ranges: Ranges,
    max_bytes: u32,
    decode: bool,
    record_size: u64,
    counters: Arc<Counters>,
    deadline: tokio::time::Instant,
}

/// The job's partitions, each from its first offset.
fn subscription(job: &Job) -> Subscription {
    let mut sub = Subscription::new(&job.topic).max_bytes(job.max_bytes);
    for (p, from, _) in &job.ranges {
        sub = sub.partition(*p, Some(StartAt::Offset(*from)));
    }
    sub
}

/// Reads the job's partitions up to their end offsets: (records, payload bytes).
async fn consume(job: Job) -> anyhow::Result<(u64, u64)> {
    let mut stream = subscription(&job).open_raw(&job.client).await?;
    let mut ends: HashMap<u32, u64> = job.ranges.iter().map(|(p, _, end)| (*p, *end)).collect();
    let (mut records, mut bytes, mut touched) = (0u64, 0u64, 0u64);
    while !ends.is_empty() {
        let Ok(next) = tokio::time::timeout_at(job.deadline, stream.next()).await else { break };
        let Some(resp) = next else { anyhow::bail!("the subscription ended before the end of the topic") };
        let resp: wire::SubscribeResponse = resp?;
        let Some(&end) = ends.get(&resp.partition) else { continue };
        let (mut n, mut next) = (0u64, 0u64);
        for batch in resp.batches {
            if batch.base_offset >= end {
                break;
            }
            let count = (end - batch.base_offset).min(u64::from(batch.record_count));
            next = batch.base_offset + u64::from(batch.record_count);
            bytes += match &batch.payload {
                Some(wire::batch::Payload::Records(b) | wire::batch::Payload::CompressedRecords(b)) => b.len() as u64,
                None => 0,
            };
            if job.decode {
                let decoded = decode_batch(&job.topic, resp.partition, batch, 0)?;
                touched += decoded
                    .iter()
                    .take(count as usize)
                    .map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64) + r.offset)
                    .sum::<u64>();
            }
            n += count;
        }
        records += n;
        job.counters.add(n, n * job.record_size);
        if next >= end {
            ends.remove(&resp.partition);
        }
    }
    std::hint::black_box(touched);
    Ok((records, bytes))
}

/// `--sdk`: reads the job's partitions up to their end offsets as an application does, record
/// by record from `Subscription::open` (decoded, CRC-checked): (records, value bytes).
async fn consume_sdk(job: Job) -> anyhow::Result<(u64, u64)> {
    let mut stream = subscription(&job).open(&job.client).await?;
    // The end offset of each partition still being read, indexed by partition: the per-record
    // lookup is an index, not a hash.
    let slots = job.ranges.iter().map(|(p, _, _)| *p as usize + 1).max().unwrap_or(0);
    let mut ends: Vec<Option<u64>> = vec![None; slots];
    for (p, _, end) in &job.ranges {
        ends[*p as usize] = Some(*end);
    }
    let mut open = job.ranges.len();
    let (mut records, mut bytes, mut pending) = (0u64, 0u64, 0u64);
    // One timer for the whole read (a `timeout_at` around each `next()` made a timer entry per
    // record: 3 % of the client's CPU).
    let read = async {
        while open > 0 {
            let Some(record) = stream.next().await else {
                anyhow::bail!("the subscription ended before the end of the topic")
            };
            let record = record?;
            let Some(slot) = ends.get_mut(record.partition as usize) else { continue };
            let Some(end) = *slot else { continue };
            if record.offset >= end {
                continue;
            }
            records += 1;
            pending += 1;
            bytes += record.value.as_ref().map_or(0, |v| v.len() as u64);
            if record.offset + 1 >= end {
                *slot = None;
                open -= 1;
            }
            // The progress counters are shared atomics: touched once per 1,024 records.
            if pending == 1024 || open == 0 {
                job.counters.add(pending, pending * job.record_size);
                pending = 0;
            }
        }
        anyhow::Ok(())
    };
    // Past the deadline the read stops where it is; what was read counts.
    if let Ok(read) = tokio::time::timeout_at(job.deadline, read).await {
        read?;
    }
    job.counters.add(pending, pending * job.record_size);
    Ok((records, bytes))
}
