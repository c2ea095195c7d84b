//! The producer: `send` queues a record and returns a future for its delivery; a background
//! task batches records per partition, compresses each batch once, pipelines batches over a
//! Produce stream, and retries what failed — without duplicates or reordering, thanks to
//! idempotence (on by default).
//!
//! ```text
//! send() ──► partitioner ──► accumulator (open batch per partition, linger, max bytes)
//!                                 │ seal: encode once, compress, assign sequence numbers
//!                                 ▼
//!            sender task ──► Produce stream (≤ max_in_flight batches per partition)
//!                 ▲ responses: complete deliveries | retryable: rewind and resend the same
//!                 │ bytes with the same sequences (the broker drops what it already has)
//! ```
//!
//! Guarantees with idempotence on: every record whose delivery future resolves `Ok` is stored
//! exactly once, and the records of one partition are stored in the order `send` was called,
//! across connection losses and broker restarts. Back-pressure: `send` waits while
//! `buffer_memory` bytes are queued, and fails with [`Error::BufferFull`] after `max_block`.

mod accumulator;
mod delivery;
mod produce_body;
mod sender;
mod split;
mod stats;
mod txn;

pub use delivery::DeliveryFuture;
pub use stats::ProducerStats;
pub use txn::ConsumerGroupMetadata;

#[doc(hidden)]
pub use accumulator::bench_accumulate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tidelog_proto::v1::Acks;
use tokio::sync::{Notify, Semaphore};

use self::accumulator::Accumulator;
use crate::batch::Record;
use crate::compression::Compression;
use crate::partitioner::partition_for_key;
use crate::{Client, Error};
use tracing::Instrument;

/// Producer settings. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// How long a batch waits for more records before it is sent. Default 5 ms.
    pub linger: Duration,
    /// Largest batch (sum of record sizes), capped by the topic's `max_batch_bytes`. Default 256 KiB.
    pub max_batch_bytes: usize,
    /// Most bytes of records queued and unacknowledged. Default 32 MiB.
    pub buffer_memory: usize,
    /// How long `send` waits for buffer memory before failing. Default 60 s.
    pub max_block: Duration,
    /// Default LZ4.
    pub compression: Compression,
    /// Default `All`.
    pub acks: Acks,
    /// Exactly-once appends across retries (producer id + sequences). Default on.
    pub idempotence: bool,
    /// Batches in flight per partition. Default 5 (the broker remembers the last 5 per producer).
    pub max_in_flight: usize,
    /// A batch not acknowledged this long after it was sealed, and not in flight, fails. Default 120 s.
    pub delivery_timeout: Duration,
    /// No response this long: the connection is dropped and batches are resent. Default 30 s.
    pub request_timeout: Duration,
    /// In a cluster: a request unanswered this long makes the producer ask the other brokers
    /// who leads its partition (again every quarter of this while it stays unanswered); if one
    /// names another leader (the old one is frozen or cut off, and the others elected a new
    /// one), the batches are resent there at once instead of after `request_timeout`. Set it
    /// near the brokers' election timeout. Zero: never ask. Default 1 s.
    pub leader_probe_after: Duration,
    /// First retry delay, doubled per attempt up to 1 s; must be positive. Default 50 ms.
    pub retry_backoff: Duration,
    /// A topic's partition count is read again after this long, so partitions added to a
    /// topic get records (keys then route by the new count, as in Kafka). Default 5 min.
    pub metadata_max_age: Duration,
    /// Kafka's `transactional.id`: makes the producer transactional (exactly once across
    /// partitions, with consumed offsets): call [`Producer::init_transactions`] once, then
    /// `begin_transaction` / `send` / `send_offsets_to_transaction` / `commit_transaction` or
    /// `abort_transaction`. Needs idempotence. Default none.
    pub transactional_id: Option<String>,
    /// How long a transaction may stay open before the coordinator aborts it. Default 60 s.
    pub transaction_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            max_batch_bytes: 256 * 1024,
            buffer_memory: 32 << 20,
            max_block: Duration::from_secs(60),
            compression: Compression::Lz4,
            acks: Acks::All,
            idempotence: true,
            max_in_flight: 5,
            delivery_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            leader_probe_after: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(50),
            metadata_max_age: Duration::from_secs(300),
            transactional_id: None,
            transaction_timeout: Duration::from_secs(60),
        }
    }
}

/// Where a record landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Shared by the records of a batch (`&*metadata.topic` is the `&str`): one allocation per
    /// batch, not one per record.
    pub topic: std::sync::Arc<str>,
    pub partition: u32,
    pub offset: u64,
    /// The broker's append time of the record's batch.
    pub timestamp_ms: i64,
}

/// Chooses a partition for a keyed record (the default is Kafka's murmur2).
pub trait Partitioner: Send + Sync + std::fmt::Debug {
    fn partition(&self, topic: &str, key: &[u8], partitions: u32) -> u32;
}

/// Kafka's default: `toPositive(murmur2(key)) % partitions`.
#[derive(Debug, Default)]
pub struct Murmur2Partitioner;

impl Partitioner for Murmur2Partitioner {
    fn partition(&self, _topic: &str, key: &[u8], partitions: u32) -> u32 {
        partition_for_key(key, partitions)
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    client: Client,
    config: ProducerConfig,
    partitioner: Box<dyn Partitioner>,
    /// Set once at start (idempotence) or by `init_transactions`.
    producer_id: AtomicI64,
    producer_epoch: AtomicI32,
    /// Transactional producers only.
    txn: Option<txn::TxnState>,
    acc: Mutex<Accumulator>,
    memory: Semaphore,
    /// Wakes the sender task (a batch sealed, a flush, a new open batch).
    wake: Notify,
    /// Signalled whenever `pending` drops to zero.
    idle: Notify,
    /// Records queued and not yet completed.
    pending: AtomicUsize,
    closed: AtomicBool,
    /// Per topic: partition count, batch size, when they were read.
    metadata: Mutex<HashMap<String, (u32, usize, tokio::time::Instant)>>,
    stats: stats::Counters,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Accumulator> {
        self.acc.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle to the producer; cheap to clone, shared by many tasks.
#[derive(Clone, Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Producer {
    /// Starts a producer (gets a producer id from the broker if idempotence is on).
    pub async fn new(client: Client, config: ProducerConfig) -> Result<Self, Error> {
        Self::with_partitioner(client, config, Box::new(Murmur2Partitioner)).await
    }

    pub async fn with_partitioner(
        client: Client,
        config: ProducerConfig,
        partitioner: Box<dyn Partitioner>,
    ) -> Result<Self, Error> {
        if config.max_in_flight == 0 || config.max_batch_bytes == 0 || config.buffer_memory < config.max_batch_bytes {
            return Err(Error::InvalidArgument(
                "max_in_flight and max_batch_bytes must be positive, buffer_memory at least max_batch_bytes".into(),
            ));
        }
        if config.retry_backoff.is_zero() {
            // It paces every retry, including reconnecting to a broker that refuses connections.
            return Err(Error::InvalidArgument("retry_backoff must be positive".into()));
        }
        if config.idempotence && config.max_in_flight > 5 {
            return Err(Error::InvalidArgument("with idempotence, max_in_flight may be at most 5".into()));
        }
        if config.idempotence && config.acks != Acks::All {
            return Err(Error::InvalidArgument("idempotence needs acks = All".into()));
        }
        if config.transactional_id.is_some() && !config.idempotence {
            return Err(Error::InvalidArgument("a transactional producer needs idempotence".into()));
        }
        let txn = config.transactional_id.clone().map(txn::TxnState::new);
        // A transactional producer gets its id from `init_transactions`.
        let (producer_id, producer_epoch) = if config.idempotence && txn.is_none() {
            let r = client.records().init_producer(tidelog_proto::wire::InitProducerRequest {}).await?.into_inner();
            (r.producer_id, r.producer_epoch)
        } else {
            (0, 0)
        };
        let shared = Arc::new(Shared {
            client,
            memory: Semaphore::new(config.buffer_memory),
            config,
            partitioner,
            producer_id: AtomicI64::new(producer_id),
            producer_epoch: AtomicI32::new(producer_epoch),
            txn,
            acc: Mutex::new(Accumulator::default()),
            wake: Notify::new(),
            idle: Notify::new(),
            pending: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            metadata: Mutex::new(HashMap::new()),
            stats: stats::Counters::default(),
        });
        let task = tokio::spawn(sender::run(Arc::clone(&shared)));
        Ok(Self { shared, task: Arc::new(Mutex::new(Some(task))) })
    }

    /// Partition count of `topic` and the batch size to use for it (cached).
    async fn topic_info(&self, topic: &str) -> Result<(u32, usize), Error> {
        let stale = {
            let mut cache = self.shared.metadata.lock().unwrap_or_else(PoisonError::into_inner);
            match cache.get_mut(topic) {
                Some((partitions, batch, read)) if read.elapsed() < self.shared.config.metadata_max_age => {
                    return Ok((*partitions, *batch));
                }
                // Stale: this send refreshes it; the others meanwhile use what is cached
                // (one DescribeTopic per topic per max age, not one per concurrent send).
                Some((partitions, batch, read)) => {
                    *read = tokio::time::Instant::now();
                    Some((*partitions, *batch))
                }
                None => None,
            }
        };
        match self.fetch_topic_info(topic).await {
            Ok(info) => Ok(info),
            Err(e) => match stale {
                Some(info) => {
                    tracing::warn!(topic, error = %e, "refreshing topic metadata failed; using what is cached");
                    Ok(info)
                }
                None => Err(e),
            },
        }
    }

    /// Reads `topic`'s partition count and batch limit from the broker, and caches them.
    async fn fetch_topic_info(&self, topic: &str) -> Result<(u32, usize), Error> {
        // Retryable failures (a dropped connection, an unavailable broker) are retried with
        // backoff for up to `max_block`, as Kafka's producer does for metadata.
        let deadline = tokio::time::Instant::now() + self.shared.config.max_block;
        let mut backoff = self.shared.config.retry_backoff;
        let desc = loop {
            match self.shared.client.describe_topic_settled(topic).await {
                Ok(d) => break d,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(topic, error = %e, "metadata fetch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        };
        let topic_max = desc.config.and_then(|c| c.max_batch_bytes).unwrap_or(1 << 20) as usize;
        // Room for protobuf framing, so an encoded batch stays under the broker's limit.
        let batch = self.shared.config.max_batch_bytes.min(topic_max * 9 / 10).max(1);
        let info = (desc.partition_count.max(1), batch);
        let entry = (info.0, info.1, tokio::time::Instant::now());
        self.shared.metadata.lock().unwrap_or_else(PoisonError::into_inner).insert(topic.to_string(), entry);
        Ok(info)
    }

    /// The producer's metrics since it started: queue depth, batches and their size, bytes,
    /// retries, deliveries and their latency.
    pub fn stats(&self) -> ProducerStats {
        let s = &self.shared;
        let free = s.memory.available_permits();
        s.stats.snapshot(s.pending.load(Ordering::Acquire), s.config.buffer_memory.saturating_sub(free))
    }

    /// Number of partitions of `topic`.
    pub async fn partitions(&self, topic: &str) -> Result<u32, Error> {
        Ok(self.topic_info(topic).await?.0)
    }

    /// Queues `record` for `topic`: by key (murmur2), else to the topic's sticky partition.
    pub async fn send(&self, topic: &str, record: Record) -> Result<DeliveryFuture, Error> {
        let info = self.topic_info(topic).await?;
        let partition = record.key.as_ref().map(|k| self.shared.partitioner.partition(topic, k, info.0));
        let (record, span) = crate::trace::send_span(topic, partition, record);
        self.enqueue(topic, info, partition, record).instrument(span).await
    }

    /// Queues `record` for an explicit partition.
    pub async fn send_to(&self, topic: &str, partition: u32, record: Record) -> Result<DeliveryFuture, Error> {
        let info = self.topic_info(topic).await?;
        let partitions = info.0;
        if partition >= partitions {
            return Err(Error::InvalidArgument(format!(
                "partition {partition} does not exist: {topic} has {partitions}"
            )));
        }
        let (record, span) = crate::trace::send_span(topic, Some(partition), record);
        self.enqueue(topic, info, Some(partition), record).instrument(span).await
    }

    /// `info` is the topic's (partition count, batch size), already looked up by the caller.
    async fn enqueue(
        &self,
        topic: &str,
        (partitions, max_batch): (u32, usize),
        partition: Option<u32>,
        record: Record,
    ) -> Result<DeliveryFuture, Error> {
        let s = &self.shared;
        if s.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // A transactional producer sends to a partition only once it joined the transaction.
        let partition = match &s.txn {
            Some(txn) => Some(txn.join(self, topic, partitions, partition).await?),
            None => partition,
        };
        let size = record.encoded_len();
        if size > max_batch {
            return Err(Error::InvalidArgument(format!("record of {size} bytes exceeds the batch size {max_batch}")));
        }
        // Buffer memory: taken at once when free (no timer, no clock read), else waited for.
        let permit = match s.memory.try_acquire_many(size as u32) {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(s.config.max_block, s.memory.acquire_many(size as u32))
                .await
                .map_err(|_| Error::BufferFull { waited: s.config.max_block, last_error: s.lock().last_error() })?
                .map_err(|_| Error::Closed)?,
        };
        permit.forget(); // returned when the record completes
        s.pending.fetch_add(1, Ordering::AcqRel);
        let (wake, delivery) = {
            let mut acc = s.lock();
            // Allocate the topic name for the sticky map only the first time a topic is seen.
            let partition = match partition.or_else(|| acc.sticky.get(topic).copied()) {
                Some(p) => p,
                None => {
                    let p = rand::random::<u32>() % partitions;
                    acc.sticky.insert(topic.to_string(), p);
                    p
                }
            };
            let (sealed, created, delivery) =
                acc.append(topic, partition, record, size, max_batch, s.config.compression);
            if sealed && acc.sticky.get(topic) == Some(&partition) {
                // Kafka's sticky partitioner: move keyless records on once a batch is full.
                acc.sticky.insert(topic.to_string(), rand::random::<u32>() % partitions);
            }
            (sealed || created, delivery)
        };
        if wake || s.config.linger.is_zero() {
            s.wake.notify_one();
        }
        Ok(delivery)
    }

    /// Sends everything queued now and waits until every record queued before (and during)
    /// the call has completed, successfully or not.
    pub async fn flush(&self) {
        let s = &self.shared;
        loop {
            let idle = s.idle.notified();
            if s.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            s.lock().flush_requested = true;
            s.wake.notify_one();
            idle.await;
        }
    }

    /// Flushes, then stops the background task. Later sends fail with [`Error::Closed`].
    pub async fn close(&self) {
        self.flush().await;
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The producer id the broker issued (0 without idempotence, or before
    /// `init_transactions`).
    pub fn producer_id(&self) -> i64 {
        self.shared.producer_id.load(Ordering::Acquire)
    }
}
