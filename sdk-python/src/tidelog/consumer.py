"""The synchronous consumer, shaped like confluent-kafka's.

::

    c = Consumer({"bootstrap.servers": "127.0.0.1:9690", "group.id": "billing",
                  "auto.offset.reset": "earliest"})
    c.subscribe(["orders"], on_assign=lambda c, ps: print("got", ps))
    while running:
        msg = c.poll(1.0)
        if msg is not None:
            handle(msg.key, msg.value)
    c.close()          # commits what was processed and leaves the group at once

A background thread runs the group session (heartbeats, rebalances, the leader's assignment)
and the fetch streams; ``poll`` hands out buffered records. Rebalance callbacks
``on_assign(consumer, partitions)`` / ``on_revoke(consumer, partitions)`` run in your thread,
from ``poll``/``consume``, after the change took effect.

**At-least-once auto-commit.** With ``enable.auto.commit`` (the default), the consumer commits
in the background, every ``auto.commit.interval.ms`` and when partitions are revoked, the
positions of records returned by *earlier* polls: calling ``poll`` again says you are done with
what the previous one returned. A crash therefore redelivers at most the records in progress,
never skips one. ``commit()`` commits everything returned so far, at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ._config import CONSUMER_KEYS, parse
from ._consumer_core import TP, ConsumerCore
from ._runtime import LoopThread
from .types import Message, TopicPartition

log = logging.getLogger("tidelog.consumer")

RebalanceCallback = Callable[["Consumer", list[TopicPartition]], None]


class Consumer:
    """Reads records from topics, as a member of a consumer group (:meth:`subscribe`) or from
    partitions chosen by the application (:meth:`assign`). Not thread-safe: use one thread."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        cfg = parse(config, CONSUMER_KEYS, "consumer")
        self._notes: deque[tuple[str, list[TopicPartition]]] = deque()
        self._core = ConsumerCore(cfg, self._on_change)
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._closed = False
        self._rt = LoopThread("tidelog-consumer")
        self._rt.call(self._core.start())

    def _on_change(self, kind: str, partitions: list[TopicPartition]) -> None:
        with self._core.lock:
            self._notes.append((kind, partitions))
            self._core.data.notify_all()

    # ---- assignment ---------------------------------------------------------------------

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        """Joins ``group.id`` for ``topics``; partitions are assigned by the group."""
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._rt.call(self._core.subscribe(list(topics)))

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Reads exactly these partitions (no group membership), each from its ``offset`` if
        given, else from the group's committed offset, else per ``auto.offset.reset``."""
        self._rt.call(self._core.assign_manual(list(partitions)))

    def assignment(self) -> list[TopicPartition]:
        with self._core.lock:
            return [TopicPartition(t, p) for t, p in sorted(self._core.assigned)]

    # ---- reading ------------------------------------------------------------------------

    def poll(self, timeout: float | None = None) -> Message | None:
        """The next record, waiting up to ``timeout`` seconds (None: forever); None if none came.
        Raises a fatal error (e.g. the topic was deleted) once, when it happens."""
        msgs = self._consume(1, timeout)
        return msgs[0] if msgs else None

    def consume(self, num_messages: int = 1, timeout: float | None = None) -> list[Message]:
        """Up to ``num_messages`` records, waiting up to ``timeout`` seconds for the first."""
        if num_messages < 1:
            raise ValueError("num_messages must be at least 1")
        return self._consume(num_messages, timeout)

    def _consume(self, n: int, timeout: float | None) -> list[Message]:
        self._check_open()
        core = self._core
        core.mark_processed()
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
                core.data.wait(left)

    def _serve_notes(self) -> None:
        while True:
            with self._core.lock:
                if not self._notes:
                    return
                kind, partitions = self._notes.popleft()
            cb = self._on_assign if kind == "assign" else self._on_revoke
            if cb is not None:
                cb(self, partitions)

    # ---- positions and commits ----------------------------------------------------------

    def commit(
        self,
        message: Message | None = None,
        offsets: list[TopicPartition] | None = None,
        asynchronous: bool = False,
    ) -> list[TopicPartition] | None:
        """Commits the position after ``message``, the given ``offsets`` (next offset to read),
        or by default every record returned so far. Waits for the broker unless
        ``asynchronous`` (then errors are only logged). Raises
        :class:`~tidelog.errors.IllegalGenerationError` if a rebalance took the partitions."""
        self._check_open()
        if message is not None:
            todo: dict[TP, int] = {(message.topic, message.partition): message.offset + 1}
        elif offsets is not None:
            todo = {(tp.topic, tp.partition): tp.offset for tp in offsets if tp.offset is not None}
        else:
            todo = self._core.current_offsets()
        if asynchronous:
            fut = asyncio.run_coroutine_threadsafe(self._core.commit_positions(todo), self._rt.loop)
            fut.add_done_callback(_log_commit_error)
            return None
        self._rt.call(self._core.commit_positions(todo))
        return [TopicPartition(t, p, o) for (t, p), o in sorted(todo.items())]

    def committed(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        """The group's committed offsets (``offset`` None where nothing was committed)."""
        tps = [(tp.topic, tp.partition) for tp in partitions]
        got = self._rt.call(self._core.fetch_committed(tps), timeout)
        return [TopicPartition(t, p, got.get((t, p))) for t, p in tps]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The offset of the next record poll will return, per partition (None if unknown)."""
        with self._core.lock:
            return [
                TopicPartition(tp.topic, tp.partition, self._core.positions.get((tp.topic, tp.partition)))
                for tp in partitions
            ]

    def seek(self, partition: TopicPartition) -> None:
        """Continues reading ``partition`` from ``partition.offset``."""
        if partition.offset is None:
            raise ValueError("seek needs a TopicPartition with an offset")
        self._rt.call(self._core.seek((partition.topic, partition.partition), partition.offset))

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stops fetching these partitions (until :meth:`resume` or a rebalance)."""
        self._rt.call(self._core.set_paused([(tp.topic, tp.partition) for tp in partitions], True))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._rt.call(self._core.set_paused([(tp.topic, tp.partition) for tp in partitions], False))

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

    def _check_open(self) -> None:
        if self._closed:
            from .errors import ClosedError

            raise ClosedError("the consumer is closed")

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log_commit_error(fut: concurrent.futures.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("asynchronous commit failed: %s", fut.exception())
