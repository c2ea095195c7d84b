//! The producer's per-record path: [`OpenBatch`] (a partition's batch being filled) and
//! [`Appender`] (`Producer.produce` for the common record, in one call).
//!
//! The Python `ProducerCore` keeps owning everything else: its lock, its queues (a `_Queue`
//! per partition whose `open` is an `OpenBatch`), the sealed and in-flight batches, memory
//! and pending counts. `Appender.append` works on those same objects under the same lock,
//! so the sender cannot tell which path queued a record.
//!
//! Invariants: `append` either queues the record (and returns its partition) or changes
//! nothing and returns None, leaving the record to the Python path, which raises the
//! precise error or waits for buffer space. A record in an `OpenBatch` holds its
//! `memory` until `take` hands it to a sealed batch. It never releases the GIL while it
//! holds the core's lock, and never calls back into Python while it borrows an `OpenBatch`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyRuntimeError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};
use pyo3::PyTraverseError;

use crate::wire::{partition_for_key, Record};

/// A partition's open batch: its records' encoded bytes, back to back, and one entry per
/// record for its delivery: `(key, value, headers, timestamp_ms, sink)`, or None for a record
/// nobody waits on (no callback, no future: its delivery needs nothing).
#[pyclass(module = "tidelog._native")]
#[derive(Default)]
pub struct OpenBatch {
    buf: Vec<u8>,
    entries: Vec<Py<PyAny>>,
    memory: usize,
    opened: f64,
    /// Entries with a sink (a callback or a future).
    sinks: usize,
}

impl OpenBatch {
    fn push(&mut self, entry: Py<PyAny>, memory: usize, now: f64, has_sink: bool) {
        if self.entries.is_empty() {
            self.opened = now;
        }
        self.entries.push(entry);
        self.memory += memory;
        self.sinks += usize::from(has_sink);
    }
}

#[pymethods]
impl OpenBatch {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Entries hold sinks (callbacks, futures) that may refer back to the producer: the GC
    /// must see them to collect a cycle through an open batch.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for e in &self.entries {
            visit.call(e)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.entries.clear();
    }

    /// Records in the batch.
    #[getter]
    fn count(&self) -> usize {
        self.entries.len()
    }

    /// Encoded bytes in the batch.
    #[getter]
    fn size(&self) -> usize {
        self.buf.len()
    }

    /// When its first record came (`time.monotonic()`; 0.0 while empty).
    #[getter]
    fn opened(&self) -> f64 {
        self.opened
    }

    /// Adds an already encoded record (the Python path); `now` is `time.monotonic()`.
    fn append(&mut self, encoded: &[u8], entry: Py<PyAny>, memory: usize, now: f64, has_sink: bool) {
        self.buf.extend_from_slice(encoded);
        self.push(entry, memory, now, has_sink);
    }

    /// Empties the batch: `(encoded records, entries, memory, opened, entries with a sink)`.
    fn take<'py>(&mut self, py: Python<'py>) -> PyResult<Taken<'py>> {
        let raw = PyBytes::new(py, &self.buf);
        let entries = PyList::new(py, self.entries.drain(..))?;
        self.buf.clear();
        let memory = std::mem::take(&mut self.memory);
        let opened = std::mem::take(&mut self.opened);
        let sinks = std::mem::take(&mut self.sinks);
        Ok((raw, entries, memory, opened, sinks))
    }
}

/// What `OpenBatch.take` returns.
type Taken<'py> = (Bound<'py, PyBytes>, Bound<'py, PyList>, usize, f64, usize);

/// A producer's buffer memory held and records not yet completed (`ProducerCore.counts`);
/// changed only under the core's lock.
#[pyclass(module = "tidelog._native")]
#[derive(Default)]
pub struct Counts {
    #[pyo3(get, set)]
    memory_used: usize,
    #[pyo3(get, set)]
    pending: usize,
}

#[pymethods]
impl Counts {
    #[new]
    fn new() -> Self {
        Self::default()
    }
}

/// `time.monotonic()` without a call into Python: both are CLOCK_MONOTONIC, so the offset
/// taken once at start holds.
struct Clock {
    base: Instant,
    base_py: f64,
}

impl Clock {
    fn new(py: Python<'_>) -> PyResult<Self> {
        let base = Instant::now();
        let base_py: f64 = py.import("time")?.call_method0("monotonic")?.extract()?;
        Ok(Self { base, base_py })
    }

    fn now(&self) -> f64 {
        self.base_py + self.base.elapsed().as_secs_f64()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A key or value as bytes: `bytes` as is, `str` encoded; anything else is for the Python
/// path (None).
fn as_bytes<'py>(py: Python<'py>, v: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyBytes>>> {
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Some(b.clone()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Some(PyBytes::new(py, s.to_str()?.as_bytes())));
    }
    Ok(None)
}

/// `Some(None)` for None, `Some(Some(n))` for an int, None for anything else.
fn int_or_none(v: &Bound<'_, PyAny>) -> Option<Option<i64>> {
    if v.is_none() {
        return Some(None);
    }
    if v.cast::<PyInt>().is_ok() && v.cast::<PyBool>().is_err() {
        return v.extract().ok().map(Some);
    }
    None
}

/// Holds the core's lock from `acquire` to drop.
struct Held<'a, 'py>(&'a Bound<'py, PyAny>);

impl<'a, 'py> Held<'a, 'py> {
    fn acquire(lock: &'a Bound<'py, PyAny>) -> PyResult<Self> {
        lock.call_method0(intern!(lock.py(), "acquire"))?;
        Ok(Self(lock))
    }
}

impl Drop for Held<'_, '_> {
    fn drop(&mut self) {
        // A release of a held lock cannot fail; if it did, the error is printed, not lost.
        if let Err(e) = self.0.call_method0(intern!(self.0.py(), "release")) {
            e.print(self.0.py());
        }
    }
}

/// `Producer.produce` for a record without headers, on a non-transactional producer.
///
/// The core holds its appender and the appender holds the core: a cycle the GC collects
/// through `__traverse__` / `__clear__` (after which `append` always answers None).
#[pyclass(module = "tidelog._native")]
pub struct Appender {
    refs: Option<CoreRefs>,
    buffer_memory: usize,
    max_age: f64,
    /// `_staging.MAX_RECORD_BYTES` and `_staging.RECORD_OVERHEAD`, read once (one source).
    max_record_bytes: usize,
    record_overhead: usize,
    clock: Clock,
    /// The queue of the partition last appended to (queues are never removed from the
    /// core's dict, so it stays that partition's): saves a key tuple and a lookup per record.
    last: std::sync::Mutex<Option<LastQueue>>,
    /// Records queued by `append` (statistics, and the tests' proof the path ran).
    appended: std::sync::atomic::AtomicU64,
}

/// The core and the objects of it the appender works on.
struct CoreRefs {
    core: Py<PyAny>,
    counts: Py<Counts>,
    lock: Py<PyAny>,
    queues: Py<PyDict>,
    sticky: Py<PyDict>,
    partitions: Py<PyDict>,
    new_queue: Py<PyAny>,
}

struct LastQueue {
    topic: Py<PyString>,
    partition: i64,
    queue: Py<PyAny>,
    open: Py<OpenBatch>,
}

impl Appender {
    /// The `_Queue` of `(topic, p)` and its open batch, created if new (caller holds the lock).
    fn queue<'py>(
        &self,
        py: Python<'py>,
        refs: &CoreRefs,
        topic: &Bound<'py, PyString>,
        p: i64,
    ) -> PyResult<(Bound<'py, PyAny>, Py<OpenBatch>)> {
        let mut last = self.last.lock().map_err(|_| PyRuntimeError::new_err("appender cache poisoned"))?;
        if let Some(l) = last.as_ref() {
            let same = l.topic.as_ptr() == topic.as_ptr() || l.topic.bind(py).as_any().eq(topic)?;
            if same && l.partition == p {
                return Ok((l.queue.bind(py).clone(), l.open.clone_ref(py)));
            }
        }
        let tp = PyTuple::new(py, [topic.as_any().clone(), p.into_pyobject(py)?.into_any()])?;
        let queues = refs.queues.bind(py);
        let q = match queues.get_item(&tp)? {
            Some(q) => q,
            None => {
                let q = refs.new_queue.bind(py).call0()?;
                queues.set_item(&tp, &q)?;
                q
            }
        };
        let open: Py<OpenBatch> = q
            .getattr(intern!(py, "open"))?
            .cast_into::<OpenBatch>()
            .map_err(|_| PyRuntimeError::new_err("a queue's open batch is not native"))?
            .unbind();
        *last = Some(LastQueue {
            topic: topic.clone().unbind(),
            partition: p,
            queue: q.clone().unbind(),
            open: open.clone_ref(py),
        });
        Ok((q, open))
    }
}

#[pymethods]
impl Appender {
    /// `core` is a `ProducerCore`; `new_queue` makes a `_Queue`.
    #[new]
    fn new(py: Python<'_>, core: Bound<'_, PyAny>, new_queue: Py<PyAny>) -> PyResult<Self> {
        let dict = |name: &str| -> PyResult<Py<PyDict>> { Ok(core.getattr(name)?.cast_into::<PyDict>()?.unbind()) };
        let staging = py.import("tidelog._staging")?;
        let refs = CoreRefs {
            lock: core.getattr("lock")?.unbind(),
            counts: core.getattr("counts")?.cast_into::<Counts>()?.unbind(),
            queues: dict("_queues")?,
            sticky: dict("_sticky")?,
            partitions: dict("_partitions")?,
            core: core.clone().unbind(),
            new_queue,
        };
        Ok(Self {
            refs: Some(refs),
            buffer_memory: core.getattr("buffer_memory")?.extract()?,
            max_age: core.getattr("metadata_max_age")?.extract()?,
            max_record_bytes: staging.getattr("MAX_RECORD_BYTES")?.extract()?,
            record_overhead: staging.getattr("RECORD_OVERHEAD")?.extract()?,
            clock: Clock::new(py)?,
            last: std::sync::Mutex::new(None),
            appended: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(r) = &self.refs {
            visit.call(&r.core)?;
            visit.call(&r.counts)?;
            visit.call(&r.lock)?;
            visit.call(&r.queues)?;
            visit.call(&r.sticky)?;
            visit.call(&r.partitions)?;
            visit.call(&r.new_queue)?;
        }
        // Held only briefly, by `append`, which the GC cannot interrupt; if it ever is held,
        // the cached queue is still reachable through `queues`.
        if let Ok(last) = self.last.try_lock() {
            if let Some(l) = last.as_ref() {
                visit.call(&l.topic)?;
                visit.call(&l.queue)?;
                visit.call(&l.open)?;
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.refs = None;
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }

    /// Records queued by this path so far.
    #[getter]
    fn appended(&self) -> u64 {
        self.appended.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues the record and returns its partition, or returns None having changed nothing:
    /// the Python path then takes the record (it raises the precise error, or waits for
    /// buffer space). A negative `partition` means any; `timestamp` 0 or None means now.
    #[pyo3(signature = (topic, value, key, partition, timestamp, sink))]
    #[allow(clippy::too_many_arguments)]
    fn append<'py>(
        &self,
        py: Python<'py>,
        topic: Bound<'py, PyAny>,
        value: Bound<'py, PyAny>,
        key: Bound<'py, PyAny>,
        partition: Bound<'py, PyAny>,
        timestamp: Bound<'py, PyAny>,
        sink: Bound<'py, PyAny>,
    ) -> PyResult<Option<i64>> {
        // Anything unusual (a topic that is not a str, a float timestamp, a bytearray) is the
        // Python path's to normalize or refuse.
        let Ok(topic) = topic.cast_into::<PyString>() else {
            return Ok(None);
        };
        let Some(partition) = int_or_none(&partition) else {
            return Ok(None);
        };
        let Some(timestamp) = int_or_none(&timestamp) else {
            return Ok(None);
        };
        let value = if value.is_none() {
            None
        } else {
            match as_bytes(py, &value)? {
                Some(v) => Some(v),
                None => return Ok(None),
            }
        };
        let key = if key.is_none() {
            None
        } else {
            match as_bytes(py, &key)? {
                Some(k) => Some(k),
                None => return Ok(None),
            }
        };
        let ts = match timestamp {
            Some(t) if t != 0 => t,
            _ => now_ms(),
        };
        let rec = Record {
            key: key.as_ref().map(|k| k.as_bytes()),
            value: value.as_ref().map(|v| v.as_bytes()),
            headers: &[],
            timestamp_ms: ts,
        };
        let len = rec.encoded_len();
        if len > self.max_record_bytes {
            return Ok(None);
        }
        let Some(refs) = self.refs.as_ref() else {
            return Ok(None);
        };
        let now = self.clock.now();
        let Some(cached) = refs.partitions.bind(py).get_item(&topic)? else {
            return Ok(None);
        };
        // (partition count, fetched at, largest batch): `ProducerCore._partitions`.
        let (count, fetched, batch_limit): (i64, f64, usize) = cached.extract()?;
        if now - fetched > self.max_age || count <= 0 {
            return Ok(None);
        }
        let chosen = partition.filter(|p| *p >= 0);
        if chosen.is_some_and(|p| p >= count) {
            return Ok(None);
        }
        let memory = len + self.record_overhead;

        let lock = refs.lock.bind(py);
        let _held = Held::acquire(lock)?;
        let core = refs.core.bind(py);
        if core.getattr(intern!(py, "closed"))?.is_truthy()? {
            return Ok(None);
        }
        let used = refs.counts.bind(py).borrow().memory_used;
        if used + memory > self.buffer_memory && used != 0 {
            return Ok(None);
        }
        let sticky = refs.sticky.bind(py);
        let p = match (chosen, &rec.key) {
            (Some(p), _) => p,
            (None, Some(k)) => i64::from(partition_for_key(k, count as u32)),
            (None, None) => match sticky.get_item(&topic)? {
                Some(p) if p.extract::<i64>()? < count => p.extract()?,
                _ => core.call_method1(intern!(py, "choose_partition"), (&topic, py.None(), count))?.extract()?,
            },
        };
        let (q, open) = self.queue(py, refs, &topic, p)?;
        let open = open.bind(py);
        let mut wake = false;
        let full = {
            let b = open.borrow();
            !b.entries.is_empty() && b.buf.len() + len > batch_limit
        };
        if full {
            core.call_method1(intern!(py, "_seal"), (&q,))?;
            wake = true;
            if rec.key.is_none() {
                if let Some(s) = sticky.get_item(&topic)? {
                    if s.extract::<i64>()? == p {
                        sticky.del_item(&topic)?;
                    }
                }
            }
        }
        let has_sink = !sink.is_none();
        let entry = if has_sink {
            (key.clone(), value.clone(), py.None(), ts, sink).into_pyobject(py)?.into_any().unbind()
        } else {
            py.None()
        };
        {
            let mut b = open.borrow_mut();
            wake |= b.entries.is_empty();
            rec.write(&mut b.buf);
            b.push(entry, memory, now, has_sink);
        }
        {
            let mut counts = refs.counts.bind(py).borrow_mut();
            counts.memory_used += memory;
            counts.pending += 1;
        }
        if wake {
            core.call_method0(intern!(py, "wake"))?;
        }
        self.appended.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(p))
    }
}
