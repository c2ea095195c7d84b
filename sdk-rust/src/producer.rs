//! A batching producer: records are grouped per partition (key → murmur2 partition, keyless
//! records stick to one partition per flush), each group is encoded once into a batch, and all
//! batches of a flush are pipelined on one Produce stream.
//!
//! This is the first, synchronous-flush producer that the CLI and tests use; linger,
//! compression, bounded buffers and idempotent retries come with the full SDK producer.

use std::collections::BTreeMap;

use tidelog_proto::v1::{Acks, ErrorCode};
use tidelog_proto::wire;
use tokio_stream::StreamExt;

use crate::batch::{encode_records, Record};
use crate::partitioner::partition_for_key;
use crate::{Client, Error};

/// Where a batch of records landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub partition: u32,
    pub base_offset: u64,
    pub record_count: u32,
    pub append_time_ms: i64,
}

#[derive(Debug)]
pub struct Producer {
    client: Client,
    topic: String,
    partitions: u32,
    acks: Acks,
    max_batch_bytes: usize,
    sticky: u32,
    pending: BTreeMap<u32, Vec<Vec<Record>>>,
    pending_bytes: BTreeMap<u32, usize>,
    next_request_id: u64,
}

impl Producer {
    /// A producer for `topic` (its partition count is read from the broker).
    pub async fn new(client: Client, topic: &str) -> Result<Self, Error> {
        let desc = client.describe_topic(topic).await?;
        let max_batch = desc
            .config
            .and_then(|c| c.max_batch_bytes)
            .unwrap_or(1 << 20) as usize;
        Ok(Self {
            client,
            topic: topic.into(),
            partitions: desc.partition_count.max(1),
            acks: Acks::All,
            // Leave room for framing so an encoded batch stays under the broker's limit.
            max_batch_bytes: (max_batch * 9 / 10).max(1),
            sticky: (std::process::id() % desc.partition_count.max(1)),
            pending: BTreeMap::new(),
            pending_bytes: BTreeMap::new(),
            next_request_id: 1,
        })
    }

    pub fn with_acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition `record` goes to.
    pub fn partition_for(&self, record: &Record) -> u32 {
        record
            .key
            .as_ref()
            .map_or(self.sticky, |k| partition_for_key(k, self.partitions))
    }

    /// Queues a record for the next [`Producer::flush`]; returns its partition.
    pub fn send(&mut self, record: Record) -> u32 {
        let p = self.partition_for(&record);
        self.send_to(p, record);
        p
    }

    /// Queues a record for an explicit partition.
    pub fn send_to(&mut self, partition: u32, record: Record) {
        let size = record.encoded_len();
        let used = self.pending_bytes.entry(partition).or_insert(0);
        let batches = self.pending.entry(partition).or_default();
        if batches.is_empty() || *used + size > self.max_batch_bytes {
            batches.push(Vec::new());
            *used = 0;
        }
        *used += size;
        if let Some(b) = batches.last_mut() {
            b.push(record);
        }
    }

    /// Sends everything queued, pipelined on one stream, and waits for every acknowledgement.
    /// Results are in send order per partition. The first batch error is returned.
    pub async fn flush(&mut self) -> Result<Vec<Delivered>, Error> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes.clear();
        self.sticky = (self.sticky + 1) % self.partitions;
        let mut requests = Vec::new();
        let mut expected = BTreeMap::new();
        for (partition, batches) in pending {
            for records in batches.into_iter().filter(|b| !b.is_empty()) {
                let count = records.len() as u32;
                let (bytes, crc) = encode_records(records);
                let id = self.next_request_id;
                self.next_request_id += 1;
                expected.insert(id, (partition, count));
                requests.push(wire::ProduceRequest {
                    request_id: id,
                    topic: self.topic.clone(),
                    partition,
                    acks: self.acks as i32,
                    payload: Some(wire::produce_request::Payload::Records(bytes)),
                    compression: 0,
                    record_count: count,
                    crc32c: Some(crc),
                });
            }
        }
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let silent = self.acks == Acks::None;
        let mut responses = self
            .client
            .records()
            .produce(tokio_stream::iter(requests))
            .await?
            .into_inner();
        let mut delivered = Vec::with_capacity(expected.len());
        if silent {
            // No acknowledgements come back; wait for the broker to close the stream.
            while let Some(r) = responses.next().await {
                r?;
            }
            return Ok(delivered);
        }
        while let Some(resp) = responses.next().await {
            let resp = resp?;
            let Some((partition, count)) = expected.remove(&resp.request_id) else {
                return Err(Error::Decode(format!(
                    "unexpected response id {}",
                    resp.request_id
                )));
            };
            if resp.error_code != ErrorCode::Unspecified as i32 {
                return Err(Error::Broker {
                    code: ErrorCode::try_from(resp.error_code).unwrap_or(ErrorCode::InvalidRequest),
                    message: resp.error_message,
                });
            }
            delivered.push(Delivered {
                partition,
                base_offset: resp.base_offset,
                record_count: count,
                append_time_ms: resp.append_time_ms,
            });
        }
        if !expected.is_empty() {
            return Err(Error::Decode(format!(
                "stream ended with {} batches unacknowledged",
                expected.len()
            )));
        }
        Ok(delivered)
    }
}
