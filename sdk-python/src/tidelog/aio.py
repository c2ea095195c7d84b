"""asyncio clients on ``grpc.aio``: :class:`AIOProducer` and :class:`AIOConsumer`.

The same engines as the synchronous clients, run on *your* event loop (no extra thread)::

    async with AIOProducer({"bootstrap.servers": "127.0.0.1:9690"}) as p:
        msg = await p.send_and_wait("orders", b"v", key=b"k")      # delivered Message
        fut = await p.send("orders", b"w")                         # asyncio.Future[Message]

    async with AIOConsumer({"bootstrap.servers": "127.0.0.1:9690", "group.id": "g"}) as c:
        await c.subscribe(["orders"])
        async for msg in c:
            ...

``send`` returns once the record is queued (it awaits only while ``buffer.memory`` is full);
the future resolves when the broker acknowledged it; ``value=None`` is a tombstone. Rebalance
callbacks may be plain functions or coroutine functions; they run on the loop after the change
took effect. ``error_cb`` and ``stats_cb`` (config keys, as for the synchronous clients) run on
the loop too (an exception they raise is logged).

Transactions (``transactional.id``), as :class:`tidelog.Producer`'s, awaited::

    async with AIOProducer({"bootstrap.servers": "...", "transactional.id": "app-0"}) as p:
        await p.init_transactions()
        await p.begin_transaction()
        await p.send("out", b"v")
        await p.send_offsets_to_transaction(positions, consumer.consumer_group_metadata())
        await p.commit_transaction()     # or abort_transaction()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from ._config import CONSUMER_KEYS, PRODUCER_KEYS, parse
from ._consumer_core import TP, ConsumerCore
from ._events import ErrorSink, StatsEnvelope, client_logger, safe_call
from ._producer_core import Entry, HeadersArg, Payload, ProducerCore, delivered, idempotence_config, stage
from ._txn import Transactions, left, not_transactional
from .consumer import _group_metadata
from .errors import ClosedError, KafkaError, TidelogError
from .tracing import end_send, sending_traced, start_send
from .types import ConsumerGroupMetadata, Message, TopicPartition

__all__ = ["AIOConsumer", "AIOProducer"]


def _error_sink(cfg: dict[str, Any], log: logging.Logger) -> ErrorSink | None:
    """``error_cb``, called on the loop (the engines report from it)."""
    cb = cfg["error_cb"]
    if cb is None:
        return None

    def sink(err: KafkaError) -> None:
        safe_call(log, "error_cb", cb, err)

    return sink


def _start_stats(
    cfg: dict[str, Any], kind: str, stats: Callable[[], dict[str, Any]], log: logging.Logger
) -> asyncio.Task[None] | None:
    """A loop task calling ``stats_cb`` every ``statistics.interval.ms`` (None when off)."""
    cb, interval = cfg["stats_cb"], cfg["statistics.interval.ms"] / 1000
    if cb is None or interval <= 0:
        return None
    envelope = StatsEnvelope(kind, cfg["client.id"])

    async def run() -> None:
        while True:
            await asyncio.sleep(interval)
            safe_call(log, "stats_cb", cb, envelope.json(stats()))

    return asyncio.get_running_loop().create_task(run())


class AIOProducer:
    """asyncio producer; see the module docs and :class:`tidelog.Producer` for the semantics."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        cfg = parse(config, PRODUCER_KEYS, "producer")
        idempotence_config(cfg, explicit="enable.idempotence" in config)
        self._cfg = cfg
        log = client_logger(cfg, "producer")
        self._core = ProducerCore(cfg, self._on_batch_done, self._on_idle, _error_sink(cfg, log))
        self._idle: asyncio.Event | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._started = False

    async def start(self) -> None:
        """Connects (called by ``async with`` and by the first ``send``)."""
        if self._started:
            return
        self._started = True
        self._idle = asyncio.Event()
        await self._core.start()
        self._stats_task = _start_stats(self._cfg, "producer", self._core.stats, self._core.log)

    async def send(
        self,
        topic: str,
        value: Payload | None = None,
        key: Payload | None = None,
        headers: HeadersArg = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> asyncio.Future[Message]:
        """Queues a record; returns a future of the delivered :class:`Message`. When tracing
        is active (:mod:`tidelog.tracing`), a ``send {topic}`` span covers this call."""
        fast = self._core.appender
        if fast is not None and self._started and not headers and not sending_traced():
            # The compiled path (tidelog._accel): one call, or None and the Python path below.
            fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            if fast.append(topic, value, key, partition, timestamp, fut) is not None:
                if self._idle is not None:
                    self._idle.clear()
                return fut
        span, headers = start_send(topic, value, headers, partition)
        if span is None:
            return (await self._send(topic, value, key, headers, partition, timestamp))[0]
        try:
            fut, p = await self._send(topic, value, key, headers, partition, timestamp)
        except BaseException as e:
            end_send(span, None, e)
            raise
        end_send(span, p)
        return fut

    async def _send(
        self,
        topic: str,
        value: Payload | None,
        key: Payload | None,
        headers: HeadersArg,
        partition: int | None,
        timestamp: int | None,
    ) -> tuple[asyncio.Future[Message], int]:
        await self.start()
        core = self._core
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        rec = stage(topic, value, key, headers, partition, timestamp, fut)
        count = core.cached_partitions(topic)
        if count is None:
            core.check_produce()  # before reading metadata: closed, or outside a transaction
            count = await core.fetch_partitions(topic)
        # try_append checks again, under the lock, what check_produce checks.
        deadline = time.monotonic() + self._cfg["max.block.ms"] / 1000
        assert core.space_event is not None
        while True:
            with core.lock:
                if (p := core.try_append(rec, count)) is not None:
                    break
                core.space_event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise core.buffer_full()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(core.space_event.wait(), left)
        if self._idle is not None:
            self._idle.clear()
        return fut, p

    produce = send

    async def send_and_wait(
        self,
        topic: str,
        value: Payload | None = None,
        key: Payload | None = None,
        headers: HeadersArg = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> Message:
        """Sends one record and waits for its acknowledgement."""
        return await (await self.send(topic, value, key, headers, partition, timestamp))

    def _on_batch_done(
        self,
        topic: str,
        partition: int,
        entries: list[Entry | None],
        base: int,
        ts: int,
        err: TidelogError | None,
    ) -> None:
        for i, e in enumerate(entries):
            if e is None:
                continue
            fut = e[4]
            if fut is None or fut.done():
                continue
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(delivered(topic, partition, base, i, e))

    def _on_idle(self) -> None:
        if self._idle is not None:
            self._idle.set()

    async def flush(self, timeout: float | None = None) -> int:
        """Sends everything queued now and waits for acknowledgements; returns how many
        records are still pending (0 = all done)."""
        if not self._started:
            return 0
        self._core.request_flush()
        assert self._idle is not None
        while self._core.pending:
            self._idle.clear()
            if not self._core.pending:
                break
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                break
        return self._core.pending

    # ---- transactions (see tidelog.Producer) ----------------------------------------------

    def _transactions(self) -> Transactions:
        txn = self._core.txn
        if txn is None:
            raise not_transactional()
        return txn

    async def init_transactions(self, timeout: float | None = None) -> None:
        """See :meth:`tidelog.Producer.init_transactions`."""
        txn = self._transactions()
        await self.start()
        await txn.init(timeout)

    async def begin_transaction(self) -> None:
        """See :meth:`tidelog.Producer.begin_transaction`."""
        self._transactions().begin()

    async def send_offsets_to_transaction(
        self,
        positions: list[TopicPartition],
        group_metadata: ConsumerGroupMetadata | str,
        timeout: float | None = None,
    ) -> None:
        """See :meth:`tidelog.Producer.send_offsets_to_transaction`."""
        await self._transactions().send_offsets(list(positions), group_metadata, timeout)

    async def commit_transaction(self, timeout: float | None = None) -> None:
        """See :meth:`tidelog.Producer.commit_transaction` (the records' futures resolve
        before it returns)."""
        txn = self._transactions()
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        txn.start_end(commit=True)
        await self._await_transaction(txn, True, deadline, timeout)
        await txn.finish(True, left(deadline))

    async def abort_transaction(self, timeout: float | None = None) -> None:
        """See :meth:`tidelog.Producer.abort_transaction` (records not sent yet fail with
        ``_PURGE_QUEUE``)."""
        txn = self._transactions()
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        txn.start_end(commit=False)
        await txn.purge()
        await self._await_transaction(txn, False, deadline, timeout)
        await txn.finish(False, left(deadline))

    async def _await_transaction(
        self, txn: Transactions, commit: bool, deadline: float | None, timeout: float | None
    ) -> None:
        """Waits until no record is pending, the transaction fails (for a commit), or
        ``deadline``."""
        core = self._core
        core.request_flush()
        assert self._idle is not None
        while core.pending:
            err = txn.must_stop_waiting(commit)
            if err is not None:
                raise err
            remaining = left(deadline)
            if remaining is not None and remaining <= 0:
                raise txn.undelivered("commit_transaction" if commit else "abort_transaction", timeout)
            self._idle.clear()
            if not core.pending:
                break
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 0.05 if remaining is None else min(remaining, 0.05))

    async def close(self, timeout: float | None = None) -> None:
        """Flushes (up to ``timeout``), fails what is left with ClosedError, and disconnects."""
        if not self._started:
            return
        await self.flush(timeout)
        await self._core.close(timeout=0)
        if self._stats_task is not None:
            self._stats_task.cancel()
        self._started = False

    async def __aenter__(self) -> AIOProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


Callback = Callable[["AIOConsumer", list[TopicPartition]], Any]


class AIOConsumer:
    """asyncio consumer: ``async for msg in consumer`` or ``await consumer.getone()``; see
    :class:`tidelog.Consumer` for assignment, commit and at-least-once semantics."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._cfg = parse(config, CONSUMER_KEYS, "consumer")
        log = client_logger(self._cfg, "consumer")
        self._core = ConsumerCore(self._cfg, self._on_change, _error_sink(self._cfg, log))
        self._stats_task: asyncio.Task[None] | None = None
        self._on_assign: Callback | None = None
        self._on_revoke: Callback | None = None
        self._started = False
        self._closed = False
        self._callbacks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self._core.start()
        self._stats_task = _start_stats(self._cfg, "consumer", self._core.stats, self._core.log)

    def _on_change(self, kind: str, partitions: list[TopicPartition]) -> None:
        cb = self._on_assign if kind == "assign" else self._on_revoke
        if cb is None:
            return
        try:
            result = cb(self, partitions)
        except Exception:  # the application's bug must not stop the group session
            self._core.log.exception("on_%s callback failed", kind)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._callbacks.add(task)
            task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._core.log.error("rebalance callback failed: %r", task.exception())

    async def subscribe(
        self, topics: list[str], on_assign: Callback | None = None, on_revoke: Callback | None = None
    ) -> None:
        await self.start()
        self._on_assign, self._on_revoke = on_assign, on_revoke
        await self._core.subscribe(list(topics))

    async def unsubscribe(self) -> None:
        """Leaves the group (revoking, with the commit of what was processed) and forgets the
        subscription."""
        self._core.mark_processed()
        await self._core.unsubscribe()

    async def assign(self, partitions: list[TopicPartition]) -> None:
        await self.start()
        await self._core.assign_manual(list(partitions))

    def store_offsets(
        self, message: Message | None = None, offsets: list[TopicPartition] | None = None
    ) -> None:
        """See :meth:`tidelog.Consumer.store_offsets` (needs ``enable.auto.offset.store=false``)."""
        if message is not None:
            self._core.store_offsets({(message.topic(), message.partition()): message.offset() + 1})
        elif offsets is not None:
            self._core.store_offsets(
                {(tp.topic, tp.partition): tp.offset for tp in offsets if tp.offset is not None}
            )

    async def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        """See :meth:`tidelog.Consumer.offsets_for_times`."""
        await self.start()
        return await self._core.offsets_for_times(list(partitions), timeout)

    async def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = None
    ) -> tuple[int, int]:
        """``(low, high)`` of a partition; see :meth:`tidelog.Consumer.get_watermark_offsets`."""
        await self.start()
        return await self._core.watermarks((partition.topic, partition.partition), timeout)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self._core.assigned)]

    def consumer_group_metadata(self) -> ConsumerGroupMetadata:
        """See :meth:`tidelog.Consumer.consumer_group_metadata`."""
        return _group_metadata(self._core)

    async def getmany(self, max_records: int = 500, timeout: float | None = None) -> list[Message]:
        """Up to ``max_records`` records, waiting up to ``timeout`` s for the first ([] if none)."""
        if self._closed:
            raise ClosedError("the consumer is closed")
        core = self._core
        core.mark_processed()
        deadline = None if timeout is None else time.monotonic() + timeout
        assert core.data_event is not None
        while True:
            with core.lock:
                msgs = core.take(max_records)
                if msgs:
                    return msgs
                core.data_event.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            try:
                await asyncio.wait_for(core.data_event.wait(), left)
            except (asyncio.TimeoutError, TimeoutError):
                return []

    async def getone(self, timeout: float | None = None) -> Message | None:
        msgs = await self.getmany(1, timeout)
        return msgs[0] if msgs else None

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while not self._closed:
            for m in await self.getmany(500):
                yield m

    async def commit(self, offsets: list[TopicPartition] | None = None) -> None:
        """Commits ``offsets`` (next offset to read), or every record returned so far."""
        if offsets is not None:
            todo: dict[TP, int] = {
                (tp.topic, tp.partition): tp.offset for tp in offsets if tp.offset is not None
            }
        else:
            todo = self._core.current_offsets()
        await self._core.commit_positions(todo)

    async def committed(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        got = await self._core.fetch_committed(tps)
        return [TopicPartition(t, p, got.get((t, p))) for t, p in tps]

    def position(self, partition: TopicPartition) -> int | None:
        return self._core.positions.get((partition.topic, partition.partition))

    async def seek(self, partition: TopicPartition) -> None:
        if partition.offset is None:
            raise ValueError("seek needs a TopicPartition with an offset")
        await self._core.seek((partition.topic, partition.partition), partition.offset)

    async def pause(self, partitions: list[TopicPartition]) -> None:
        await self._core.set_paused([(tp.topic, tp.partition) for tp in partitions], True)

    async def resume(self, partitions: list[TopicPartition]) -> None:
        await self._core.set_paused([(tp.topic, tp.partition) for tp in partitions], False)

    async def close(self) -> None:
        """Commits what was processed, leaves the group, disconnects."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        self._core.mark_processed()
        await self._core.close()
        if self._stats_task is not None:
            self._stats_task.cancel()

    async def __aenter__(self) -> AIOConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
