//! `tidelog bench e2e`: end-to-end latency at a fixed rate. Consumers subscribe at the latest
//! offset first; then producers send `--rate` records/s, each record's value starting with
//! its *intended* send time (ns on this process's monotonic clock, little-endian), so the
//! latency — delivery to a consumer minus intended send — includes any time the producer
//! fell behind (no coordinated omission) and any batching delay (a batch is due when its
//! last record is). Records due in the first `--warmup` seconds are not in the histogram.
//!
//! Raw producers by default (`--batch-records` per batch); `--sdk` sends through the SDK
//! producer (accumulator, `--linger-ms`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tidelog::batch::decode_batch;
use tidelog::{Client, Record, StartAt, Subscription};
use tokio::sync::watch;

use super::produce::{encode_batch, run_raw, sdk_producer, shares, stamp, summary, RawProducer, SdkJob};
use super::report::{nanos_since, Counters, Latency, Progress, Schedule, Summary};
use super::{values, BenchArgs};

pub(super) async fn run(client: &Client, args: &BenchArgs) -> anyhow::Result<Summary> {
    anyhow::ensure!(args.rate > 0, "e2e needs a target rate: --rate RECORDS_PER_S (e.g. 10000)");
    let partitions = client.describe_topic(&args.topic).await?.partition_count;
    let base = Instant::now();
    let warmup_ns = Duration::from_secs(args.warmup).as_nanos() as u64;
    let delivered = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    // Consumers first, at the latest offset, so they see every record produced below.
    let mut consumers = Vec::new();
    for c in 0..args.consumers.min(partitions as usize).max(1) {
        let mine: Vec<u32> = (0..partitions).filter(|p| *p as usize % args.consumers == c).collect();
        let mut sub = Subscription::new(&args.topic)
            .start_at(StartAt::Latest)
            .max_bytes(args.max_bytes)
            .isolation(args.isolation_level.level());
        for p in &mine {
            sub = sub.partition(*p, None);
        }
        let stream = sub.open_raw(&args.broker.connect().await?).await?;
        let job = Consumer {
            topic: args.topic.clone(),
            stream,
            base,
            warmup_ns,
            delivered: Arc::clone(&delivered),
            stop: stop_rx.clone(),
        };
        consumers.push(tokio::spawn(consume(job)));
    }

    let produced = Arc::new(Counters::default());
    let deadline = base + Duration::from_secs(args.duration);
    let start = Instant::now();
    let progress = Progress::start("deliver", Arc::clone(&delivered), args.quiet);
    let mut producers = Vec::new();
    for (p, quota) in shares(args.records, args.producers).enumerate() {
        let client = args.broker.connect().await?;
        let rate = args.rate as f64 / args.producers as f64;
        let template = values(args.record_size, 64, p as u64);
        if args.sdk {
            drop(client);
            let job = SdkJob {
                producer: super::produce::new_producer(args, p).await?,
                topic: args.topic.clone(),
                partitions,
                first_partition: p as u32,
                values: template,
                quota,
                schedule: Some(Schedule::new(start, rate)),
                deadline,
                counters: Arc::clone(&produced),
                stamp_base: Some(base),
                transaction_records: args.transaction_records,
            };
            producers.push(tokio::spawn(sdk_producer(job)));
            continue;
        }
        let per_batch = args.batch_records as u64;
        let schedule = Schedule::new(start, rate);
        let (topic, acks, compression) = (args.topic.clone(), args.acks(), args.compression());
        let make = move |i: u64, _due: Instant| {
            let records = (0..per_batch)
                .map(|j| {
                    let k = i * per_batch + j;
                    Record::new(stamp(&template[k as usize % template.len()], base, schedule.at(k)))
                })
                .collect();
            // Encoding cannot fail for an uncompressed batch; a compression failure sends an
            // empty (rejected) batch, which fails the run loudly.
            let (payload, codec, crc) = encode_batch(records, compression).unwrap_or((
                tidelog::proto::wire::produce_request::Payload::Records(bytes::Bytes::new()),
                0,
                0,
            ));
            tidelog::proto::wire::ProduceRequest {
                request_id: i,
                topic: topic.clone(),
                partition: ((p as u64 + i) % u64::from(partitions)) as u32,
                acks: acks as i32,
                payload: Some(payload),
                compression: codec,
                record_count: per_batch as u32,
                crc32c: Some(crc),
                ..Default::default()
            }
        };
        let producer = RawProducer {
            client,
            batches: quota.div_ceil(per_batch),
            in_flight: args.in_flight,
            schedule: Some((schedule, per_batch)),
            deadline,
            counters: Arc::clone(&produced),
            record_size: args.record_size as u64,
        };
        producers.push(tokio::spawn(run_raw(producer, make)));
    }
    let mut sent = 0;
    for t in producers {
        sent += t.await??.0;
    }
    let produce_elapsed = start.elapsed();
    // Wait (bounded) for the consumers to see everything that was acknowledged.
    let wait_until = Instant::now() + Duration::from_secs(10);
    while delivered.get().0 < sent && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    let mut latency = Latency::new()?;
    for t in consumers {
        latency.merge(&t.await??);
    }
    drop(progress);
    let got = delivered.get().0;
    let mut s = summary(args, "e2e", "produce→deliver (intended send to consumer receipt)");
    s.set_throughput(got, got * args.record_size as u64, produce_elapsed);
    s.latency = latency.summary();
    s.partitions = partitions;
    s.corrected_for_coordinated_omission = true;
    s.notes.push(format!("{sent} records acknowledged, {got} delivered; first {} s excluded", args.warmup));
    if got < sent {
        s.notes.push(format!("{} acknowledged records were not delivered within 10 s", sent - got));
    }
    Ok(s)
}

#[derive(Debug)]
struct Consumer {
    topic: String,
    stream: tonic::Streaming<tidelog::proto::wire::SubscribeResponse>,
    base: Instant,
    warmup_ns: u64,
    delivered: Arc<Counters>,
    stop: watch::Receiver<bool>,
}

/// Decodes every delivered record and records now − its stamp.
async fn consume(mut job: Consumer) -> anyhow::Result<Latency> {
    let mut latency = Latency::new()?;
    loop {
        let resp = tokio::select! {
            r = job.stream.next() => r,
            _ = job.stop.changed() => break,
        };
        let Some(resp) = resp else { break };
        let resp = resp?;
        let now = nanos_since(job.base);
        for batch in resp.batches {
            let records = decode_batch(&job.topic, resp.partition, batch, 0)?;
            let mut bytes = 0;
            for r in &records {
                bytes += r.value.as_ref().map_or(0, |v| v.len() as u64);
                let Some(stamp) = r.value.as_ref().and_then(|v| v.get(..8)).and_then(|b| <[u8; 8]>::try_from(b).ok())
                else {
                    continue;
                };
                let sent = u64::from_le_bytes(stamp);
                if sent >= job.warmup_ns {
                    latency.record_us(now.saturating_sub(sent) / 1000);
                }
            }
            job.delivered.add(records.len() as u64, bytes);
        }
    }
    Ok(latency)
}
