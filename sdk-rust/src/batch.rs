//! Records and their batch encoding. A batch is encoded once, here, into the bytes of a
//! `tidelog.v1.RecordBatch`; the broker stores and serves those bytes unchanged, and consumers
//! decode them here. The CRC32C covers the encoded bytes end to end.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use prost::encoding::{self, decode_key, decode_varint, skip_field, DecodeContext, WireType};
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

    /// Bytes this record adds to an encoded batch (for batch-size accounting).
    pub fn encoded_len(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        self.key.as_ref().map_or(0, |k| k.len() + 3) + self.value.as_ref().map_or(2, Bytes::len) + headers + 16
    }
}

/// Encodes records into `RecordBatch` bytes and their CRC32C.
///
/// Written field by field from the records themselves, into one buffer sized exactly up
/// front: the bytes prost's derived encoding of a `v1::RecordBatch` would give (the test
/// `encodes_what_prost_encodes` holds that), without building a `v1::Record` per record or
/// cloning and dropping each key's and value's `Bytes` on the way (two atomic reference-count
/// updates per field, which showed as 10 % of a producing client's CPU).
pub fn encode_records(records: Vec<Record>) -> (Bytes, u32) {
    let len: usize = records.iter().map(|r| delimited_len(RECORDS_FIELD, record_len(r))).sum();
    let mut buf = Vec::with_capacity(len);
    for r in &records {
        put_record(&mut buf, r);
    }
    debug_assert_eq!(buf.len(), len, "record_len and put_record disagree");
    let bytes = Bytes::from(buf);
    let crc = tidelog_proto::checksum::crc32c(&bytes);
    (bytes, crc)
}

// Field numbers of `tidelog.v1.RecordBatch`, `Record` and `Header`
// (`proto/tidelog/v1/record.proto`).
/// `RecordBatch.records`, the one field of a batch payload.
const RECORDS_FIELD: u32 = 1;
const RECORD_KEY: u32 = 1;
const RECORD_VALUE: u32 = 2;
const RECORD_HEADERS: u32 = 3;
const RECORD_TIMESTAMP_MS: u32 = 4;
const RECORD_NULL_VALUE: u32 = 5;
const HEADER_KEY: u32 = 1;
const HEADER_VALUE: u32 = 2;

/// Bytes of a length-delimited field `field` whose body is `body` bytes long.
fn delimited_len(field: u32, body: usize) -> usize {
    encoding::key_len(field) + encoding::encoded_len_varint(body as u64) + body
}

/// Bytes of a length-delimited field, or none if proto3 leaves it out (an empty scalar).
fn scalar_bytes_len(field: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        delimited_len(field, bytes.len())
    }
}

fn header_len(key: &str, value: &[u8]) -> usize {
    scalar_bytes_len(HEADER_KEY, key.as_bytes()) + scalar_bytes_len(HEADER_VALUE, value)
}

/// Bytes of one encoded `v1::Record` (its body, without the field key and length).
fn record_len(r: &Record) -> usize {
    // `optional bytes key`: present whenever set, even empty.
    let key = r.key.as_ref().map_or(0, |k| delimited_len(RECORD_KEY, k.len()));
    let value = r.value.as_ref().map_or(0, |v| scalar_bytes_len(RECORD_VALUE, v));
    let headers: usize = r.headers.iter().map(|(k, v)| delimited_len(RECORD_HEADERS, header_len(k, v))).sum();
    let timestamp = if r.timestamp_ms == 0 {
        0
    } else {
        encoding::key_len(RECORD_TIMESTAMP_MS) + encoding::encoded_len_varint(r.timestamp_ms as u64)
    };
    let null_value = if r.value.is_none() { encoding::key_len(RECORD_NULL_VALUE) + 1 } else { 0 };
    key + value + headers + timestamp + null_value
}

fn put_delimited(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    encoding::encode_key(field, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

fn put_scalar_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_delimited(buf, field, bytes);
    }
}

/// Appends `r` as one `RecordBatch.records` entry, fields in field-number order as prost
/// writes them.
fn put_record(buf: &mut Vec<u8>, r: &Record) {
    encoding::encode_key(RECORDS_FIELD, WireType::LengthDelimited, buf);
    encoding::encode_varint(record_len(r) as u64, buf);
    if let Some(k) = &r.key {
        put_delimited(buf, RECORD_KEY, k);
    }
    if let Some(v) = &r.value {
        put_scalar_bytes(buf, RECORD_VALUE, v);
    }
    for (k, v) in &r.headers {
        encoding::encode_key(RECORD_HEADERS, WireType::LengthDelimited, buf);
        encoding::encode_varint(header_len(k, v) as u64, buf);
        put_scalar_bytes(buf, HEADER_KEY, k.as_bytes());
        put_scalar_bytes(buf, HEADER_VALUE, v);
    }
    if r.timestamp_ms != 0 {
        encoding::encode_key(RECORD_TIMESTAMP_MS, WireType::Varint, buf);
        // int64 on the wire: the two's-complement bits as a varint (10 bytes if negative).
        encoding::encode_varint(r.timestamp_ms as u64, buf);
    }
    if r.value.is_none() {
        encoding::encode_key(RECORD_NULL_VALUE, WireType::Varint, buf);
        encoding::encode_varint(1, buf);
    }
}

/// Where each record of an encoded (uncompressed) `RecordBatch` ends: the byte offset after
/// its field, in order. Cutting `payload` at one of them gives two valid `RecordBatch`
/// encodings (a batch is its records' fields one after another), which is how a batch the
/// broker refused as too large is split without decoding its records.
pub(crate) fn record_ends(payload: &[u8]) -> Result<Vec<usize>, Error> {
    let mut buf = payload;
    let mut ends = Vec::new();
    let bad = |e: prost::DecodeError| Error::Decode(format!("a sealed batch: {e}"));
    while !buf.is_empty() {
        let (field, wire_type) = decode_key(&mut buf).map_err(bad)?;
        if field != RECORDS_FIELD || wire_type != WireType::LengthDelimited {
            return Err(Error::Decode(format!("a sealed batch holds field {field}, not only records")));
        }
        let len = usize::try_from(decode_varint(&mut buf).map_err(bad)?).unwrap_or(usize::MAX);
        if len > buf.len() {
            return Err(Error::Decode("a sealed batch: a record runs past its end".into()));
        }
        buf.advance(len);
        ends.push(payload.len() - buf.len());
    }
    Ok(ends)
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

    /// `r` as prost's generated message, the reference for the hand encoding.
    fn to_proto(r: &Record) -> v1::Record {
        v1::Record {
            key: r.key.clone(),
            null_value: r.value.is_none(),
            value: r.value.clone().unwrap_or_default(),
            headers: r
                .headers
                .iter()
                .map(|(key, value)| v1::Header { key: key.clone(), value: value.clone() })
                .collect(),
            timestamp_ms: r.timestamp_ms,
        }
    }

    #[test]
    fn encodes_what_prost_encodes() {
        let long = Bytes::from(vec![7u8; 20_000]); // a three-byte length varint
        let mut cases = records(12);
        for key in [None, Some(Bytes::new()), Some(Bytes::from_static(b"k")), Some(long.clone())] {
            for value in [None, Some(Bytes::new()), Some(Bytes::from(vec![1u8; 200])), Some(long.clone())] {
                for timestamp_ms in [0, 1, 1_733_000_000_000, -1, i64::MIN] {
                    cases.push(Record { key: key.clone(), value: value.clone(), headers: Vec::new(), timestamp_ms });
                }
            }
        }
        for (k, v) in [("", Bytes::new()), ("", Bytes::from_static(b"v")), ("traceparent", Bytes::new()), ("h", long)] {
            cases.push(Record::new("x").with_header(k, v.clone()).with_header("second", v));
        }
        cases.push(Record::tombstone("gone").with_header("why", "expired"));
        for case in &cases {
            let want = v1::RecordBatch { records: vec![to_proto(case)] }.encode_to_vec();
            assert_eq!(encode_records(vec![case.clone()]).0, want, "{case:?}");
        }
        let want = v1::RecordBatch { records: cases.iter().map(to_proto).collect() }.encode_to_vec();
        let (got, crc) = encode_records(cases);
        assert_eq!(got, want);
        assert_eq!(crc, tidelog_proto::checksum::crc32c(&want));
        assert_eq!(encode_records(Vec::new()).0, Bytes::new(), "an empty batch encodes to nothing");
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
