//! `tidelog bench produce`: a first end-to-end load generator. Pipelines fixed-size batches
//! over one Produce stream with a bounded window of in-flight batches, and reports records/s,
//! MB/s and per-batch acknowledgement latency. Bounded by `--records` and `--max-seconds`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tidelog::batch::encode_records;
use tidelog::proto::v1::{Acks, ErrorCode, FsyncPolicy, TopicConfig};
use tidelog::proto::wire;
use tidelog::{Client, Producer, ProducerConfig, Record};
use tokio::sync::mpsc;

use super::produce::AcksArg;
use super::BrokerArg;
use crate::settings::FsyncSetting;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure (only `produce` so far).
    #[arg(value_parser = ["produce"])]
    pub mode: String,
    #[command(flatten)]
    pub broker: BrokerArg,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    #[arg(long, default_value_t = 256)]
    pub batch_records: usize,
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
    #[arg(long, value_enum, default_value = "leader")]
    pub acks: AcksArg,
    /// fsync policy of the topic if the bench creates it.
    #[arg(long, value_enum, default_value = "interval")]
    pub fsync: FsyncSetting,
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
    /// Produce through the SDK producer (per-record `send`, batching, compression,
    /// idempotence) instead of pre-encoded batches on a raw stream.
    #[arg(long)]
    pub sdk: bool,
    /// With --sdk: batch compression.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: super::produce::CompressionArg,
    /// With --sdk: linger in ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

/// `--sdk`: records go one by one through `Producer::send`, spread over the partitions.
async fn run_sdk(client: Client, args: &BenchArgs) -> anyhow::Result<()> {
    let acks: Acks = args.acks.into();
    let config = ProducerConfig {
        acks,
        idempotence: acks == Acks::All,
        compression: args.compression.into(),
        linger: Duration::from_millis(args.linger_ms),
        max_batch_bytes: (args.batch_records * (args.record_size + 16)).min(900 * 1024),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await?;
    let value = Bytes::from(vec![b'x'; args.record_size]);
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let start = Instant::now();
    // Deliveries are awaited by a separate task, in order, so sending never waits on acks
    // (the producer's buffer memory is the back-pressure).
    let (tx, mut rx) = mpsc::channel::<tidelog::DeliveryFuture>(65_536);
    let waiter = tokio::spawn(async move {
        let mut acked = 0u64;
        while let Some(d) = rx.recv().await {
            d.await?;
            acked += 1;
        }
        anyhow::Ok(acked)
    });
    let mut sent = 0u64;
    while sent < args.records && Instant::now() < deadline {
        let partition = (sent % u64::from(args.partitions)) as u32;
        let d = producer.send_to(&args.topic, partition, Record::new(value.clone())).await?;
        if tx.send(d).await.is_err() {
            break;
        }
        sent += 1;
    }
    drop(tx);
    producer.close().await;
    let acked = waiter.await??;
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "sdk records={acked} record_size={} partitions={} acks={acks:?} compression={:?} elapsed_s={elapsed:.2} records_per_s={:.0} mb_per_s={:.1}",
        args.record_size,
        args.partitions,
        args.compression,
        acked as f64 / elapsed,
        acked as f64 * args.record_size as f64 / elapsed / 1e6
    );
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.acks as u8 != AcksArg::None as u8, "bench needs acknowledgements: use --acks leader or all");
    let client = Client::connect(&args.broker.broker).await?;
    if client.describe_topic(&args.topic).await.is_err() {
        let fsync_policy = match args.fsync {
            FsyncSetting::Always => FsyncPolicy::Always,
            FsyncSetting::Interval => FsyncPolicy::Interval,
            FsyncSetting::Never => FsyncPolicy::Never,
        } as i32;
        client
            .create_topic_with(&args.topic, args.partitions, TopicConfig { fsync_policy, ..Default::default() })
            .await?;
    }
    if args.sdk {
        return run_sdk(client, &args).await;
    }
    // One encoded batch, reused: the bench measures the broker, not the encoder.
    let value = Bytes::from(vec![b'x'; args.record_size]);
    let records = (0..args.batch_records).map(|_| Record::new(value.clone())).collect();
    let (payload, crc) = encode_records(records);
    let batches = args.records.div_ceil(args.batch_records as u64);
    let acks: Acks = args.acks.into();

    let (tx, rx) = mpsc::channel::<wire::ProduceRequest>(args.in_flight);
    let mut responses = client.records().produce(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(args.in_flight));
    let sent_at = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<u64, Instant>::new()));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let start = Instant::now();
    let sender = {
        let (window, sent_at, topic, partitions) =
            (window.clone(), sent_at.clone(), args.topic.clone(), args.partitions);
        tokio::spawn(async move {
            for i in 0..batches {
                if Instant::now() > deadline {
                    break;
                }
                let Ok(permit) = window.acquire().await else {
                    break;
                };
                permit.forget();
                sent_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(i, Instant::now());
                let req = wire::ProduceRequest {
                    request_id: i,
                    topic: topic.clone(),
                    partition: (i % u64::from(partitions)) as u32,
                    acks: acks as i32,
                    payload: Some(wire::produce_request::Payload::Records(payload.clone())),
                    compression: 0,
                    record_count: 0,
                    crc32c: Some(crc),
                    ..Default::default()
                };
                if tx.send(req).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut latencies_us = Vec::with_capacity(batches as usize);
    let mut acked = 0u64;
    let mut last_report = Instant::now();
    while acked < batches {
        let Some(resp) = responses.next().await else {
            break;
        };
        let resp = resp?;
        anyhow::ensure!(resp.error_code == ErrorCode::Unspecified as i32, "batch failed: {}", resp.error_message);
        if let Some(t) = sent_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&resp.request_id) {
            latencies_us.push(t.elapsed().as_micros() as u64);
        }
        window.add_permits(1);
        acked += 1;
        if last_report.elapsed() >= Duration::from_secs(1) {
            let secs = start.elapsed().as_secs_f64();
            eprintln!("{:>6.1}s {:>10.0} records/s", secs, (acked * args.batch_records as u64) as f64 / secs);
            last_report = Instant::now();
        }
        if Instant::now() > deadline
            && sender.is_finished()
            && sent_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty()
        {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = sender.await;
    let records = acked * args.batch_records as u64;
    latencies_us.sort_unstable();
    let pct = |q: f64| {
        latencies_us
            .get(((latencies_us.len() as f64 * q) as usize).min(latencies_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "records={records} record_size={} batch_records={} partitions={} in_flight={} acks={:?} elapsed_s={elapsed:.2} records_per_s={:.0} mb_per_s={:.1} batch_latency_us p50={} p99={} max={}",
        args.record_size,
        args.batch_records,
        args.partitions,
        args.in_flight,
        acks,
        records as f64 / elapsed,
        (records as f64 * args.record_size as f64) / elapsed / 1e6,
        pct(0.5),
        pct(0.99),
        latencies_us.last().copied().unwrap_or(0)
    );
    Ok(())
}
