//! One cleaning pass over a partition's cleanable segments: map, then rewrite. Pure file work:
//! it reads sealed segments (never changing) and writes into the staging directory; the caller
//! swaps the result in under the partition's lock (`Log::swap_cleaned`).
//!
//! 1. **Map** the dirty part (batches from the cleaner checkpoint on): key digest → offset of
//!    the key's latest record, in a bounded [`OffsetMap`]. Markers, control batches and aborted
//!    transactions' batches are not mapped. If the map fills, mapping stops before that batch:
//!    the pass cleans below it (`map_end`) and the rest stays dirty.
//! 2. **Rewrite** every cleanable segment that starts below `map_end`, grouped into output
//!    segments of at most `segment_bytes` (so segments shrunk by earlier passes merge). A record
//!    below `map_end` is kept iff it has a key, no later record of its key is in the map, and it
//!    is not a tombstone whose delete horizon has passed. Batches at or above `map_end` are
//!    copied as they are.
//!
//! What is kept, per batch:
//! - every record kept and nothing to note: the batch's bytes unchanged;
//! - some records dropped: each run of consecutive kept offsets becomes a batch of its own
//!   (base offset = the run's first offset, the record bytes copied unchanged, re-compressed
//!   with the batch's codec). Header fields are kept: append time, producer id and epoch, Raft
//!   term and index (so Raft indexes in a compacted segment never decrease, but runs of one
//!   batch share one), the base sequence moved by the run's position;
//! - a kept tombstone, or a transaction marker, reached for the first time gets its delete
//!   horizon (`now + delete_retention_ms`) in the header; one whose horizon passed is dropped;
//! - a committed transaction's batches lose `FLAG_TRANSACTIONAL` (their outcome is settled, so
//!   no marker is needed to read them, and a header replay never mistakes them for an open
//!   transaction once the marker is gone); aborted transactions' batches are dropped;
//! - a producer's latest batch that lost its last record leaves an empty batch (no records, at
//!   its last offset, `base_sequence` = the next sequence the producer will send), so a replay
//!   of the headers (a replica rebuilt from a snapshot) still knows that producer's next
//!   sequence, as Kafka keeps the last batch of every producer; an empty batch that is no
//!   longer its producer's latest is dropped. Consumers are never served an empty batch;
//! - control batches (Raft entries) are kept;
//! - an output segment whose last records went ends with an empty batch at the next segment's
//!   base, carrying the last input batch's Raft term and index: segments stay contiguous, and a
//!   replica that installs them as a Raft snapshot ends its log where the leader's entries
//!   continue.
//!
//! Never: write outside the staging directory, or decide on records at or above `map_end`.

use std::path::Path;

use super::offset_map::{digest, OffsetMap};
use super::records::{decompressed, parse, reframe, RawRecord};
use super::throttle::Throttle;
use crate::error::BrokerError;
use crate::log::format::{BatchHeader, FLAG_TRANSACTIONAL, MAX_SEGMENT_BYTES};
use crate::log::{sync_staging, SealedSegment, StagedSegment, StoredBatch};

/// What one pass is given.
pub struct PassInput<'a> {
    /// The cleanable sealed segments, in offset order.
    pub segments: &'a [SealedSegment],
    /// The first dirty offset (the cleaner checkpoint).
    pub checkpoint: u64,
    pub staging: &'a Path,
    pub now_ms: i64,
    pub delete_retention_ms: i64,
    /// Output segments are grouped up to this size.
    pub segment_bytes: u64,
    /// Whether a transactional batch belongs to an aborted transaction.
    pub is_aborted: &'a dyn Fn(&BatchHeader) -> bool,
    /// Whether a batch is its producer's latest (its header must survive, see below).
    pub is_producer_tail: &'a dyn Fn(&BatchHeader) -> bool,
    pub map_bytes: usize,
    pub throttle: &'a mut Throttle,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// The input segments replaced (base offset, size); empty when there was nothing to do.
    pub replaced: Vec<(u64, u64)>,
    /// Records below this were cleaned: the new cleaner checkpoint.
    pub map_end: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub keys_mapped: u64,
    /// The earliest delete horizon (seconds since the epoch) of a tombstone or marker kept:
    /// when a pass is due again even without new writes.
    pub next_horizon_s: Option<u32>,
}

/// Calls `f` with every batch of `seg` in order, throttled.
fn for_each_batch(
    seg: &SealedSegment,
    throttle: &mut Throttle,
    f: impl FnMut(StoredBatch) -> Result<bool, BrokerError>,
) -> Result<(), BrokerError> {
    seg.for_each_batch(|n| throttle.consume(n), f)
}

/// Whether the cleaner looks at a batch's records (not a Raft control batch, not a marker).
fn is_data(h: &BatchHeader) -> bool {
    !h.is_control() && !h.is_txn_marker()
}

/// Step 1: the map over the dirty batches; returns it and `map_end`.
fn build_map(input: &mut PassInput<'_>, parsed: &mut Vec<RawRecord>) -> Result<(OffsetMap, u64), BrokerError> {
    let mut map = OffsetMap::new(input.map_bytes);
    let end = input.segments.last().map_or(input.checkpoint, |s| s.end_offset);
    let mut map_end = end;
    for seg in input.segments.iter().filter(|s| s.end_offset > input.checkpoint) {
        let mut full = false;
        for_each_batch(seg, input.throttle, |b| {
            let h = b.header;
            if h.base_offset < input.checkpoint || !is_data(&h) || (h.is_transactional() && (input.is_aborted)(&h)) {
                return Ok(true);
            }
            if map.room() < h.record_count as usize {
                (map_end, full) = (h.base_offset, true);
                return Ok(false);
            }
            // A payload that does not decode (only a compressed one can reach the log so) is
            // not mapped, and kept as it is below.
            let Ok(raw) = decompressed(h.compression, &b.payload) else { return Ok(true) };
            if parse(&raw, parsed).is_err() || parsed.len() != h.record_count as usize {
                return Ok(true);
            }
            for (i, r) in parsed.iter().enumerate() {
                if let Some(k) = &r.key {
                    map.put(digest(&raw[k.clone()]), h.base_offset + i as u64);
                }
            }
            Ok(true)
        })?;
        if full {
            break;
        }
    }
    Ok((map, map_end))
}

/// The horizon a tombstone or marker reached now gets, in seconds since the epoch.
fn horizon_s(now_ms: i64, delete_retention_ms: i64) -> u32 {
    let ms = now_ms.saturating_add(delete_retention_ms).max(0);
    u32::try_from(ms.saturating_add(999) / 1000).unwrap_or(u32::MAX).max(1)
}

/// One output segment, with the earliest delete horizon written to it.
struct Output {
    seg: StagedSegment,
    horizon: Option<u32>,
}

impl Output {
    fn put(&mut self, header: &BatchHeader, payload: &[u8]) -> Result<(), BrokerError> {
        if header.delete_horizon_s != 0 {
            let h = header.delete_horizon_s;
            self.horizon = Some(self.horizon.map_or(h, |x| x.min(h)));
        }
        Ok(self.seg.put(header, payload)?)
    }
}

/// The empty batch that stands for a producer's latest batch `h` once its last record is gone:
/// at its last offset, no records, its producer's next sequence (see the module docs). `None`
/// for a batch without sequences.
fn tail_header(h: &BatchHeader) -> Option<BatchHeader> {
    (h.base_sequence >= 0 && h.record_count > 0).then(|| BatchHeader {
        compression: 0,
        flags: 0,
        record_count: 0,
        base_offset: h.next_offset() - 1,
        base_sequence: h.base_sequence.wrapping_add(h.record_count as i32),
        payload_crc: tidelog_proto::checksum::crc32c(&[]),
        delete_horizon_s: 0,
        ..*h
    })
}

/// The kept part of one data batch below `map_end`, written to `out`. Returns records dropped.
fn rewrite_batch(
    b: &StoredBatch,
    map: &OffsetMap,
    now_s: u32,
    new_horizon: u32,
    producer_tail: bool,
    parsed: &mut Vec<RawRecord>,
    out: &mut Output,
) -> Result<u64, BrokerError> {
    let h = b.header;
    if h.record_count == 0 {
        // An earlier pass's empty producer-tail batch: kept only while it is still the tail.
        if producer_tail {
            out.put(&h, &b.payload)?;
        }
        return Ok(0);
    }
    let decoded = decompressed(h.compression, &b.payload).and_then(|raw| parse(&raw, parsed).map(|()| raw));
    let raw = match decoded {
        Ok(raw) if parsed.len() == h.record_count as usize => raw,
        _ => {
            // Kept as it is (its outcome is settled: not an aborted transaction's), so no
            // header replay mistakes it for an open transaction once its marker is gone.
            tracing::warn!(offset = h.base_offset, "compaction keeps a batch whose records do not decode");
            out.put(&BatchHeader { flags: h.flags & !FLAG_TRANSACTIONAL, ..h }, &b.payload)?;
            return Ok(0);
        }
    };
    let expired = h.delete_horizon_s != 0 && now_s >= h.delete_horizon_s;
    let keep: Vec<bool> = parsed
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let Some(k) = &r.key else { return false };
            let latest = map.get(&digest(&raw[k.clone()])).is_none_or(|o| o <= h.base_offset + i as u64);
            latest && !(r.tombstone && expired)
        })
        .collect();
    // A batch keeps a delete horizon only while it holds a kept tombstone (stamped the first
    // time one is kept), so a horizon in the log always lies ahead of the pass that set it.
    let tombstone_in =
        |range: std::ops::Range<usize>| parsed[range.clone()].iter().zip(&keep[range]).any(|(r, k)| *k && r.tombstone);
    let horizon_for = |has_tombstone: bool| match (has_tombstone, h.delete_horizon_s) {
        (false, _) => 0,
        (true, 0) => new_horizon,
        (true, set) => set,
    };
    let header = BatchHeader { flags: h.flags & !FLAG_TRANSACTIONAL, delete_horizon_s: 0, ..h };
    let dropped = keep.iter().filter(|k| !**k).count() as u64;
    if dropped == 0 {
        let whole = BatchHeader { delete_horizon_s: horizon_for(tombstone_in(0..keep.len())), ..header };
        out.put(&whole, &b.payload)?;
        return Ok(0);
    }
    // Runs of consecutive kept records, each a batch of its own.
    let mut i = 0;
    while i < keep.len() {
        if !keep[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < keep.len() && keep[i] {
            i += 1;
        }
        let payload = reframe(&raw, parsed[start..i].iter().map(|r| r.field.clone()), h.compression)?;
        let run = BatchHeader {
            record_count: (i - start) as u32,
            base_offset: h.base_offset + start as u64,
            base_sequence: if h.base_sequence >= 0 { h.base_sequence.wrapping_add(start as i32) } else { -1 },
            payload_crc: tidelog_proto::checksum::crc32c(&payload),
            delete_horizon_s: horizon_for(tombstone_in(start..i)),
            ..header
        };
        out.put(&run, &payload)?;
    }
    if producer_tail && keep.last() == Some(&false) {
        if let Some(empty) = tail_header(&h) {
            out.put(&empty, &[])?;
        }
    }
    Ok(dropped)
}

/// Runs one pass (see the module docs). Writes the new segments into `input.staging`, one
/// file per output group named by its first input segment (so the log start never moves) and
/// ending where the group's input ended (an end batch if its last records went), each
/// fsynced.
pub fn run(mut input: PassInput<'_>) -> Result<PassOutcome, BrokerError> {
    let mut parsed = Vec::new();
    let (map, map_end) = build_map(&mut input, &mut parsed)?;
    let first_dirty = input.segments.iter().find(|s| s.end_offset > input.checkpoint).map(|s| s.base_offset);
    if first_dirty.is_some_and(|b| map_end <= b.max(input.checkpoint)) {
        return Err(BrokerError::InvalidArgument(format!(
            "the cleaner's offset map ({} bytes) cannot hold the keys of one batch; raise [cleaner] map_bytes",
            input.map_bytes
        )));
    }
    let mut outcome = PassOutcome { map_end, keys_mapped: map.len() as u64, ..PassOutcome::default() };
    let now_s = u32::try_from(input.now_ms.max(0) / 1000).unwrap_or(u32::MAX);
    let new_horizon = horizon_s(input.now_ms, input.delete_retention_ms);
    let todo: Vec<&SealedSegment> = input.segments.iter().filter(|s| s.base_offset < map_end).collect();
    let mut i = 0;
    while i < todo.len() {
        // A group: consecutive segments into one output segment, named by the first, while
        // the input stays within `segment_bytes`, the output has not reached it (runs cut
        // from batches can make output larger than input), and offsets relative to the base
        // fit a u32 (the index stores them so).
        let base = todo[i].base_offset;
        let mut out = Output { seg: StagedSegment::create(input.staging, base)?, horizon: None };
        let mut last_in: Option<BatchHeader> = None;
        let (mut j, mut size) = (i, 0);
        while j < todo.len()
            && (j == i
                || (size + todo[j].size <= input.segment_bytes
                    && out.seg.written() < input.segment_bytes
                    && todo[j].end_offset - base <= u64::from(u32::MAX)))
        {
            let seg = todo[j];
            outcome.bytes_read += seg.size;
            for_each_batch(seg, input.throttle, |b| {
                let h = b.header;
                last_in = Some(h);
                if h.base_offset >= map_end || h.is_control() {
                    out.put(&h, &b.payload)?;
                } else if h.is_txn_marker() {
                    if h.delete_horizon_s == 0 {
                        out.put(&BatchHeader { delete_horizon_s: new_horizon, ..h }, &b.payload)?;
                    } else if now_s < h.delete_horizon_s {
                        out.put(&h, &b.payload)?;
                    }
                } else if h.is_transactional() && (input.is_aborted)(&h) {
                    outcome.records_removed += u64::from(h.record_count);
                    if (input.is_producer_tail)(&h) {
                        if let Some(empty) = tail_header(&h) {
                            out.put(&empty, &[])?;
                        }
                    }
                } else {
                    let tail = (input.is_producer_tail)(&h);
                    outcome.records_removed +=
                        rewrite_batch(&b, &map, now_s, new_horizon, tail, &mut parsed, &mut out)?;
                }
                Ok(true)
            })?;
            outcome.replaced.push((seg.base_offset, seg.size));
            size += seg.size;
            j += 1;
        }
        if out.seg.written() > MAX_SEGMENT_BYTES / 2 {
            return Err(BrokerError::InvalidArgument(format!(
                "compacting segment {base} would write {} bytes, more than a segment may hold; lower segment_bytes",
                out.seg.written()
            )));
        }
        let Some(last) = last_in else {
            return Err(BrokerError::InvalidArgument(format!("segment {base} holds no batch; not compacting it")));
        };
        // The group's last records went: an end batch keeps the segment ending where the next
        // one starts (see `StagedSegment::finish`).
        outcome.bytes_written += out.seg.finish(todo[j - 1].end_offset, &last)?;
        outcome.next_horizon_s = match (outcome.next_horizon_s, out.horizon) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        i = j;
    }
    sync_staging(input.staging)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_horizon_is_rounded_up_to_whole_seconds_and_never_zero() {
        assert_eq!(horizon_s(1_500, 1_000), 3);
        assert_eq!(horizon_s(0, 0), 1);
        assert_eq!(horizon_s(i64::MAX, i64::MAX), u32::MAX);
    }
}
