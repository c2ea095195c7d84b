"""A consumer's membership of its group: Kafka's protocol over one ``GroupService.Session``
stream, the same as the Rust SDK's.

Join; the leader computes the assignment (:mod:`tidelog.assignor`) and syncs; every member
gets its partitions (:meth:`~tidelog._consumer_core.ConsumerCore.assign`); heartbeats and
auto-commits on the way; on a rebalance, *revoke before assign*: stop fetching, commit,
rejoin. A session that fails rejoins through the next broker of the cluster
(:mod:`tidelog._brokers`), since any broker routes sessions to the coordinator; only a fatal
group error (no common assignor, an invalid request) ends membership, reported to the
application. Events (responses, the stream's end, the application's rejoin and leave) reach
the session through one queue, so it handles them one at a time, in order.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import grpc

from .assignor import Member, assign
from .errors import ErrorCode, RetriableError, TidelogError, from_code, from_rpc_error
from .v1 import group_service_pb2

if TYPE_CHECKING:
    from ._consumer_core import ConsumerCore


class GroupSession:
    """The group membership of one consumer (``core``), from :meth:`start` until it leaves
    (:meth:`leave`) or a fatal group error ends it. Runs on the consumer's loop."""

    def __init__(self, core: ConsumerCore) -> None:
        self.core = core
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        #: A Join is on its way (a rebalance now is answered by it).
        self.joining = False
        self._rejoin_pending = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def active(self) -> bool:
        return self.task is not None and not self.task.done()

    def post(self, event: tuple[Any, ...]) -> None:
        """Hands the session an event: ``("rejoin",)`` after the subscription changed."""
        self.events.put_nowait(event)

    async def leave(self, timeout: float) -> None:
        """Revokes (committing what was processed, with auto-commit), leaves the group so that
        it rebalances at once, and ends the session; waits up to ``timeout`` for that."""
        if self.active:
            done = asyncio.get_running_loop().create_future()
            self.post(("close", done))
            try:
                await asyncio.wait_for(done, timeout)
            except (asyncio.TimeoutError, TimeoutError):
                self.core.log.warning("leaving the group timed out")
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _loop(self) -> None:
        """Runs sessions until the consumer closes: any failure (broker restart, lost stream,
        a write to a dead call) revokes and rejoins after a backoff; only a fatal group error
        (no common assignor, invalid request) ends membership, reported to the application."""
        backoff = 0.1
        while True:
            await self.core.brokers.learn()  # once: the brokers to rejoin through
            addr = self.core.brokers.current
            try:
                if await self._run_one(addr):
                    return
            except asyncio.CancelledError:
                raise
            except TidelogError as e:
                self.core.log.debug("group session at %s failed (%s); rejoining", addr, e)
                if e.retriable:
                    self.core.reporter.failed(addr, e, "group session")
                if not e.retriable and e.code in (ErrorCode.INCONSISTENT_GROUP, ErrorCode.INVALID_REQUEST):
                    self.core.push(self.core.fetch_epoch, [e])
                    await self.core.revoke(commit=False)
                    return
            except Exception as e:  # grpc.aio raises its own types from write() on a dead call
                self.core.log.debug("group session at %s failed (%r); rejoining", addr, e)
            # Through the next broker: this one may be gone, and any broker reaches the
            # coordinator (a single node just retries).
            self.core.brokers.move_on(addr)
            await self.core.revoke(commit=False)
            # The membership is gone with the session: a transactional producer's
            # send_offsets_to_transaction with this consumer's metadata must not pass for the
            # member it was (its partitions may go to another member meanwhile).
            self.core.forget_membership()
            if await self._close_requested_within(backoff):
                return
            backoff = min(backoff * 2, 2.0)

    async def _close_requested_within(self, delay: float) -> bool:
        """Waits ``delay`` between sessions, answering a close at once (True)."""
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            try:
                ev = await asyncio.wait_for(self.events.get(), left)
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
        self.joining = True
        owned: dict[str, list[int]] = {}
        for t, p in self.core.owned:
            owned.setdefault(t, []).append(p)
        return group_service_pb2.SessionRequest(
            join=group_service_pb2.JoinGroup(
                group=self.core.group or "",
                topics=self.core.topics,
                assignors=self.core.cfg["partition.assignment.strategy"],
                session_timeout_ms=self.core.cfg["session.timeout.ms"],
                owned=[group_service_pb2.TopicPartitions(topic=t, partitions=ps) for t, ps in owned.items()],
                client_id=self.core.cfg["client.id"],
            )
        )

    async def _run_one(self, addr: str) -> bool:
        """One Session stream at ``addr``; returns True when the consumer closed."""
        events = self.events
        call = self.core.brokers.stubs(addr).groups.Session()
        reader = asyncio.get_running_loop().create_task(self._read(call))
        try:
            await call.write(self._join_request())
            heartbeat_every = self.core.cfg["heartbeat.interval.ms"] / 1000
            commit_every = self.core.cfg["auto.commit.interval.ms"] / 1000
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
                    hb = group_service_pb2.Heartbeat(generation=self.core.generation)
                    await call.write(group_service_pb2.SessionRequest(heartbeat=hb))
                    next_heartbeat = now + heartbeat_every
                if now >= next_commit:
                    next_commit = now + commit_every
                    if self.core.cfg["enable.auto.commit"]:
                        try:
                            await self.core.commit_positions(
                                self.core.processed_offsets(), self.core.inline_timeout
                            )
                        except TidelogError as e:
                            self.core.log.debug("auto-commit failed: %s", e)
                kind = ev[0]
                if kind in ("resp", "lost") and ev[1] is not call:
                    continue  # left over from an earlier session
                if kind == "resp":
                    await self._on_response(call, ev[2])
                elif kind == "lost":
                    raise ev[2]
                elif kind == "rejoin":
                    if self.joining:
                        self._rejoin_pending = True  # after this round's assignment
                    else:
                        await self.core.revoke(commit=True)
                        await call.write(self._join_request())
                elif kind == "close":
                    try:
                        await self.core.revoke(commit=True)
                        await call.write(
                            group_service_pb2.SessionRequest(leave=group_service_pb2.LeaveGroup())
                        )
                        await call.done_writing()
                    except Exception as e:  # a dead call: the broker drops us when it notices
                        self.core.log.debug("leaving the group failed: %r", e)
                    finally:
                        if not ev[1].done():
                            ev[1].set_result(None)
                    return True
        finally:
            reader.cancel()
            call.cancel()

    async def _read(self, call: Any) -> None:
        """Posts the session's responses (tagged with their call, so a later session can tell
        leftovers of this one apart) and its end."""
        try:
            while True:
                r = await call.read()
                if r is grpc.aio.EOF:
                    ended = RetriableError("the broker ended the group session", grpc.StatusCode.UNAVAILABLE)
                    self.post(("lost", call, ended))
                    return
                self.post(("resp", call, r))
        except grpc.aio.AioRpcError as e:
            self.post(("lost", call, from_rpc_error(e)))

    async def _on_response(self, call: Any, resp: group_service_pb2.SessionResponse) -> None:
        kind = resp.WhichOneof("kind")
        if kind == "joined":
            j = resp.joined
            self.joining = False
            self.core.reporter.answered(self.core.brokers.current)
            with self.core.lock:
                self.core.member_id = j.member_id
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
            every = self.core.cfg["heartbeat.interval.ms"] / 1000
            last = time.monotonic()

            async def heartbeat() -> None:
                """While the committed offsets are unstable (a transaction holds some), which
                may take up to default.api.timeout.ms: the session must stay alive."""
                nonlocal last
                if time.monotonic() - last >= every:
                    last = time.monotonic()
                    hb = group_service_pb2.Heartbeat(generation=a.generation)
                    await call.write(group_service_pb2.SessionRequest(heartbeat=hb))

            await self.core.assign(a.generation, tps, timeout=self.core.inline_timeout, keepalive=heartbeat)
            self.core.counters["rebalance_cnt"] += 1
            self.core.check_topics({t for t, _ in tps})
            if self._rejoin_pending:  # subscribe() changed the topics during this round
                self._rejoin_pending = False
                await self.core.revoke(commit=True)
                await call.write(self._join_request())
        elif kind == "rebalance":
            if not self.joining:  # else our Join on its way answers this rebalance too
                self.core.log.debug("rebalance (%s): revoking", resp.rebalance.reason)
                await self.core.revoke(commit=True)
                await call.write(self._join_request())
        elif kind == "error":
            err = from_code(resp.error.code, resp.error.message)
            self.core.log.info("group session error: %s", err)
            if int(resp.error.code) in (ErrorCode.INCONSISTENT_GROUP, ErrorCode.INVALID_REQUEST):
                raise err
