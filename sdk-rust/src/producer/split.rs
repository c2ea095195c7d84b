//! Splitting a batch the broker refused as too large (`BATCH_TOO_LARGE`): the topic's
//! `max_batch_bytes` was lowered after this producer read it, so batches sealed under the old
//! limit no longer fit. As Kafka's producer does (KIP-126), the batch is cut in two at a record
//! boundary and both parts are resent; a part still too large is cut again, and only a single
//! record larger than the topic allows fails. The sender also drops the topic's cached
//! metadata, so batches sealed from then on use the new limit.
//!
//! Invariants: the two parts hold the batch's records in order, under its sequence numbers
//! (the first part starts at the batch's base sequence, the second right after it), so the
//! broker, which stored nothing of the refused batch, sees no gap; their buffer memory adds up
//! to the batch's; every record's delivery future follows it to its part (`Done::Split`).
//! Never: decode the records (the payload is cut where its record fields end), or change a
//! record's bytes.

use super::accumulator::Batch;
use crate::batch::record_ends;
use crate::compression::Compression;
use tidelog_proto::sequence;

/// The two halves of `b`, ready to resend in its place (first, then second), or `b` back when
/// it cannot be split: a single record, or a payload that does not read back.
pub(crate) fn split(b: Batch) -> Result<(Batch, Batch), Batch> {
    let raw = match b.compression {
        Compression::None => b.payload.clone(),
        c => match c.decompress(&b.payload) {
            Ok(raw) => bytes::Bytes::from(raw),
            Err(_) => return Err(b),
        },
    };
    let ends = match record_ends(&raw) {
        Ok(ends) if ends.len() >= 2 && ends.len() == b.record_count as usize => ends,
        _ => return Err(b),
    };
    let at = ends.len() / 2;
    let cut = ends[at - 1];
    let encode = |raw: bytes::Bytes| match b.compression {
        Compression::None => Some((tidelog_proto::checksum::crc32c(&raw), raw, Compression::None)),
        c => c.compress(&raw).ok().map(|packed| (tidelog_proto::checksum::crc32c(&packed), packed, c)),
    };
    let (Some(first), Some(second)) = (encode(raw.slice(..cut)), encode(raw.slice(cut..))) else {
        return Err(b);
    };
    // Memory in proportion to the bytes, so the parts give back exactly what the batch held.
    let first_memory = (b.memory as u128 * cut as u128 / raw.len() as u128) as usize;
    let (first_completion, second_completion) = b.completion.split(at as u32);
    let part = |(crc, payload, compression), record_count: usize, base_sequence, completion, memory| Batch {
        payload,
        crc,
        compression,
        record_count: record_count as u32,
        base_sequence,
        completion,
        memory,
        created: b.created,
        request_id: 0,
        sent_at: None,
        // The broker stored nothing of the refused batch: the parts were never sent.
        attempts: 0,
    };
    let second_sequence = sequence::increment(b.base_sequence, at as u32);
    Ok((
        part(first, at, b.base_sequence, first_completion, first_memory),
        part(second, ends.len() - at, second_sequence, second_completion, b.memory - first_memory),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_records, Record};
    use crate::producer::delivery::{Completion, Done};
    use futures::FutureExt;
    use std::time::Instant;

    fn batch(
        records: Vec<Record>,
        compression: Compression,
        base_sequence: i32,
    ) -> (Batch, Vec<super::super::DeliveryFuture>) {
        let completion = Completion::new("t", 0);
        let futures = (0..records.len() as u32).map(|i| completion.future(i)).collect();
        let record_count = records.len() as u32;
        let (raw, raw_crc) = encode_records(records);
        let (payload, crc) = match compression {
            Compression::None => (raw, raw_crc),
            c => {
                let packed = c.compress(&raw).unwrap();
                (packed.clone(), tidelog_proto::checksum::crc32c(&packed))
            }
        };
        let b = Batch {
            payload,
            crc,
            compression,
            record_count,
            base_sequence,
            completion,
            memory: 1001,
            created: Instant::now(),
            request_id: 7,
            sent_at: Some(Instant::now()),
            attempts: 2,
        };
        (b, futures)
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record::new(format!("value-{i}")).with_key(format!("k{i}")).with_timestamp_ms(i as i64))
            .collect()
    }

    fn raw(b: &Batch) -> Vec<u8> {
        match b.compression {
            Compression::None => b.payload.to_vec(),
            c => c.decompress(&b.payload).unwrap(),
        }
    }

    #[test]
    fn halves_keep_the_records_sequences_memory_and_each_record_its_future() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let whole = encode_records(records(5)).0;
            let (b, futures) = batch(records(5), compression, i32::MAX - 1);
            let (first, second) = split(b).expect("splits");
            assert_eq!((first.record_count, second.record_count), (2, 3));
            assert_eq!((first.base_sequence, second.base_sequence), (i32::MAX - 1, 0), "sequences wrap");
            assert_eq!(first.memory + second.memory, 1001);
            assert_eq!((first.attempts, second.attempts, first.sent_at, second.request_id), (0, 0, None, 0));
            for part in [&first, &second] {
                assert_eq!(part.compression, compression);
                assert_eq!(part.crc, tidelog_proto::checksum::crc32c(&part.payload));
            }
            assert_eq!([raw(&first), raw(&second)].concat(), whole.to_vec(), "the records' bytes, in order");
            first.completion.complete(Done::Stored { base: 100, append_time_ms: 1 });
            second.completion.complete(Done::Stored { base: 200, append_time_ms: 2 });
            let offsets: Vec<u64> = futures.into_iter().map(|f| f.now_or_never().unwrap().unwrap().offset).collect();
            assert_eq!(offsets, [100, 101, 200, 201, 202]);
        }
    }

    #[test]
    fn a_part_split_again_still_reaches_its_records_and_one_record_is_not_split() {
        let (b, futures) = batch(records(4), Compression::None, 0);
        let (first, second) = split(b).unwrap();
        let (a, c) = split(second).unwrap();
        assert_eq!((a.base_sequence, c.base_sequence), (2, 3));
        let single = split(a).expect_err("one record is not split");
        first.completion.complete(Done::Stored { base: 10, append_time_ms: 0 });
        single.completion.complete(Done::Failed("too large".into()));
        c.completion.complete(Done::Stored { base: 30, append_time_ms: 0 });
        let got: Vec<_> = futures.into_iter().map(|f| f.now_or_never().unwrap().map(|m| m.offset).ok()).collect();
        assert_eq!(got, [Some(10), Some(11), None, Some(30)]);
    }
}
