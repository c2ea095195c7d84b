//! A steady idempotent acks=all producer (the SDK's defaults) for tests that change a running
//! cluster under load: it records every acknowledgement by (partition, offset), counts failed
//! deliveries, and stops when told. Bounded: at most [`MAX_RECORDS`], paced, 32 awaiting
//! their acknowledgement.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tidelog::{Client, Producer, ProducerConfig, Record};

/// Most records one producer sends.
pub const MAX_RECORDS: u64 = 2_000_000;

#[derive(Default)]
pub struct Acked {
    /// (partition, offset) → value of every acknowledged record.
    pub acked: Mutex<BTreeMap<(u32, u64), String>>,
    /// Deliveries that failed (beyond the producer's own retries).
    pub failed: AtomicU64,
    pub stop: AtomicBool,
}

impl Acked {
    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// Sends `{tag}-0`, `{tag}-1`, … to `topic`, round-robin over `partitions`, through `addr`,
/// until `seen.stop`; then waits for every acknowledgement.
pub async fn produce(addr: String, topic: &str, partitions: u32, tag: &str, seen: Arc<Acked>) {
    let client = Client::connect(addr).await.unwrap();
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        metadata_max_age: Duration::from_millis(500),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await.unwrap();
    let mut pending = futures::stream::FuturesOrdered::new();
    for i in 0..MAX_RECORDS {
        if seen.stop.load(Ordering::Acquire) {
            break;
        }
        let value = format!("{tag}-{i}");
        let p = (i % u64::from(partitions)) as u32;
        let delivery = producer.send_to(topic, p, Record::new(value.clone())).await.unwrap();
        pending.push_back(async move { (value, delivery.await) });
        while pending.len() >= 32 {
            note(&seen, pending.next().await);
        }
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await; // a steady, bounded pace
        }
    }
    while let Some(done) = pending.next().await {
        note(&seen, Some(done));
    }
    producer.close().await;
}

fn note(seen: &Acked, done: Option<(String, Result<tidelog::RecordMetadata, tidelog::Error>)>) {
    match done {
        Some((value, Ok(m))) => {
            let previous = seen.acked.lock().unwrap().insert((m.partition, m.offset), value.clone());
            assert!(previous.is_none(), "{}/{} acknowledged twice ({previous:?}, {value})", m.partition, m.offset);
        }
        Some((value, Err(e))) => {
            seen.failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("delivery of {value} failed: {e}");
        }
        None => {}
    }
}
