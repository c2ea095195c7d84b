"""The synchronous producer, shaped like confluent-kafka's.

::

    p = Producer({"bootstrap.servers": "127.0.0.1:9690"})
    p.produce("orders", b"value", key=b"customer-7", on_delivery=lambda err, msg: ...)
    p.poll(0)       # serve delivery callbacks
    p.flush(10)     # send everything, wait for acknowledgements
    p.close()

``produce`` never waits for the broker: it encodes the record, appends it to its partition's
batch and returns (it blocks only while ``buffer.memory`` is full, up to ``max.block.ms``).
A background thread batches (``linger.ms``, ``batch.size``), compresses, sends and retries.
Delivery callbacks ``on_delivery(err, msg)`` (``callback=`` also works) run in *your* thread,
from :meth:`poll` and :meth:`flush`, as in confluent-kafka; so do ``error_cb(KafkaError)``
(a broker failed, all brokers are down) and ``stats_cb(json_str)`` (every
``statistics.interval.ms``). ``value=None`` produces a tombstone (a null value).
:meth:`produce_future` returns a ``concurrent.futures.Future`` instead. Its done-callbacks
run on the SDK's background thread: keep them short and never call back into the producer
from them (``flush`` there would wait for the thread it blocks).

Guarantees with the defaults (acks=all, idempotence on): each record is appended exactly once
and in order per partition, across retries and reconnects.

**Transactions** (``transactional.id``; exactly once across partitions, and for
consume-transform-produce with the consumer's offsets), confluent-kafka's API::

    p = Producer({"bootstrap.servers": "...", "transactional.id": "orders-enricher-0"})
    p.init_transactions()              # once: fences older instances with the same id
    p.begin_transaction()
    p.produce("out", value, key=key)   # any topics and partitions
    p.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                  consumer.consumer_group_metadata())
    p.commit_transaction()             # or abort_transaction()

``commit_transaction`` sends everything first and fails if a record of the transaction could
not be delivered. On an error, ``kafka_error(e)`` (or ``e.args[0]``) tells what to do:
``txn_requires_abort()``: call ``abort_transaction()`` and begin again; ``retriable()``: call
the same method again; ``fatal()`` (fenced by a newer instance, or the transaction outlived
``transaction.timeout.ms``): close the producer and create a new one. ``produce`` outside a
transaction raises :class:`~tidelog.errors.TransactionStateError`.
"""

from __future__ import annotations

import concurrent.futures
import queue
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._config import PRODUCER_KEYS, parse
from ._events import StatsEnvelope, StatsTimer
from ._producer_core import Entry, HeadersArg, Payload, ProducerCore, delivered, idempotence_config, stage
from ._runtime import LoopThread
from ._txn import Transactions, bound, left, not_transactional
from .errors import KafkaError, TidelogError, TransactionTimeoutError
from .tracing import end_send, sending_traced, start_send
from .types import ConsumerGroupMetadata, Message, TopicPartition

if TYPE_CHECKING:
    from .admin import ClusterMetadata

DeliveryCallback = Callable[[TidelogError | None, Message], None]
_Delivery = tuple[str, int, list[Entry], int, TidelogError | None]


class Producer:
    """Publishes records to topics. Thread-safe. See the module docs."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        cfg = parse(config, PRODUCER_KEYS, "producer")
        idempotence_config(cfg, explicit="enable.idempotence" in config)
        self._cfg = cfg
        #: ("delivery", batch) and ("error", KafkaError) items, served by poll(). A Queue, not a
        #: SimpleQueue: CPython 3.11's SimpleQueue.get(timeout) can block forever when two
        #: threads wait on it (a poll thread beside flush): a waiter woken after its deadline
        #: that finds the item taken waits again with a negative, i.e. infinite, timeout.
        self._callbacks: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._error_cb: Callable[[KafkaError], None] | None = cfg["error_cb"]
        self._stats_cb: Callable[[str], None] | None = cfg["stats_cb"]
        self._stats = StatsTimer(cfg["statistics.interval.ms"] if self._stats_cb else 0)
        self._envelope = StatsEnvelope("producer", cfg["client.id"])
        errors = (lambda e: self._callbacks.put(("error", e))) if self._error_cb else None
        self._core = ProducerCore(cfg, self._on_batch_done, lambda: None, errors)
        self._admin: Any = None
        self._closed = False
        self._rt = LoopThread("tidelog-producer")
        self._rt.call(self._core.start())

    # ---- producing ----------------------------------------------------------------------

    def produce(
        self,
        topic: str,
        value: Payload | None = None,
        key: Payload | None = None,
        headers: HeadersArg = None,
        partition: int | None = None,
        on_delivery: DeliveryCallback | None = None,
        timestamp: int | None = None,
        callback: DeliveryCallback | None = None,
    ) -> None:
        """Queues a record (``value=None``: a tombstone). ``on_delivery(err, msg)`` (or
        ``callback``, confluent-kafka's other name for it) is called from a later :meth:`poll`
        or :meth:`flush` with ``err`` None and ``msg.offset()`` set, or with the error (a
        :class:`~tidelog.errors.TidelogError`, whose ``args[0]`` is its ``KafkaError``).

        Raises :class:`~tidelog.errors.UnknownTopicError` for a topic or partition that does not
        exist, :class:`~tidelog.errors.QueueFullError` (a ``BufferError``, as confluent-kafka's)
        if the buffer stayed full for ``max.block.ms``, :class:`~tidelog.errors.ClosedError`
        after :meth:`close`.
        """
        sink = on_delivery or callback
        fast = self._core.appender
        if (
            fast is not None
            and not headers
            and not sending_traced()
            and fast.append(topic, value, key, partition, timestamp, sink) is not None
        ):
            return
        self._traced(topic, value, key, headers, partition, timestamp, sink)

    def produce_future(
        self,
        topic: str,
        value: Payload | None = None,
        key: Payload | None = None,
        headers: HeadersArg = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> concurrent.futures.Future[Message]:
        """Like :meth:`produce`, but returns a future of the delivered :class:`Message`."""
        fut: concurrent.futures.Future[Message] = concurrent.futures.Future()
        fast = self._core.appender
        if (
            fast is not None
            and not headers
            and not sending_traced()
            and fast.append(topic, value, key, partition, timestamp, fut) is not None
        ):
            return fut
        self._traced(topic, value, key, headers, partition, timestamp, fut)
        return fut

    def _traced(
        self,
        topic: str,
        value: Payload | None,
        key: Payload | None,
        headers: HeadersArg,
        partition: int | None,
        timestamp: int | None,
        sink: Any,
    ) -> None:
        """Queues the record inside its ``send {topic}`` span when tracing is active
        (:mod:`tidelog.tracing`)."""
        span, headers = start_send(topic, value, headers, partition)
        if span is None:
            self._enqueue(topic, value, key, headers, partition, timestamp, sink)
            return
        try:
            p = self._enqueue(topic, value, key, headers, partition, timestamp, sink)
        except BaseException as e:
            end_send(span, None, e)
            raise
        end_send(span, p)

    def _enqueue(
        self,
        topic: str,
        value: Payload | None,
        key: Payload | None,
        headers: HeadersArg,
        partition: int | None,
        timestamp: int | None,
        sink: Any,
    ) -> int:
        """Queues the record; returns its partition."""
        core = self._core
        rec = stage(topic, value, key, headers, partition, timestamp, sink)
        count = core.cached_partitions(topic)
        if count is None:
            core.check_produce()  # before reading metadata: closed, or outside a transaction
            # fetch_partitions bounds itself (max.block.ms of retries, each request.timeout.ms).
            bound = (self._cfg["max.block.ms"] + 2 * self._cfg["request.timeout.ms"]) / 1000
            count = self._rt.call(core.fetch_partitions(topic), bound)
        deadline = None
        with core.space:
            # try_append checks again, under the lock, what check_produce checks.
            while (p := core.try_append(rec, count)) is None:
                if deadline is None:
                    deadline = time.monotonic() + self._cfg["max.block.ms"] / 1000
                left = deadline - time.monotonic()
                if left <= 0:
                    raise core.buffer_full()
                core.space.wait(left)
        return p

    # ---- deliveries ---------------------------------------------------------------------

    def _on_batch_done(
        self,
        topic: str,
        partition: int,
        entries: list[Entry | None],
        base: int,
        ts: int,
        err: TidelogError | None,
    ) -> None:
        """On the background thread: resolve futures now, queue callbacks for poll()."""
        wants_callback = False
        for i, e in enumerate(entries):
            if e is None:
                continue  # nobody waits on this record
            sink = e[4]
            if isinstance(sink, concurrent.futures.Future):
                if not sink.set_running_or_notify_cancel():
                    continue  # cancelled by the application
                if err is not None:
                    sink.set_exception(err)
                else:
                    sink.set_result(delivered(topic, partition, base, i, e))
            elif sink is not None:
                wants_callback = True
        if wants_callback:
            self._callbacks.put(("delivery", (topic, partition, entries, base, err)))

    def poll(self, timeout: float | None = 0) -> int:
        """Serves delivery callbacks, ``error_cb`` and ``stats_cb``, waiting up to ``timeout``
        seconds (None or negative: forever) for the first; returns how many were called."""
        served = 0
        if timeout is not None and timeout < 0:
            timeout = None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._stats.due():
                assert self._stats_cb is not None
                self._stats_cb(self._envelope.json(self._core.stats()))
                served += 1
            try:
                if served:
                    item = self._callbacks.get_nowait()
                else:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    left = self._stats.cap(left)
                    item = self._callbacks.get(timeout=left) if left != 0 else self._callbacks.get_nowait()
            except queue.Empty:
                if served or self._stats.next_at is None or (deadline and time.monotonic() >= deadline):
                    return served
                continue  # woke up for statistics
            served += self._serve(item)

    def _serve(self, item: tuple[str, Any]) -> int:
        kind, payload = item
        if kind == "error":
            if self._error_cb is not None:
                self._error_cb(payload)
            return 1
        delivery: _Delivery = payload
        topic, partition, entries, base, err = delivery
        n = 0
        for i, e in enumerate(entries):
            if e is None:
                continue
            cb = e[4]
            if cb is None or isinstance(cb, concurrent.futures.Future):
                continue
            cb(err, delivered(topic, partition, base, i, e))
            n += 1
        return n

    def flush(self, timeout: float | None = None) -> int:
        """Sends every queued record now (ignoring linger) and waits until all are acknowledged
        or failed, serving their callbacks. ``timeout`` None or negative: forever. Returns how
        many are still pending (0 = all done).

        Safe alongside a thread calling :meth:`poll`: it waits for the pending count, not for
        a signal another caller could take."""
        if timeout is not None and timeout < 0:
            timeout = None
        self._core.request_flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.poll(0)
            if self._core.pending == 0:
                self.poll(0)  # callbacks of the last batches
                return 0
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return self._core.pending
            # Short slices: wake for callbacks as they come, re-check the pending count.
            self.poll(0.02 if left is None else min(left, 0.02))

    def __len__(self) -> int:
        """Records produced and not yet acknowledged or failed."""
        return self._core.pending

    # ---- transactions -------------------------------------------------------------------

    def _transactions(self) -> Transactions:
        txn = self._core.txn
        if txn is None:
            raise not_transactional()
        return txn

    def _txn_call(self, coro: Any, timeout: float | None) -> None:
        try:
            self._rt.call(coro, bound(timeout, self._core.request_timeout))
        except TimeoutError as e:  # the safety net of LoopThread.call
            raise TransactionTimeoutError(f"no answer from the producer's engine: {e}") from None

    def init_transactions(self, timeout: float | None = None) -> None:
        """Registers ``transactional.id`` with the transaction coordinator and gets this
        instance's producer epoch: every older instance with the same id is fenced (its next
        call fails fatally) and a transaction it left open is aborted first. Call once,
        before the first transaction. ``timeout`` (seconds; None or negative: 30 s) bounds
        the retries while the coordinator is unavailable; a
        :class:`~tidelog.errors.TransactionTimeoutError` (retriable) may be followed by
        another call."""
        self._txn_call(self._transactions().init(timeout), timeout)

    def begin_transaction(self) -> None:
        """Begins a transaction: the records produced from now on, and the offsets sent, are
        committed or aborted together."""
        self._transactions().begin()

    def send_offsets_to_transaction(
        self,
        positions: list[TopicPartition],
        group_metadata: ConsumerGroupMetadata | str,
        timeout: float | None = None,
    ) -> None:
        """Adds a consumer group's positions (the next offset to read per partition, as
        ``Consumer.position()`` gives them) to the open transaction: they become the group's
        committed offsets if, and only if, the transaction commits. ``group_metadata`` is
        ``Consumer.consumer_group_metadata()``; the coordinator checks its generation, so a
        consumer that lost the partitions in a rebalance cannot commit them (the transaction
        then must be aborted). Offsets None or negative are left out."""
        txn = self._transactions()
        self._txn_call(txn.send_offsets(list(positions), group_metadata, timeout), timeout)

    def commit_transaction(self, timeout: float | None = None) -> None:
        """Sends every record of the transaction and waits for them (serving delivery
        callbacks, as :meth:`flush`), then commits: read_committed consumers see the records,
        the offsets sent are committed. Raises
        :class:`~tidelog.errors.TransactionAbortableError` if a record of the transaction
        failed (abort it), :class:`~tidelog.errors.TransactionTimeoutError` if ``timeout``
        (seconds; None or negative: until the records are delivered or fail, then 30 s for
        the coordinator) ran out (call it again, or abort)."""
        txn = self._transactions()
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        txn.start_end(commit=True)
        self._await_transaction(txn, True, deadline, timeout)
        remaining = left(deadline)
        self._txn_call(txn.finish(True, remaining), remaining)

    def abort_transaction(self, timeout: float | None = None) -> None:
        """Aborts the transaction: its records not sent yet fail at once (``_PURGE_QUEUE``),
        those in flight are waited for, then the coordinator aborts it: read_committed
        consumers never see its records, its offsets are not committed. A new transaction
        may then begin."""
        txn = self._transactions()
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        txn.start_end(commit=False)
        self._txn_call(txn.purge(), None)
        self._await_transaction(txn, False, deadline, timeout)
        remaining = left(deadline)
        self._txn_call(txn.finish(False, remaining), remaining)

    def _await_transaction(
        self, txn: Transactions, commit: bool, deadline: float | None, timeout: float | None
    ) -> None:
        """Waits until no record is pending (serving callbacks), the transaction fails (for
        a commit), or ``deadline``."""
        core = self._core
        core.request_flush()
        while True:
            self.poll(0)
            if core.pending == 0:
                self.poll(0)  # callbacks of the last batches
                return
            err = txn.must_stop_waiting(commit)
            if err is not None:
                raise err
            remaining = left(deadline)
            if remaining is not None and remaining <= 0:
                raise txn.undelivered("commit_transaction" if commit else "abort_transaction", timeout)
            self.poll(0.02 if remaining is None else min(remaining, 0.02))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> ClusterMetadata:
        """The cluster's brokers and topics (or one topic), as
        :meth:`tidelog.AdminClient.list_topics` returns them."""
        from .admin import AdminClient, internal_admin

        if self._admin is None:
            self._admin = internal_admin(self._cfg)
        admin: AdminClient = self._admin
        return admin.list_topics(topic, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flushes (up to ``timeout``), fails what is left with ClosedError, and stops."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout)
            self._rt.call(self._core.close(timeout=0), timeout=30)
            self.poll(0)  # callbacks of records failed by the close
        finally:
            self._rt.stop()
            if self._admin is not None:
                self._admin.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
