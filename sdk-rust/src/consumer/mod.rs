//! Subscriptions: a live stream of records from one topic, pushed by the broker as batches are
//! appended. Records come in offset order per partition; batches are decoded (and their CRC
//! checked) here.

pub mod assignor;
pub mod group;

use std::collections::HashMap;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tidelog_proto::wire::{self, start_position::Position};

use crate::batch::{decode_batch, ConsumedRecord};
use crate::{Client, Error};

/// Where a subscription starts in each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    /// Only records appended from now on.
    Latest,
    Offset(u64),
    /// The first batch appended at or after this time (ms since the epoch).
    Timestamp(i64),
}

impl StartAt {
    fn to_wire(self) -> wire::StartPosition {
        let position = match self {
            StartAt::Earliest => Position::Earliest(true),
            StartAt::Latest => Position::Latest(true),
            StartAt::Offset(o) => Position::Offset(o),
            StartAt::Timestamp(t) => Position::TimestampMs(t),
        };
        wire::StartPosition { position: Some(position) }
    }
}

/// A subscription request being built.
#[derive(Clone, Debug)]
pub struct Subscription {
    topic: String,
    start: StartAt,
    partitions: Vec<(u32, Option<StartAt>)>,
    max_bytes: u32,
}

pub type RecordStream = Pin<Box<dyn Stream<Item = Result<ConsumedRecord, Error>> + Send>>;

impl Subscription {
    /// Every partition of `topic`, from the latest offset (change with [`Subscription::start_at`]).
    pub fn new(topic: impl Into<String>) -> Self {
        Self { topic: topic.into(), start: StartAt::Latest, partitions: Vec::new(), max_bytes: 0 }
    }

    pub fn start_at(mut self, start: StartAt) -> Self {
        self.start = start;
        self
    }

    /// Reads only the listed partitions (each may override the start position).
    pub fn partition(mut self, partition: u32, start: Option<StartAt>) -> Self {
        self.partitions.push((partition, start));
        self
    }

    /// Upper bound on one response's batch bytes (0 = broker default, 1 MiB).
    pub fn max_bytes(mut self, max_bytes: u32) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Opens the stream of raw responses (batches as bytes).
    pub async fn open_raw(&self, client: &Client) -> Result<tonic::Streaming<wire::SubscribeResponse>, Error> {
        let req = wire::SubscribeRequest {
            topic: self.topic.clone(),
            partitions: self
                .partitions
                .iter()
                .map(|(p, s)| wire::PartitionStart { partition: *p, start: s.map(StartAt::to_wire) })
                .collect(),
            start: Some(self.start.to_wire()),
            max_bytes: self.max_bytes,
        };
        Ok(client.records().subscribe(req).await?.into_inner())
    }

    /// Opens the subscription as a stream of records. Records below a requested start offset
    /// (a batch may begin before it) are skipped.
    pub async fn open(&self, client: &Client) -> Result<RecordStream, Error> {
        let raw = self.open_raw(client).await?;
        let topic = self.topic.clone();
        let mut floors: HashMap<u32, u64> = HashMap::new();
        for (p, s) in &self.partitions {
            if let Some(StartAt::Offset(o)) = s.or(Some(self.start)) {
                floors.insert(*p, o);
            }
        }
        let default_floor = match self.start {
            StartAt::Offset(o) if self.partitions.is_empty() => o,
            _ => 0,
        };
        let stream = raw.flat_map(move |resp| {
            let items: Vec<Result<ConsumedRecord, Error>> = match resp {
                Err(status) => vec![Err(Error::Status(status))],
                Ok(resp) => {
                    let floor = floors.get(&resp.partition).copied().unwrap_or(default_floor);
                    let mut out = Vec::new();
                    for batch in resp.batches {
                        match decode_batch(&topic, resp.partition, batch, floor) {
                            Ok(records) => out.extend(records.into_iter().map(Ok)),
                            Err(e) => {
                                out.push(Err(e));
                                break;
                            }
                        }
                    }
                    out
                }
            };
            futures::stream::iter(items)
        });
        Ok(Box::pin(stream))
    }
}
