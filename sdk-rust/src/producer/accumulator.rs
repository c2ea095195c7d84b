//! Per-partition queues of records waiting to be sent.
//!
//! A partition queue holds: the open batch (still filling), sealed batches ready to send, and
//! batches in flight (sent, not yet acknowledged). Sequence numbers are assigned when a batch
//! is sealed, so they follow send order; a batch keeps its sequence across resends, which is
//! what lets the broker drop duplicates (see `server/src/partition/producer_state.rs`).
//!
//! Invariants: within a partition, `in_flight` then `ready` are in sequence order with no
//! gaps; every record in a queue holds its bytes of buffer memory until it completes.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::delivery::{Completion, DeliveryFuture};
use crate::batch::{encode_records, Record};
use tidelog_proto::sequence;

use crate::compression::Compression;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

#[derive(Debug)]
pub(crate) struct OpenBatch {
    records: Vec<Record>,
    /// The outcome its records' futures share.
    completion: Completion,
    bytes: usize,
    created: Instant,
}

/// A sealed batch: encoded (and compressed) once, resent as the same bytes.
#[derive(Debug)]
pub(crate) struct Batch {
    pub payload: Bytes,
    pub crc: u32,
    pub compression: Compression,
    pub record_count: u32,
    pub base_sequence: i32,
    pub completion: Completion,
    /// Buffer memory the batch's records hold.
    pub memory: usize,
    pub created: Instant,
    /// Request id of the latest send, while in flight.
    pub request_id: u64,
    pub sent_at: Option<Instant>,
    /// How many times the batch was sent.
    pub attempts: u32,
}

#[derive(Debug, Default)]
pub(crate) struct PartitionQueue {
    /// Whose queue this is (its batches' outcomes name it).
    pub tp: TopicPartition,
    pub open: Option<OpenBatch>,
    pub ready: VecDeque<Batch>,
    pub in_flight: VecDeque<Batch>,
    pub next_sequence: i32,
    /// Do not send before this (backoff after a retryable error).
    pub retry_at: Option<Instant>,
    /// Resent at once to a leader a NOT_LEADER answer named, and not answered since: the next
    /// refusal waits the backoff (see `sender.rs`, "Failure handling").
    pub redirected: bool,
    /// The broker's last retryable refusal of this partition's batches (code and message),
    /// until a batch is acknowledged: what a delivery timeout or a full buffer reports.
    pub last_error: Option<String>,
}

impl PartitionQueue {
    /// Moves every in-flight batch back in front of the ready ones, in order (to resend).
    pub fn rewind(&mut self) -> Vec<u64> {
        let ids = self.in_flight.iter().map(|b| b.request_id).collect();
        while let Some(mut b) = self.in_flight.pop_back() {
            b.sent_at = None;
            self.ready.push_front(b);
        }
        ids
    }

    /// `dropped` failed for good and was never stored: every batch after it (in sequence
    /// order) takes over its sequence numbers, so the broker sees no gap. Batches before it —
    /// in flight when `dropped` came from `ready` — keep theirs.
    pub fn renumber_after_drop(&mut self, dropped: &Batch) {
        let shift = dropped.record_count;
        let after = |b: &Batch| seq_after(b.base_sequence, dropped.base_sequence);
        for b in self.in_flight.iter_mut().chain(self.ready.iter_mut()).filter(|b| after(b)) {
            b.base_sequence = sequence::decrement(b.base_sequence, shift);
        }
        self.next_sequence = sequence::decrement(self.next_sequence, shift);
    }
}

/// Whether sequence `a` comes after `b` (sequences wrap, but never by more than half the range
/// within one partition's queue).
fn seq_after(a: i32, b: i32) -> bool {
    let d = (i64::from(a) - i64::from(b)).rem_euclid(i64::from(i32::MAX) + 1);
    d != 0 && d < (1 << 30)
}

#[derive(Debug, Default)]
pub(crate) struct Accumulator {
    /// Per topic, its partitions' queues: `send` finds its queue by the topic's `&str`, so a
    /// record costs no allocation of its name. Queues are never removed (an empty queue still
    /// holds the partition's next sequence).
    queues: HashMap<String, HashMap<u32, PartitionQueue>>,
    /// Partition that keyless records of a topic currently stick to.
    pub sticky: HashMap<String, u32>,
    /// Seal every open batch at the next pass (flush/close).
    pub flush_requested: bool,
}

impl Accumulator {
    pub fn queue_mut(&mut self, tp: &TopicPartition) -> Option<&mut PartitionQueue> {
        self.queues.get_mut(&tp.topic)?.get_mut(&tp.partition)
    }

    pub fn queues(&self) -> impl Iterator<Item = &PartitionQueue> {
        self.queues.values().flat_map(HashMap::values)
    }

    pub fn queues_mut(&mut self) -> impl Iterator<Item = &mut PartitionQueue> {
        self.queues.values_mut().flat_map(HashMap::values_mut)
    }

    /// A partition whose batches the broker keeps refusing, and its last refusal.
    pub fn last_error(&self) -> Option<String> {
        self.queues().find_map(|q| q.last_error.as_ref().map(|e| format!("{}/{}: {e}", q.tp.topic, q.tp.partition)))
    }

    /// Adds a record to its partition's open batch; seals the batch first if the record would
    /// overflow it. Returns whether a batch was sealed, whether the partition had no open
    /// batch before (a new linger deadline), and the record's delivery future.
    pub fn append(
        &mut self,
        topic: &str,
        partition: u32,
        record: Record,
        size: usize,
        max_batch_bytes: usize,
        compression: Compression,
    ) -> (bool, bool, DeliveryFuture) {
        let partitions = match self.queues.get_mut(topic) {
            Some(p) => p,
            None => self.queues.entry(topic.to_string()).or_default(), // once per topic
        };
        let q = partitions.entry(partition).or_insert_with(|| PartitionQueue {
            tp: TopicPartition { topic: topic.to_string(), partition },
            ..Default::default()
        });
        let created = q.open.is_none();
        let mut sealed = false;
        if q.open.as_ref().is_some_and(|o| o.bytes + size > max_batch_bytes) {
            seal(q, compression);
            sealed = true;
        }
        let open = q.open.get_or_insert_with(|| OpenBatch {
            records: Vec::new(),
            completion: Completion::new(&q.tp.topic, q.tp.partition),
            bytes: 0,
            created: Instant::now(),
        });
        let future = open.completion.future(open.records.len() as u32);
        open.records.push(record);
        open.bytes += size;
        (sealed, created, future)
    }
}

/// Seals the open batch of `q`: encodes, compresses, assigns its sequence numbers.
pub(crate) fn seal(q: &mut PartitionQueue, compression: Compression) {
    let Some(open) = q.open.take() else { return };
    let record_count = open.records.len() as u32;
    let (raw, raw_crc) = encode_records(open.records);
    // If compression fails (it should not), send the batch uncompressed rather than lose it.
    let (payload, crc, compression) = match compression {
        Compression::None => (raw, raw_crc, compression),
        c => match c.compress(&raw) {
            Ok(packed) => {
                let crc = tidelog_proto::checksum::crc32c(&packed);
                (packed, crc, c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "compression failed; sending the batch uncompressed");
                (raw, raw_crc, Compression::None)
            }
        },
    };
    q.ready.push_back(Batch {
        payload,
        crc,
        compression,
        record_count,
        base_sequence: q.next_sequence,
        completion: open.completion,
        memory: open.bytes,
        created: open.created,
        request_id: 0,
        sent_at: None,
        attempts: 0,
    });
    q.next_sequence = sequence::increment(q.next_sequence, record_count);
}

/// When the open batch of `q` must be sealed by linger, if it has one.
pub(crate) fn linger_deadline(q: &PartitionQueue, linger: std::time::Duration) -> Option<Instant> {
    q.open.as_ref().map(|o| o.created + linger)
}

/// For the SDK's criterion benchmark (`sdk-rust/benches/sdk.rs`), not an API: appends
/// `records` to one partition's queue exactly as `Producer::send` does (a delivery future per
/// record, seal on overflow) and seals the last batch. Returns the batches sealed.
#[doc(hidden)]
pub fn bench_accumulate(records: Vec<Record>, max_batch_bytes: usize, compression: Compression) -> usize {
    let mut acc = Accumulator::default();
    let mut futures = Vec::with_capacity(records.len());
    for record in records {
        let size = record.encoded_len();
        futures.push(acc.append("bench", 0, record, size, max_batch_bytes, compression).2);
    }
    acc.queues_mut()
        .map(|q| {
            seal(q, compression);
            q.ready.len()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: i32, n: u32) -> Batch {
        Batch {
            payload: Bytes::new(),
            crc: 0,
            compression: Compression::None,
            record_count: n,
            base_sequence: seq,
            completion: Completion::new("t", 0),
            memory: 0,
            created: Instant::now(),
            request_id: 0,
            sent_at: None,
            attempts: 0,
        }
    }

    #[test]
    fn dropping_a_queued_batch_renumbers_only_the_batches_after_it() {
        // A (0..5) in flight and maybe stored; B (5..10) expires unsent; C (10..15) waits.
        let mut q = PartitionQueue { next_sequence: 15, ..PartitionQueue::default() };
        q.in_flight.push_back(batch(0, 5));
        q.ready.push_back(batch(5, 5));
        q.ready.push_back(batch(10, 5));
        let b = q.ready.pop_front().unwrap();
        q.renumber_after_drop(&b);
        assert_eq!(q.in_flight[0].base_sequence, 0, "a batch before the dropped one keeps its sequence");
        assert_eq!(q.ready[0].base_sequence, 5, "C takes B's place");
        assert_eq!(q.next_sequence, 10);
    }

    #[test]
    fn renumbering_works_across_the_wrap() {
        let mut q = PartitionQueue { next_sequence: 7, ..PartitionQueue::default() };
        q.in_flight.push_back(batch(i32::MAX - 2, 5)); // covers MAX-2..=MAX, 0, 1
        q.in_flight.push_back(batch(2, 5));
        let b = q.in_flight.pop_front().unwrap();
        q.renumber_after_drop(&b);
        assert_eq!(q.in_flight[0].base_sequence, i32::MAX - 2);
        assert_eq!(q.next_sequence, 2);
    }
}
