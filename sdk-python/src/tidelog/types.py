"""Value types the application sees: consumed/delivered records and topic-partitions, shaped
like confluent-kafka's (``msg.value()``, ``msg.error()``, ``TopicPartition(topic, partition,
offset)``), with its constants (``OFFSET_BEGINNING``, ``TIMESTAMP_CREATE_TIME``, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._accel import native
from .errors import KafkaError

#: ``Message.timestamp()`` types, as confluent-kafka numbers them.
TIMESTAMP_NOT_AVAILABLE = 0
TIMESTAMP_CREATE_TIME = 1
TIMESTAMP_LOG_APPEND_TIME = 2

#: Logical offsets, as confluent-kafka numbers them: ``assign``/``seek`` to
#: ``OFFSET_BEGINNING`` (the oldest retained record) or ``OFFSET_END`` (the end), or to
#: ``OFFSET_STORED`` (the group's committed offset, else ``auto.offset.reset``).
#: ``OFFSET_INVALID`` is "no offset" where confluent-kafka returns one (a cached watermark
#: not known yet).
OFFSET_BEGINNING = -2
OFFSET_END = -1
OFFSET_STORED = -1000
OFFSET_INVALID = -1001

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class TopicPartition:
    """A partition of a topic, optionally with an offset (``commit``, ``seek``, ``committed``,
    ``offsets_for_times``). ``offset`` None means none (confluent-kafka says
    ``OFFSET_INVALID``); ``partition`` -1 means none given, as in confluent-kafka; ``error``
    is set on results that failed for this partition alone."""

    topic: str
    partition: int = -1
    offset: int | None = None
    error: KafkaError | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ConsumerGroupMetadata:
    """A consumer's group membership, as ``Consumer.consumer_group_metadata()`` gives it, for
    ``Producer.send_offsets_to_transaction`` (confluent-kafka's opaque object; here its fields
    are readable). The coordinator checks ``generation_id`` and ``member_id`` against the
    group's current ones (KIP-447): a member that lost its partitions in a rebalance cannot
    commit their offsets. Generation 0 with an empty member id (a consumer that assigned its
    partitions itself) is not checked."""

    group_id: str
    generation_id: int = 0
    member_id: str = ""
    #: Static membership is not supported: always None.
    group_instance_id: str | None = None


class Message:
    """A record: as consumed (``Consumer.poll``) or as delivered (``on_delivery``), with
    confluent-kafka's accessors.

    ``value()`` is None for a tombstone (produced with ``value=None``), distinct from ``b""``.
    ``offset()`` is the record's position in its partition; -1 for a record produced with
    acks=none (the broker does not answer). ``timestamp()`` is ``(TIMESTAMP_CREATE_TIME, ms)``
    when the producer set the record's time (the Python producer always does) and
    ``(TIMESTAMP_LOG_APPEND_TIME, ms)`` (the broker's append time) otherwise. ``error()`` is
    None for a record; a message whose ``error()`` is a :class:`~tidelog.errors.KafkaError`
    (``_PARTITION_EOF`` with ``enable.partition.eof``) carries no record.
    """

    __slots__ = ("_error", "_headers", "_key", "_offset", "_partition", "_topic", "_ts", "_ts_type", "_value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        timestamp: int = 0,
        timestamp_type: int | None = None,
        error: KafkaError | None = None,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._key = key
        self._value = value
        self._headers = headers or None
        self._ts = timestamp
        if timestamp_type is None:
            timestamp_type = TIMESTAMP_CREATE_TIME if timestamp > 0 else TIMESTAMP_NOT_AVAILABLE
        self._ts_type = timestamp_type
        self._error = error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        """The value; None for a tombstone (a null value), ``b""`` for the empty value."""
        return self._value

    def headers(self) -> Headers | None:
        """The headers as ``(name, value)`` pairs in order, or None when there are none."""
        return self._headers

    def header(self, name: str) -> bytes | None:
        """The value of the first header called ``name``, if any (a Tidelog addition)."""
        for k, v in self._headers or ():
            if k == name:
                return v
        return None

    def timestamp(self) -> tuple[int, int]:
        """``(type, milliseconds since the Unix epoch)``; see the class docs for the type."""
        return (self._ts_type, self._ts if self._ts_type != TIMESTAMP_NOT_AVAILABLE else -1)

    def error(self) -> KafkaError | None:
        """None for a record; the event's :class:`~tidelog.errors.KafkaError` otherwise."""
        return self._error

    def latency(self) -> float | None:
        """confluent-kafka's produce latency; not measured (None)."""
        return None

    def leader_epoch(self) -> int | None:
        """confluent-kafka's leader epoch; Tidelog has none (None)."""
        return None

    def set_key(self, key: bytes | None) -> None:
        self._key = key

    def set_value(self, value: bytes | None) -> None:
        self._value = value

    def set_headers(self, headers: Headers | None) -> None:
        self._headers = headers or None

    def __len__(self) -> int:
        """The value's length in bytes (0 for a tombstone), as confluent-kafka's."""
        return len(self._value) if self._value is not None else 0

    def _fields(self) -> tuple[object, ...]:
        return (
            self._topic,
            self._partition,
            self._offset,
            self._key,
            self._value,
            self._headers,
            self._ts,
            self._ts_type,
            self._error,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable (set_value), as confluent-kafka's

    def __repr__(self) -> str:
        if self._error is not None:
            return f"Message({self._topic}/{self._partition}@{self._offset}, error={self._error})"
        return (
            f"Message({self._topic}/{self._partition}@{self._offset}, key={self._key!r}, "
            f"value={self._value!r}, headers={self._headers!r}, timestamp={self.timestamp()})"
        )


#: The pure-Python ``Message``; with the compiled extension (:mod:`tidelog._accel`) the name
#: ``Message`` is ``tidelog._native.Message`` instead, with the same accessors and semantics
#: (built without a Python ``__init__`` and not tracked by the cyclic GC: a consumer makes one
#: per record).
PyMessage = Message
if not TYPE_CHECKING and native is not None:
    Message = native.Message
