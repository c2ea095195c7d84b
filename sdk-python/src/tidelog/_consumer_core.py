"""The consumer engine shared by :class:`tidelog.Consumer` and :class:`tidelog.aio.AIOConsumer`.

It runs on one asyncio loop and owns:

- the **assignment**: the partitions read now, from a group (:meth:`subscribe`) or chosen by
  the application (:meth:`assign_manual`, :meth:`incremental_assign`), with their positions
  (the committed offsets, explicit or logical ones such as OFFSET_BEGINNING, else
  ``auto.offset.reset``);
- the **fetches**: one per assigned topic (:mod:`tidelog._fetch`: routing of reads, decoding,
  partition EOF events), feeding a bounded buffer that :meth:`take` hands out;
- the **group session** (with ``group.id`` and :meth:`subscribe`; :mod:`tidelog._group_session`):
  join, sync, heartbeats, *revoke before assign* on a rebalance, rejoining through the next
  broker after a failure;
- **commits and lookups**: commits and metadata calls fail over across brokers and retry
  retriable failures with backoff until ``default.api.timeout.ms``, each attempt waiting up to
  ``request.timeout.ms`` (:mod:`tidelog._failover`); the ones the session makes itself
  (auto-commit, the commit on revoke, an assignment's committed offsets) until
  ``session.timeout.ms`` at most, since the session sends no heartbeat meanwhile (the Rust
  SDK bounds its commits the same way); so is the final commit of :meth:`close`;
- what the application hears besides records (:mod:`tidelog._events`): a failing broker or a
  subscribed topic that does not exist is logged and reported to ``error_cb``; statistics.

Positions and commits (at-least-once):

- ``position`` of a partition is the offset of the next record to hand to the application;
  taking a record from the buffer advances it;
- ``processed`` is the position as of the application's previous ``poll``: records returned
  by one poll count as processed when the application polls again (Kafka's rule). Auto-commit
  and the commit on revoke commit ``processed``, never records still being worked on;
- every buffered record carries the *fetch epoch* it was fetched in; assignment, seek, pause
  and revoke bump the epoch, so records fetched before them are dropped, never handed out;
- without ``enable.auto.offset.store``, commits use the offsets the application stored
  (:meth:`store_offsets`) instead of ``processed`` / ``position``.
- without ``enable.auto.commit`` nothing is committed but by the application (``commit()``,
  or a transactional producer's ``send_offsets_to_transaction``): not periodically, not on a
  revoke, not on close. Exactly-once consume-transform-produce relies on it.

Transactions (``isolation.level``, see :mod:`tidelog._fetch`): while an open transaction holds
offsets of the group (sent with ``send_offsets_to_transaction``), the coordinator answers
FetchCommitted with UNSTABLE_OFFSET_COMMIT; the offsets an assignment starts from are then
fetched again, with backoff, until the transaction ends or ``default.api.timeout.ms`` passes,
the group session heartbeating meanwhile (:meth:`ConsumerCore.fetch_committed_stable`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import grpc

from ._brokers import Brokers
from ._config import TRANSPORT, targets
from ._events import ErrorSink, Reporter, broker_stats, client_logger
from ._fetch import Fetcher, route_for
from ._group_session import GroupSession
from .errors import (
    ConfigError,
    ErrorCode,
    FatalError,
    KafkaError,
    OffsetOutOfRangeError,
    RetriableError,
    TidelogError,
    UnstableOffsetCommitError,
    from_code,
)
from .types import OFFSET_BEGINNING, OFFSET_END, Message, TopicPartition
from .v1 import admin_service_pb2, offsets_service_pb2

TP = tuple[str, int]


class _Chunk:
    """One push into the consumer's buffer: its fetch epoch, its items and how many of them
    are taken. With ``tp``, records of that partition only, in offset order."""

    __slots__ = ("epoch", "items", "pos", "tp")

    def __init__(self, epoch: int, items: Sequence[Message | TidelogError], tp: TP | None) -> None:
        self.epoch = epoch
        self.items = items
        self.pos = 0
        self.tp = tp


#: Called between retries of a long wait inside the group session (it heartbeats).
KeepAlive = Callable[[], Awaitable[None]]
#: Called on the engine loop with ("assign" | "revoke", partitions) after each change.
Notify = Callable[[str, list[TopicPartition]], None]

__all__ = ["TP", "ConsumerCore", "Notify", "route_for"]


class ConsumerCore:
    """See the module docs. All ``async`` methods run on the engine loop; the ``take`` and
    state methods may be called from any thread. ``errors`` receives what ``error_cb`` should
    see (:class:`~tidelog._events.Reporter`)."""

    def __init__(self, cfg: dict[str, Any], notify: Notify, errors: ErrorSink | None = None) -> None:
        self.cfg = cfg
        self._notify = notify
        self.log = client_logger(cfg, "consumer")
        self.reporter = Reporter(self.log, errors, targets(cfg["bootstrap.servers"]))
        self.auto_store: bool = cfg["enable.auto.offset.store"]
        self.partition_eof: bool = cfg["enable.partition.eof"]
        self.read_committed: bool = cfg["isolation.level"] == "read_committed"
        #: Offsets stored by store_offsets() (what commits use without enable.auto.offset.store).
        self.stored: dict[TP, int] = {}
        #: Each partition's high watermark as of its latest fetch response.
        self.high_watermarks: dict[TP, int] = {}
        #: Subscribed topics reported missing (reported again only after they were seen).
        self._missing: set[str] = set()
        self._checks: set[asyncio.Task[None]] = set()
        #: Statistics: fetch responses, records and their value bytes fetched, rebalances.
        self.counters = dict.fromkeys(("rx", "rxmsgs", "rxmsg_bytes", "rebalance_cnt", "throttle_ms"), 0)
        self.group: str | None = cfg["group.id"]
        self.reset: str = cfg["auto.offset.reset"]
        self.lock = threading.Lock()
        self.data = threading.Condition(self.lock)  # records (or an error) buffered
        #: What the fetches pushed, in order; ``buffered`` counts the items not yet taken.
        self.buffer: deque[_Chunk] = deque()
        self.buffered = 0
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
        #: The partitions held before the latest revoke (a Join names them, for sticky).
        self.owned: list[TP] = []
        self._commit_timer: asyncio.Task[None] | None = None
        self._fetchers: list[asyncio.Task[None]] = []
        self.fetcher = Fetcher(self)
        #: The group membership, from subscribe() until unsubscribe() (None: not subscribed).
        self.session: GroupSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.data_event: asyncio.Event | None = None
        self.space = asyncio.Event()
        self.space_waiters = 0
        api_timeout = cfg["default.api.timeout.ms"] / 1000
        self.brokers = Brokers(
            targets(cfg["bootstrap.servers"]),
            cfg["request.timeout.ms"] / 1000,
            api_timeout,
            cfg[TRANSPORT],
            self.reporter,
        )
        #: The deadline of the calls the group session makes itself (it sends no heartbeat
        #: meanwhile, so they must end within the session timeout), and of the final commit
        #: of close(), which must not hold the application up any longer.
        self.inline_timeout = min(api_timeout, cfg["session.timeout.ms"] / 1000)

    async def start(self) -> None:
        """Binds the engine to the running loop (its channels belong to it)."""
        self.loop = asyncio.get_running_loop()
        self.data_event = asyncio.Event()
        self.space = asyncio.Event()
        self.brokers.stubs()  # connects now: the first call needs the bootstrap broker

    # ---- the application side (any thread) ---------------------------------------------

    def take(self, max_records: int) -> list[Message]:
        """Hands out up to ``max_records`` buffered records (caller holds ``lock``); raises a
        queued fatal error. Advances positions."""
        out: list[Message] = []
        while self.buffer and len(out) < max_records:
            chunk = self.buffer[0]
            if chunk.tp is not None:
                self._take_records(chunk, chunk.tp, out, max_records - len(out))
                continue
            item = chunk.items[chunk.pos]
            if isinstance(item, TidelogError):
                if out:
                    break
                self._advance(chunk, 1)
                raise item
            self._advance(chunk, 1)
            tp = (item.topic(), item.partition())
            if not self._current(chunk, tp):
                continue  # fetched before a rebalance, seek or pause
            if item.error() is not None:
                out.append(item)  # a partition EOF event: no record, no position
                continue
            if item.offset() < self.positions.get(tp, 0):
                continue  # before a seek target
            self.positions[tp] = item.offset() + 1
            out.append(item)
        self._wake_space()
        return out

    def _wake_space(self) -> None:
        """Wakes the fetch loop waiting for buffer room, once there is room (caller holds ``lock``)."""
        if self.space_waiters and self.buffered < self.cfg["queued.max.messages"] and self.loop:
            self.loop.call_soon_threadsafe(self.space.set)

    def _current(self, chunk: _Chunk, tp: TP) -> bool:
        """Whether a chunk of ``tp``'s records is still wanted: fetched since the last
        rebalance or seek, for a partition assigned and not paused."""
        return chunk.epoch == self.fetch_epoch and tp in self.assigned and tp not in self.paused

    def _take_records(self, chunk: _Chunk, tp: TP, out: list[Message], room: int) -> None:
        """Up to ``room`` records of one partition's chunk: the checks of :meth:`take` once per
        chunk instead of once per record (its offsets only increase)."""
        items = cast("Sequence[Message]", chunk.items)  # a chunk with a tp holds records only
        i, n = chunk.pos, len(items)
        if not self._current(chunk, tp):
            self._advance(chunk, n - i)  # fetched before a rebalance, seek or pause
            return
        position = self.positions.get(tp, 0)
        while i < n and items[i].offset() < position:
            i += 1  # before a seek target
        end = min(n, i + room)
        if end > i:
            out += items[i:end]
            self.positions[tp] = items[end - 1].offset() + 1
        self._advance(chunk, end - chunk.pos)

    def _advance(self, chunk: _Chunk, n: int) -> None:
        """``n`` items of the first chunk are taken or dropped."""
        chunk.pos += n
        self.buffered -= n
        if chunk.pos >= len(chunk.items):
            self.buffer.popleft()

    def poll_one(self) -> Message | None:
        """``poll()``'s common case in one lock round: marks what was handed out as processed
        (as :meth:`mark_processed`) and hands out the next buffered record when it is the next
        of a partition being read. None when anything else comes first (nothing buffered, an
        error or event, a record to drop or skip): :meth:`take` handles those."""
        with self.lock:
            self.processed.update(self.positions)
            if not self.buffer:
                return None
            chunk = self.buffer[0]
            tp = chunk.tp
            if tp is None or not self._current(chunk, tp):
                return None
            item = cast("Message", chunk.items[chunk.pos])
            offset = item.offset()
            if offset < self.positions.get(tp, 0):
                return None
            self.positions[tp] = offset + 1
            self._advance(chunk, 1)
            self._wake_space()
            return item

    def mark_processed(self) -> None:
        """Everything handed out so far counts as processed (called at the start of a poll)."""
        with self.lock:
            self.processed.update(self.positions)

    def push(self, epoch: int, items: Sequence[Message | TidelogError], tp: TP | None = None) -> None:
        """Buffers what one fetch got: with ``tp``, records of that partition only, in offset
        order (one response's); else anything (errors, partition EOF events)."""
        if not items:
            return
        with self.lock:
            self.buffer.append(_Chunk(epoch, items, tp))
            self.buffered += len(items)
            self.data.notify_all()
        if self.data_event is not None:
            self.data_event.set()

    # ---- assignment ---------------------------------------------------------------------

    async def subscribe(self, topics: list[str]) -> None:
        if not self.group:
            raise ConfigError("subscribe() needs a group.id in the consumer config (or use assign())")
        self.topics = list(topics)
        if self.session is None:
            self.session = GroupSession(self)
            self.session.start()
        else:
            self.session.post(("rejoin",))

    async def assign_manual(self, partitions: list[TopicPartition]) -> None:
        """Manual assignment (no group membership), replacing the current one."""
        if self.session is not None:
            raise FatalError("assign() cannot be mixed with subscribe() on one consumer")
        await self.revoke(commit=False, notify=False)
        explicit = {(tp.topic, tp.partition): tp.offset for tp in partitions if tp.offset is not None}
        await self.assign(0, [(tp.topic, tp.partition) for tp in partitions], explicit)
        self._start_manual_auto_commit()

    async def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        """Adds partitions to a manual assignment; the others go on where they are."""
        if self.session is not None:
            raise FatalError(
                "incremental_assign() cannot be used with subscribe() (the group assigns partitions"
                " eagerly here); use assign() without subscribe()"
            )
        new = [(tp.topic, tp.partition) for tp in partitions]
        with self.lock:
            kept = set(self.assigned)
        already = sorted(kept.intersection(new))
        if already:
            raise FatalError(f"incremental_assign(): {already} already assigned")
        explicit = {(tp.topic, tp.partition): tp.offset for tp in partitions if tp.offset is not None}
        await self.assign(0, sorted(kept.union(new)), explicit, keep=kept)
        self._start_manual_auto_commit()

    async def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        """Removes partitions from a manual assignment (nothing is committed)."""
        if self.session is not None:
            raise FatalError("incremental_unassign() cannot be used with subscribe()")
        gone = {(tp.topic, tp.partition) for tp in partitions}
        with self.lock:
            missing = sorted(gone - self.assigned)
            if missing:
                raise FatalError(f"incremental_unassign(): {missing} not assigned")
            self.assigned -= gone
            for tp in gone:
                for state in (self.positions, self.processed, self.stored, self.committed):
                    state.pop(tp, None)
                self.paused.discard(tp)
                self.rewound.discard(tp)
            self.fetch_epoch += 1
        self.restart_fetchers()

    async def unassign(self) -> None:
        """Drops a manual assignment; with a group.id and enable.auto.commit, commits what was
        processed first."""
        if self.session is not None:
            raise FatalError("unassign() cannot be used with subscribe(): use unsubscribe()")
        await self.revoke(commit=bool(self.group), notify=False)

    async def unsubscribe(self) -> None:
        """Leaves the group (revoking, with the commit of what was processed, so on_revoke
        runs) and forgets the subscription; :meth:`subscribe` may be called again."""
        if self.session is None:
            return
        await self.session.leave(self.cfg["session.timeout.ms"] / 1000)
        self.session = None
        self.topics = []
        await self.revoke(commit=False)  # in case the session ended without revoking
        with self.lock:
            self.generation, self.member_id = 0, ""

    def forget_membership(self) -> None:
        """The group session ended: generation 0 and no member id until the next join, so
        ``consumer_group_metadata()`` no longer names the lost membership."""
        with self.lock:
            self.generation, self.member_id = 0, ""

    def _start_manual_auto_commit(self) -> None:
        if self.group and self.cfg["enable.auto.commit"] and self._commit_timer is None:
            self._commit_timer = asyncio.get_running_loop().create_task(self._auto_commit_manual())

    async def _auto_commit_manual(self) -> None:
        """Auto-commit for manually assigned partitions (no group session to time it)."""
        while True:
            await asyncio.sleep(self.cfg["auto.commit.interval.ms"] / 1000)
            try:
                await self.commit_positions(self.processed_offsets())
            except TidelogError as e:
                self.log.debug("auto-commit failed: %s", e)

    async def assign(
        self,
        generation: int,
        tps: list[TP],
        explicit: dict[TP, int] | None = None,
        timeout: float | None = None,
        keep: set[TP] | None = None,
        keepalive: KeepAlive | None = None,
    ) -> None:
        """Starts a new assignment from committed offsets (or explicit ones, logical ones such
        as OFFSET_BEGINNING included, or the reset policy), read within ``timeout`` (default:
        ``default.api.timeout.ms``). The partitions in ``keep`` (already assigned) keep their
        state: position, processed and stored offsets, pause. ``keepalive`` is called while
        the committed offsets are unstable (an open transaction holds some)."""
        keep = keep or set()
        assigned = set(tps)
        fresh = assigned - keep
        committed: dict[TP, int] = {}
        if self.group:
            for topic in sorted({t for t, _ in fresh}):
                req = offsets_service_pb2.FetchCommittedRequest(group=self.group, topic=topic)
                resp = await self.fetch_committed_stable(req, timeout, keepalive)
                committed.update({(topic, o.partition): o.offset for o in resp.offsets})
        positions = {tp: o for tp, o in committed.items() if tp in fresh}
        positions.update(await self._resolve_offsets(explicit or {}, timeout))
        missing = sorted({t for tp in fresh if tp not in positions for t in [tp[0]]})
        for topic in missing:
            # Only the partitions without a position: the others start where they were.
            parts = [p for t, p in fresh if t == topic and (t, p) not in positions]
            positions.update(await self._reset_positions(topic, parts, timeout))
        with self.lock:
            kept = {tp: self.positions[tp] for tp in keep if tp in self.positions}
            self.generation = generation
            self.assigned = assigned
            self.processed = {tp: o for tp, o in self.processed.items() if tp in keep}
            self.processed.update(positions)
            self.positions = {**kept, **positions}
            self.committed = {**{tp: o for tp, o in self.committed.items() if tp in keep}, **committed}
            self.stored = {tp: o for tp, o in self.stored.items() if tp in keep}
            self.rewound &= keep
            self.paused &= keep
            self.fetch_epoch += 1
        if not keep:
            self._notify("assign", [TopicPartition(t, p) for t, p in sorted(assigned)])
        self.restart_fetchers()

    async def fetch_committed_stable(
        self,
        req: offsets_service_pb2.FetchCommittedRequest,
        timeout: float | None = None,
        keepalive: KeepAlive | None = None,
    ) -> offsets_service_pb2.FetchCommittedResponse:
        """FetchCommitted (each attempt retried across brokers for ``timeout``), asked again
        with backoff while the coordinator answers UNSTABLE_OFFSET_COMMIT (an open transaction
        will commit offsets of the group), for up to ``default.api.timeout.ms`` in all;
        ``keepalive`` runs between those attempts."""
        deadline = time.monotonic() + self.brokers.api_timeout
        backoff = 0.05
        while True:
            try:
                _, resp = await self.brokers.call(lambda b: b.offsets.FetchCommitted, req, timeout)
                return resp  # type: ignore[no-any-return]
            except UnstableOffsetCommitError as e:
                if time.monotonic() + backoff >= deadline:
                    raise
                self.log.debug(
                    "offsets of group %s unstable (%s); asking again in %.2f s", req.group, e, backoff
                )
            if keepalive is not None:
                await keepalive()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _resolve_offsets(self, offsets: dict[TP, int], timeout: float | None = None) -> dict[TP, int]:
        """Offsets with the logical ones resolved: OFFSET_BEGINNING and OFFSET_END become the
        partition's first offset and end; OFFSET_STORED, OFFSET_INVALID and any other negative
        offset are left out (the committed offset, else ``auto.offset.reset``, applies)."""
        out = {tp: o for tp, o in offsets.items() if o >= 0}
        for logical, spec in ((OFFSET_BEGINNING, "earliest"), (OFFSET_END, "latest")):
            for topic in sorted({t for (t, _), o in offsets.items() if o == logical}):
                parts = [p for (t, p), o in offsets.items() if t == topic and o == logical]
                out.update(await self.list_offsets(topic, parts, spec, timeout))
        return out

    async def list_offsets(
        self, topic: str, partitions: list[int], spec: str | int, timeout: float | None = None
    ) -> dict[TP, int]:
        """ListOffsets for ``partitions``: ``"earliest"``, ``"latest"`` (the high watermark) or
        a timestamp in ms (the first batch appended at or after it, else -1: see
        :meth:`offsets_for_times`). Any broker answers, for partitions held elsewhere too."""
        if spec == "earliest":
            req_spec = admin_service_pb2.OffsetSpec(earliest=True)
        elif spec == "latest":
            req_spec = admin_service_pb2.OffsetSpec(latest=True)
        else:
            req_spec = admin_service_pb2.OffsetSpec(timestamp_ms=int(spec))
        req = admin_service_pb2.ListOffsetsRequest(topic=topic, partitions=partitions, spec=req_spec)
        _, resp = await self.brokers.call(lambda b: b.admin.ListOffsets, req, timeout)
        if isinstance(spec, int):
            # No batch at or after the time: -1 (OFFSET_END), as confluent-kafka answers.
            return {(topic, o.partition): o.offset if o.timestamp_ms >= 0 else -1 for o in resp.offsets}
        return {(topic, o.partition): o.offset for o in resp.offsets}

    async def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        """Per partition, the first offset at or after its ``offset`` taken as a timestamp in
        ms, -1 where there is none; OFFSET_BEGINNING / OFFSET_END as timestamps give the first
        offset / the end, as in Kafka."""
        found: dict[tuple[str, int, int], int] = {}  # (topic, timestamp, partition) → offset
        wanted: dict[tuple[str, int], list[int]] = {}
        for tp in partitions:
            if tp.offset is None:
                raise ValueError(f"offsets_for_times: {tp.topic}/{tp.partition} has no timestamp (offset)")
            wanted.setdefault((tp.topic, tp.offset), []).append(tp.partition)
        for (topic, ts), parts in sorted(wanted.items()):
            spec: str | int = {OFFSET_BEGINNING: "earliest", OFFSET_END: "latest"}.get(ts, ts)
            got = await self.list_offsets(topic, sorted(set(parts)), spec, timeout)
            found.update({(topic, ts, p): o for (_, p), o in got.items()})
        return [
            TopicPartition(tp.topic, tp.partition, found.get((tp.topic, tp.offset or 0, tp.partition)))
            for tp in partitions
        ]

    async def watermarks(self, tp: TP, timeout: float | None = None) -> tuple[int, int]:
        """(first offset, high watermark) of a partition, from its replicas."""
        low = await self.list_offsets(tp[0], [tp[1]], "earliest", timeout)
        high = await self.list_offsets(tp[0], [tp[1]], "latest", timeout)
        return low[tp], high[tp]

    async def _reset_positions(
        self, topic: str, partitions: list[int], timeout: float | None = None
    ) -> dict[TP, int]:
        if self.reset == "error":
            err = OffsetOutOfRangeError(
                f"no committed offset for {topic} partitions {partitions} and auto.offset.reset=error"
            )
            self.push(self.fetch_epoch, [err])
            return {}
        if self.read_committed and self.reset == "latest":
            # The broker starts them at the last stable offset (ListOffsets' latest is the high
            # watermark, which may be inside an open transaction).
            return {}
        spec = admin_service_pb2.OffsetSpec(earliest=True) if self.reset == "earliest" else None
        spec = spec or admin_service_pb2.OffsetSpec(latest=True)
        req = admin_service_pb2.ListOffsetsRequest(topic=topic, partitions=partitions, spec=spec)
        # Any broker answers, for partitions held elsewhere too (it forwards the request).
        _, resp = await self.brokers.call(lambda b: b.admin.ListOffsets, req, timeout)
        return {(topic, o.partition): o.offset for o in resp.offsets}

    async def revoke(self, commit: bool, notify: bool = True) -> None:
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
                # Its records are read again by the partitions' next owner.
                self.log.warning("commit on revoke or close failed; its records will be read again: %s", e)
        with self.lock:
            revoked = sorted(self.assigned)
            self.assigned = set()
            self.stored.clear()
        if revoked:
            self.owned = revoked
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
            self._fetchers.append(loop.create_task(self.fetcher.run(topic, mine, epoch)))

    # ---- commits ------------------------------------------------------------------------

    def processed_offsets(self) -> dict[TP, int]:
        """What auto-commit commits: processed positions that moved past the last commit (or
        were rewound by a seek); without ``enable.auto.offset.store``, the stored offsets that
        differ from the committed ones."""
        with self.lock:
            if not self.auto_store:
                return {
                    tp: o
                    for tp, o in self.stored.items()
                    if tp in self.assigned and self.committed.get(tp) != o
                }
            return {
                tp: pos
                for tp, pos in self.processed.items()
                if tp in self.assigned
                and (
                    pos > self.committed.get(tp, -1) or (tp in self.rewound and self.committed.get(tp) != pos)
                )
            }

    def current_offsets(self) -> dict[TP, int]:
        """What ``commit()`` without arguments commits: the position after every record
        returned so far, or without ``enable.auto.offset.store`` the stored offsets."""
        with self.lock:
            source = self.positions if self.auto_store else self.stored
            return {tp: pos for tp, pos in source.items() if tp in self.assigned}

    def store_offsets(self, offsets: dict[TP, int]) -> None:
        """Stores offsets (the next to read) for the next commit (any thread)."""
        if self.auto_store:
            raise ConfigError("store_offsets() needs enable.auto.offset.store=false in the consumer config")
        with self.lock:
            missing = sorted(tp for tp in offsets if tp not in self.assigned)
            if missing:
                raise FatalError(f"store_offsets(): {missing} not assigned to this consumer")
            self.stored.update(offsets)

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
            resp = await self.fetch_committed_stable(req)
            out.update({(topic, o.partition): o.offset for o in resp.offsets})
        return out

    # ---- seek / pause (any thread holds nothing; runs on the loop) -----------------------

    async def seek(self, tp: TP, offset: int) -> None:
        if offset < 0:  # OFFSET_BEGINNING / OFFSET_END
            resolved = await self._resolve_offsets({tp: offset})
            if tp not in resolved:
                raise ValueError(
                    f"seek: offset {offset} is neither an offset nor OFFSET_BEGINNING/OFFSET_END"
                )
            offset = resolved[tp]
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

    # ---- subscribed topics that do not exist ----------------------------------------------

    def check_topics(self, assigned_topics: set[str]) -> None:
        """In the background: each subscribed topic none of whose partitions came to this
        member is looked up, and reported (a warning and ``error_cb``) if it does not exist,
        once until it is seen again, instead of a consumer that polls nothing, silently."""
        self._missing.intersection_update(set(self.topics) - assigned_topics)
        todo = [t for t in self.topics if t not in assigned_topics]
        if not todo:
            return
        task = asyncio.get_running_loop().create_task(self._report_missing(todo))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _report_missing(self, topics: list[str]) -> None:
        for topic in topics:
            req = admin_service_pb2.DescribeTopicRequest(name=topic)
            try:
                await self.brokers.call(lambda b: b.admin.DescribeTopic, req, self.inline_timeout)
            except TidelogError as e:
                if (
                    e.code not in (grpc.StatusCode.NOT_FOUND, ErrorCode.UNKNOWN_TOPIC)
                    or topic in self._missing
                ):
                    continue
                self._missing.add(topic)
                self.reporter.warn(
                    KafkaError(
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                        f"Subscribed topic not available: {topic}: Broker: Unknown topic or partition",
                    )
                )
                continue
            self._missing.discard(topic)

    # ---- statistics -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """librdkafka-style consumer statistics (the figures under the envelope)."""
        with self.lock:
            buffered: dict[TP, int] = {}
            for chunk in self.buffer:
                if chunk.tp is not None:
                    buffered[chunk.tp] = buffered.get(chunk.tp, 0) + len(chunk.items) - chunk.pos
                    continue
                for m in chunk.items[chunk.pos :]:
                    if isinstance(m, Message):
                        tp = (m.topic(), m.partition())
                        buffered[tp] = buffered.get(tp, 0) + 1
            topics: dict[str, Any] = {}
            for tp in sorted(self.assigned):
                t, p = tp
                hw = self.high_watermarks.get(tp, -1)
                committed = self.committed.get(tp, -1001)
                stored = (self.processed if self.auto_store else self.stored).get(tp, -1001)
                parts = topics.setdefault(t, {"topic": t, "partitions": {}})["partitions"]
                parts[str(p)] = {
                    "partition": p,
                    "fetch_state": "paused" if tp in self.paused else "active",
                    "fetchq_cnt": buffered.get(tp, 0),
                    "app_offset": self.positions.get(tp, -1001),
                    "stored_offset": stored,
                    "committed_offset": committed,
                    "hi_offset": hw,
                    "consumer_lag": hw - committed if hw >= 0 and committed >= 0 else -1,
                }
            out: dict[str, Any] = {
                "replyq": self.buffered,
                **self.counters,
                "brokers": broker_stats(self.reporter, self.brokers.ids),
                "topics": topics,
            }
            if self.group:
                out["cgrp"] = {
                    "state": "up" if self.session is not None and self.session.active else "init",
                    "join_state": "wait-join"
                    if self.session is not None and self.session.joining
                    else "steady",
                    "rebalance_cnt": self.counters["rebalance_cnt"],
                    "assignment_size": len(self.assigned),
                    "generation": self.generation,
                }
        return out

    # ---- leaving ------------------------------------------------------------------------

    async def close(self) -> None:
        """Commits what was processed, leaves the group (it rebalances at once) and stops."""
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        if self.session is not None:
            await self.session.leave(self.cfg["session.timeout.ms"] / 1000)
        else:
            if self.group and self.cfg["enable.auto.commit"]:
                try:
                    await self.commit_positions(self.processed_offsets(), self.inline_timeout)
                except TidelogError as e:
                    self.log.info("final commit failed: %s", e)
            await self.revoke(commit=False, notify=False)
        for f in self._fetchers:
            f.cancel()
        await asyncio.gather(*self._fetchers, return_exceptions=True)
        await self.brokers.close()
