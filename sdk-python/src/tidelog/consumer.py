"""The synchronous consumer, shaped like confluent-kafka's.

::

    c = Consumer({"bootstrap.servers": "127.0.0.1:9690", "group.id": "billing",
                  "auto.offset.reset": "earliest"})
    c.subscribe(["orders"], on_assign=lambda c, ps: print("got", ps))
    while running:
        msg = c.poll(1.0)
        if msg is None:
            continue
        if msg.error():            # only with enable.partition.eof: a _PARTITION_EOF event
            continue
        handle(msg.key(), msg.value())
    c.close()          # commits what was processed and leaves the group at once

A background thread runs the group session (heartbeats, rebalances, the leader's assignment)
and the fetch streams; ``poll`` hands out buffered records. Rebalance callbacks
``on_assign(consumer, partitions)`` / ``on_revoke(consumer, partitions)``, ``error_cb``
(a broker failed, a subscribed topic does not exist) and ``stats_cb`` run in your thread,
from ``poll``/``consume``, after the change took effect. Fatal errors (a deleted topic,
``auto.offset.reset=error`` without a commit) are raised by ``poll``, once.

**At-least-once auto-commit.** With ``enable.auto.commit`` (the default), the consumer commits
in the background, every ``auto.commit.interval.ms`` and when partitions are revoked, the
positions of records returned by *earlier* polls: calling ``poll`` again says you are done with
what the previous one returned. A crash therefore redelivers at most the records in progress,
never skips one. ``commit()`` commits everything returned so far, at once. With
``enable.auto.offset.store=false``, both commit only the offsets stored with
:meth:`Consumer.store_offsets`. With ``enable.auto.commit=false`` the consumer commits nothing
by itself: not periodically, not when partitions are revoked, not on close.

**Exactly once** (consume-transform-produce): ``enable.auto.commit=false`` and
``isolation.level=read_committed`` (only records of committed transactions are returned;
offsets then have gaps where aborted records and transaction markers are), with the positions
committed through a transactional producer::

    producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                         consumer.consumer_group_metadata())
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._config import CONSUMER_KEYS, parse
from ._consumer_core import TP, ConsumerCore
from ._events import StatsEnvelope, StatsTimer
from ._runtime import LoopThread
from .errors import ClosedError, ConfigError, KafkaError, RetriableError
from .types import OFFSET_INVALID, ConsumerGroupMetadata, Message, TopicPartition

if TYPE_CHECKING:
    from .admin import ClusterMetadata

RebalanceCallback = Callable[["Consumer", list[TopicPartition]], None]


class Consumer:
    """Reads records from topics, as a member of a consumer group (:meth:`subscribe`) or from
    partitions chosen by the application (:meth:`assign`). Not thread-safe: use one thread."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        cfg = parse(config, CONSUMER_KEYS, "consumer")
        self._cfg = cfg
        #: ("assign" | "revoke", partitions) and ("error", KafkaError), served by poll().
        self._notes: deque[tuple[str, Any]] = deque()
        self._error_cb: Callable[[KafkaError], None] | None = cfg["error_cb"]
        self._stats_cb: Callable[[str], None] | None = cfg["stats_cb"]
        self._stats = StatsTimer(cfg["statistics.interval.ms"] if self._stats_cb else 0)
        self._envelope = StatsEnvelope("consumer", cfg["client.id"])
        errors = (lambda e: self._on_change("error", e)) if self._error_cb else None
        self._core = ConsumerCore(cfg, self._on_change, errors)
        self._log: logging.Logger = self._core.log
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._admin: Any = None
        self._closed = False
        self._rt = LoopThread("tidelog-consumer")
        self._rt.call(self._core.start())

    def _on_change(self, kind: str, payload: Any) -> None:
        with self._core.lock:
            self._notes.append((kind, payload))
            self._core.data.notify_all()

    # ---- assignment ---------------------------------------------------------------------

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        """Joins ``group.id`` for ``topics``; partitions are assigned by the group. Without a
        ``group.id`` this is a :class:`~tidelog.errors.ConfigError` (use :meth:`assign`).
        ``on_lost`` is accepted for confluent-kafka's signature; a lost assignment is reported
        through ``on_revoke`` (the consumer has already stopped reading it)."""
        self._check_open()
        if not self._cfg["group.id"]:
            raise ConfigError("subscribe() needs a group.id in the consumer config (or use assign())")
        if isinstance(topics, str):
            raise TypeError("subscribe() takes a list of topics")
        self._on_assign, self._on_revoke = on_assign, on_revoke or on_lost
        self._rt.call(self._core.subscribe(list(topics)))

    def unsubscribe(self) -> None:
        """Leaves the group: revokes the partitions (``on_revoke`` runs from the next
        :meth:`poll`; with auto-commit, what was processed is committed first) and forgets the
        subscription. :meth:`subscribe` or :meth:`assign` may follow."""
        self._check_open()
        self._core.mark_processed()
        self._rt.call(self._core.unsubscribe())

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Reads exactly these partitions (no group membership), each from its ``offset`` if
        given (``OFFSET_BEGINNING`` / ``OFFSET_END`` too), else from the group's committed
        offset, else per ``auto.offset.reset``."""
        self._check_open()
        self._rt.call(self._core.assign_manual(list(partitions)))

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        """Adds partitions to the assignment made with :meth:`assign` (offsets as there); the
        partitions already assigned go on from where they are."""
        self._check_open()
        self._rt.call(self._core.incremental_assign(list(partitions)))

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        """Removes partitions from the assignment made with :meth:`assign`; the others go on."""
        self._check_open()
        self._rt.call(self._core.incremental_unassign(list(partitions)))

    def unassign(self) -> None:
        """Drops the assignment made with :meth:`assign`."""
        self._check_open()
        self._core.mark_processed()
        self._rt.call(self._core.unassign())

    def assignment(self) -> list[TopicPartition]:
        with self._core.lock:
            return [TopicPartition(t, p) for t, p in sorted(self._core.assigned)]

    def memberid(self) -> str | None:
        """This member's id in its group (None before it joined)."""
        return self._core.member_id or None

    def consumer_group_metadata(self) -> ConsumerGroupMetadata:
        """The group id, generation and member id of this consumer now, for a transactional
        producer's ``send_offsets_to_transaction`` (KIP-447: the coordinator refuses offsets
        from a member of an older generation). Needs ``group.id``."""
        return _group_metadata(self._core)

    # ---- reading ------------------------------------------------------------------------

    def poll(self, timeout: float | None = None) -> Message | None:
        """The next record (or a ``_PARTITION_EOF`` event: ``msg.error()``), waiting up to
        ``timeout`` seconds (None or negative: forever); None if none came. Raises a fatal
        error (e.g. the topic was deleted) once, when it happens."""
        self._check_open()
        self._serve_notes()
        # The common case in one lock round: a record of the partition being read is buffered.
        msg = self._core.poll_one()
        if msg is not None:
            return msg
        msgs = self._consume(1, timeout)
        return msgs[0] if msgs else None

    def consume(self, num_messages: int = 1, timeout: float | None = None) -> list[Message]:
        """Up to ``num_messages`` records, waiting up to ``timeout`` seconds (None or negative:
        forever) for the first."""
        if num_messages < 1:
            raise ValueError("num_messages must be at least 1")
        return self._consume(num_messages, timeout)

    def _consume(self, n: int, timeout: float | None) -> list[Message]:
        self._check_open()
        core = self._core
        core.mark_processed()
        if timeout is not None and timeout < 0:
            timeout = None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._serve_notes()
            with core.data:
                msgs = core.take(n)
                if msgs:
                    return msgs
                if self._notes:
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                core.data.wait(self._stats.cap(left))

    def _serve_notes(self) -> None:
        if self._stats.due():
            assert self._stats_cb is not None
            self._stats_cb(self._envelope.json(self._core.stats()))
        while self._notes:  # read without the lock: a note queued meanwhile waits for the next call
            with self._core.lock:
                if not self._notes:
                    return
                kind, payload = self._notes.popleft()
            if kind == "error":
                if self._error_cb is not None:
                    self._error_cb(payload)
                continue
            cb = self._on_assign if kind == "assign" else self._on_revoke
            if cb is not None:
                cb(self, payload)

    # ---- positions and commits ----------------------------------------------------------

    def commit(
        self,
        message: Message | None = None,
        offsets: list[TopicPartition] | None = None,
        asynchronous: bool = False,
    ) -> list[TopicPartition] | None:
        """Commits the position after ``message``, the given ``offsets`` (next offset to read),
        or by default every record returned so far (without ``enable.auto.offset.store``: the
        stored offsets). Waits for the broker unless ``asynchronous`` (then errors are only
        logged). Raises :class:`~tidelog.errors.IllegalGenerationError` if a rebalance took the
        partitions."""
        self._check_open()
        if message is not None:
            _check_record(message)
            todo: dict[TP, int] = {(message.topic(), message.partition()): message.offset() + 1}
        elif offsets is not None:
            todo = {(tp.topic, tp.partition): tp.offset for tp in offsets if tp.offset is not None}
        else:
            todo = self._core.current_offsets()
        if asynchronous:
            fut = asyncio.run_coroutine_threadsafe(self._core.commit_positions(todo), self._rt.loop)
            log = self._log
            fut.add_done_callback(lambda f: _log_commit_error(log, f))
            return None
        self._rt.call(self._core.commit_positions(todo))
        return [TopicPartition(t, p, o) for (t, p), o in sorted(todo.items())]

    def store_offsets(
        self, message: Message | None = None, offsets: list[TopicPartition] | None = None
    ) -> None:
        """Stores the offset after ``message`` (or the given ``offsets``: the next offset to
        read) for the next commit, auto or :meth:`commit`. Needs
        ``enable.auto.offset.store=false`` (a :class:`~tidelog.errors.ConfigError` otherwise),
        as in confluent-kafka; the partitions must be assigned."""
        self._check_open()
        if (message is None) == (offsets is None):
            raise ValueError("store_offsets() takes a message or offsets")
        if message is not None:
            _check_record(message)
            todo = {(message.topic(), message.partition()): message.offset() + 1}
        else:
            assert offsets is not None
            todo = {(tp.topic, tp.partition): tp.offset for tp in offsets if tp.offset is not None}
        self._core.store_offsets(todo)

    def committed(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        """The group's committed offsets (``offset`` None where nothing was committed)."""
        tps = [(tp.topic, tp.partition) for tp in partitions]
        got = self._rt.call(self._core.fetch_committed(tps), _timeout(timeout))
        return [TopicPartition(t, p, got.get((t, p))) for t, p in tps]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The offset of the next record poll will return, per partition (None if unknown)."""
        with self._core.lock:
            return [
                TopicPartition(tp.topic, tp.partition, self._core.positions.get((tp.topic, tp.partition)))
                for tp in partitions
            ]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int] | None:
        """``(low, high)``: the partition's first retained offset and its high watermark (the
        offset after the last record consumers can read). From the brokers, or with ``cached``
        from the latest fetch response (``OFFSET_INVALID`` for what is not known: the low
        offset always, the high one before the first response). None if no broker answered
        within ``timeout`` (seconds; default ``default.api.timeout.ms``), as in
        confluent-kafka; other errors (an unknown topic) are raised."""
        tp = (partition.topic, partition.partition)
        if cached:
            return OFFSET_INVALID, self._core.high_watermarks.get(tp, OFFSET_INVALID)
        self._check_open()
        try:
            return self._rt.call(self._core.watermarks(tp, _timeout(timeout)))
        except RetriableError:
            return None

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        """For each ``TopicPartition(topic, partition, timestamp_ms)``, the earliest offset
        whose batch was appended at or after that time (the broker's append time), or -1
        (``OFFSET_END``) if none was, as confluent-kafka answers."""
        self._check_open()
        return self._rt.call(self._core.offsets_for_times(list(partitions), _timeout(timeout)))

    def seek(self, partition: TopicPartition) -> None:
        """Continues reading ``partition`` from ``partition.offset`` (``OFFSET_BEGINNING`` /
        ``OFFSET_END`` too)."""
        if partition.offset is None:
            raise ValueError("seek needs a TopicPartition with an offset")
        self._rt.call(self._core.seek((partition.topic, partition.partition), partition.offset))

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stops fetching these partitions (until :meth:`resume` or a rebalance)."""
        self._rt.call(self._core.set_paused([(tp.topic, tp.partition) for tp in partitions], True))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._rt.call(self._core.set_paused([(tp.topic, tp.partition) for tp in partitions], False))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> ClusterMetadata:
        """The cluster's brokers and topics (or one topic), as
        :meth:`tidelog.AdminClient.list_topics` returns them."""
        from .admin import internal_admin

        if self._admin is None:
            self._admin = internal_admin(self._cfg)
        got: ClusterMetadata = self._admin.list_topics(topic, timeout)
        return got

    # ---- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Commits what was processed (auto-commit), leaves the group so it rebalances now
        rather than after the session timeout, and stops."""
        if self._closed:
            return
        self._closed = True
        self._core.mark_processed()
        try:
            self._rt.call(self._core.close(), timeout=60)
        finally:
            self._rt.stop()
            if self._admin is not None:
                self._admin.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the consumer is closed")

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _group_metadata(core: ConsumerCore) -> ConsumerGroupMetadata:
    if not core.group:
        raise ConfigError("consumer_group_metadata() needs a group.id in the consumer config")
    with core.lock:
        return ConsumerGroupMetadata(core.group, core.generation, core.member_id)


def _check_record(message: Message) -> None:
    if message.error() is not None:
        raise ValueError(f"{message!r} is an event, not a record: it has no offset to commit or store")


def _timeout(timeout: float | None) -> float | None:
    """A confluent-kafka timeout: None or negative means the client's default."""
    return None if timeout is None or timeout < 0 else timeout


def _log_commit_error(log: logging.Logger, fut: concurrent.futures.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("asynchronous commit failed: %s", fut.exception())
