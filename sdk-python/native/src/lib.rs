//! `tidelog._native`: the Python SDK's per-record work in compiled code.
//!
//! The pure-Python SDK spends most of a small record's cost in the interpreter: a call chain
//! from `produce()` to the open batch, and a walk over a protobuf tree per consumed record.
//! This module does the producer's part in one call ([`producer::Appender`]) over the same
//! objects the Python code uses, encodes records exactly as `tidelog._wire` does ([`wire`]),
//! and decodes a Subscribe response's bytes straight into `Message`s ([`consumer`]). It is optional: without it (or with `TIDELOG_PURE_PYTHON=1`) the SDK runs the
//! same logic in Python, and the tests run both.
//!
//! Must never: change what goes on the wire (the tests compare both paths byte for byte), hold
//! a Python object across calls other than the core's own, or release the GIL.

mod consumer;
mod message;
mod producer;
mod wire;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// One record framed as a `RecordBatch.records` element, as `tidelog._wire.encode_record`.
#[pyfunction]
#[pyo3(signature = (key, value, headers, timestamp_ms))]
fn encode_record<'py>(
    py: Python<'py>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Option<Vec<(String, Vec<u8>)>>,
    timestamp_ms: i64,
) -> Bound<'py, PyBytes> {
    let headers = headers.unwrap_or_default();
    let hs: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())).collect();
    let rec = wire::Record { key, value, headers: &hs, timestamp_ms };
    let mut out = Vec::with_capacity(rec.encoded_len());
    rec.write(&mut out);
    PyBytes::new(py, &out)
}

/// Kafka's murmur2 of `data` as a signed 32-bit integer, as `tidelog.partitioner.murmur2`.
#[pyfunction]
fn murmur2(data: &[u8]) -> i32 {
    wire::murmur2(data)
}

/// The CRC-32C of `data`, as the broker and the Rust SDK compute it (`tidelog_proto::checksum`).
#[pyfunction]
fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_record, m)?)?;
    m.add_function(wrap_pyfunction!(murmur2, m)?)?;
    m.add_function(wrap_pyfunction!(crc32c, m)?)?;
    m.add_function(wrap_pyfunction!(consumer::decode_subscribe, m)?)?;
    m.add_class::<message::Message>()?;
    m.add_class::<producer::OpenBatch>()?;
    m.add_class::<producer::Counts>()?;
    m.add_class::<producer::Appender>()?;
    Ok(())
}
