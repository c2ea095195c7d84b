"""The producer engine shared by :class:`tidelog.Producer` and :class:`tidelog.aio.AIOProducer`.

It has two halves:

- the **accumulator** (thread-safe, called by ``produce`` from any thread): encodes each
  record once, appends it to its partition's open batch, and seals a batch when it reaches
  ``batch.size`` (or, in the sender, when ``linger.ms`` expires). Sealing joins the encoded
  records, compresses them, and assigns the batch's idempotence sequence numbers. With the
  compiled extension, ``produce()`` of a common record is one call into
  ``tidelog._native.Appender``, which does the same steps on the same objects under the same
  lock (``appender``; the open batch and the counts are then compiled types too);
- the **sender** (an asyncio task on the engine's loop): owns one Produce stream per broker,
  sends at most ``max.in.flight`` sealed batches per partition, completes deliveries from
  responses, and on failure resends the *same* batches with the *same* sequences, in order.

Routing, the same as the Rust SDK's sender: the sender learns the cluster's brokers from the
bootstrap broker (``DescribeCluster``; a single node keeps using the bootstrap address, since
the address it advertises may not be reachable from here). Each partition's batches go to its
leader, learnt from NOT_LEADER answers (which carry the leader's address), or to a fallback
broker while no leader is known (:class:`_Routes`). A partition moves to a new broker only
once nothing is in flight to the old one, so no two brokers ever see one partition's sequence
interleaved. Opening a stream and writing to it are bounded by ``request.timeout.ms``, so a
stalled broker (SIGSTOP, overload) cannot hold up the partitions routed elsewhere.

Failure handling (per partition; the broker answers one partition's requests in order), the
same rules as the Rust SDK's sender:

- a broker's stream lost or a response from it overdue past ``request.timeout.ms``: the
  in-flight batches sent there go back to the front of their queues and are resent, to the new
  leader if it moved; the broker answers a batch it already stored with its original offset
  (no duplicates);
- a response overdue past ``leader.probe.ms``: the other brokers are asked who leads the
  partition (:mod:`tidelog._leader_probe`); once one names another broker, the silent one is
  treated as lost (above) and the partition goes to the new leader;
- retriable error on a batch (not leader, shutting down, storage error; in a cluster also an
  unknown topic or partition, which a broker's metadata may not show *yet*, as in Kafka): it
  and the batches behind it are resent after a backoff (the later ones were refused as out of
  order; their responses are ignored). Except a NOT_LEADER naming another broker as the leader:
  news, not trouble, so the batches go there at once (Kafka's clients since KIP-951); once in
  a row only, so two brokers naming each other mid-election wait the backoff. The refusal is
  logged at WARNING once per episode and kept until a batch is acknowledged, so a delivery
  timeout or a full buffer names it (a full disk reads as such, not as a slow broker);
- BATCH_TOO_LARGE (the topic's limit was lowered after the producer read it): the batch is
  resent in two parts under its own sequence numbers (``_split``, Kafka's KIP-126) and the
  topic's metadata is read again; only a single record over the limit fails;
- fatal error on a batch: its records fail; the batches behind it take over its sequence
  numbers (the broker never stored it) and are resent;
- a sealed batch never acknowledged within ``delivery.timeout.ms`` fails. If it was sent and
  may be stored, the sequence is ambiguous: the producer fails everything and closes.

Transactions (``transactional.id``; :mod:`tidelog._txn`): every batch is sent with
``transactional`` set, and only once the coordinator added its partition to the open
transaction (``txn.sendable``); the sender starts those calls (``txn.start_adding``) before
each pass. The producer id and epoch come from ``init_transactions``, not ``InitProducer``.

Invariants: within a partition, ``in_flight`` then ``ready`` are in sequence order with no
gaps, and every batch in ``in_flight`` went to one broker (``sent_to``); every queued record
holds its bytes of ``buffer.memory`` until it completes; deliveries are completed outside the
lock.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from . import _wire
from ._accel import native
from ._channel import aio_channel
from ._config import TRANSPORT, target
from ._events import ErrorSink, Reporter, broker_stats, client_logger
from ._leader_probe import probe
from ._routes import _Routes
from ._staging import (
    RECORD_OVERHEAD,
    Counts,
    Entry,
    HeadersArg,
    OpenBatch,
    Payload,
    Staged,
    check_partition,
    delivered,
    idempotence_config,
    stage,
)
from ._txn import Transactions
from ._wire import Compression
from .errors import (
    ClosedError,
    DeliveryTimeoutError,
    ErrorCode,
    FatalError,
    QueueFullError,
    RetriableError,
    TidelogError,
    from_code,
    from_rpc_error,
    is_retriable_code,
)
from .partitioner import partition_for_key
from .v1 import admin_service_pb2, admin_service_pb2_grpc, records_service_pb2, records_service_pb2_grpc

_MAX_BACKOFF = 1.0
#: The backoff's cap while a partition looks for its leader (stream lost, NOT_LEADER, a probe's
#: move): a new leader is found within this of its election.
_LEADER_BACKOFF = 0.25

_SEQ_MODULUS = 1 << 31  # sequences wrap past i32::MAX (tidelog_proto::sequence)
_ACKS = {"all": 3, "leader": 2, "none": 1}
_WAKE = ("wake",)

# One request to send: (broker, (topic, partition), request id, serialized ProduceRequest).
Request = tuple[str, tuple[str, int], int, bytes]
# Called once per completed batch with a sink: (topic, partition, entries, base_offset,
# timestamp_ms, error); an entry is None for a record without a sink.
DeliverHook = Callable[[str, int, list[Entry | None], int, int, TidelogError | None], None]


def _code_name(code: int) -> str:
    """An error code's name (``STORAGE_ERROR``), or its number if this SDK does not know it."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"error code {code}"


class _Batch:
    __slots__ = (
        "attempts",
        "base_seq",
        "count",
        "created",
        "entries",
        "memory",
        "payload",
        "request_id",
        "sent_at",
        "sinks",
    )

    def __init__(
        self,
        payload: bytes,
        entries: list[Entry | None],
        memory: int,
        base_seq: int,
        created: float,
        sinks: int,
    ) -> None:
        self.payload = payload
        #: One per record, in order; None for a record without a sink.
        self.entries = entries
        #: Entries with a sink: a batch without any completes without the delivery hook.
        self.sinks = sinks
        self.count = len(entries)
        self.memory = memory
        self.base_seq = base_seq
        self.created = created
        self.request_id = 0
        self.sent_at = 0.0
        self.attempts = 0


class _Queue:
    """One partition: the open batch, sealed batches ready to send, and batches in flight."""

    __slots__ = ("in_flight", "last_error", "next_seq", "open", "ready", "redirected", "retry_at", "sent_to")

    def __init__(self) -> None:
        #: The batch being filled (``OpenBatch``: compiled or pure Python, one interface).
        self.open = OpenBatch()
        self.ready: deque[_Batch] = deque()
        self.in_flight: deque[_Batch] = deque()
        self.next_seq = 0
        self.retry_at = 0.0
        #: The broker the batches in ``in_flight`` were sent to ("": none sent yet).
        self.sent_to = ""
        #: Resent at once to a leader a NOT_LEADER named, and not answered since: the next
        #: refusal waits the backoff.
        self.redirected = False
        #: The broker's last retriable refusal of these batches (code and message), until one
        #: is acknowledged: what a delivery timeout or a full buffer reports.
        self.last_error = ""

    def rewind(self) -> list[int]:
        """Puts every in-flight batch back at the front of ``ready``; returns their request ids."""
        ids = [b.request_id for b in self.in_flight]
        self.ready.extendleft(reversed(self.in_flight))
        self.in_flight.clear()
        return ids

    def renumber_after_drop(self, dropped: _Batch, in_flight_after: bool) -> None:
        """``dropped`` was never stored: every *later* batch takes over its sequence numbers.

        Later means ``ready`` always, and ``in_flight`` only when the dropped batch was the
        first one in flight (a fatal response); a batch dropped from ``ready`` (expired) comes
        after everything in flight, whose sequences must not move (they may be stored).
        """
        later = (*self.in_flight, *self.ready) if in_flight_after else tuple(self.ready)
        for b in later:
            b.base_seq = (b.base_seq - dropped.count) % _SEQ_MODULUS
        self.next_seq = (self.next_seq - dropped.count) % _SEQ_MODULUS


class _Conn:
    """One Produce stream to one broker; a reader task posts its responses as events."""

    __slots__ = ("addr", "call", "in_flight", "reader")

    def __init__(self, addr: str, call: Any) -> None:
        self.addr = addr
        self.call = call
        #: Request id → partition, for requests whose response is still wanted.
        self.in_flight: dict[int, tuple[str, int]] = {}
        self.reader: asyncio.Task[None] | None = None


class ProducerCore:
    """See the module docs. ``deliver`` is called on the engine loop for every completed batch;
    ``errors`` receives what ``error_cb`` should see (:class:`~tidelog._events.Reporter`)."""

    def __init__(
        self,
        cfg: dict[str, Any],
        deliver: DeliverHook,
        on_idle: Callable[[], None],
        errors: ErrorSink | None = None,
    ) -> None:
        self.cfg = cfg
        self.log = client_logger(cfg, "producer")
        self._deliver = deliver
        self._on_idle = on_idle
        self.acks = _ACKS[cfg["acks"]]
        self.idempotent: bool = cfg["enable.idempotence"]
        self.codec = Compression.parse(cfg["compression.type"])
        self.batch_size: int = cfg["batch.size"]
        self.linger = cfg["linger.ms"] / 1000
        self.max_in_flight: int = cfg["max.in.flight.requests.per.connection"]
        self.delivery_timeout = cfg["delivery.timeout.ms"] / 1000
        self.request_timeout = cfg["request.timeout.ms"] / 1000
        self.leader_probe = cfg["leader.probe.ms"] / 1000
        self.retry_backoff: float = cfg["retry.backoff.ms"] / 1000
        self.buffer_memory: int = cfg["buffer.memory"]
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)  # buffer memory freed
        self._queues: dict[tuple[str, int], _Queue] = {}
        self._sticky: dict[str, int] = {}
        #: topic → (partition count, fetched at, largest batch). The largest batch is
        #: ``batch.size`` capped by the topic's max.batch.bytes less room for framing, as in the
        #: Rust SDK, so no batch is refused as too large. The native appender reads it too.
        self._partitions: dict[str, tuple[int, float, int]] = {}
        self.metadata_max_age = cfg["metadata.max.age.ms"] / 1000
        #: Buffer memory held and records not yet completed (``Counts``: compiled or pure
        #: Python, one interface; the compiled ``produce()`` path updates it directly).
        self.counts = Counts()
        self.closed = False
        self._flush_requested = False
        self._wake_scheduled = False
        self.producer_id = 0
        self.producer_epoch = 0
        self.fatal: TidelogError | None = None
        #: The transactional state (None without ``transactional.id``).
        self.txn: Transactions | None = (
            Transactions(self, cfg["transactional.id"], cfg["transaction.timeout.ms"])
            if cfg.get("transactional.id")
            else None
        )
        self.max_block = cfg["max.block.ms"] / 1000
        #: Known brokers (host:port), the bootstrap first; the sender adds the cluster's.
        self.brokers: list[str] = [target(cfg["bootstrap.servers"])]
        self.reporter = Reporter(self.log, errors, list(self.brokers))
        #: Broker id → address, once learnt (for statistics).
        self.broker_ids: dict[int, str] = {}
        #: Statistics: requests sent, responses, records and bytes acknowledged, records failed.
        self.counters = dict.fromkeys(("tx", "rx", "txmsgs", "txmsg_bytes", "txerrs", "throttle_ms"), 0)
        #: Quotas: broker → when (monotonic) its last throttle_time_ms ends (nothing is sent
        #: to it before), and its throttle times so far (count, sum, min, max; statistics).
        self._throttled_until: dict[str, float] = {}
        self._throttles: dict[str, list[int]] = {}
        self._discovered = False
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Set by start(), on the engine loop.
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._events: asyncio.Queue[tuple[Any, ...]] | None = None
        self.space_event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: ``produce()`` in one compiled call (``tidelog._native.Appender``, over this core's
        #: lock, queues and counters) for a record without headers on a non-transactional
        #: producer; None: the Python path only (:mod:`tidelog._accel`).
        self.appender: Any = (
            native.Appender(self, _Queue) if native is not None and self.txn is None else None
        )

    @property
    def pending(self) -> int:
        """Records queued or in flight, not yet completed."""
        return int(self.counts.pending)

    # ---- lifecycle (on the engine loop) -------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._events = asyncio.Queue()
        self.space_event = asyncio.Event()
        self._channel_to(self.brokers[0])  # connects now: the first send needs metadata
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, timeout: float | None) -> None:
        """Sends everything queued, waits for its acknowledgements (up to ``timeout``), then
        stops and disconnects; records still pending after that fail with :class:`ClosedError`."""
        with self.lock:
            self.closed = True
            self._flush_requested = True
        self.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        self._fail_all(ClosedError("the producer was closed before the record was acknowledged"))
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)

    def channel_to(self, addr: str) -> grpc.aio.Channel:
        """The channel to one broker (opened on first use, kept until close)."""
        return self._channel_to(addr)

    def _channel_to(self, addr: str) -> grpc.aio.Channel:
        """The channel to one broker (opened on first use, kept until close)."""
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = aio_channel(addr, self.cfg[TRANSPORT])
        return ch

    # ---- metadata -----------------------------------------------------------------------

    def cached_partitions(self, topic: str) -> int | None:
        """The topic's partition count if known and younger than metadata.max.age.ms."""
        got = self._partitions.get(topic)
        if got is None or time.monotonic() - got[1] > self.metadata_max_age:
            return None
        return got[0]

    async def fetch_partitions(self, topic: str) -> int:
        """The topic's partition count (cached until a send says it changed).

        Any replica answers. Retriable failures (a broker down, or one still catching up on
        the cluster's metadata, which answers NOT_LEADER) are retried on the next known broker
        with backoff for up to ``max.block.ms``, as Kafka's producer waits for metadata; an
        unknown topic is final.
        """
        deadline = time.monotonic() + self.max_block
        backoff = self.retry_backoff
        req = admin_service_pb2.DescribeTopicRequest(name=topic)
        attempt = 0
        while True:
            addr = self.brokers[attempt % len(self.brokers)]
            admin = admin_service_pb2_grpc.AdminServiceStub(self._channel_to(addr))
            try:
                resp = await admin.DescribeTopic(req, timeout=self.request_timeout)
                self.reporter.answered(addr)
                break
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e)
            if err.retriable:
                self.reporter.failed(addr, err, f"reading the metadata of {topic}")
            if not err.retriable or time.monotonic() + backoff >= deadline:
                raise err
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)
            attempt += 1
        n = int(resp.topic.partition_count)
        config = resp.topic.config
        topic_max = config.max_batch_bytes if config.HasField("max_batch_bytes") else 1 << 20
        self._partitions[topic] = (n, time.monotonic(), max(1, min(self.batch_size, topic_max * 9 // 10)))
        return n

    # ---- statistics -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """librdkafka-style producer statistics (the figures under the envelope)."""
        topics: dict[str, Any] = {}
        with self.lock:
            for (t, p), q in sorted(self._queues.items()):
                queued = q.open.count + sum(b.count for b in q.ready)
                parts = topics.setdefault(t, {"topic": t, "partitions": {}})["partitions"]
                parts[str(p)] = {
                    "partition": p,
                    "msgq_cnt": queued,
                    "xmit_msgq_cnt": sum(b.count for b in q.in_flight),
                    "next_seq": q.next_seq,
                }
            pending, memory = self.counts.pending, self.counts.memory_used
        brokers = broker_stats(self.reporter, self.broker_ids)
        for addr, b in brokers.items():
            cnt, total, lo, hi = self._throttles.get(addr, (0, 0, 0, 0))
            # librdkafka's per-broker throttle window (ms), over the client's lifetime here.
            b["throttle"] = {
                "cnt": cnt,
                "sum": total,
                "min": lo,
                "max": hi,
                "avg": total // cnt if cnt else 0,
            }
        return {
            "msg_cnt": pending,
            "msg_size": memory,
            "msg_size_max": self.buffer_memory,
            **self.counters,
            "brokers": brokers,
            "topics": topics,
        }

    # ---- accumulator (any thread) -------------------------------------------------------

    def choose_partition(self, topic: str, key: bytes | None, count: int) -> int:
        if key is not None:
            return partition_for_key(key, count)
        p = self._sticky.get(topic)
        if p is None or p >= count:
            p = self._sticky[topic] = random.randrange(count)
        return p

    def try_reserve(self, size: int) -> bool:
        """Takes ``size`` bytes of buffer memory if available (caller holds ``lock``)."""
        counts = self.counts
        if counts.memory_used + size <= self.buffer_memory or counts.memory_used == 0:
            counts.memory_used += size
            return True
        return False

    def try_append(self, rec: Staged, count: int) -> int | None:
        """Queues a staged record if buffer memory allows and returns its partition; None means
        the buffer is full (wait for ``space`` / ``space_event`` and call again). The caller
        holds ``lock``. Raises for a partition the topic does not have and for a closed
        producer."""
        if self.closed:
            raise self.fatal or ClosedError("the producer is closed")
        if self.txn is not None:
            self.txn.check_produce()
        if rec.partition is not None:
            check_partition(rec.topic, rec.partition, count)
        if not self.try_reserve(rec.size):
            return None
        key = rec.entry[0]
        p = rec.partition if rec.partition is not None else self.choose_partition(rec.topic, key, count)
        self._append(rec.topic, p, rec.encoded, rec.entry, rec.size)
        if self.txn is not None and self.txn.want((rec.topic, p)):
            self.wake()  # the sender adds the partition to the transaction
        return p

    def check_produce(self) -> None:
        """Raises if a record could not be queued now (closed; for a transactional producer,
        no transaction open): checked before a topic's metadata is read (any thread)."""
        with self.lock:
            if self.closed:
                raise self.fatal or ClosedError("the producer is closed")
            if self.txn is not None:
                self.txn.check_produce()

    def buffer_full(self) -> QueueFullError:
        refused = next(
            (f"{t}/{p}: {q.last_error}" for (t, p), q in list(self._queues.items()) if q.last_error), ""
        )
        why = f"the broker keeps refusing batches of {refused}" if refused else "is the broker reachable?"
        return QueueFullError(
            f"producer buffer full ({self.buffer_memory} bytes of unacknowledged records) for "
            f"max.block.ms; {why} (poll() or flush() to drain callbacks)"
        )

    def _append(self, topic: str, partition: int, encoded: bytes, entry: Entry, memory: int) -> None:
        """Queues one encoded record; the caller holds ``lock`` and reserved ``memory``."""
        q = self._queues.get((topic, partition))
        if q is None:
            q = self._queues[(topic, partition)] = _Queue()
        wake = False
        known = self._partitions.get(topic)
        limit = known[2] if known is not None else self.batch_size
        if q.open.count and q.open.size + len(encoded) > limit:
            self._seal(q)
            wake = True
            if entry[0] is None and self._sticky.get(topic) == partition:
                # Kafka's sticky partitioner: keyless records move on once a batch is full.
                self._sticky.pop(topic, None)
        if not q.open.count:
            wake = True  # a new linger deadline
        q.open.append(encoded, entry, memory, time.monotonic(), entry[4] is not None)
        self.counts.pending += 1
        if wake:
            self.wake()

    def request_flush(self) -> None:
        with self.lock:
            self._flush_requested = True
        self.wake()

    def wake(self) -> None:
        """Makes the sender look at the queues again (from any thread; coalesced)."""
        if self._wake_scheduled or self.loop is None or self._events is None:
            return
        self._wake_scheduled = True
        if threading.get_ident() == self._loop_thread:
            self._events.put_nowait(_WAKE)
        else:
            self.loop.call_soon_threadsafe(self._events.put_nowait, _WAKE)

    def reset_sequences(self) -> None:
        """A new producer epoch numbers every partition from 0 (caller holds ``lock``; the
        queues are empty: nothing is produced before ``init_transactions``)."""
        for q in self._queues.values():
            if not q.in_flight and not q.ready and not q.open.count:
                q.next_seq = 0

    def fail_queued(self, tps: set[tuple[str, int]] | None, err: TidelogError) -> None:
        """Fails the records of ``tps`` (None: every partition) that were never sent: the open
        batches and the sealed batches not sent yet (on the engine loop). Batches in flight,
        or sent and waiting for a retry, stay: the broker may have stored them. The dropped
        batches' sequence numbers are given back."""
        dropped: list[tuple[tuple[str, int], _Batch]] = []
        with self.lock:
            for tp, q in self._queues.items():
                if tps is not None and tp not in tps:
                    continue
                if q.open.count:
                    self._seal(q)
                while q.ready and q.ready[-1].attempts == 0:
                    b = q.ready.pop()
                    q.next_seq = b.base_seq
                    dropped.append((tp, b))
        self._complete_all([(tp, b, -1, -1, err) for tp, b in reversed(dropped)])

    def _seal(self, q: _Queue) -> None:
        raw, entries, memory, opened, sinks = q.open.take()
        payload = _wire.compress(self.codec, raw) if self.codec != Compression.NONE else raw
        q.ready.append(_Batch(payload, entries, memory, q.next_seq, opened, sinks))
        q.next_seq = (q.next_seq + len(entries)) % _SEQ_MODULUS

    # ---- sender (engine loop) -----------------------------------------------------------

    async def _run(self) -> None:
        assert self._events is not None
        routes = _Routes(self.brokers)
        conns: dict[str, _Conn] = {}
        backoff = self.retry_backoff
        next_id = 1
        # The earliest response deadline as of the last pass (responses since only move it later).
        request_deadline: float | None = None
        last_probe = 0.0
        probing: asyncio.Task[None] | None = None
        try:
            while True:
                with self.lock:
                    if self.closed and self.counts.pending == 0:
                        return
                if self.txn is not None:
                    self.txn.start_adding()
                if not self._discovered or self._needs_producer_id():
                    addr = routes.fallback_broker()
                    try:
                        await self._connect(routes)
                        self.reporter.answered(addr)
                    except TidelogError as e:
                        if not e.retriable:
                            self._fail_fatal(e)
                            return
                        self.reporter.failed(addr, e, "connecting")
                        routes.fallback += 1
                        self._complete_all(self._expire(time.monotonic()))
                        # No stream is open yet, so the only events are wake-ups (new
                        # batches): they must not shorten the backoff.
                        retry_at = time.monotonic() + backoff
                        while (left := retry_at - time.monotonic()) > 0:
                            await self._wait_event(left)
                        backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                now = time.monotonic()
                if request_deadline is not None and now >= request_deadline:
                    for addr in self._overdue(now):
                        overdue = RetriableError(
                            "no answer to a produce request within request.timeout.ms; resending",
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                        )
                        self.reporter.failed(addr, overdue, "producing")
                        self._lose(conns, routes, addr, backoff)
                        backoff = min(backoff * 2, _MAX_BACKOFF)
                requests, deadline, request_deadline, done = self._collect(routes, now, next_id)
                next_id += len(requests)
                self._complete_all(done)
                failed: set[str] = set()
                for addr, tp, request_id, req in requests:
                    if addr in failed:
                        continue  # its partitions were rewound when its stream failed
                    conn = conns.get(addr)
                    if conn is None:
                        conn = conns[addr] = self._open(addr)
                    if self.acks != _ACKS["none"]:
                        conn.in_flight[request_id] = tp
                    try:
                        # The first write waits for the stream to open; a broker that accepts
                        # connections but never answers must not hold up the other brokers.
                        await asyncio.wait_for(conn.call.write(req), self.request_timeout)
                        self.counters["tx"] += 1
                    except Exception as e:  # the call ended under us, or the broker stalled
                        lost = RetriableError(
                            f"produce stream lost ({e!r}); resending its batches", grpc.StatusCode.UNAVAILABLE
                        )
                        self.reporter.failed(addr, lost, "producing")
                        self._lose(conns, routes, addr, backoff)
                        failed.add(addr)
                        backoff = min(backoff * 2, _LEADER_BACKOFF)
                if failed:
                    continue  # the rewound batches' backoff is not among this pass's deadlines
                probe_at = self._probe_at(routes, last_probe)
                if probe_at is not None and probe_at <= now:
                    # One probe at a time; either way the next look is a quarter interval on.
                    last_probe = now
                    if probing is None or probing.done():
                        probing = asyncio.get_running_loop().create_task(self._probe(conns, now))
                    probe_at = now + self.leader_probe / 4
                wait = min(d for d in (deadline, request_deadline, probe_at, now + 3600) if d is not None)
                event = await self._wait_event(max(wait - time.monotonic(), 0))
                while event is not None:
                    backoff = self._on_event(event, conns, routes, backoff)
                    event = self._next_ready_event()
        finally:
            if probing is not None:
                probing.cancel()
            for conn in conns.values():
                self._drop_conn(conn)

    def _probe_at(self, routes: _Routes, last: float) -> float | None:
        """When to ask the other brokers who leads the partitions waiting longest: once the
        oldest request has waited ``leader.probe.ms``, then every quarter of it; ``None`` when
        there is no need (nothing in flight, probing off, a single broker)."""
        if self.leader_probe <= 0 or not routes.clustered or len(self.broker_ids) < 2:
            return None
        with self.lock:
            sent: list[float] = [q.in_flight[0].sent_at for q in self._queues.values() if q.in_flight]
        if not sent:
            return None
        return float(max(min(sent) + self.leader_probe, last + self.leader_probe / 4))

    async def _probe(self, conns: dict[str, _Conn], now: float) -> None:
        """Asks the other brokers who leads each partition waiting ``leader.probe.ms`` by
        ``now``; a partition led elsewhere becomes a ``moved`` event."""
        with self.lock:
            stalled = [
                (q.sent_to, tp)
                for tp, q in self._queues.items()
                if q.in_flight and now - q.in_flight[0].sent_at >= self.leader_probe
            ]
        streams = {addr: conns[addr] for addr, _ in stalled if addr in conns}
        assert self._events is not None
        for waits_on, tp, leader in await probe(self._channel_to, dict(self.broker_ids), stalled):
            if waits_on in streams:
                self._events.put_nowait(("moved", streams[waits_on], tp, leader))

    def _on_event(
        self, event: tuple[Any, ...], conns: dict[str, _Conn], routes: _Routes, backoff: float
    ) -> float:
        """Handles a response or a lost stream; returns the backoff for the next retry."""
        kind = event[0]
        if kind not in ("resp", "lost", "moved"):
            return backoff  # a wake-up: the next pass over the queues does the work
        conn: _Conn = event[1]
        if conns.get(conn.addr) is not conn:
            return backoff  # from a stream already replaced
        if kind == "moved":
            tp, leader = event[2], event[3]
            with self.lock:
                still_there = self._queues[tp].sent_to == conn.addr
            if still_there:
                self.log.info(
                    "%s/%d: its leader moved while %s was silent; resending to %s",
                    tp[0],
                    tp[1],
                    conn.addr,
                    leader,
                )
                self._lose(conns, routes, conn.addr, 0.0)
                routes.not_leader(tp, leader)
            return backoff
        if kind == "resp":
            self.counters["rx"] += 1
            self.reporter.answered(conn.addr)
            return self._handle_response(conn, event[2], routes, backoff)
        lost = RetriableError(
            f"produce stream lost ({event[2]}); resending its batches", grpc.StatusCode.UNAVAILABLE
        )
        self.reporter.failed(conn.addr, lost, "producing")
        self._lose(conns, routes, conn.addr, backoff)
        return min(backoff * 2, _LEADER_BACKOFF)

    def _needs_producer_id(self) -> bool:
        """An idempotent producer gets its id from InitProducer (a transactional one from
        init_transactions)."""
        return self.idempotent and self.txn is None and self.producer_id == 0

    async def _connect(self, routes: _Routes) -> None:
        """Learns the cluster's brokers (once), then gets a producer id if idempotent."""
        if not self._discovered:
            admin = admin_service_pb2_grpc.AdminServiceStub(self._channel_to(self.brokers[0]))
            try:
                resp = await admin.DescribeCluster(
                    admin_service_pb2.DescribeClusterRequest(), timeout=self.request_timeout
                )
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise from_rpc_error(e) from None
                resp = admin_service_pb2.DescribeClusterResponse()  # older than clusters: one node
            # A single node keeps the bootstrap address: the one it advertises may not be
            # reachable from here (a proxy, NAT).
            self.broker_ids = {b.id: target(b.address) for b in resp.brokers}
            if len(resp.brokers) > 1:
                for b in resp.brokers:
                    addr = target(b.address)
                    if addr not in self.brokers:
                        self.brokers.append(addr)
            self._discovered = True
        if self._needs_producer_id():
            records = records_service_pb2_grpc.RecordServiceStub(self._channel_to(routes.fallback_broker()))
            try:
                r = await records.InitProducer(
                    records_service_pb2.InitProducerRequest(), timeout=self.request_timeout
                )
            except grpc.aio.AioRpcError as e:
                raise from_rpc_error(e) from None
            self.producer_id, self.producer_epoch = r.producer_id, r.producer_epoch

    async def _wait_event(self, timeout: float) -> tuple[Any, ...] | None:
        assert self._events is not None
        try:
            event = await asyncio.wait_for(self._events.get(), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            return None
        if event is _WAKE:
            self._wake_scheduled = False
        return event

    def _next_ready_event(self) -> tuple[Any, ...] | None:
        assert self._events is not None
        if self._events.empty():
            return None
        event = self._events.get_nowait()
        if event is _WAKE:
            self._wake_scheduled = False
        return event

    def _open(self, addr: str) -> _Conn:
        produce = self._channel_to(addr).stream_stream(
            "/tidelog.v1.RecordService/Produce",
            request_serializer=None,  # requests are pre-serialized bytes (see _wire)
            response_deserializer=records_service_pb2.ProduceResponse.FromString,
        )
        conn = _Conn(addr, produce())
        conn.reader = asyncio.get_running_loop().create_task(self._read(conn))
        return conn

    async def _read(self, conn: _Conn) -> None:
        assert self._events is not None
        try:
            while True:
                r = await conn.call.read()
                if r is grpc.aio.EOF:
                    self._events.put_nowait(("lost", conn, "broker closed the stream"))
                    return
                self._events.put_nowait(("resp", conn, r))
        except grpc.aio.AioRpcError as e:
            self._events.put_nowait(("lost", conn, f"{e.code().name}: {e.details()}"))

    def _drop_conn(self, conn: _Conn) -> None:
        if conn.reader is not None:
            conn.reader.cancel()
        conn.call.cancel()

    def _lose(self, conns: dict[str, _Conn], routes: _Routes, addr: str, backoff: float) -> None:
        """``addr``'s stream is gone: the batches in flight there go back to their queues (to
        be resent after ``backoff``), and the partitions it led look for their leader again."""
        conn = conns.pop(addr, None)
        if conn is not None:
            self._drop_conn(conn)
        retry_at = time.monotonic() + backoff
        with self.lock:
            for q in self._queues.values():
                if q.sent_to == addr and q.in_flight:
                    q.rewind()
                    q.retry_at = retry_at
        routes.broker_lost(addr)

    def _overdue(self, now: float) -> set[str]:
        """The brokers with a batch unanswered for ``request.timeout.ms``."""
        with self.lock:
            return {
                q.sent_to
                for q in self._queues.values()
                if q.in_flight and q.in_flight[0].sent_at + self.request_timeout <= now
            }

    def _collect(
        self, routes: _Routes, now: float, next_id: int
    ) -> tuple[list[Request], float | None, float | None, list[Any]]:
        """Seals lingered batches, fails expired ones, and takes the batches that may be sent,
        each with the broker it goes to, in one pass over the queues. Also returns the next
        linger or backoff deadline and the earliest response deadline."""
        done = self._expire(now)
        out: list[Request] = []
        deadline: float | None = None
        request_deadline: float | None = None
        txn = self.txn
        with self.lock:
            flush = self._flush_requested or self.closed
            self._flush_requested = False
            for tp, q in self._queues.items():
                if q.open.count:
                    due = q.open.opened + self.linger
                    if flush or due <= now:
                        self._seal(q)
                    else:
                        deadline = due if deadline is None else min(deadline, due)
                if q.in_flight:
                    due = q.in_flight[0].sent_at + self.request_timeout
                    request_deadline = due if request_deadline is None else min(request_deadline, due)
                if txn is not None and not txn.sendable(tp):
                    continue  # not in the transaction yet: the sender is woken once it is
                if q.retry_at:
                    if q.retry_at > now:
                        deadline = q.retry_at if deadline is None else min(deadline, q.retry_at)
                        continue
                    q.retry_at = 0.0
                to = routes.target(tp)
                if q.in_flight and q.sent_to != to:
                    continue  # a new broker only once nothing is in flight to the old one
                throttled = self._throttled_until.get(to, 0.0)
                if throttled > now:
                    if q.ready:  # the broker's quota: nothing more to it before then
                        deadline = throttled if deadline is None else min(deadline, throttled)
                    continue
                while q.ready and len(q.in_flight) < self.max_in_flight:
                    b = q.ready.popleft()
                    b.request_id = next_id + len(out)
                    b.sent_at = now
                    b.attempts += 1
                    out.append((to, tp, b.request_id, self._request(tp, b)))
                    q.sent_to = to
                    if self.acks == _ACKS["none"]:
                        done.append((tp, b, -1, -1, None))
                    else:
                        q.in_flight.append(b)
                        if request_deadline is None:
                            request_deadline = now + self.request_timeout
        return out, deadline, request_deadline, done

    def _request(self, tp: tuple[str, int], b: _Batch) -> bytes:
        header = records_service_pb2.ProduceRequest(
            request_id=b.request_id,
            topic=tp[0],
            partition=tp[1],
            acks=self.acks,  # type: ignore[arg-type]
            compression=int(self.codec),  # type: ignore[arg-type]
            record_count=b.count,
            producer_id=self.producer_id if self.idempotent else 0,
            producer_epoch=self.producer_epoch if self.idempotent else 0,
            base_sequence=b.base_seq if self.idempotent else 0,
            transactional=self.txn is not None,
        )
        return _wire.produce_request_bytes(header, b.payload, self.codec)

    def _handle_response(
        self, conn: _Conn, r: records_service_pb2.ProduceResponse, routes: _Routes, backoff: float
    ) -> float:
        """Handles one response; returns the backoff for the next retry: doubled after a
        retriable error, reset by an answer, unchanged by a response no longer wanted (a
        stale refusal must not reset the backoff of a failover in progress)."""
        if r.throttle_time_ms > 0:
            self._throttle(conn.addr, int(r.throttle_time_ms))
        tp = conn.in_flight.pop(r.request_id, None)
        if tp is None:
            return backoff  # a response to a batch already rewound: it will be resent
        code = int(r.error_code)
        # A refusal naming another broker as the leader: resend there at once.
        named = routes.not_leader(tp, r.leader_address) if code == ErrorCode.NOT_LEADER else ""
        redirect = named not in ("", conn.addr)
        # In a cluster a just-created topic reaches each broker's metadata a moment apart (as
        # in Kafka, where UNKNOWN_TOPIC_OR_PARTITION is retriable): retry until the delivery
        # timeout. On a single node the broker's answer is final.
        unknown = code in (ErrorCode.UNKNOWN_TOPIC, ErrorCode.UNKNOWN_PARTITION)
        retriable = is_retriable_code(code) or (unknown and routes.clustered)
        done: list[Any] = []
        next_backoff = self.retry_backoff
        with self.lock:
            q = self._queues[tp]
            if not q.in_flight or q.in_flight[0].request_id != r.request_id:
                self.log.warning("response %d out of order; ignoring", r.request_id)
                return backoff
            if code == ErrorCode.NONE:
                q.redirected = False
                q.last_error = ""
                done.append((tp, q.in_flight.popleft(), r.base_offset, r.append_time_ms, None))
            elif retriable:
                for rid in q.rewind():
                    conn.in_flight.pop(rid, None)
                if redirect and not q.redirected:
                    q.redirected = True
                    q.retry_at = 0.0
                    return backoff
                # Once per episode at WARNING (Kafka's producer warns on every retry): a full
                # disk or a long election shows in the log, not only as a timeout much later.
                last = f"{_code_name(code)} {r.error_message}"
                if q.last_error != last:
                    self.log.warning(
                        "the broker refused a batch of %s/%d (retriable); resending after a backoff: %s",
                        tp[0],
                        tp[1],
                        last,
                    )
                    q.last_error = last
                q.retry_at = time.monotonic() + backoff
                next_backoff = min(
                    backoff * 2, _LEADER_BACKOFF if code == ErrorCode.NOT_LEADER else _MAX_BACKOFF
                )
            else:
                q.redirected = False
                if unknown or code == ErrorCode.BATCH_TOO_LARGE:
                    self._partitions.pop(tp[0], None)  # the next produce reads fresh metadata
                b = q.in_flight.popleft()
                parts = self._split(b) if code == ErrorCode.BATCH_TOO_LARGE else None
                if parts is not None:
                    # The topic's limit was lowered after this producer read it: resent in
                    # two parts under the batch's own sequences (Kafka's KIP-126).
                    self.log.info(
                        "batch of %d records too large for %s/%d; resending it in two parts", b.count, *tp
                    )
                    for rid in q.rewind():
                        conn.in_flight.pop(rid, None)
                    q.ready.extendleft(reversed(parts))
                    return next_backoff  # nothing completed
                q.renumber_after_drop(b, in_flight_after=True)
                for rid in q.rewind():
                    conn.in_flight.pop(rid, None)
                err = from_code(code, r.error_message)
                if code == ErrorCode.PRODUCER_FENCED:
                    # A newer instance owns this producer id: this one must stop producing.
                    self.fatal = err
                    self.closed = True
                done.append((tp, b, -1, -1, err))
        self._complete_all(done)
        return next_backoff

    def _split(self, b: _Batch) -> tuple[_Batch, _Batch] | None:
        """``b`` cut in two at a record boundary (the payload is cut where a record field
        ends, not decoded), the parts under its sequence numbers, holding its buffer memory
        between them; None for a single record or a payload that does not read back. The
        caller holds ``lock``."""
        if b.count < 2:
            return None
        try:
            raw = _wire.decompress(int(self.codec), b.payload)
            ends = _wire.record_ends(raw)
        except TidelogError:
            return None
        if len(ends) != b.count:
            return None
        at = len(ends) // 2
        cut = ends[at - 1]
        first_memory = b.memory * cut // len(raw)

        def part(chunk: bytes, entries: list[Entry | None], memory: int, seq: int) -> _Batch:
            payload = _wire.compress(self.codec, chunk) if self.codec != Compression.NONE else chunk
            sinks = sum(1 for e in entries if e is not None and e[4] is not None)
            return _Batch(payload, entries, memory, seq, b.created, sinks)

        return (
            part(raw[:cut], b.entries[:at], first_memory, b.base_seq),
            part(raw[cut:], b.entries[at:], b.memory - first_memory, (b.base_seq + at) % _SEQ_MODULUS),
        )

    def _throttle(self, addr: str, ms: int) -> None:
        """A broker's quota delayed this client by ``ms``: nothing more is sent to it until
        that time has passed (as Kafka's clients do), and the time counts in statistics."""
        until = time.monotonic() + ms / 1000
        self._throttled_until[addr] = max(self._throttled_until.get(addr, 0.0), until)
        self.counters["throttle_ms"] += ms
        t = self._throttles.get(addr)
        if t is None:
            self._throttles[addr] = [1, ms, ms, ms]
        else:
            t[0] += 1
            t[1] += ms
            t[2] = min(t[2], ms)
            t[3] = max(t[3], ms)

    def _complete_all(self, done: list[Any]) -> None:
        for tp, b, base, ts, err in done:
            self._complete(tp, b, base, ts, err)

    def _complete(self, tp: tuple[str, int], b: _Batch, base: int, ts: int, err: TidelogError | None) -> None:
        if err is not None and self.txn is not None:
            self.txn.on_record_failed(err)  # before the application hears of it
        if b.sinks:
            try:
                self._deliver(tp[0], tp[1], b.entries, base, ts, err)
            except Exception:  # a broken hook must not stop the sender
                self.log.exception("delivery hook failed")
        if err is None:
            self.counters["txmsgs"] += b.count
            self.counters["txmsg_bytes"] += b.memory - b.count * RECORD_OVERHEAD
        else:
            self.counters["txerrs"] += b.count
        with self.lock:
            counts = self.counts
            counts.memory_used -= b.memory
            counts.pending -= b.count
            idle = counts.pending == 0
            self.space.notify_all()
        if self.space_event is not None:
            self.space_event.set()
        if idle:
            self._on_idle()

    def _expire(self, now: float) -> list[Any]:
        """Fails batches past the delivery timeout that are not in flight (see module docs)."""
        expired: list[tuple[tuple[str, int], _Batch]] = []
        poisoned = False
        with self.lock:
            for tp, q in self._queues.items():
                while q.ready and now - q.ready[0].created > self.delivery_timeout:
                    b = q.ready.popleft()
                    if b.attempts > 0 and self.idempotent:
                        poisoned = True
                    else:
                        q.renumber_after_drop(b, in_flight_after=False)
                    expired.append((tp, b))
            if poisoned:
                self.closed = True
                self.fatal = FatalError(
                    "a sent batch was not acknowledged within delivery.timeout.ms; its sequence is "
                    "ambiguous, so the producer failed every queued record and closed (create a new one)"
                )
                expired += self._drain_locked()
            # Each partition's error names the broker's last refusal of its batches, if any.
            errors = {tp: self._timeout_error(self._queues[tp].last_error) for tp, _ in expired}
        return [(tp, b, -1, -1, errors[tp]) for tp, b in expired]

    def _timeout_error(self, last_error: str) -> DeliveryTimeoutError:
        why = f"not acknowledged within {self.delivery_timeout:g} s"
        return DeliveryTimeoutError(f"{why}; the broker's last answer: {last_error}" if last_error else why)

    def _drain_locked(self) -> list[tuple[tuple[str, int], _Batch]]:
        out = []
        for tp, q in self._queues.items():
            if q.open.count:
                self._seal(q)
            out += [(tp, b) for b in (*q.in_flight, *q.ready)]
            q.in_flight.clear()
            q.ready.clear()
        return out

    def fail_fatal(self, err: TidelogError) -> None:
        """Closes the producer for good: every queued record fails with ``err``, and so does
        every later call (on the engine loop)."""
        self._fail_fatal(err)

    def _fail_fatal(self, err: TidelogError) -> None:
        with self.lock:
            self.closed = True
            self.fatal = err
        self._fail_all(err)

    def _fail_all(self, err: TidelogError) -> None:
        with self.lock:
            drained = self._drain_locked()
        self._complete_all([(tp, b, -1, -1, err) for tp, b in drained])


__all__ = [
    "DeliverHook",
    "Entry",
    "HeadersArg",
    "Payload",
    "ProducerCore",
    "delivered",
    "idempotence_config",
    "stage",
]
