//! The cleaner's view of a batch payload: the records of an encoded `tidelog.v1.RecordBatch`
//! as byte ranges (each one's key and whether its value is null), without decoding them into
//! messages, and a kept subset re-framed as a payload of its own. A record's bytes are copied
//! as they were encoded: compaction never re-encodes a record.
//!
//! Wire shape read here (`proto/tidelog/v1/record.proto`): the batch is a sequence of field 1
//! (length-delimited `Record`); inside a record, field 1 is the key (`optional bytes`) and field
//! 5 `null_value` (bool). Unknown fields are skipped, as protobuf requires.

use std::ops::Range;

use bytes::Bytes;

use super::super::batch::{decompress, CODEC_LZ4, CODEC_NONE, CODEC_ZSTD};
use crate::error::BrokerError;

/// Zstd level of a re-compressed run (the SDKs' default level).
const ZSTD_LEVEL: i32 = 3;

/// One record of a payload, as ranges of the (decompressed) payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// The whole `records` field: tag, length and the encoded `Record`.
    pub field: Range<usize>,
    /// The key's bytes; `None` for a record without a key.
    pub key: Option<Range<usize>>,
    /// A null value: a tombstone.
    pub tombstone: bool,
}

fn corrupt(what: &str) -> BrokerError {
    BrokerError::CorruptBatch(format!("record batch payload: {what}"))
}

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, BrokerError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or_else(|| corrupt("truncated varint"))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(corrupt("varint longer than 10 bytes"))
}

/// Skips one field's value of `wire_type` at `at`; returns the range of a length-delimited one.
fn skip(buf: &[u8], at: &mut usize, wire_type: u64) -> Result<Option<Range<usize>>, BrokerError> {
    let advance = |at: &mut usize, n: usize| -> Result<Range<usize>, BrokerError> {
        let start = *at;
        let end = start.checked_add(n).filter(|e| *e <= buf.len()).ok_or_else(|| corrupt("field past the end"))?;
        *at = end;
        Ok(start..end)
    };
    match wire_type {
        0 => varint(buf, at).map(|_| None),
        1 => advance(at, 8).map(|_| None),
        2 => {
            let n = usize::try_from(varint(buf, at)?).map_err(|_| corrupt("length too large"))?;
            advance(at, n).map(Some)
        }
        5 => advance(at, 4).map(|_| None),
        other => Err(corrupt(&format!("unsupported wire type {other}"))),
    }
}

/// The records of an uncompressed payload, appended to `out` (cleared first).
pub fn parse(payload: &[u8], out: &mut Vec<RawRecord>) -> Result<(), BrokerError> {
    out.clear();
    let mut at = 0;
    while at < payload.len() {
        let start = at;
        let tag = varint(payload, &mut at)?;
        let value = skip(payload, &mut at, tag & 7)?;
        if tag >> 3 != 1 {
            continue;
        }
        let body = value.ok_or_else(|| corrupt("records field is not length-delimited"))?;
        let (mut key, mut tombstone) = (None, false);
        let mut i = body.start;
        while i < body.end {
            let t = varint(&payload[..body.end], &mut i)?;
            match (t >> 3, t & 7) {
                (5, 0) => tombstone = varint(&payload[..body.end], &mut i)? != 0,
                (1, 2) => key = skip(&payload[..body.end], &mut i, 2)?,
                (_, w) => {
                    skip(&payload[..body.end], &mut i, w)?;
                }
            }
        }
        out.push(RawRecord { field: start..at, key, tombstone });
    }
    Ok(())
}

/// Refuses a batch for a compacted topic that holds a record without a key (Kafka's
/// "compacted topic cannot accept message without key"). Decompresses a compressed batch: the
/// cost of a compacted topic only.
pub fn require_keys(codec: u8, payload: &Bytes, record_count: u32) -> Result<(), BrokerError> {
    let raw = decompressed(codec, payload)?;
    let mut records = Vec::new();
    parse(&raw, &mut records)?;
    if records.len() != record_count as usize {
        return Err(BrokerError::CorruptBatch(format!(
            "the batch says {record_count} records but holds {}",
            records.len()
        )));
    }
    if let Some(i) = records.iter().position(|r| r.key.is_none()) {
        return Err(BrokerError::InvalidRecord(format!(
            "record {i} of the batch has no key, and the topic is compacted (cleanup_policy compact): every \
             record needs a key"
        )));
    }
    Ok(())
}

/// The payload decompressed (a copy-free slice for an uncompressed one).
pub fn decompressed(codec: u8, payload: &Bytes) -> Result<Bytes, BrokerError> {
    if codec == CODEC_NONE {
        return Ok(payload.clone());
    }
    decompress(codec, payload)
}

/// A payload holding `fields` (ranges of `raw`, the decompressed payload) in order, compressed
/// with `codec` as the original was.
pub fn reframe(raw: &[u8], fields: impl Iterator<Item = Range<usize>>, codec: u8) -> Result<Vec<u8>, BrokerError> {
    let mut plain = Vec::new();
    for f in fields {
        plain.extend_from_slice(&raw[f]);
    }
    match codec {
        CODEC_NONE => Ok(plain),
        CODEC_LZ4 => {
            use std::io::Write;
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(plain.len() / 2 + 64));
            enc.write_all(&plain).map_err(|e| corrupt(&format!("lz4: {e}")))?;
            enc.finish().map_err(|e| corrupt(&format!("lz4: {e}")))
        }
        CODEC_ZSTD => zstd::bulk::compress(&plain, ZSTD_LEVEL).map_err(|e| corrupt(&format!("zstd: {e}"))),
        other => Err(corrupt(&format!("unknown compression codec {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tidelog_proto::v1::{Header, Record, RecordBatch};

    use super::*;

    fn rec(key: Option<&str>, value: &str, null: bool) -> Record {
        Record {
            key: key.map(|k| k.as_bytes().to_vec().into()),
            value: value.as_bytes().to_vec().into(),
            headers: vec![Header { key: "h".into(), value: b"v".to_vec().into() }],
            timestamp_ms: 7,
            null_value: null,
        }
    }

    #[test]
    fn finds_keys_and_tombstones_and_reframes_a_subset_byte_for_byte() {
        let batch = RecordBatch {
            records: vec![
                rec(Some("a"), "1", false),
                rec(None, "x", false),
                rec(Some("b"), "", true),
                rec(Some(""), "e", false),
            ],
        };
        let raw = batch.encode_to_vec();
        let mut out = Vec::new();
        parse(&raw, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        let keys: Vec<Option<&[u8]>> = out.iter().map(|r| r.key.clone().map(|k| &raw[k])).collect();
        assert_eq!(keys, [Some(&b"a"[..]), None, Some(&b"b"[..]), Some(&b""[..])]);
        assert_eq!(out.iter().map(|r| r.tombstone).collect::<Vec<_>>(), [false, false, true, false]);
        for codec in [CODEC_NONE, CODEC_LZ4, CODEC_ZSTD] {
            let kept = reframe(&raw, [out[0].field.clone(), out[2].field.clone()].into_iter(), codec).unwrap();
            let plain = decompressed(codec, &Bytes::from(kept)).unwrap();
            let back = RecordBatch::decode(&plain[..]).unwrap();
            assert_eq!(back.records, vec![batch.records[0].clone(), batch.records[2].clone()]);
        }
        assert!(parse(&raw[..raw.len() - 1], &mut out).is_err(), "a truncated payload is refused");
    }
}
