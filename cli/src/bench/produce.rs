//! `tidelog bench produce`: producer throughput and acknowledgement latency.
//!
//! Raw mode (default): each of `--producers` has its own connection and one Produce stream,
//! and pipelines pre-encoded batches (encoded once, so the bench measures the broker, not an
//! encoder) with at most `--in-flight` unacknowledged. A pacing thread per producer sends on
//! schedule when `--rate` is set (tokio's millisecond timer is too coarse for that); latency
//! is then counted from the intended send time. `run_raw` is shared with `e2e`.
//!
//! `--sdk`: records go one by one through `Producer::send_to` (accumulator, linger,
//! idempotence with acks=all), spread over the partitions; latency is per record, send →
//! delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tidelog::batch::encode_records;
use tidelog::proto::v1::{Acks, ErrorCode};
use tidelog::proto::wire;
use tidelog::{Client, Compression, Producer, Record};
use tokio::sync::{mpsc, Semaphore};

use super::report::{sleep_until_blocking, Counters, Latency, Progress, Schedule, Summary};
use super::{values, BenchArgs};

/// One raw producer's stream.
#[derive(Debug)]
pub(super) struct RawProducer {
    pub client: Client,
    pub batches: u64,
    pub in_flight: usize,
    /// Records (not batches) per second, with the records of a batch; the batch is due at
    /// its last record's time.
    pub schedule: Option<(Schedule, u64)>,
    pub deadline: Instant,
    pub counters: Arc<Counters>,
    /// Value bytes per record (for the byte counters).
    pub record_size: u64,
}

/// Runs one raw producer; `make(i, due)` builds batch `i` (due at `due`). Returns the records
/// acknowledged and the ack latencies.
pub(super) async fn run_raw<F>(p: RawProducer, mut make: F) -> anyhow::Result<(u64, Latency)>
where
    F: FnMut(u64, Instant) -> wire::ProduceRequest + Send + 'static,
{
    let (req_tx, req_rx) = mpsc::channel::<wire::ProduceRequest>(p.in_flight);
    // Each request's latency base and record count, in request order.
    let (base_tx, mut base_rx) = mpsc::unbounded_channel::<(Instant, u64)>();
    let window = Arc::new(Semaphore::new(p.in_flight));
    let mut responses =
        p.client.records().produce(tokio_stream::wrappers::ReceiverStream::new(req_rx)).await?.into_inner();
    let pacer = {
        let (window, schedule, batches, deadline) = (Arc::clone(&window), p.schedule, p.batches, p.deadline);
        std::thread::Builder::new().name("bench-pacer".into()).spawn(move || {
            for i in 0..batches {
                if Instant::now() >= deadline {
                    break;
                }
                let Ok(permit) = futures::executor::block_on(window.acquire()) else { break };
                permit.forget();
                // With a schedule the latency base is the intended time, even if the window
                // made us late (that lateness is the broker's doing).
                let base = match schedule {
                    Some((s, per)) => {
                        let due = s.at(i * per + per - 1);
                        sleep_until_blocking(due);
                        due
                    }
                    None => Instant::now(),
                };
                let req = make(i, base);
                if base_tx.send((base, u64::from(req.record_count))).is_err() || req_tx.blocking_send(req).is_err() {
                    break;
                }
            }
        })?
    };
    let mut latency = Latency::new()?;
    let mut acked = 0u64;
    let limit = tokio::time::Instant::from_std(p.deadline + Duration::from_secs(30));
    loop {
        let next = tokio::time::timeout_at(limit, responses.next()).await;
        let Ok(next) = next else { anyhow::bail!("no acknowledgement 30 s after the deadline") };
        let Some(resp) = next else { break };
        let resp = resp?;
        anyhow::ensure!(resp.error_code == ErrorCode::Unspecified as i32, "batch failed: {}", resp.error_message);
        // Responses come in request order, and each base was queued before its request.
        let Some((base, records)) = base_rx.recv().await else { anyhow::bail!("an answer to no request") };
        latency.record(base.elapsed());
        window.add_permits(1);
        acked += records;
        p.counters.add(records, records * p.record_size);
    }
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    Ok((acked, latency))
}

/// Splits `total` into `n` near-equal shares.
pub(super) fn shares(total: u64, n: usize) -> impl Iterator<Item = u64> {
    let n = n as u64;
    (0..n).map(move |i| total / n + u64::from(i < total % n))
}

pub(super) fn summary(args: &BenchArgs, mode: &'static str, latency_of: &'static str) -> Summary {
    Summary {
        mode,
        client: if args.sdk { "sdk" } else { "raw" },
        topic: args.topic.clone(),
        partitions: args.partitions,
        producers: args.producers,
        consumers: args.consumers,
        record_size: args.record_size,
        batch_records: args.batch_records,
        acks: format!("{:?}", args.acks).to_lowercase(),
        fsync: format!("{:?}", args.fsync).to_lowercase(),
        compression: format!("{:?}", args.compression).to_lowercase(),
        rate: args.rate,
        records: 0,
        bytes: 0,
        elapsed_s: 0.0,
        records_per_s: 0.0,
        mb_per_s: 0.0,
        latency_of,
        corrected_for_coordinated_omission: args.rate > 0,
        latency: None,
        notes: Vec::new(),
    }
}

/// One encoded batch of `count` records, compressed per `compression`: (payload, codec, crc).
pub(super) fn encode_batch(
    records: Vec<Record>,
    compression: Compression,
) -> anyhow::Result<(wire::produce_request::Payload, i32, u32)> {
    let (raw, crc) = encode_records(records);
    Ok(match compression {
        Compression::None => (wire::produce_request::Payload::Records(raw), 0, crc),
        c => {
            let packed = c.compress(&raw)?;
            let crc = tidelog_proto::checksum::crc32c(&packed);
            (wire::produce_request::Payload::CompressedRecords(packed), c.codec(), crc)
        }
    })
}

pub(super) async fn run(args: &BenchArgs) -> anyhow::Result<Summary> {
    if args.sdk {
        return run_sdk(args).await;
    }
    let (records, latency, elapsed) = produce_raw(args, args.records, args.rate, args.quiet).await?;
    let mut s = summary(args, "produce", "batch ack");
    s.set_throughput(records, records * args.record_size as u64, elapsed);
    s.latency = latency.summary();
    s.notes.push(format!("{} batches in flight per producer stream", args.in_flight));
    Ok(s)
}

/// Raw producers for `records` at `rate` (0 = unlimited): records acknowledged, ack
/// latencies, elapsed time. Also the pre-fill of `consume`.
pub(super) async fn produce_raw(
    args: &BenchArgs,
    records: u64,
    rate: u64,
    quiet: bool,
) -> anyhow::Result<(u64, Latency, Duration)> {
    let counters = Arc::new(Counters::default());
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let acks: Acks = args.acks();
    let per_batch = args.batch_records as u64;
    let start = Instant::now();
    let progress = Progress::start("produce", Arc::clone(&counters), quiet);
    let mut tasks = Vec::new();
    for (p, quota) in shares(records, args.producers).enumerate() {
        let client = args.broker.connect().await?;
        // Exactly `quota` records: full batches, then one with the rest.
        let all = values(args.record_size, args.batch_records, p as u64);
        // With --keys, one pre-encoded batch per slice of the key space, used in turn.
        let cycle = if args.keys == 0 { 1 } else { args.keys.div_ceil(per_batch) };
        let keyed = |t: u64, n: usize| -> Vec<Record> {
            let keys = args.keys;
            all.iter()
                .take(n)
                .enumerate()
                .map(|(j, v)| {
                    let r = Record::new(v.clone());
                    if keys == 0 {
                        r
                    } else {
                        r.with_key(format!("key-{:08}", (t * per_batch + j as u64) % keys))
                    }
                })
                .collect()
        };
        let full: Vec<_> =
            (0..cycle).map(|t| encode_batch(keyed(t, all.len()), args.compression())).collect::<Result<_, _>>()?;
        let rest = quota % per_batch;
        let last = encode_batch(keyed(0, rest as usize), args.compression())?;
        let (topic, partitions) = (args.topic.clone(), args.partitions);
        let full_batches = quota / per_batch;
        let make = move |i: u64, _due: Instant| {
            let ((payload, compression, crc), count) = if i < full_batches {
                (full[(i % full.len() as u64) as usize].clone(), per_batch)
            } else {
                (last.clone(), rest)
            };
            wire::ProduceRequest {
                request_id: i,
                topic: topic.clone(),
                partition: ((p as u64 + i) % u64::from(partitions)) as u32,
                acks: acks as i32,
                payload: Some(payload),
                compression,
                record_count: count as u32,
                crc32c: Some(crc),
                ..Default::default()
            }
        };
        let schedule = (rate > 0).then(|| (Schedule::new(start, rate as f64 / args.producers as f64), per_batch));
        let producer = RawProducer {
            client,
            batches: quota.div_ceil(per_batch),
            in_flight: args.in_flight,
            schedule,
            deadline,
            counters: Arc::clone(&counters),
            record_size: args.record_size as u64,
        };
        tasks.push(tokio::spawn(run_raw(producer, make)));
    }
    let mut latency = Latency::new()?;
    let mut acked = 0;
    for t in tasks {
        let (n, l) = t.await??;
        acked += n;
        latency.merge(&l);
    }
    let elapsed = start.elapsed();
    drop(progress);
    Ok((acked, latency, elapsed))
}

/// `--sdk`: every producer has its own connection and SDK `Producer`.
async fn run_sdk(args: &BenchArgs) -> anyhow::Result<Summary> {
    let counters = Arc::new(Counters::default());
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let start = Instant::now();
    let progress = Progress::start("produce", Arc::clone(&counters), args.quiet);
    let mut tasks = Vec::new();
    for (p, quota) in shares(args.records, args.producers).enumerate() {
        let producer = new_producer(args, p).await?;
        let schedule = (args.rate > 0).then(|| Schedule::new(start, args.rate as f64 / args.producers as f64));
        let job = SdkJob {
            producer,
            topic: args.topic.clone(),
            partitions: args.partitions,
            first_partition: p as u32,
            values: values(args.record_size, 64, p as u64),
            quota,
            schedule,
            deadline,
            counters: Arc::clone(&counters),
            stamp_base: None,
            transaction_records: args.transaction_records,
        };
        tasks.push(tokio::spawn(sdk_producer(job)));
    }
    let mut latency = Latency::new()?;
    let mut records = 0;
    for t in tasks {
        let (n, l) = t.await??;
        records += n;
        latency.merge(&l);
    }
    let elapsed = start.elapsed();
    drop(progress);
    let mut s = summary(args, "produce", "record send→delivery");
    s.set_throughput(records, records * args.record_size as u64, elapsed);
    s.latency = latency.summary();
    s.notes.push(format!("linger {} ms, idempotence {}", args.linger_ms, args.producer_config(0).idempotence));
    if args.transaction_records > 0 {
        s.notes.push(format!("transactions of {} records", args.transaction_records));
    }
    Ok(s)
}

#[derive(Debug)]
pub(super) struct SdkJob {
    pub producer: Producer,
    pub topic: String,
    pub partitions: u32,
    pub first_partition: u32,
    pub values: Vec<bytes::Bytes>,
    pub quota: u64,
    pub schedule: Option<Schedule>,
    pub deadline: Instant,
    pub counters: Arc<Counters>,
    /// e2e: write the record's due time (ns since this instant, little-endian) into the
    /// value's first 8 bytes.
    pub stamp_base: Option<Instant>,
    /// Records per transaction (0: not transactional).
    pub transaction_records: u64,
}

/// An SDK producer for `--sdk` runs (transactional, initialised, with
/// `--transaction-records`).
pub(super) async fn new_producer(args: &BenchArgs, p: usize) -> anyhow::Result<Producer> {
    let producer = Producer::new(args.broker.connect().await?, args.producer_config(p)).await?;
    if args.transaction_records > 0 {
        producer.init_transactions().await?;
    }
    Ok(producer)
}

/// Transactions of `every` records around sends: begins one before record `i` when due,
/// commits after record `i` when due (or at the end).
async fn transaction_step(producer: &Producer, every: u64, i: u64, last: bool, before: bool) -> anyhow::Result<()> {
    if every == 0 {
        return Ok(());
    }
    if before && i.is_multiple_of(every) {
        producer.begin_transaction().await?;
    }
    if !before && ((i + 1).is_multiple_of(every) || last) {
        producer.commit_transaction().await?;
    }
    Ok(())
}

/// Sends a producer's share; deliveries are awaited in order by a second task, so sending
/// never waits on acks (the producer's buffer memory is the back-pressure).
pub(super) async fn sdk_producer(job: SdkJob) -> anyhow::Result<(u64, Latency)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tidelog::DeliveryFuture, Instant, u64)>();
    let counters = Arc::clone(&job.counters);
    let waiter = tokio::spawn(async move {
        let mut latency = Latency::new()?;
        let mut acked = 0u64;
        while let Some((d, base, bytes)) = rx.recv().await {
            d.await?;
            latency.record(base.elapsed());
            acked += 1;
            counters.add(1, bytes);
        }
        anyhow::Ok((acked, latency))
    });
    let producer = job.producer.clone();
    let send = move |i: u64, due: Instant| {
        let value = job.values[i as usize % job.values.len()].clone();
        let value = match job.stamp_base {
            Some(base) => stamp(&value, base, due),
            None => value,
        };
        let partition = (job.first_partition + i as u32) % job.partitions;
        (partition, value)
    };
    match job.schedule {
        None => {
            let mut i = 0;
            let every = job.transaction_records;
            // One clock read per record (its send time, which also checks the deadline); the
            // load tool's own per-record cost is part of what the client CPU figure shows.
            while i < job.quota {
                let base = Instant::now();
                if base >= job.deadline {
                    break;
                }
                transaction_step(&producer, every, i, false, true).await?;
                let (partition, value) = send(i, base);
                let len = value.len() as u64;
                let d = producer.send_to(&job.topic, partition, Record::new(value)).await?;
                if tx.send((d, base, len)).is_err() {
                    break;
                }
                // A transaction still open when the deadline passes is committed now.
                let last = i + 1 == job.quota || (every > 0 && Instant::now() >= job.deadline);
                transaction_step(&producer, every, i, last, false).await?;
                i += 1;
            }
            drop(tx);
        }
        Some(schedule) => {
            // Paced on a thread of its own (see `sleep_until_blocking`).
            let handle = tokio::runtime::Handle::current();
            let (topic, quota, deadline, producer) = (job.topic.clone(), job.quota, job.deadline, producer.clone());
            let every = job.transaction_records;
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                for i in 0..quota {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let due = schedule.at(i);
                    sleep_until_blocking(due);
                    handle.block_on(transaction_step(&producer, every, i, false, true))?;
                    let (partition, value) = send(i, due);
                    let len = value.len() as u64;
                    let d = handle.block_on(producer.send_to(&topic, partition, Record::new(value)))?;
                    if tx.send((d, due, len)).is_err() {
                        break;
                    }
                    let last = i + 1 == quota || Instant::now() >= deadline;
                    handle.block_on(transaction_step(&producer, every, i, last, false))?;
                }
                Ok(())
            })
            .await??;
        }
    }
    producer.close().await;
    waiter.await?
}

/// `value` with its first 8 bytes replaced by `due` as ns since `base` (little-endian).
pub(super) fn stamp(value: &bytes::Bytes, base: Instant, due: Instant) -> bytes::Bytes {
    let mut v = bytes::BytesMut::from(&value[..]);
    let ns = due.saturating_duration_since(base).as_nanos() as u64;
    let n = v.len().min(8);
    v[..n].copy_from_slice(&ns.to_le_bytes()[..n]);
    v.freeze()
}
