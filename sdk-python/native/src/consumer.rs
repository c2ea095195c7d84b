//! The consumer's per-record path: a `SubscribeResponse`, as the raw bytes gRPC received,
//! decoded straight into the SDK's `Message` objects ([`decode_subscribe`]).
//!
//! The pure-Python path lets protobuf (upb) build a message tree and then walks it in Python,
//! record by record; this walks the bytes once. It keeps `_fetch._decode`'s rules exactly:
//! record `i` of a batch is at `base_offset + i`; records below the partition's position (or
//! below `read_from`) are skipped; the position moves to the end of every batch read.
//!
//! Invariants: a response with a compressed batch is left to Python (None, nothing changed);
//! malformed bytes raise `ValueError` naming what was wrong and change nothing.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::message::{header_list, Message, TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME};

/// A protobuf reader over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

/// One field: its number and its value (a varint, or the bytes of a length-delimited field).
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn bad(&self, why: &str) -> PyErr {
        PyValueError::new_err(format!("malformed {}: {why}", self.what))
    }

    fn varint(&mut self) -> PyResult<u64> {
        let mut n: u64 = 0;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err(self.bad("truncated varint"));
            };
            self.buf = rest;
            n |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err(self.bad("varint longer than 10 bytes"))
    }

    fn take(&mut self, len: usize) -> PyResult<&'a [u8]> {
        if len > self.buf.len() {
            return Err(self.bad("field runs past the end"));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// The next field, or None at the end.
    fn field(&mut self) -> PyResult<Option<(u64, Value<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| self.bad("length"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Other
            }
            t => return Err(self.bad(&format!("wire type {t}"))),
        };
        Ok(Some((tag >> 3, value)))
    }
}

struct Batch<'a> {
    base_offset: u64,
    record_count: u64,
    append_time_ms: i64,
    records: &'a [u8],
    compressed: bool,
    crc32c: u32,
}

fn parse_batch(buf: &[u8]) -> PyResult<Batch<'_>> {
    let mut r = Reader::new(buf, "Batch");
    let mut b =
        Batch { base_offset: 0, record_count: 0, append_time_ms: 0, records: &[], compressed: false, crc32c: 0 };
    while let Some((field, v)) = r.field()? {
        match (field, v) {
            (1, Value::Varint(n)) => b.base_offset = n,
            (2, Value::Varint(n)) => b.record_count = n,
            (3, Value::Varint(n)) => b.append_time_ms = n as i64,
            (4, Value::Varint(n)) => b.compressed |= n != 0,
            (5, Value::Bytes(s)) => b.records = s,
            (6, Value::Bytes(_)) => b.compressed = true,
            (7, Value::Varint(n)) => b.crc32c = n as u32,
            _ => {}
        }
    }
    Ok(b)
}

/// One record's fields, borrowed from the response.
#[derive(Default)]
struct Record<'a> {
    key: Option<&'a [u8]>,
    value: &'a [u8],
    null_value: bool,
    headers: Vec<(&'a str, &'a [u8])>,
    timestamp_ms: i64,
}

fn parse_record(buf: &[u8]) -> PyResult<Record<'_>> {
    let mut r = Reader::new(buf, "Record");
    let mut rec = Record::default();
    while let Some((field, v)) = r.field()? {
        match (field, v) {
            (1, Value::Bytes(s)) => rec.key = Some(s),
            (2, Value::Bytes(s)) => rec.value = s,
            (3, Value::Bytes(s)) => {
                let mut h = Reader::new(s, "Header");
                let (mut k, mut v): (&str, &[u8]) = ("", &[]);
                while let Some((field, val)) = h.field()? {
                    match (field, val) {
                        (1, Value::Bytes(s)) => {
                            k = std::str::from_utf8(s).map_err(|_| h.bad("header name not UTF-8"))?
                        }
                        (2, Value::Bytes(s)) => v = s,
                        _ => {}
                    }
                }
                rec.headers.push((k, v));
            }
            (4, Value::Varint(n)) => rec.timestamp_ms = n as i64,
            (5, Value::Varint(n)) => rec.null_value = n != 0,
            _ => {}
        }
    }
    Ok(rec)
}

/// What `decode_subscribe` returns: `(partition, high_watermark, throttle_time_ms, messages,
/// value bytes)`.
type Decoded<'py> = (u32, u64, u32, Bound<'py, PyList>, usize);

/// Decodes a raw `SubscribeResponse` of `topic` into [`Message`]s, moving `starts[partition]` past every batch read, as `_fetch._decode`. None when a batch is
/// compressed: the caller decodes the response the Python way.
#[pyfunction]
pub fn decode_subscribe<'py>(
    py: Python<'py>,
    raw: &[u8],
    topic: Bound<'py, PyString>,
    starts: Bound<'py, PyDict>,
) -> PyResult<Option<Decoded<'py>>> {
    let mut r = Reader::new(raw, "SubscribeResponse");
    let (mut partition, mut hw, mut read_from, mut throttle) = (0u64, 0u64, 0u64, 0u64);
    let mut batches = Vec::new();
    while let Some((field, v)) = r.field()? {
        match (field, v) {
            (1, Value::Varint(n)) => partition = n,
            (2, Value::Bytes(s)) => batches.push(parse_batch(s)?),
            (3, Value::Varint(n)) => hw = n,
            (4, Value::Varint(n)) => read_from = n,
            (5, Value::Varint(n)) => throttle = n,
            _ => {}
        }
    }
    for b in batches.iter().filter(|b| !b.compressed) {
        // The payload as the producer sealed it, checked as the Rust SDK and Kafka's consumers
        // check it: a batch damaged on the broker's disk or on the way is an error, not data.
        // (Compressed ones are checked where they are decoded, `tidelog._wire.decode_batch`.)
        if crate::crc32c(b.records) != b.crc32c {
            return Err(PyValueError::new_err(format!("CRC mismatch in batch at offset {}", b.base_offset)));
        }
    }
    if batches.iter().any(|b| b.compressed) {
        return Ok(None);
    }
    let partition = u32::try_from(partition).map_err(|_| r.bad("partition"))?;
    let throttle = u32::try_from(throttle).map_err(|_| r.bad("throttle_time_ms"))?;
    // Every record is parsed and every offset checked before anything changes: a malformed
    // response changes nothing.
    let mut parsed = Vec::with_capacity(batches.len());
    for b in &batches {
        let mut recs = Vec::new();
        let mut rb = Reader::new(b.records, "RecordBatch");
        while let Some((field, v)) = rb.field()? {
            if let (1, Value::Bytes(s)) = (field, v) {
                recs.push(parse_record(s)?);
            }
        }
        let fits = b
            .base_offset
            .checked_add(b.record_count.max(recs.len() as u64))
            .is_some_and(|end| i64::try_from(end).is_ok());
        if !fits {
            return Err(r.bad("batch offsets beyond i64"));
        }
        parsed.push(recs);
    }

    let mut want: Option<u64> = match starts.get_item(partition)? {
        Some(w) if !w.is_none() => Some(w.extract()?),
        _ => None,
    };
    if read_from > 0 && want.is_none_or(|w| read_from > w) {
        want = Some(read_from);
    }
    let out = PyList::empty(py);
    let mut nbytes = 0usize;
    for (b, recs) in batches.iter().zip(parsed) {
        for (i, rec) in recs.into_iter().enumerate() {
            let off = b.base_offset + i as u64;
            if want.is_some_and(|w| off < w) {
                continue; // a batch may begin before the requested offset
            }
            let key = rec.key.map_or_else(|| py.None(), |k| PyBytes::new(py, k).into_any().unbind());
            let value = if rec.null_value {
                py.None()
            } else {
                nbytes += rec.value.len();
                PyBytes::new(py, rec.value).into_any().unbind()
            };
            let headers =
                if rec.headers.is_empty() { py.None() } else { header_list(py, &rec.headers)?.into_any().unbind() };
            let (ts, ts_type) = if rec.timestamp_ms > 0 {
                (rec.timestamp_ms, TIMESTAMP_CREATE_TIME)
            } else {
                (b.append_time_ms, TIMESTAMP_LOG_APPEND_TIME)
            };
            let off = i64::try_from(off).map_err(|_| r.bad("offset beyond i64"))?; // checked above
            let m = Message::record(
                py,
                topic.clone().into_any().unbind(),
                partition.into(),
                off,
                key,
                value,
                headers,
                ts,
                ts_type,
            );
            out.append(Py::new(py, m)?)?;
        }
        let end = b.base_offset + b.record_count;
        if want.is_none_or(|w| end > w) {
            want = Some(end);
        }
        starts.set_item(partition, want)?;
    }
    Ok(Some((partition, hw, throttle, out, nbytes)))
}
