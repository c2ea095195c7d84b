//! Validation of a produced batch without decoding its records.
//!
//! The broker checks what it can cheaply and must: size, CRC32C, codec, and — for an
//! uncompressed batch — that the payload is a well-formed sequence of `RecordBatch.records`
//! fields (tag 1, length-delimited), which also counts the records. It never allocates per
//! record and never re-encodes; the records themselves are the consumer's to decode.

use crate::error::BrokerError;

/// Codec values as stored (they equal the proto's `Compression` numbers).
pub const CODEC_NONE: u8 = 0;
pub const CODEC_LZ4: u8 = 1;
pub const CODEC_ZSTD: u8 = 2;

/// Largest a batch may grow to when the broker decompresses it for a subscriber that asked
/// (`SubscribeRequest.decompress`): the limit of one served response.
pub const MAX_DECOMPRESSED_BYTES: u64 = 64 << 20;

/// A stored batch's payload decompressed (LZ4 frame or Zstd, as the SDKs write them), at
/// most [`MAX_DECOMPRESSED_BYTES`]. Not on the produce or SDK subscribe path: only for a
/// subscriber that asked for records.
pub fn decompress(codec: u8, payload: &[u8]) -> Result<bytes::Bytes, BrokerError> {
    match codec {
        CODEC_NONE => Ok(bytes::Bytes::copy_from_slice(payload)),
        CODEC_LZ4 | CODEC_ZSTD => tidelog_proto::inflate::inflate(i32::from(codec), payload, MAX_DECOMPRESSED_BYTES)
            .map(bytes::Bytes::from)
            .map_err(|e| BrokerError::CorruptBatch(format!("cannot decompress: {e}"))),
        other => Err(BrokerError::CorruptBatch(format!("unknown compression codec {other}"))),
    }
}

/// Most records one batch may declare (keeps offsets within a segment far from u32 limits).
pub const MAX_RECORDS_PER_BATCH: u32 = 1 << 20;

/// A batch that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidBatch {
    pub record_count: u32,
    pub crc: u32,
    pub codec: u8,
}

/// What the producer sent with the payload.
#[derive(Debug, Clone, Copy)]
pub struct Declared {
    pub compressed: bool,
    pub codec: i32,
    pub record_count: u32,
    pub crc: Option<u32>,
}

pub fn validate(payload: &[u8], declared: Declared, max_batch_bytes: u32) -> Result<ValidBatch, BrokerError> {
    if payload.len() > max_batch_bytes as usize {
        return Err(BrokerError::BatchTooLarge { size: payload.len(), max: max_batch_bytes });
    }
    let codec = match declared.codec {
        0 => CODEC_NONE,
        1 => CODEC_LZ4,
        2 => CODEC_ZSTD,
        other => return Err(BrokerError::InvalidArgument(format!("unknown compression codec {other}"))),
    };
    if declared.compressed != (codec != CODEC_NONE) {
        return Err(BrokerError::InvalidArgument(
            "compressed_records needs compression LZ4 or ZSTD, and records needs no compression".into(),
        ));
    }
    let crc = tidelog_proto::checksum::crc32c(payload);
    if let Some(expected) = declared.crc {
        if expected != crc {
            return Err(BrokerError::CorruptBatch(format!(
                "CRC32C mismatch: request says {expected:#010x}, payload has {crc:#010x}"
            )));
        }
    }
    let record_count = if codec == CODEC_NONE {
        let counted = count_records(payload)?;
        if declared.record_count != 0 && declared.record_count != counted {
            return Err(BrokerError::InvalidArgument(format!(
                "record_count is {} but the batch holds {counted} records",
                declared.record_count
            )));
        }
        counted
    } else {
        declared.record_count
    };
    if record_count > MAX_RECORDS_PER_BATCH {
        return Err(BrokerError::InvalidArgument(format!(
            "a batch may hold at most {MAX_RECORDS_PER_BATCH} records, this one says {record_count}"
        )));
    }
    if record_count == 0 {
        return Err(BrokerError::InvalidArgument(
            "empty batch: send at least one record (record_count is required for compressed batches)".into(),
        ));
    }
    Ok(ValidBatch { record_count, crc, codec })
}

/// Counts the `records` fields of an encoded `RecordBatch`, checking the framing.
pub fn count_records(mut buf: &[u8]) -> Result<u32, BrokerError> {
    let mut count: u32 = 0;
    while !buf.is_empty() {
        let tag = read_varint(&mut buf)?;
        if tag != (1 << 3 | 2) {
            return Err(BrokerError::CorruptBatch(format!(
                "unexpected field {} (wire type {}) in RecordBatch; only records (1) is allowed",
                tag >> 3,
                tag & 7
            )));
        }
        let len = read_varint(&mut buf)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= buf.len())
            .ok_or_else(|| BrokerError::CorruptBatch(format!("record length {len} runs past the end of the batch")))?;
        buf = &buf[len..];
        count += 1;
    }
    Ok(count)
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, BrokerError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(BrokerError::CorruptBatch("truncated varint".into()));
        };
        *buf = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(BrokerError::CorruptBatch("varint longer than 10 bytes".into()))
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tidelog_proto::v1::{Record, RecordBatch};

    use super::*;

    fn encoded(n: usize) -> Vec<u8> {
        RecordBatch {
            records: (0..n).map(|i| Record { value: vec![b'x'; i * 100].into(), ..Record::default() }).collect(),
        }
        .encode_to_vec()
    }

    fn plain(count: u32, crc: Option<u32>) -> Declared {
        Declared { compressed: false, codec: 0, record_count: count, crc }
    }

    #[test]
    fn counts_records_and_checks_crc() {
        let b = encoded(5);
        let v = validate(&b, plain(0, Some(tidelog_proto::checksum::crc32c(&b))), 1 << 20).unwrap();
        assert_eq!(v.record_count, 5);
        assert!(matches!(validate(&b, plain(0, Some(1)), 1 << 20), Err(BrokerError::CorruptBatch(_))));
        assert!(matches!(validate(&b, plain(4, None), 1 << 20), Err(BrokerError::InvalidArgument(_))));
        assert!(matches!(validate(&b, plain(0, None), 10), Err(BrokerError::BatchTooLarge { .. })));
    }

    #[test]
    fn rejects_bad_framing_and_empty_batches() {
        let b = encoded(3);
        assert!(matches!(validate(&b[..b.len() - 1], plain(0, None), 1 << 20), Err(BrokerError::CorruptBatch(_))));
        assert!(matches!(validate(&[0x12, 0x00], plain(0, None), 1 << 20), Err(BrokerError::CorruptBatch(_))));
        assert!(matches!(validate(&[], plain(0, None), 1 << 20), Err(BrokerError::InvalidArgument(_))));
        let compressed = Declared { compressed: true, codec: 2, record_count: 0, crc: None };
        assert!(matches!(validate(b"zz", compressed, 1 << 20), Err(BrokerError::InvalidArgument(_))));
        let mismatched = Declared { compressed: false, codec: 1, record_count: 1, crc: None };
        assert!(matches!(validate(&b, mismatched, 1 << 20), Err(BrokerError::InvalidArgument(_))));
    }

    #[test]
    fn lz4_and_zstd_batches_decompress_and_garbage_is_refused() {
        use std::io::Write;
        let raw: Vec<u8> = (0..10_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut lz4 = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz4.write_all(&raw).unwrap();
        let lz4 = lz4.finish().unwrap();
        let zstd = zstd::bulk::compress(&raw, 3).unwrap();
        assert_eq!(decompress(CODEC_LZ4, &lz4).unwrap(), raw);
        assert_eq!(decompress(CODEC_ZSTD, &zstd).unwrap(), raw);
        assert_eq!(decompress(CODEC_NONE, &raw).unwrap(), raw);
        assert!(matches!(decompress(CODEC_LZ4, b"not lz4"), Err(BrokerError::CorruptBatch(_))));
        assert!(matches!(decompress(CODEC_ZSTD, b"not zstd"), Err(BrokerError::CorruptBatch(_))));
        assert!(matches!(decompress(9, &raw), Err(BrokerError::CorruptBatch(_))));
        // The stored codec numbers are the ones the shared inflater knows.
        assert_eq!(i32::from(CODEC_LZ4), tidelog_proto::inflate::LZ4);
        assert_eq!(i32::from(CODEC_ZSTD), tidelog_proto::inflate::ZSTD);
    }
}
