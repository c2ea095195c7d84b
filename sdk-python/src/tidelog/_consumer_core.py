"""The consumer engine shared by :class:`tidelog.Consumer` and :class:`tidelog.aio.AIOConsumer`.

It runs on one asyncio loop and owns:

- **fetchers**: one per assigned topic, reading its partitions from each partition's
  position, decoding batches into :class:`~tidelog.Message` objects and appending them to a
  bounded buffer (``queued.max.messages``; a full buffer pauses the fetcher, and HTTP/2 flow
  control then pauses the broker). A fetcher that fails resumes from where it got to; one
  whose position fell out of the log (retention) applies ``auto.offset.reset``;
- **routing of reads**, the same as the Rust SDK's ``Subscription``: in a cluster whose topics
  have fewer replicas than brokers, a broker serves only the partitions it holds, so a
  fetcher reads each partition from a broker that holds it (the current broker when it does,
  else the partition's leader if known, else a random replica, so that many consumers spread
  and a dead replica is not every consumer's first choice; a broker whose stream just failed
  is passed over while another replica is left), one ``Subscribe`` stream per broker.
  Order per partition holds: each partition comes from exactly one stream. On a single node,
  or when the current broker holds every partition, that is one stream, as before;
- the **group session** (with ``group.id`` and :meth:`subscribe`): Kafka's protocol over one
  ``GroupService.Session`` stream, the same as the Rust SDK: join, the leader computes the
  assignment (:mod:`tidelog.assignor`) and syncs, everyone gets its partitions; heartbeats;
  on a rebalance, *revoke before assign*: stop fetching, commit, rejoin. A session that fails
  rejoins through the next broker of the cluster (:mod:`tidelog._brokers`), since any broker
  routes sessions to the coordinator. Commits and metadata calls fail over the same way and
  retry retriable failures with backoff until ``default.api.timeout.ms``, each attempt
  waiting up to ``request.timeout.ms`` (:mod:`tidelog._failover`); the ones the session makes
  itself (auto-commit, the commit on revoke, an assignment's committed offsets) until
  ``session.timeout.ms`` at most, since the session sends no heartbeat meanwhile (the Rust
  SDK bounds its commits the same way); so is the final commit of :meth:`close`.

Positions and commits (at-least-once):

- ``position`` of a partition is the offset of the next record to hand to the application;
  taking a record from the buffer advances it;
- ``processed`` is the position as of the application's previous ``poll``: records returned
  by one poll count as processed when the application polls again (Kafka's rule). Auto-commit
  and the commit on revoke commit ``processed``, never records still being worked on;
- every buffered record carries the *fetch epoch* it was fetched in; assignment, seek, pause
  and revoke bump the epoch, so records fetched before them are dropped, never handed out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from . import _wire
from ._brokers import Brokers
from ._config import targets
from .assignor import Member, assign
from .errors import (
    ErrorCode,
    FatalError,
    OffsetOutOfRangeError,
    RetriableError,
    TidelogError,
    from_code,
    from_rpc_error,
)
from .types import Message, TopicPartition
from .v1 import admin_service_pb2, group_service_pb2, offsets_service_pb2, records_service_pb2

log = logging.getLogger("tidelog.consumer")

TP = tuple[str, int]
#: Called on the engine loop with ("assign" | "revoke", partitions) after each change.
Notify = Callable[[str, list[TopicPartition]], None]
_RNG = random.Random()


class _FetchState:
    """One topic's fetch, shared by its streams: where each partition resumes (``None``: per
    ``auto.offset.reset``), the brokers to pass over, and the backoff before the next retry."""

    __slots__ = ("avoid", "backoff", "failures", "starts")

    def __init__(self, starts: dict[int, int | None]) -> None:
        self.starts = starts
        #: Brokers whose stream failed since they last delivered anything → when (the count of
        #: failures so far), so that when every replica failed the least recent one is next.
        self.avoid: dict[str, int] = {}
        self.failures = 0
        self.backoff = 0.1

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


class ConsumerCore:
    """See the module docs. All ``async`` methods run on the engine loop; the ``take`` and
    state methods may be called from any thread."""

    def __init__(self, cfg: dict[str, Any], notify: Notify) -> None:
        self.cfg = cfg
        self._notify = notify
        self.group: str | None = cfg["group.id"]
        self.reset: str = cfg["auto.offset.reset"]
        self.lock = threading.Lock()
        self.data = threading.Condition(self.lock)  # records (or an error) buffered
        self.buffer: deque[tuple[int, Message | TidelogError]] = deque()
        self.assigned: set[TP] = set()
        self.positions: dict[TP, int] = {}
        self.processed: dict[TP, int] = {}
        self.committed: dict[TP, int] = {}
        self.rewound: set[TP] = set()
        self.paused: set[TP] = set()
        self.fetch_epoch = 0
        self.generation = 0
        self.member_id = ""
        self.topics: list[str] = []
        self._owned: list[TP] = []
        self._joining = False
        self._rejoin_pending = False
        self._commit_timer: asyncio.Task[None] | None = None
        self._fetchers: list[asyncio.Task[None]] = []
        self._session_task: asyncio.Task[None] | None = None
        self._session_events: asyncio.Queue[tuple[Any, ...]] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.data_event: asyncio.Event | None = None
        self._space = asyncio.Event()
        self._space_waiters = 0
        api_timeout = cfg["default.api.timeout.ms"] / 1000
        self.brokers = Brokers(
            targets(cfg["bootstrap.servers"]), cfg["request.timeout.ms"] / 1000, api_timeout
        )
        #: The deadline of the calls the group session makes itself (it sends no heartbeat
        #: meanwhile, so they must end within the session timeout), and of the final commit
        #: of close(), which must not hold the application up any longer.
        self.inline_timeout = min(api_timeout, cfg["session.timeout.ms"] / 1000)

    async def start(self) -> None:
        """Binds the engine to the running loop (its channels belong to it)."""
        self.loop = asyncio.get_running_loop()
        self.data_event = asyncio.Event()
        self._space = asyncio.Event()
        self.brokers.stubs()  # connects now: the first call needs the bootstrap broker

    # ---- the application side (any thread) ---------------------------------------------

    def take(self, max_records: int) -> list[Message]:
        """Hands out up to ``max_records`` buffered records (caller holds ``lock``); raises a
        queued fatal error. Advances positions."""
        out: list[Message] = []
        while self.buffer and len(out) < max_records:
            epoch, item = self.buffer.popleft()
            if isinstance(item, TidelogError):
                if out:
                    self.buffer.appendleft((epoch, item))
                    break
                raise item
            tp = (item.topic, item.partition)
            if epoch != self.fetch_epoch or tp not in self.assigned or tp in self.paused:
                continue  # fetched before a rebalance, seek or pause
            if item.offset < self.positions.get(tp, 0):
                continue  # before a seek target
            self.positions[tp] = item.offset + 1
            out.append(item)
        if self._space_waiters and len(self.buffer) < self.cfg["queued.max.messages"] and self.loop:
            self.loop.call_soon_threadsafe(self._space.set)
        return out

    def mark_processed(self) -> None:
        """Everything handed out so far counts as processed (called at the start of a poll)."""
        with self.lock:
            self.processed.update(self.positions)

    def _push(self, epoch: int, items: list[Message | TidelogError]) -> None:
        with self.lock:
            self.buffer.extend((epoch, m) for m in items)
            self.data.notify_all()
        if self.data_event is not None:
            self.data_event.set()

    # ---- assignment ---------------------------------------------------------------------

    async def subscribe(self, topics: list[str]) -> None:
        if not self.group:
            raise FatalError("subscribe() needs a group.id in the consumer config (or use assign())")
        self.topics = list(topics)
        if self._session_task is None:
            self._session_events = asyncio.Queue()
            self._session_task = asyncio.get_running_loop().create_task(self._session_loop())
        else:
            self._post(("rejoin",))

    async def assign_manual(self, partitions: list[TopicPartition]) -> None:
        """Manual assignment (no group membership)."""
        if self._session_task is not None:
            raise FatalError("assign() cannot be mixed with subscribe() on one consumer")
        await self._revoke(commit=False, notify=False)
        explicit = {(tp.topic, tp.partition): tp.offset for tp in partitions if tp.offset is not None}
        await self._assign(0, [(tp.topic, tp.partition) for tp in partitions], explicit)
        if self.group and self.cfg["enable.auto.commit"] and self._commit_timer is None:
            self._commit_timer = asyncio.get_running_loop().create_task(self._auto_commit_manual())

    async def _auto_commit_manual(self) -> None:
        """Auto-commit for manually assigned partitions (no group session to time it)."""
        while True:
            await asyncio.sleep(self.cfg["auto.commit.interval.ms"] / 1000)
            try:
                await self.commit_positions(self.processed_offsets())
            except TidelogError as e:
                log.debug("auto-commit failed: %s", e)

    async def _assign(
        self,
        generation: int,
        tps: list[TP],
        explicit: dict[TP, int] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Starts a new assignment from committed offsets (or explicit ones, or the reset
        policy), read within ``timeout`` (default: ``default.api.timeout.ms``)."""
        assigned = set(tps)
        committed: dict[TP, int] = {}
        if self.group:
            for topic in sorted({t for t, _ in assigned}):
                req = offsets_service_pb2.FetchCommittedRequest(group=self.group, topic=topic)
                _, resp = await self.brokers.call(lambda b: b.offsets.FetchCommitted, req, timeout)
                committed.update({(topic, o.partition): o.offset for o in resp.offsets})
        positions = {tp: o for tp, o in committed.items() if tp in assigned}
        positions.update(explicit or {})
        missing = sorted({t for tp in assigned if tp not in positions for t in [tp[0]]})
        for topic in missing:
            parts = [p for t, p in assigned if t == topic]
            positions.update(await self._reset_positions(topic, parts, timeout))
        with self.lock:
            self.generation = generation
            self.assigned = assigned
            self.positions = positions
            self.processed = dict(positions)
            self.committed = committed
            self.rewound.clear()
            self.paused.clear()
            self.fetch_epoch += 1
        self._notify("assign", [TopicPartition(t, p) for t, p in sorted(assigned)])
        self.restart_fetchers()

    async def _reset_positions(
        self, topic: str, partitions: list[int], timeout: float | None = None
    ) -> dict[TP, int]:
        if self.reset == "error":
            err = OffsetOutOfRangeError(
                f"no committed offset for {topic} partitions {partitions} and auto.offset.reset=error"
            )
            self._push(self.fetch_epoch, [err])
            return {}
        spec = admin_service_pb2.OffsetSpec(earliest=True) if self.reset == "earliest" else None
        spec = spec or admin_service_pb2.OffsetSpec(latest=True)
        req = admin_service_pb2.ListOffsetsRequest(topic=topic, partitions=partitions, spec=spec)
        # Any broker answers, for partitions held elsewhere too (it forwards the request).
        _, resp = await self.brokers.call(lambda b: b.admin.ListOffsets, req, timeout)
        return {(topic, o.partition): o.offset for o in resp.offsets}

    async def _revoke(self, commit: bool, notify: bool = True) -> None:
        """Stops fetching, commits what the application processed, forgets the assignment."""
        with self.lock:
            self.fetch_epoch += 1  # buffered records of the old assignment are never handed out
        for f in self._fetchers:
            f.cancel()
        self._fetchers.clear()
        if commit and self.cfg["enable.auto.commit"]:
            try:  # only the session revokes with a commit
                await self.commit_positions(self.processed_offsets(), self.inline_timeout)
            except TidelogError as e:
                log.info("commit on revoke failed: %s", e)
        with self.lock:
            revoked = sorted(self.assigned)
            self.assigned = set()
        if revoked:
            self._owned = revoked
            if notify:
                self._notify("revoke", [TopicPartition(t, p) for t, p in revoked])

    # ---- fetching -----------------------------------------------------------------------

    def restart_fetchers(self) -> None:
        """(Re)starts one fetcher per topic over the active partitions, from positions."""
        for f in self._fetchers:
            f.cancel()
        self._fetchers.clear()
        with self.lock:
            active = sorted(self.assigned - self.paused)
            if self.reset == "error":  # no position, no fetching: the application must seek
                active = [tp for tp in active if tp in self.positions]
            epoch = self.fetch_epoch
            starts = {tp: self.positions.get(tp) for tp in active}
        loop = asyncio.get_running_loop() if self.loop is None else self.loop
        for topic in sorted({t for t, _ in active}):
            mine = {p: o for (t, p), o in starts.items() if t == topic}
            self._fetchers.append(loop.create_task(self._fetch(topic, mine, epoch)))

    async def _fetch(self, topic: str, starts: dict[int, int | None], epoch: int) -> None:
        """Reads ``topic``'s partitions until cancelled: routes them (see the module docs),
        reads every route's stream, and after the first failure of any of them starts over
        from where each partition got to, routed afresh."""
        st = _FetchState(starts)
        while True:
            failed_at: str | None = None
            try:
                routes = await self._routes(topic, sorted(st.starts), st.avoid)
                failed_at, err = await self._read_routes(topic, routes, st, epoch)
            except TidelogError as e:
                err = e
            if isinstance(err, OffsetOutOfRangeError) and self.reset == "error":
                self._push(epoch, [err])
                return  # auto.offset.reset=error: stopped until the application seeks
            if isinstance(err, OffsetOutOfRangeError):
                log.warning("%s: position out of range; applying auto.offset.reset=%s", topic, self.reset)
                st.starts = dict.fromkeys(st.starts)
            elif err.retriable:
                log.debug("fetch of %s from %s failed (%s); retrying", topic, failed_at, err)
                if failed_at is not None:
                    st.failed(failed_at)  # down, stalled, or no longer holding a partition
            else:
                self._push(epoch, [err])
                if err.code in (
                    grpc.StatusCode.NOT_FOUND,
                    ErrorCode.UNKNOWN_TOPIC,
                    ErrorCode.UNKNOWN_PARTITION,
                ):
                    return  # the topic is gone; a rebalance or reassignment will follow
            await asyncio.sleep(st.backoff)
            st.backoff = min(st.backoff * 2, 2.0)

    async def _routes(self, topic: str, partitions: list[int], avoid: dict[str, int]) -> dict[str, list[int]]:
        """Which broker reads which partitions: the current broker for all of them on a
        single node; in a cluster, per partition, the first of (the broker that described
        the topic, the leader it reports, the replicas in a random order) that holds it and
        is not in ``avoid`` (if all are, the one that failed least recently: :func:`route_for`)."""
        brokers = self.brokers
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
        limit = self.cfg["queued.max.messages"]
        req = records_service_pb2.SubscribeRequest(topic=topic, max_bytes=self.cfg["fetch.max.bytes"])
        for p in partitions:
            start = self._start_position(st.starts[p])
            req.partitions.append(records_service_pb2.PartitionStart(partition=p, start=start))
        try:
            async for resp in self.brokers.stubs(addr).records.Subscribe(req):
                st.backoff = 0.1
                st.avoid.pop(addr, None)
                msgs = self._decode(topic, resp, st.starts)
                if msgs:
                    self._push(epoch, list(msgs))
                while len(self.buffer) >= limit:
                    self._space.clear()
                    self._space_waiters += 1
                    try:
                        await self._space.wait()
                    finally:
                        self._space_waiters -= 1
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        raise RetriableError(f"{addr} ended the subscription", grpc.StatusCode.UNAVAILABLE)

    def _start_position(self, offset: int | None) -> records_service_pb2.StartPosition:
        if offset is not None:
            return records_service_pb2.StartPosition(offset=offset)
        if self.reset == "earliest":
            return records_service_pb2.StartPosition(earliest=True)
        return records_service_pb2.StartPosition(latest=True)

    @staticmethod
    def _decode(
        topic: str, resp: records_service_pb2.SubscribeResponse, starts: dict[int, int | None]
    ) -> list[Message]:
        p = resp.partition
        want = starts.get(p)
        out: list[Message] = []
        for batch in resp.batches:
            base = batch.base_offset
            append_ts = batch.append_time_ms
            for i, r in enumerate(_wire.decode_batch(batch)):
                off = base + i
                if want is not None and off < want:
                    continue  # a batch may begin before the requested offset
                key = r.key if r.HasField("key") else None
                headers = [(h.key, h.value) for h in r.headers]
                out.append(Message(topic, p, off, key, r.value, headers, r.timestamp_ms or append_ts))
            starts[p] = want = base + batch.record_count
        return out

    # ---- commits ------------------------------------------------------------------------

    def processed_offsets(self) -> dict[TP, int]:
        """Processed positions that moved past the last commit (or were rewound by a seek)."""
        with self.lock:
            return {
                tp: pos
                for tp, pos in self.processed.items()
                if tp in self.assigned
                and (
                    pos > self.committed.get(tp, -1) or (tp in self.rewound and self.committed.get(tp) != pos)
                )
            }

    def current_offsets(self) -> dict[TP, int]:
        with self.lock:
            return {tp: pos for tp, pos in self.positions.items() if tp in self.assigned}

    async def commit_positions(self, offsets: dict[TP, int], timeout: float | None = None) -> None:
        """Commits ``offsets`` with the current generation; raises the broker's error.

        Retriable failures (the broker down, or unable to reach the coordinator) are retried
        across brokers with backoff until ``timeout`` (default ``default.api.timeout.ms``):
        committing the same offsets again changes nothing. A fatal answer, above all
        ILLEGAL_GENERATION (a rebalance fenced this member: it must rejoin), is raised at
        once. A retry resends only the topics not acknowledged yet, without the partitions
        whose committed offset another commit changed meanwhile (an older offset must not
        overwrite it)."""
        if not offsets:
            return
        if not self.group:
            raise FatalError("commit needs a group.id in the consumer config")
        group = self.group
        by_topic: dict[str, dict[int, int]] = {}
        for (t, p), o in sorted(offsets.items()):
            by_topic.setdefault(t, {})[p] = o
        with self.lock:
            generation, member_id = self.generation, self.member_id
            before = {tp: self.committed.get(tp) for tp in offsets}
        #: request id → (topic, partition → offset), until the broker acknowledges it.
        pending = dict(enumerate(by_topic.items()))

        def requests() -> list[offsets_service_pb2.CommitRequest]:
            out = []
            with self.lock:
                for i, (t, parts) in list(pending.items()):
                    ours = {p: o for p, o in parts.items() if self.committed.get((t, p)) == before[(t, p)]}
                    if not ours:
                        del pending[i]
                        continue
                    pending[i] = (t, ours)
                    out.append(
                        offsets_service_pb2.CommitRequest(
                            request_id=i,
                            group=group,
                            topic=t,
                            offsets=[
                                offsets_service_pb2.PartitionOffset(partition=p, offset=o)
                                for p, o in ours.items()
                            ],
                            generation=generation,
                            member_id=member_id,
                        )
                    )
            return out

        async def attempt(addr: str, t: float) -> None:
            todo = requests()
            if not todo:
                return
            call = self.brokers.stubs(addr).offsets.Commit(iter(todo), timeout=t)
            try:
                async for r in call:
                    if r.error_code != ErrorCode.NONE:
                        raise from_code(r.error_code, r.error_message)
                    done = pending.pop(r.request_id, None)
                    if done is None:
                        continue
                    with self.lock:
                        for p, o in done[1].items():
                            self.committed[(done[0], p)] = o
                            self.rewound.discard((done[0], p))
            finally:
                call.cancel()  # a no-op once the stream ended; else it must not linger
            if pending:
                raise RetriableError(
                    f"{addr} ended the commit before answering it all", grpc.StatusCode.UNAVAILABLE
                )

        await self.brokers.retry(attempt, timeout)

    async def fetch_committed(self, tps: list[TP]) -> dict[TP, int]:
        if not self.group:
            raise FatalError("committed() needs a group.id in the consumer config")
        out: dict[TP, int] = {}
        for topic in sorted({t for t, _ in tps}):
            parts = [p for t, p in tps if t == topic]
            req = offsets_service_pb2.FetchCommittedRequest(group=self.group, topic=topic, partitions=parts)
            _, resp = await self.brokers.call(lambda b: b.offsets.FetchCommitted, req)
            out.update({(topic, o.partition): o.offset for o in resp.offsets})
        return out

    # ---- seek / pause (any thread holds nothing; runs on the loop) -----------------------

    async def seek(self, tp: TP, offset: int) -> None:
        with self.lock:
            if tp not in self.assigned:
                raise FatalError(f"seek: {tp[0]}/{tp[1]} is not assigned to this consumer")
            self.positions[tp] = offset
            self.processed[tp] = offset
            self.rewound.add(tp)
            self.fetch_epoch += 1
        self.restart_fetchers()

    async def set_paused(self, tps: list[TP], paused: bool) -> None:
        with self.lock:
            for tp in tps:
                if tp not in self.assigned:
                    raise FatalError(f"pause/resume: {tp[0]}/{tp[1]} is not assigned to this consumer")
            if paused:
                self.paused.update(tps)
            else:
                self.paused.difference_update(tps)
            self.fetch_epoch += 1
        self.restart_fetchers()

    # ---- group session ------------------------------------------------------------------

    def _post(self, event: tuple[Any, ...]) -> None:
        if self._session_events is not None:
            self._session_events.put_nowait(event)

    async def close(self) -> None:
        """Commits what was processed, leaves the group (it rebalances at once) and stops."""
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        if self._session_task is not None and not self._session_task.done():
            done = asyncio.get_running_loop().create_future()
            self._post(("close", done))
            try:
                await asyncio.wait_for(done, self.cfg["session.timeout.ms"] / 1000)
            except (asyncio.TimeoutError, TimeoutError):
                log.warning("leaving the group timed out")
            self._session_task.cancel()
            await asyncio.gather(self._session_task, return_exceptions=True)
        elif self._session_task is None:
            if self.group and self.cfg["enable.auto.commit"]:
                try:
                    await self.commit_positions(self.processed_offsets(), self.inline_timeout)
                except TidelogError as e:
                    log.info("final commit failed: %s", e)
            await self._revoke(commit=False, notify=False)
        for f in self._fetchers:
            f.cancel()
        await asyncio.gather(*self._fetchers, return_exceptions=True)
        await self.brokers.close()

    async def _session_loop(self) -> None:
        """Runs sessions until the consumer closes: any failure (broker restart, lost stream,
        a write to a dead call) revokes and rejoins after a backoff; only a fatal group error
        (no common assignor, invalid request) ends membership, reported to the application."""
        backoff = 0.1
        while True:
            await self.brokers.learn()  # once: the brokers to rejoin through
            addr = self.brokers.current
            try:
                if await self._session(addr):
                    return
            except asyncio.CancelledError:
                raise
            except TidelogError as e:
                log.debug("group session at %s failed (%s); rejoining", addr, e)
                if not e.retriable and e.code in (ErrorCode.INCONSISTENT_GROUP, ErrorCode.INVALID_REQUEST):
                    self._push(self.fetch_epoch, [e])
                    await self._revoke(commit=False)
                    return
            except Exception as e:  # grpc.aio raises its own types from write() on a dead call
                log.debug("group session at %s failed (%r); rejoining", addr, e)
            # Through the next broker: this one may be gone, and any broker reaches the
            # coordinator (a single node just retries).
            self.brokers.move_on(addr)
            await self._revoke(commit=False)
            if await self._close_requested_within(backoff):
                return
            backoff = min(backoff * 2, 2.0)

    async def _close_requested_within(self, delay: float) -> bool:
        """Waits ``delay`` between sessions, answering a close at once (True)."""
        assert self._session_events is not None
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            try:
                ev = await asyncio.wait_for(self._session_events.get(), left)
            except (asyncio.TimeoutError, TimeoutError):
                return False
            if ev[0] == "close":
                if not ev[1].done():
                    ev[1].set_result(None)
                return True
            # "rejoin": the next session's Join carries the new topics; stale stream events
            # of the dead session are dropped.
        return False

    def _join_request(self) -> group_service_pb2.SessionRequest:
        self._joining = True
        owned: dict[str, list[int]] = {}
        for t, p in self._owned:
            owned.setdefault(t, []).append(p)
        return group_service_pb2.SessionRequest(
            join=group_service_pb2.JoinGroup(
                group=self.group or "",
                topics=self.topics,
                assignors=self.cfg["partition.assignment.strategy"],
                session_timeout_ms=self.cfg["session.timeout.ms"],
                owned=[group_service_pb2.TopicPartitions(topic=t, partitions=ps) for t, ps in owned.items()],
                client_id=self.cfg["client.id"],
            )
        )

    async def _session(self, addr: str) -> bool:
        """One Session stream at ``addr``; returns True when the consumer closed."""
        assert self._session_events is not None
        events = self._session_events
        call = self.brokers.stubs(addr).groups.Session()
        reader = asyncio.get_running_loop().create_task(self._read_session(call))
        try:
            await call.write(self._join_request())
            heartbeat_every = self.cfg["heartbeat.interval.ms"] / 1000
            commit_every = self.cfg["auto.commit.interval.ms"] / 1000
            next_heartbeat = time.monotonic() + heartbeat_every
            next_commit = time.monotonic() + commit_every
            while True:
                wait = max(0.0, min(next_heartbeat, next_commit) - time.monotonic())
                try:
                    ev = await asyncio.wait_for(events.get(), wait)
                except (asyncio.TimeoutError, TimeoutError):
                    ev = ("tick",)
                now = time.monotonic()
                if now >= next_heartbeat:
                    hb = group_service_pb2.Heartbeat(generation=self.generation)
                    await call.write(group_service_pb2.SessionRequest(heartbeat=hb))
                    next_heartbeat = now + heartbeat_every
                if now >= next_commit:
                    next_commit = now + commit_every
                    if self.cfg["enable.auto.commit"]:
                        try:
                            await self.commit_positions(self.processed_offsets(), self.inline_timeout)
                        except TidelogError as e:
                            log.debug("auto-commit failed: %s", e)
                kind = ev[0]
                if kind in ("resp", "lost") and ev[1] is not call:
                    continue  # left over from an earlier session
                if kind == "resp":
                    await self._on_session_response(call, ev[2])
                elif kind == "lost":
                    raise ev[2]
                elif kind == "rejoin":
                    if self._joining:
                        self._rejoin_pending = True  # after this round's assignment
                    else:
                        await self._revoke(commit=True)
                        await call.write(self._join_request())
                elif kind == "close":
                    try:
                        await self._revoke(commit=True)
                        await call.write(
                            group_service_pb2.SessionRequest(leave=group_service_pb2.LeaveGroup())
                        )
                        await call.done_writing()
                    except Exception as e:  # a dead call: the broker drops us when it notices
                        log.debug("leaving the group failed: %r", e)
                    finally:
                        if not ev[1].done():
                            ev[1].set_result(None)
                    return True
        finally:
            reader.cancel()
            call.cancel()

    async def _read_session(self, call: Any) -> None:
        """Posts the session's responses (tagged with their call, so a later session can tell
        leftovers of this one apart) and its end."""
        try:
            while True:
                r = await call.read()
                if r is grpc.aio.EOF:
                    ended = RetriableError("the broker ended the group session", grpc.StatusCode.UNAVAILABLE)
                    self._post(("lost", call, ended))
                    return
                self._post(("resp", call, r))
        except grpc.aio.AioRpcError as e:
            self._post(("lost", call, from_rpc_error(e)))

    async def _on_session_response(self, call: Any, resp: group_service_pb2.SessionResponse) -> None:
        kind = resp.WhichOneof("kind")
        if kind == "joined":
            j = resp.joined
            self._joining = False
            with self.lock:
                self.member_id = j.member_id
            if j.leader_id == j.member_id:
                members = [
                    Member(
                        m.member_id, list(m.topics), [(tp.topic, p) for tp in m.owned for p in tp.partitions]
                    )
                    for m in j.members
                ]
                counts = {t.topic: t.partitions for t in j.topic_partitions}
                plan = assign(j.assignor, members, counts)
                sync = group_service_pb2.SyncGroup(generation=j.generation)
                for mid, tps in plan.items():
                    by_topic: dict[str, list[int]] = {}
                    for t, p in tps:
                        by_topic.setdefault(t, []).append(p)
                    sync.assignments.append(
                        group_service_pb2.MemberAssignment(
                            member_id=mid,
                            partitions=[
                                group_service_pb2.TopicPartitions(topic=t, partitions=ps)
                                for t, ps in by_topic.items()
                            ],
                        )
                    )
                await call.write(group_service_pb2.SessionRequest(sync=sync))
        elif kind == "assignment":
            a = resp.assignment
            tps = [(tp.topic, p) for tp in a.partitions for p in tp.partitions]
            await self._assign(a.generation, tps, timeout=self.inline_timeout)
            if self._rejoin_pending:  # subscribe() changed the topics during this round
                self._rejoin_pending = False
                await self._revoke(commit=True)
                await call.write(self._join_request())
        elif kind == "rebalance":
            if not self._joining:  # else our Join on its way answers this rebalance too
                log.debug("rebalance (%s): revoking", resp.rebalance.reason)
                await self._revoke(commit=True)
                await call.write(self._join_request())
        elif kind == "error":
            err = from_code(resp.error.code, resp.error.message)
            log.info("group session error: %s", err)
            if int(resp.error.code) in (ErrorCode.INCONSISTENT_GROUP, ErrorCode.INVALID_REQUEST):
                raise err
