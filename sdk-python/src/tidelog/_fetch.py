"""A consumer's reading: the fetch of each assigned topic, for :mod:`tidelog._consumer_core`.

One fetch per assigned topic reads its partitions from each partition's position, decodes
batches into :class:`~tidelog.Message` objects and appends them to the consumer's bounded
buffer (``queued.max.messages``; a full buffer pauses the fetch, and HTTP/2 flow control then
pauses the broker). A fetch that fails resumes from where it got to; one whose position fell
out of the log (retention, DeleteRecords) applies ``auto.offset.reset``.

**Decoding**: with the compiled extension (:mod:`tidelog._accel`) the stream answers each
response's raw bytes and ``tidelog._native.decode_subscribe`` builds the messages from them in
one pass; without it (or for a response holding a compressed batch) protobuf parses the
response and :meth:`Fetcher._decode` walks it. Both keep the same rules (below) and the tests
compare them response by response.

**Routing of reads**, the same as the Rust SDK's ``Subscription``: in a cluster whose topics
have fewer replicas than brokers, a broker serves only the partitions it holds, so a fetch
reads each partition from a broker that holds it (the current broker when it does, else the
partition's leader if known, else a random replica, so that many consumers spread and a dead
replica is not every consumer's first choice; a broker whose stream just failed is passed over
while another replica is left), one ``Subscribe`` stream per broker. Order per partition
holds: each partition comes from exactly one stream. On a single node, or when the current
broker holds every partition, that is one stream.

**Stalls**: a stream whose broker is frozen (SIGSTOP) or cut off from its peers goes silent
like an idle partition's. So after ``_STALL_AFTER`` without a response, the fetch asks the
cluster's other brokers (each within half a second, every quarter second while it stays
silent) for the partitions' high watermarks; if one beyond a partition's position keeps
growing while the stream stays silent, the stream has stalled: it fails as retriable, and the
fetch reroutes away from that broker (the Rust SDK's watchdog). A high watermark merely ahead
and still (replicas' commit points differ by a few records during an election) is no stall.
Only read_uncommitted fetches in a cluster: a read_committed position may rightly stay below
the high watermark of an open transaction.

**Isolation** (``isolation.level``): a read_committed fetch asks the broker for committed
records only: it serves each partition up to its last stable offset (the first offset of the
oldest open transaction) and leaves out aborted transactions' records and the transaction
markers, so offsets have gaps; a record's position is still its offset + 1. The high
watermark of its responses (lag, partition EOF) is the last stable offset. A read_committed
partition started at "latest" starts where the broker's last stable offset is (the high
watermark may be inside an open transaction whose records would be skipped).

**Compacted topics** (``cleanup.policy`` compact) have gaps too: the cleaner keeps only the
latest record per key, preserving offsets, so offsets increase but skip the records compacted
away, between batches. Nothing here counts offsets: a position is the last delivered record's
offset + 1, and a start offset that was compacted away (a committed offset inside a removed
range) is valid: the broker serves from the next batch that holds a record at or above it,
and the records below it are skipped, so nothing is delivered twice.

**Partition EOF** (``enable.partition.eof``): when a response leaves a partition at the high
watermark it reports, the fetch appends a ``_PARTITION_EOF`` event after its records, once per
offset reached; a partition that starts at its end gets its event at the start (no response
would come).
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import grpc

from . import _wire
from ._accel import native
from .errors import (
    ErrorCode,
    FatalError,
    KafkaError,
    OffsetOutOfRangeError,
    RetriableError,
    TidelogError,
    from_code,
    from_rpc_error,
)
from .types import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, Message
from .v1 import admin_service_pb2, records_service_pb2

if TYPE_CHECKING:
    from ._consumer_core import ConsumerCore

_RNG = random.Random()
#: Silence after which a stream's partitions are compared with the other brokers'.
_STALL_AFTER = 1.0
#: How often they are compared while it stays silent, and how long one broker may take.
_STALL_POLL = 0.25
_STALL_ASK = 0.5
#: SubscribeRequest.isolation_level by read_committed.
_ISOLATION = {
    False: records_service_pb2.ISOLATION_LEVEL_READ_UNCOMMITTED,
    True: records_service_pb2.ISOLATION_LEVEL_READ_COMMITTED,
}


class _FetchState:
    """One topic's fetch, shared by its streams: where each partition resumes (``None``: per
    ``auto.offset.reset``), the brokers to pass over, and the backoff before the next retry."""

    __slots__ = ("avoid", "backoff", "eof_at", "failures", "last_seen", "stalled", "starts")

    def __init__(self, starts: dict[int, int | None]) -> None:
        self.starts = starts
        #: Per partition, the offset at which its end was last reported (enable.partition.eof).
        self.eof_at: dict[int, int] = {}
        #: Brokers whose stream failed since they last delivered anything → when (the count of
        #: failures so far), so that when every replica failed the least recent one is next.
        self.avoid: dict[str, int] = {}
        self.failures = 0
        self.backoff = 0.1
        #: Per broker streaming now, when it last delivered a response (the loop's clock).
        self.last_seen: dict[str, float] = {}
        #: The last failure was a stall (rerouted at once, without a backoff).
        self.stalled = False

    def failed(self, addr: str) -> None:
        self.failures += 1
        self.avoid[addr] = self.failures


def route_for(
    replicas: list[int],
    leader: int,
    own: int | None,
    ids: dict[int, str],
    avoid: dict[str, int],
    rng: random.Random = _RNG,
) -> str | None:
    """The broker to read one partition from: the first of (``own``, the broker that
    described it; ``leader``, as ``own`` reports it; the replicas in a random order, as the
    Rust SDK picks one) that holds it and is not in ``avoid``, else the one that failed least
    recently. None if no replica has an address."""
    # A broker knows the leader only of partitions it holds (0 otherwise). Without one, any
    # replica serves what is committed: a random one, so that consumers spread over the
    # replicas and a dead one is not every consumer's choice.
    order = [i for i in (own, leader) if i in replicas] + rng.sample(replicas, len(replicas))
    candidates = [ids[i] for i in order if i in ids]
    return min(candidates, key=lambda a: avoid.get(a, 0)) if candidates else None  # the first minimum


def eof_event(topic: str, partition: int, offset: int) -> Message:
    """The event ``poll`` returns when a partition is read to its end (confluent-kafka's)."""
    err = KafkaError(
        KafkaError._PARTITION_EOF,
        f"Fetch from broker reached end of partition {topic} [{partition}] at offset {offset}",
    )
    return Message(topic, partition, offset, None, None, error=err)


class Fetcher:
    """The fetches of one consumer (``core``): :meth:`run` is one topic's, as a task of the
    consumer's loop until cancelled (a new assignment, seek or pause starts new ones)."""

    def __init__(self, core: ConsumerCore) -> None:
        self.core = core

    async def run(self, topic: str, starts: dict[int, int | None], epoch: int) -> None:
        """Reads ``topic``'s partitions until cancelled: routes them (see the module docs),
        reads every route's stream, and after the first failure of any of them starts over
        from where each partition got to, routed afresh."""
        st = _FetchState(starts)
        if self.core.partition_eof:
            await self._eof_at_start(topic, st, epoch)
        while True:
            failed_at: str | None = None
            try:
                await self._resolve_starts(topic, st)
                routes = await self._routes(topic, sorted(st.starts), st.avoid)
                failed_at, err = await self._read_routes(topic, routes, st, epoch)
            except TidelogError as e:
                err = e
            if isinstance(err, OffsetOutOfRangeError) and self.core.reset == "error":
                self.core.push(epoch, [err])
                return  # auto.offset.reset=error: stopped until the application seeks
            if isinstance(err, OffsetOutOfRangeError):
                self.core.log.warning(
                    "%s: position out of range; applying auto.offset.reset=%s", topic, self.core.reset
                )
                st.starts = dict.fromkeys(st.starts)
            elif err.retriable:
                self.core.log.debug("fetch of %s from %s failed (%s); retrying", topic, failed_at, err)
                if failed_at is not None:
                    self.core.reporter.failed(failed_at, err, f"fetching {topic}")
                    st.failed(failed_at)  # down, stalled, or no longer holding a partition
                    # Metadata (the next routing) from another broker too, if it was this
                    # one: a frozen broker would hold the describe for a whole request timeout.
                    self.core.brokers.move_on(failed_at)
            else:
                self.core.push(epoch, [err])
                if err.code in (
                    grpc.StatusCode.NOT_FOUND,
                    ErrorCode.UNKNOWN_TOPIC,
                    ErrorCode.UNKNOWN_PARTITION,
                ):
                    return  # the topic is gone; a rebalance or reassignment will follow
            if st.stalled:
                st.stalled = False  # the other replicas are live: reroute now
                continue
            await asyncio.sleep(st.backoff)
            st.backoff = min(st.backoff * 2, 2.0)

    async def _resolve_starts(self, topic: str, st: _FetchState) -> None:
        """Partitions to start per ``auto.offset.reset`` (after their position fell out of
        the log) start at the offset it names now: the first one may be inside a batch (after
        DeleteRecords), whose records below it must be skipped, so the fetch needs the number."""
        unknown = sorted(p for p, o in st.starts.items() if o is None)
        if self.core.read_committed and self.core.reset == "latest":
            return  # the broker starts them at the last stable offset (see the module docs)
        if unknown and self.core.reset in ("earliest", "latest"):
            got = await self.core.list_offsets(topic, unknown, self.core.reset)
            st.starts.update({p: o for (_, p), o in got.items()})

    async def _eof_at_start(self, topic: str, st: _FetchState, epoch: int) -> None:
        """With ``enable.partition.eof``: the partitions that start at their end (empty, or
        read to the end already) get their EOF event now, since no fetch response will come.
        Best effort: if the offsets cannot be read, the EOF comes with the next records."""
        parts = sorted(st.starts)
        try:
            high = await self.core.list_offsets(topic, parts, "latest")
            unknown = [p for p in parts if st.starts[p] is None]
            low = (
                await self.core.list_offsets(topic, unknown, "earliest")
                if unknown and self.core.reset == "earliest"
                else {}
            )
        except TidelogError as e:
            self.core.log.debug("cannot read the ends of %s (%s); EOF events wait for records", topic, e)
            return
        events: list[Message | TidelogError] = []
        for p in parts:
            hw = high.get((topic, p))
            start = st.starts[p]
            if start is None:
                start = low.get((topic, p)) if self.core.reset == "earliest" else hw
            if hw is not None and start is not None and start >= hw:
                st.eof_at[p] = hw
                events.append(eof_event(topic, p, hw))
        if events:
            self.core.push(epoch, events)

    async def _routes(self, topic: str, partitions: list[int], avoid: dict[str, int]) -> dict[str, list[int]]:
        """Which broker reads which partitions: the current broker for all of them on a
        single node; in a cluster, per partition, the first of (the broker that described
        the topic, the leader it reports, the replicas in a random order) that holds it and
        is not in ``avoid`` (if all are, the one that failed least recently: :func:`route_for`)."""
        brokers = self.core.brokers
        await brokers.learn()
        if not brokers.ids:
            return {brokers.current: partitions}
        req = admin_service_pb2.DescribeTopicRequest(name=topic)
        at, resp = await brokers.call(lambda b: b.admin.DescribeTopic, req)
        own = next((i for i, a in brokers.ids.items() if a == at), None)
        described = {d.partition: d for d in resp.topic.partitions}
        routes: dict[str, list[int]] = {}
        for p in partitions:
            d = described.get(p)
            if d is None:
                raise from_code(ErrorCode.UNKNOWN_PARTITION, f"topic {topic} has no partition {p}")
            pick = route_for(list(d.replica_ids), d.leader_id, own, brokers.ids, avoid)
            routes.setdefault(pick or at, []).append(p)
        return routes

    async def _read_routes(
        self, topic: str, routes: dict[str, list[int]], st: _FetchState, epoch: int
    ) -> tuple[str, TidelogError]:
        """Reads every route's stream at once until one fails; returns the failed broker and
        its error (after stopping the other streams: the caller reroutes them all)."""
        loop = asyncio.get_running_loop()
        tasks = {
            loop.create_task(self._read(addr, topic, ps, st, epoch)): addr for addr, ps in routes.items()
        }
        if self.core.brokers.ids and not self.core.read_committed:
            tasks.update(
                {loop.create_task(self._watch(addr, topic, ps, st)): addr for addr, ps in routes.items()}
            )
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        failed: tuple[str, TidelogError] | None = None
        for t in done:  # streams only end by failing; every error is retrieved here
            exc = t.exception()
            if not isinstance(exc, TidelogError):
                raise exc or RuntimeError("a subscription stream ended without an error")
            failed = failed or (tasks[t], exc)
        assert failed is not None
        return failed

    async def _read(self, addr: str, topic: str, partitions: list[int], st: _FetchState, epoch: int) -> None:
        """One ``Subscribe`` stream at ``addr`` for ``partitions``, until it fails (raised)."""
        limit = self.core.cfg["queued.max.messages"]
        req = records_service_pb2.SubscribeRequest(
            topic=topic,
            max_bytes=self.core.cfg["fetch.max.bytes"],
            isolation_level=_ISOLATION[self.core.read_committed],  # type: ignore[arg-type]
        )
        for p in partitions:
            start = self._start_position(st.starts[p])
            req.partitions.append(records_service_pb2.PartitionStart(partition=p, start=start))
        stubs = self.core.brokers.stubs(addr)
        # Compiled: the responses' bytes, decoded straight into Messages; else protobuf's tree.
        stream = stubs.subscribe_raw(req) if native is not None else stubs.records.Subscribe(req)
        try:
            async for resp in stream:
                st.last_seen[addr] = asyncio.get_running_loop().time()
                st.backoff = 0.1
                st.avoid.pop(addr, None)
                self.core.reporter.answered(addr)
                p, hw, throttle_ms, msgs, nbytes = self._decode_any(addr, topic, resp, st.starts)
                self._count(throttle_ms, msgs, nbytes)
                self.core.high_watermarks[(topic, p)] = hw
                self.core.push(epoch, msgs, (topic, p))
                at = st.starts.get(p)
                if self.core.partition_eof and at is not None and at >= hw and st.eof_at.get(p) != at:
                    st.eof_at[p] = at
                    self.core.push(epoch, [eof_event(topic, p, at)])
                while self.core.buffered >= limit:
                    self.core.space.clear()
                    self.core.space_waiters += 1
                    try:
                        await self.core.space.wait()
                    finally:
                        self.core.space_waiters -= 1
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        raise RetriableError(f"{addr} ended the subscription", grpc.StatusCode.UNAVAILABLE)

    async def _watch(self, addr: str, topic: str, partitions: list[int], st: _FetchState) -> None:
        """Fails (raises) once the stream at ``addr`` has stalled: silent for ``_STALL_AFTER``
        while another broker's high watermark of one of ``partitions`` is beyond its position
        and still growing (see the module docs). Runs until cancelled otherwise."""
        loop = asyncio.get_running_loop()
        st.last_seen[addr] = loop.time()
        brokers = self.core.brokers
        req = admin_service_pb2.DescribeTopicRequest(name=topic)
        # The highest high watermark seen elsewhere in this silence (since ``silence_of``).
        seen: dict[int, int] = {}
        silence_of = st.last_seen[addr]
        while True:
            await asyncio.sleep(_STALL_POLL)
            if self.core.buffered >= self.core.cfg["queued.max.messages"]:
                st.last_seen[addr] = loop.time()  # paused by a full buffer, not stalled
            if st.last_seen.get(addr) != silence_of:
                silence_of, seen = st.last_seen.get(addr, loop.time()), {}
            silent = loop.time() - silence_of
            if silent < _STALL_AFTER:
                continue
            for other in [a for a in brokers.ids.values() if a != addr]:
                try:
                    resp = await brokers.stubs(other).admin.DescribeTopic(req, timeout=_STALL_ASK)
                except (grpc.aio.AioRpcError, asyncio.TimeoutError):
                    continue
                for d in resp.topic.partitions:
                    at = st.starts.get(d.partition)
                    if d.partition not in partitions or at is None:
                        continue
                    before = seen.get(d.partition)
                    if d.high_watermark > at and before is not None and d.high_watermark > before:
                        st.stalled = True
                        raise RetriableError(
                            f"{addr} delivered nothing for {silent:.1f} s while {other} holds"
                            f" {topic}/{d.partition} up to offset {d.high_watermark} and growing (this"
                            f" stream is at {at}); reading from another replica",
                            grpc.StatusCode.UNAVAILABLE,
                        )
                    seen[d.partition] = max(before or 0, d.high_watermark)

    def _count(self, throttle_ms: int, msgs: list[Message], nbytes: int) -> None:
        c = self.core.counters
        c["rx"] += 1
        c["rxmsgs"] += len(msgs)
        c["rxmsg_bytes"] += nbytes
        c["throttle_ms"] += throttle_ms  # the broker's quota paced this stream

    @classmethod
    def _decode_any(
        cls,
        addr: str,
        topic: str,
        resp: bytes | records_service_pb2.SubscribeResponse,
        starts: dict[int, int | None],
    ) -> tuple[int, int, int, list[Message], int]:
        """``(partition, high watermark, throttle ms, messages, value bytes)`` of a response:
        raw bytes (decoded by the compiled extension, or by protobuf when a batch is
        compressed) or a parsed message."""
        if isinstance(resp, bytes):
            assert native is not None
            try:
                got: tuple[int, int, int, list[Message], int] | None = native.decode_subscribe(
                    resp, topic, starts
                )
            except ValueError as e:
                raise FatalError(f"corrupt Subscribe response from {addr}: {e}") from e
            if got is not None:
                return got
            resp = records_service_pb2.SubscribeResponse.FromString(resp)
        msgs = cls._decode(topic, resp, starts)
        return resp.partition, resp.high_watermark, resp.throttle_time_ms, msgs, sum(map(len, msgs))

    def _start_position(self, offset: int | None) -> records_service_pb2.StartPosition:
        if offset is not None:
            return records_service_pb2.StartPosition(offset=offset)
        if self.core.reset == "earliest":
            return records_service_pb2.StartPosition(earliest=True)
        return records_service_pb2.StartPosition(latest=True)

    @staticmethod
    def _decode(
        topic: str, resp: records_service_pb2.SubscribeResponse, starts: dict[int, int | None]
    ) -> list[Message]:
        p = resp.partition
        want = starts.get(p)
        # Where the broker read from: above the start asked for when records were deleted
        # inside the first batch (DeleteRecords), so those are skipped too.
        if resp.read_from and (want is None or resp.read_from > want):
            want = resp.read_from
        out: list[Message] = []
        # Offsets only increase, but need not be contiguous: between batches of a compacted
        # topic (records compacted away) and around aborted transactions and markers
        # (read_committed). Within a batch, record i is at base_offset + i. A partition resumes
        # after the last batch read, never before where it was asked to start (the batch the
        # broker starts from may end below it when that offset was compacted away).
        for batch in resp.batches:
            base = batch.base_offset
            append_ts = batch.append_time_ms
            for i, r in enumerate(_wire.decode_batch(batch)):
                off = base + i
                if want is not None and off < want:
                    continue  # a batch may begin before the requested offset
                key = r.key if r.HasField("key") else None
                value = None if r.null_value else r.value
                hs = r.headers
                # Most records have none: iterating an empty repeated field costs more than a test.
                headers = [(h.key, h.value) for h in hs] if hs else None
                if r.timestamp_ms > 0:
                    ts, ts_type = r.timestamp_ms, TIMESTAMP_CREATE_TIME
                else:
                    ts, ts_type = append_ts, TIMESTAMP_LOG_APPEND_TIME
                out.append(Message(topic, p, off, key, value, headers, ts, ts_type))
            end = base + batch.record_count
            if want is None or end > want:
                want = end
            starts[p] = want
        return out
