//! What a bench run shows: the live progress line (one per second on stderr, from shared
//! atomic counters), the latency histogram (HDR, microseconds) and the final result, printed
//! as a table or as one JSON object (`--json`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

const MAX_US: u64 = 3_600_000_000;

/// Counters the workers bump and the progress line reads.
#[derive(Debug, Default)]
pub struct Counters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
}

impl Counters {
    pub fn add(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> (u64, u64) {
        (self.records.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }
}

/// Prints `label`'s rate of the last second, once a second, until dropped.
#[derive(Debug)]
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: &'static str, counters: Arc<Counters>, quiet: bool) -> Self {
        if quiet {
            return Self { task: None };
        }
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = (0, 0);
            loop {
                tick.tick().await;
                let now = counters.get();
                eprintln!(
                    "{:>6.1}s {label:<8} {:>10} records/s {:>8.1} MB/s   total {:>11} records",
                    start.elapsed().as_secs_f64(),
                    now.0 - last.0,
                    (now.1 - last.1) as f64 / 1e6,
                    now.0
                );
                last = now;
            }
        });
        Self { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Latencies in microseconds, 3 significant digits, up to one hour (longer ones count as one hour).
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Latency {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self(Histogram::new_with_bounds(1, MAX_US, 3)?))
    }

    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros() as u64);
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        let h = &self.0;
        (!h.is_empty()).then(|| LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mode: &'static str,
    /// Raw batches on Produce streams, or the SDK producer.
    pub client: &'static str,
    pub topic: String,
    pub partitions: u32,
    pub producers: usize,
    pub consumers: usize,
    pub record_size: usize,
    pub batch_records: usize,
    pub acks: String,
    pub fsync: String,
    pub compression: String,
    /// Target records/s (0 = unlimited).
    pub rate: u64,
    pub records: u64,
    /// Value bytes (records x record size): what MB/s counts.
    pub bytes: u64,
    pub elapsed_s: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    /// What the latency measures (e.g. "batch ack", "produce→deliver").
    pub latency_of: &'static str,
    /// Whether latencies count from the intended send time (a target rate was set).
    pub corrected_for_coordinated_omission: bool,
    pub latency: Option<LatencySummary>,
    /// Anything else worth a line (e.g. the pre-fill of a consume run).
    pub notes: Vec<String>,
}

impl Summary {
    pub fn set_throughput(&mut self, records: u64, bytes: u64, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        self.records = records;
        self.bytes = bytes;
        self.elapsed_s = secs;
        self.records_per_s = records as f64 / secs;
        self.mb_per_s = bytes as f64 / secs / 1e6;
    }

    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        let rate = if self.rate == 0 { "max".to_string() } else { format!("{}/s", self.rate) };
        println!(
            "bench {} ({}): topic={} partitions={} producers={} consumers={} record_size={} batch_records={} acks={} fsync={} compression={} rate={rate}",
            self.mode,
            self.client,
            self.topic,
            self.partitions,
            self.producers,
            self.consumers,
            self.record_size,
            self.batch_records,
            self.acks,
            self.fsync,
            self.compression
        );
        println!("  {:<22} {:>14}", "records", self.records);
        println!("  {:<22} {:>14.2}", "elapsed s", self.elapsed_s);
        println!("  {:<22} {:>14.0}", "records/s", self.records_per_s);
        println!("  {:<22} {:>14.1}", "MB/s (values)", self.mb_per_s);
        if let Some(l) = &self.latency {
            let co = if self.corrected_for_coordinated_omission { ", from intended send time" } else { "" };
            println!("  latency of {} (µs, {} samples{co}):", self.latency_of, l.count);
            println!("  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}", "p50", "p90", "p99", "p99.9", "max", "mean");
            println!(
                "  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.0}",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
            );
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
        Ok(())
    }
}

/// Nanoseconds on the process's monotonic clock since `base` (e2e stamps records with it:
/// producer and consumer share the process, so no wall-clock skew enters the latency).
pub fn nanos_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// A pacing schedule: the intended send time of the `i`-th event at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub interval: Duration,
}

impl Schedule {
    pub fn new(start: Instant, per_second: f64) -> Self {
        Self { start, interval: Duration::from_secs_f64(1.0 / per_second.max(1e-9)) }
    }

    pub fn at(&self, i: u64) -> Instant {
        self.start + self.interval.mul_f64(i as f64)
    }
}

/// Sleeps on the calling OS thread until `t`: `nanosleep` has tens of microseconds of slack,
/// where tokio's timer wheel has a millisecond — too coarse to pace 10,000 records/s.
pub fn sleep_until_blocking(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}
