//! The producer's own metrics, for an application to export however it exports its others
//! (Prometheus, OpenTelemetry, logs): [`Producer::stats`](super::Producer::stats) returns a
//! snapshot, librdkafka's `stats_cb` idea without a JSON string. Updated with relaxed atomic
//! adds where batches are sent and completed: never per record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Running totals (relaxed atomics; read as a whole by [`Counters::snapshot`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches_sent: AtomicU64,
    batch_records_sent: AtomicU64,
    bytes_sent: AtomicU64,
    retries: AtomicU64,
    records_delivered: AtomicU64,
    records_failed: AtomicU64,
    /// Sum and maximum, over delivered batches, of first queued → acknowledged.
    delivery_us_sum: AtomicU64,
    delivery_us_max: AtomicU64,
    batches_delivered: AtomicU64,
    /// Quota throttling the brokers reported (`throttle_time_ms`).
    throttled_ms: AtomicU64,
    throttled_responses: AtomicU64,
}

impl Counters {
    /// A broker held a response back this long (a quota).
    pub fn throttled(&self, ms: u32) {
        self.throttled_ms.fetch_add(u64::from(ms), Ordering::Relaxed);
        self.throttled_responses.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch sent (`attempt` counts from 1).
    pub fn sent(&self, records: u32, bytes: usize, attempt: u32) {
        self.batches_sent.fetch_add(1, Ordering::Relaxed);
        self.batch_records_sent.fetch_add(u64::from(records), Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        if attempt > 1 {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A batch completed: delivered after `latency`, or failed.
    pub fn completed(&self, records: usize, latency: Option<Duration>) {
        match latency {
            Some(l) => {
                let us = u64::try_from(l.as_micros()).unwrap_or(u64::MAX);
                self.records_delivered.fetch_add(records as u64, Ordering::Relaxed);
                self.batches_delivered.fetch_add(1, Ordering::Relaxed);
                self.delivery_us_sum.fetch_add(us, Ordering::Relaxed);
                self.delivery_us_max.fetch_max(us, Ordering::Relaxed);
            }
            None => {
                self.records_failed.fetch_add(records as u64, Ordering::Relaxed);
            }
        }
    }

    pub fn snapshot(&self, queued_records: usize, queued_bytes: usize) -> ProducerStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let batches = load(&self.batches_sent);
        let delivered = load(&self.batches_delivered);
        ProducerStats {
            queued_records,
            queued_bytes,
            batches_sent: batches,
            bytes_sent: load(&self.bytes_sent),
            retries: load(&self.retries),
            records_delivered: load(&self.records_delivered),
            records_failed: load(&self.records_failed),
            avg_batch_records: if batches == 0 { 0.0 } else { load(&self.batch_records_sent) as f64 / batches as f64 },
            avg_delivery_latency: Duration::from_micros(
                load(&self.delivery_us_sum).checked_div(delivered).unwrap_or(0),
            ),
            max_delivery_latency: Duration::from_micros(load(&self.delivery_us_max)),
            throttle_time: Duration::from_millis(load(&self.throttled_ms)),
            throttled_responses: load(&self.throttled_responses),
        }
    }
}

/// A snapshot of a producer's metrics since it started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProducerStats {
    /// Records sent to the producer and not yet delivered or failed (the queue depth).
    pub queued_records: usize,
    /// Buffer memory those records hold (bounded by `buffer_memory`).
    pub queued_bytes: usize,
    /// Produce requests sent (each one batch), retries included.
    pub batches_sent: u64,
    /// Batch payload bytes sent (after compression), retries included.
    pub bytes_sent: u64,
    /// Batches sent again after a retryable error or a lost connection.
    pub retries: u64,
    pub records_delivered: u64,
    pub records_failed: u64,
    /// Records per batch sent.
    pub avg_batch_records: f64,
    /// From a batch's first record queued to its acknowledgement, over delivered batches.
    pub avg_delivery_latency: Duration,
    pub max_delivery_latency: Duration,
    /// Total time brokers throttled this producer for going over a quota (the producer sent
    /// nothing to such a broker meanwhile), and how many responses said so.
    pub throttle_time: Duration,
    pub throttled_responses: u64,
}
