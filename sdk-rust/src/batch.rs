//! Records and their batch encoding. A batch is encoded once, here, into the bytes of a
//! `tidelog.v1.RecordBatch`; the broker stores and serves those bytes unchanged, and consumers
//! decode them here. The CRC32C covers the encoded bytes end to end.

use bytes::Bytes;
use prost::Message;
use tidelog_proto::v1;
use tidelog_proto::wire;

use crate::compression::Compression;
use crate::Error;

/// A record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Bytes>,
    /// `None` = a null value: a tombstone, which compaction reads as "delete this key".
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    /// Create time in ms since the epoch; 0 = let the broker's append time stand.
    pub timestamp_ms: i64,
}

impl Record {
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self { value: Some(value.into()), ..Self::default() }
    }
    /// A record with a null value for `key`: a tombstone (compaction deletes the key).
    pub fn tombstone(key: impl Into<Bytes>) -> Self {
        Self { key: Some(key.into()), ..Self::default() }
    }
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }
    pub fn with_timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = ts;
        self
    }

    fn into_proto(self) -> v1::Record {
        v1::Record {
            key: self.key,
            null_value: self.value.is_none(),
            value: self.value.unwrap_or_default(),
            headers: self.headers.into_iter().map(|(key, value)| v1::Header { key, value }).collect(),
            timestamp_ms: self.timestamp_ms,
        }
    }

    /// Bytes this record adds to an encoded batch (for batch-size accounting).
    pub fn encoded_len(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        self.key.as_ref().map_or(0, |k| k.len() + 3) + self.value.as_ref().map_or(2, Bytes::len) + headers + 16
    }
}

/// Encodes records into `RecordBatch` bytes and their CRC32C.
pub fn encode_records(records: Vec<Record>) -> (Bytes, u32) {
    let batch = v1::RecordBatch { records: records.into_iter().map(Record::into_proto).collect() };
    let bytes = Bytes::from(batch.encode_to_vec());
    let crc = crc32c::crc32c(&bytes);
    (bytes, crc)
}

/// A record read from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// The producer's create time, or the broker's append time if the producer set none.
    pub timestamp_ms: i64,
    /// The broker's append time of the record's batch.
    pub append_time_ms: i64,
    pub key: Option<Bytes>,
    /// `None` = a null value (a tombstone).
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
}

/// Decodes a served batch, checking its CRC, into records with their offsets; records below
/// `from_offset` (a batch may start before the requested offset) are skipped.
pub fn decode_batch(
    topic: &str,
    partition: u32,
    batch: wire::Batch,
    from_offset: u64,
) -> Result<Vec<ConsumedRecord>, Error> {
    let (payload, compressed) = match batch.payload {
        Some(wire::batch::Payload::Records(b)) => (b, false),
        Some(wire::batch::Payload::CompressedRecords(b)) => (b, true),
        None => return Err(Error::Decode(format!("batch at offset {} has no payload", batch.base_offset))),
    };
    if crc32c::crc32c(&payload) != batch.crc32c {
        return Err(Error::Decode(format!("CRC mismatch in batch at offset {}", batch.base_offset)));
    }
    let codec = Compression::from_codec(batch.compression)?;
    let decoded = if compressed {
        v1::RecordBatch::decode(codec.decompress(&payload)?.as_slice())
    } else {
        v1::RecordBatch::decode(payload)
    }
    .map_err(|e| Error::Decode(format!("batch at offset {}: {e}", batch.base_offset)))?;
    if decoded.records.len() != batch.record_count as usize {
        return Err(Error::Decode(format!(
            "batch at offset {} says {} records but holds {}",
            batch.base_offset,
            batch.record_count,
            decoded.records.len()
        )));
    }
    Ok(decoded
        .records
        .into_iter()
        .enumerate()
        .map(|(i, r)| (batch.base_offset + i as u64, r))
        .filter(|(offset, _)| *offset >= from_offset)
        .map(|(offset, r)| ConsumedRecord {
            topic: topic.to_string(),
            partition,
            offset,
            timestamp_ms: if r.timestamp_ms > 0 { r.timestamp_ms } else { batch.append_time_ms },
            append_time_ms: batch.append_time_ms,
            key: r.key,
            value: (!r.null_value).then_some(r.value),
            headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        })
        .collect())
}
