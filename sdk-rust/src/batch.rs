//! Records and their batch encoding. A batch is encoded once, here, into the bytes of a
//! `tidelog.v1.RecordBatch`; the broker stores and serves those bytes unchanged, and consumers
//! decode them here. The CRC32C covers the encoded bytes end to end.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
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
    let crc = tidelog_proto::checksum::crc32c(&bytes);
    (bytes, crc)
}

/// A record read from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Shared by the records of a subscription (`&*record.topic` is the `&str`): one
    /// allocation per subscription, not one per record.
    pub topic: Arc<str>,
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

/// `RecordBatch.records`, the one field of a batch payload (`proto/tidelog/v1/record.proto`).
const RECORDS_FIELD: u32 = 1;

/// Decodes a served batch, checking its CRC, into records with their offsets; records below
/// `from_offset` (a batch may start before the requested offset) are skipped.
pub fn decode_batch(
    topic: &str,
    partition: u32,
    batch: wire::Batch,
    from_offset: u64,
) -> Result<Vec<ConsumedRecord>, Error> {
    let mut out = Vec::with_capacity(records_hint(&batch));
    decode_batch_each(&Arc::from(topic), partition, batch, from_offset, |r| out.push(r))?;
    Ok(out)
}

/// How many records `batch` holds, to size a vector for them: its count, bounded by what its
/// payload can hold (a record takes at least two bytes), so a wrong count allocates nothing
/// large before decoding refuses it.
pub(crate) fn records_hint(batch: &wire::Batch) -> usize {
    let payload = match &batch.payload {
        Some(wire::batch::Payload::Records(b) | wire::batch::Payload::CompressedRecords(b)) => b.len(),
        None => 0,
    };
    (batch.record_count as usize).min(payload / 2)
}

/// [`decode_batch`], handing each record to `each` as it is decoded (no vector of them in
/// between). On an error, records of the batch may have been handed out already: the caller
/// drops them (a batch is delivered whole or not at all).
///
/// The payload is an encoded `RecordBatch`, whose one field is the repeated record: it is
/// walked here and each record decoded from its slice of the payload, so keys, values and
/// headers are slices of the payload (of the decompressed buffer when compressed), not copies.
pub(crate) fn decode_batch_each(
    topic: &Arc<str>,
    partition: u32,
    batch: wire::Batch,
    from_offset: u64,
    mut each: impl FnMut(ConsumedRecord),
) -> Result<(), Error> {
    let (payload, compressed) = match batch.payload {
        Some(wire::batch::Payload::Records(b)) => (b, false),
        Some(wire::batch::Payload::CompressedRecords(b)) => (b, true),
        None => return Err(Error::Decode(format!("batch at offset {} has no payload", batch.base_offset))),
    };
    if tidelog_proto::checksum::crc32c(&payload) != batch.crc32c {
        return Err(Error::Decode(format!("CRC mismatch in batch at offset {}", batch.base_offset)));
    }
    let codec = Compression::from_codec(batch.compression)?;
    let mut buf = if compressed { Bytes::from(codec.decompress(&payload)?) } else { payload };
    let bad = |e: prost::DecodeError| Error::Decode(format!("batch at offset {}: {e}", batch.base_offset));
    let mut count = 0u64;
    while !buf.is_empty() {
        let (field, wire_type) = decode_key(&mut buf).map_err(bad)?;
        if field != RECORDS_FIELD || wire_type != WireType::LengthDelimited {
            skip_field(wire_type, field, &mut buf, DecodeContext::default()).map_err(bad)?;
            continue;
        }
        let len = usize::try_from(decode_varint(&mut buf).map_err(bad)?).unwrap_or(usize::MAX);
        if len > buf.len() {
            return Err(Error::Decode(format!("batch at offset {}: a record runs past its end", batch.base_offset)));
        }
        // A view of the record's bytes in place: its fields are sliced out of the payload.
        let r = v1::Record::decode(Buf::take(&mut buf, len)).map_err(bad)?;
        let offset = batch.base_offset + count;
        count += 1;
        if offset < from_offset {
            continue;
        }
        each(ConsumedRecord {
            topic: Arc::clone(topic),
            partition,
            offset,
            timestamp_ms: if r.timestamp_ms > 0 { r.timestamp_ms } else { batch.append_time_ms },
            append_time_ms: batch.append_time_ms,
            key: r.key,
            value: (!r.null_value).then_some(r.value),
            headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        });
    }
    if count != u64::from(batch.record_count) {
        return Err(Error::Decode(format!(
            "batch at offset {} says {} records but holds {count}",
            batch.base_offset, batch.record_count
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                key: (i % 3 != 0).then(|| Bytes::from(format!("k{i}"))),
                value: (i % 5 != 4).then(|| Bytes::from(format!("value-{i}-{}", "v".repeat(i)))),
                headers: vec![("trace".to_string(), Bytes::from(format!("h{i}")))],
                timestamp_ms: if i % 2 == 0 { 1_000 + i as i64 } else { 0 },
            })
            .collect()
    }

    fn served(payload: Bytes, count: u32, compression: Compression) -> wire::Batch {
        let crc32c = tidelog_proto::checksum::crc32c(&payload);
        wire::Batch {
            base_offset: 100,
            record_count: count,
            append_time_ms: 7,
            compression: compression.codec(),
            payload: Some(if compression == Compression::None {
                wire::batch::Payload::Records(payload)
            } else {
                wire::batch::Payload::CompressedRecords(payload)
            }),
            crc32c,
        }
    }

    /// What a decode must give: prost's own decoding of the whole `RecordBatch`.
    fn expected(sent: &[Record], from: u64) -> Vec<ConsumedRecord> {
        let (payload, _) = encode_records(sent.to_vec());
        v1::RecordBatch::decode(payload)
            .unwrap()
            .records
            .into_iter()
            .enumerate()
            .map(|(i, r)| ConsumedRecord {
                topic: "t".into(),
                partition: 3,
                offset: 100 + i as u64,
                timestamp_ms: if r.timestamp_ms > 0 { r.timestamp_ms } else { 7 },
                append_time_ms: 7,
                key: r.key,
                value: (!r.null_value).then_some(r.value),
                headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
            })
            .filter(|r| r.offset >= from)
            .collect()
    }

    #[test]
    fn decodes_every_record_of_plain_and_compressed_batches() {
        let sent = records(40);
        let (payload, _) = encode_records(sent.clone());
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let body = if compression == Compression::None {
                payload.clone()
            } else {
                compression.compress(&payload).unwrap()
            };
            for from in [0, 100, 117, 139, 140] {
                let got = decode_batch("t", 3, served(body.clone(), 40, compression), from).unwrap();
                assert_eq!(got, expected(&sent, from), "{compression:?} from {from}");
            }
        }
        // Values are slices of the payload, not copies.
        let got = decode_batch("t", 3, served(payload.clone(), 40, Compression::None), 0).unwrap();
        let value = got[1].value.as_ref().unwrap();
        let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
        assert!(range.contains(&(value.as_ptr() as usize)));
    }

    #[test]
    fn refuses_a_wrong_count_a_bad_crc_and_a_cut_record_and_skips_unknown_fields() {
        let sent = records(5);
        let (payload, _) = encode_records(sent.clone());
        let err = decode_batch("t", 3, served(payload.clone(), 6, Compression::None), 0).unwrap_err();
        assert!(err.to_string().contains("says 6 records but holds 5"), "{err}");
        let mut bad_crc = served(payload.clone(), 5, Compression::None);
        bad_crc.crc32c ^= 1;
        assert!(decode_batch("t", 3, bad_crc, 0).unwrap_err().to_string().contains("CRC mismatch"));
        let cut = payload.slice(..payload.len() - 3);
        assert!(decode_batch("t", 3, served(cut, 5, Compression::None), 0).is_err());
        // A field a later RecordBatch may add (here 9, a varint) is skipped, as prost would.
        let mut extended = payload.to_vec();
        extended.extend_from_slice(&[9 << 3, 42]);
        let got = decode_batch("t", 3, served(Bytes::from(extended), 5, Compression::None), 0).unwrap();
        assert_eq!(got, expected(&sent, 0));
    }
}
