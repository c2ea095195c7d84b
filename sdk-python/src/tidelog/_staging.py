"""A record's way into the producer, shared by :class:`tidelog.Producer` and
:class:`tidelog.aio.AIOProducer`: its parts normalized and encoded once (:func:`stage`), the
partition's open batch it joins (:data:`OpenBatch`) and the producer's counts (:data:`Counts`),
and the :class:`~tidelog.Message` a delivery reports (:func:`delivered`).

With the compiled extension, ``OpenBatch`` and ``Counts`` are its types, and a common record
skips :func:`stage` altogether (``tidelog._native.Appender`` encodes it into the open batch);
this module's pure-Python twins run otherwise, with the same interface.

A ``value`` of None is a tombstone (``Record.null_value``), distinct from ``b""``.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from . import _wire
from ._accel import native
from .errors import ErrorCode, FatalError
from .types import TIMESTAMP_CREATE_TIME, Message

#: The broker's hard limit for one batch (server MAX_BATCH_BYTES_LIMIT).
MAX_RECORD_BYTES = 1 << 20

# One queued record: (key, value, headers, timestamp_ms, sink); sink receives the delivery.
# A None value is a tombstone. In a batch's entries, None stands for a record without a sink
# (the compiled path keeps nothing for a delivery nobody waits on).
Entry = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None, int, Any]

Payload = bytes | bytearray | memoryview | str
HeadersArg = dict[str, Payload | None] | list[tuple[str, Payload | None]] | None


def to_bytes(v: Payload | None, what: str) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    raise TypeError(f"{what} must be bytes or str, got {type(v).__name__}")


#: Buffer memory charged per record beyond its encoded bytes (bookkeeping), so that many tiny
#: records still count against ``buffer.memory``.
RECORD_OVERHEAD = 64


class Staged(NamedTuple):
    """A record encoded once and ready to queue (:meth:`ProducerCore.try_append`)."""

    topic: str
    #: None: chosen at queueing time (by key, else sticky).
    partition: int | None
    encoded: bytes
    entry: Entry
    #: Buffer memory it holds until delivered.
    size: int


def stage(
    topic: str,
    value: Payload | None,
    key: Payload | None,
    headers: HeadersArg,
    partition: int | None,
    timestamp: int | None,
    sink: Any,
) -> Staged:
    """Normalizes a record's parts and encodes it once (the only encoding it gets)."""
    if partition is not None and partition < 0:
        partition = None  # confluent-kafka's -1: any partition (by key, else sticky)
    k = to_bytes(key, "key")
    v = to_bytes(value, "value")  # None: a tombstone (null value), distinct from b""
    hs: list[tuple[str, bytes]] | None = None
    if headers:
        items = headers.items() if isinstance(headers, dict) else headers
        hs = [(str(hk), to_bytes(hv, "header value") or b"") for hk, hv in items]
    ts = int(timestamp) if timestamp else time.time_ns() // 1_000_000
    encoded = _wire.encode_record(k, v, hs, ts)
    if len(encoded) > MAX_RECORD_BYTES:
        raise FatalError(
            f"record of {len(encoded)} encoded bytes exceeds the broker's "
            f"{MAX_RECORD_BYTES}-byte batch limit",
            ErrorCode.BATCH_TOO_LARGE,
        )
    return Staged(topic, partition, encoded, (k, v, hs, ts, sink), len(encoded) + RECORD_OVERHEAD)


class PyOpenBatch:
    """A partition's batch being filled: encoded records and their entries (the pure-Python
    twin of ``tidelog._native.OpenBatch``; :data:`OpenBatch` is whichever runs)."""

    __slots__ = ("_entries", "_memory", "_parts", "_sinks", "opened", "size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._entries: list[Entry | None] = []
        self._memory = 0
        self._sinks = 0
        self.size = 0
        #: When its first record came (``time.monotonic()``; 0.0 while empty).
        self.opened = 0.0

    @property
    def count(self) -> int:
        return len(self._entries)

    def append(self, encoded: bytes, entry: Entry | None, memory: int, now: float, has_sink: bool) -> None:
        if not self._entries:
            self.opened = now
        self._parts.append(encoded)
        self._entries.append(entry)
        self.size += len(encoded)
        self._memory += memory
        self._sinks += has_sink

    def take(self) -> tuple[bytes, list[Entry | None], int, float, int]:
        """Empties the batch: ``(encoded records, entries, memory, opened, entries with a
        sink)``."""
        out = (b"".join(self._parts), self._entries, self._memory, self.opened, self._sinks)
        self._parts, self._entries, self._memory, self.size, self.opened = [], [], 0, 0, 0.0
        self._sinks = 0
        return out


class PyCounts:
    """A producer's buffer memory held and records not yet completed (the pure-Python twin
    of ``tidelog._native.Counts``)."""

    __slots__ = ("memory_used", "pending")

    def __init__(self) -> None:
        self.memory_used = 0
        self.pending = 0


#: The implementations in use: compiled when available (:mod:`tidelog._accel`).
OpenBatch: Any = native.OpenBatch if native is not None else PyOpenBatch
Counts: Any = native.Counts if native is not None else PyCounts


def delivered(topic: str, partition: int, base: int, i: int, e: Entry) -> Message:
    """The :class:`Message` for record ``i`` of a batch acknowledged at ``base`` (-1: unknown)."""
    return Message(
        topic, partition, base + i if base >= 0 else -1, e[0], e[1], e[2], e[3], TIMESTAMP_CREATE_TIME
    )


def check_partition(topic: str, partition: int, count: int) -> None:
    if not 0 <= partition < count:
        raise FatalError(
            f"partition {partition} does not exist: topic {topic!r} has {count} partitions",
            ErrorCode.UNKNOWN_PARTITION,
        )


def idempotence_config(cfg: dict[str, Any], explicit: bool) -> None:
    """Idempotence needs acks=all (as in Kafka): off by default otherwise, an error if asked for.
    A ``transactional.id`` needs idempotence (hence acks=all): turned on as confluent-kafka
    does, an error if ``enable.idempotence`` is explicitly false or acks is not all."""
    if cfg.get("transactional.id"):
        from .errors import ConfigError

        if explicit and not cfg["enable.idempotence"]:
            raise ConfigError("transactional.id requires enable.idempotence=true (or leave it unset)")
        if cfg["acks"] != "all":
            raise ConfigError("transactional.id requires acks=all")
        cfg["enable.idempotence"] = True
        return
    if cfg["acks"] != "all" and cfg["enable.idempotence"]:
        if explicit:
            from .errors import ConfigError

            raise ConfigError("enable.idempotence=true requires acks=all")
        cfg["enable.idempotence"] = False
