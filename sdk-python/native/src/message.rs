//! `Message`, compiled: the record type a consumer hands out and a delivery reports, with
//! exactly the accessors and semantics of the pure-Python `tidelog.types.Message` (which it
//! replaces when the extension is loaded; the tests run both).
//!
//! Why compiled: a consumer makes one per record. Built here it costs no Python `__init__`,
//! and it is not tracked by the cyclic GC, which otherwise walks every young `Message`
//! again and again while it sits in the consumer's buffer. The price: a cycle through a
//! message (a header list that contains the message itself) is never collected.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple, PyType};

/// `tidelog.types.TIMESTAMP_*`, as confluent-kafka numbers them.
pub const TIMESTAMP_NOT_AVAILABLE: i64 = 0;
pub const TIMESTAMP_CREATE_TIME: i64 = 1;
pub const TIMESTAMP_LOG_APPEND_TIME: i64 = 2;

/// A record: as consumed (`Consumer.poll`) or as delivered (`on_delivery`), with
/// confluent-kafka's accessors. `value()` is None for a tombstone, distinct from `b""`;
/// `offset()` is -1 for a record produced with acks=none; `timestamp()` is `(type, ms)`;
/// `error()` is None for a record, a `KafkaError` for an event (`_PARTITION_EOF`).
#[pyclass(module = "tidelog", name = "Message")]
pub struct Message {
    topic: Py<PyAny>,
    partition: i64,
    offset: i64,
    key: Py<PyAny>,
    value: Py<PyAny>,
    /// None, or a non-empty list of `(name, value)`.
    headers: Py<PyAny>,
    ts: i64,
    ts_type: i64,
    error: Py<PyAny>,
}

impl Message {
    /// A consumed record (no error), built without Python arguments.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        py: Python<'_>,
        topic: Py<PyAny>,
        partition: i64,
        offset: i64,
        key: Py<PyAny>,
        value: Py<PyAny>,
        headers: Py<PyAny>,
        ts: i64,
        ts_type: i64,
    ) -> Self {
        Self { topic, partition, offset, key, value, headers, ts, ts_type, error: py.None() }
    }
}

/// `headers or None`, as the Python class normalizes them.
fn or_none(py: Python<'_>, headers: Option<Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
    match headers {
        Some(h) if h.is_truthy()? => Ok(h.unbind()),
        _ => Ok(py.None()),
    }
}

#[pymethods]
impl Message {
    #[new]
    #[pyo3(signature = (topic, partition, offset, key, value, headers=None, timestamp=0, timestamp_type=None, error=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        topic: Py<PyAny>,
        partition: i64,
        offset: i64,
        key: Py<PyAny>,
        value: Py<PyAny>,
        headers: Option<Bound<'_, PyAny>>,
        timestamp: i64,
        timestamp_type: Option<i64>,
        error: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let ts_type =
            timestamp_type.unwrap_or(if timestamp > 0 { TIMESTAMP_CREATE_TIME } else { TIMESTAMP_NOT_AVAILABLE });
        Ok(Self {
            topic,
            partition,
            offset,
            key,
            value,
            headers: or_none(py, headers)?,
            ts: timestamp,
            ts_type,
            error: error.unwrap_or_else(|| py.None()),
        })
    }

    fn topic(&self, py: Python<'_>) -> Py<PyAny> {
        self.topic.clone_ref(py)
    }

    fn partition(&self) -> i64 {
        self.partition
    }

    fn offset(&self) -> i64 {
        self.offset
    }

    fn key(&self, py: Python<'_>) -> Py<PyAny> {
        self.key.clone_ref(py)
    }

    /// The value; None for a tombstone (a null value), `b""` for the empty value.
    fn value(&self, py: Python<'_>) -> Py<PyAny> {
        self.value.clone_ref(py)
    }

    /// The headers as `(name, value)` pairs in order, or None when there are none.
    fn headers(&self, py: Python<'_>) -> Py<PyAny> {
        self.headers.clone_ref(py)
    }

    /// The value of the first header called `name`, if any (a Tidelog addition).
    fn header(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let headers = self.headers.bind(py);
        if headers.is_none() {
            return Ok(py.None());
        }
        for h in headers.try_iter()? {
            let h = h?;
            if h.get_item(0)?.eq(name)? {
                return Ok(h.get_item(1)?.unbind());
            }
        }
        Ok(py.None())
    }

    /// `(type, milliseconds since the Unix epoch)`; -1 when the type is NOT_AVAILABLE.
    fn timestamp(&self) -> (i64, i64) {
        let ts = if self.ts_type != TIMESTAMP_NOT_AVAILABLE { self.ts } else { -1 };
        (self.ts_type, ts)
    }

    /// None for a record; the event's `KafkaError` otherwise.
    fn error(&self, py: Python<'_>) -> Py<PyAny> {
        self.error.clone_ref(py)
    }

    /// confluent-kafka's produce latency; not measured (None).
    fn latency(&self) -> Option<f64> {
        None
    }

    /// confluent-kafka's leader epoch; Tidelog has none (None).
    fn leader_epoch(&self) -> Option<i64> {
        None
    }

    fn set_key(&mut self, key: Py<PyAny>) {
        self.key = key;
    }

    fn set_value(&mut self, value: Py<PyAny>) {
        self.value = value;
    }

    #[pyo3(signature = (headers))]
    fn set_headers(&mut self, py: Python<'_>, headers: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.headers = or_none(py, headers)?;
        Ok(())
    }

    /// The value's length in bytes (0 for a tombstone), as confluent-kafka's.
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        let v = self.value.bind(py);
        if v.is_none() {
            Ok(0)
        } else {
            v.len()
        }
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(o) = other.cast::<Message>() else {
            return Ok(false);
        };
        let o = o.borrow();
        Ok(self.partition == o.partition
            && self.offset == o.offset
            && self.ts == o.ts
            && self.ts_type == o.ts_type
            && self.topic.bind(py).eq(&o.topic)?
            && self.key.bind(py).eq(&o.key)?
            && self.value.bind(py).eq(&o.value)?
            && self.headers.bind(py).eq(&o.headers)?
            && self.error.bind(py).eq(&o.error)?)
    }

    /// Mutable (`set_value`), as confluent-kafka's: not hashable.
    fn __hash__(&self) -> PyResult<isize> {
        Err(PyTypeError::new_err("unhashable type: 'Message'"))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let (topic, p, off) = (self.topic.bind(py).str()?, self.partition, self.offset);
        if !self.error.is_none(py) {
            return Ok(format!("Message({topic}/{p}@{off}, error={})", self.error.bind(py).str()?));
        }
        let (tt, ts) = self.timestamp();
        Ok(format!(
            "Message({topic}/{p}@{off}, key={}, value={}, headers={}, timestamp=({tt}, {ts}))",
            self.key.bind(py).repr()?,
            self.value.bind(py).repr()?,
            self.headers.bind(py).repr()?,
        ))
    }

    /// Pickles (and copies) as the constructor's arguments.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyType>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let m = slf.borrow();
        let args = (
            m.topic.clone_ref(py),
            m.partition,
            m.offset,
            m.key.clone_ref(py),
            m.value.clone_ref(py),
            m.headers.clone_ref(py),
            m.ts,
            m.ts_type,
            m.error.clone_ref(py),
        )
            .into_pyobject(py)?;
        Ok((slf.get_type(), args))
    }
}

/// A `[(name, value), ...]` header list from borrowed parts.
pub fn header_list<'py>(py: Python<'py>, headers: &[(&str, &[u8])]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for (k, v) in headers {
        list.append((*k, pyo3::types::PyBytes::new(py, v)))?;
    }
    Ok(list)
}
