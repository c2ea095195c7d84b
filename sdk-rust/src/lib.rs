//! Rust client for Tidelog.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidelog::Error> {
//! use tidelog::{Client, Producer, ProducerConfig, Record, Subscription, StartAt};
//! use futures::StreamExt;
//!
//! let client = Client::connect("http://127.0.0.1:9690").await?;
//! client.create_topic("events", 3).await?;
//! let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
//! let delivery = producer.send("events", Record::new("hello").with_key("user-1")).await?;
//! let stored = delivery.await?; // partition and offset
//! producer.close().await;
//!
//! let mut records = Subscription::new("events").start_at(StartAt::Earliest).open(&client).await?;
//! while let Some(r) = records.next().await {
//!     let r = r?;
//!     println!("{} @ {}: {:?}", r.partition, r.offset, r.value);
//! }
//! # Ok(()) }
//! ```
//!
//! Batches are encoded once here ([`batch`]) and travel as bytes through the broker; the
//! partitioner ([`partitioner`]) is Kafka's murmur2, identical in every Tidelog SDK.
//!
//! # Allocator (glibc)
//!
//! A subscription allocates and frees a large buffer per response (about 1 MiB). glibc hands
//! such freed blocks back to the kernel, so the next response faults fresh pages in: measured
//! with one subscription reading 1 KiB records, 0.33 µs of CPU per record with the thresholds
//! below, 0.39-0.53 µs and 70-230 thousand page faults per two million records without
//! (docs/PERFORMANCE.md). A high-throughput consumer should raise them, as the `tidelog`
//! binary does: `mallopt(M_MMAP_THRESHOLD, 32 << 20)` and `mallopt(M_TRIM_THRESHOLD, 128 << 20)`
//! at start, or without code `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=134217728`.

pub mod batch;
pub mod client;
pub mod compression;
pub mod consumer;
pub mod error;
mod hand_call;
pub mod partitioner;
pub mod producer;
pub mod trace;

pub use batch::{ConsumedRecord, Record};
pub use client::{Channel, Client, Credentials, OffsetSpecKind, ResetTo, TlsOptions};
pub use compression::Compression;
pub use consumer::assignor::Assignor;
pub use consumer::group::{GroupConfig, GroupConsumer, OffsetReset, RebalanceListener, TopicPartition};
pub use consumer::{IsolationLevel, StartAt, Subscription};
pub use error::Error;
pub use producer::{
    ConsumerGroupMetadata, DeliveryFuture, Partitioner, Producer, ProducerConfig, ProducerStats, RecordMetadata,
};
pub use tidelog_proto as proto;
