"""Which broker a unary request goes to, and how long it keeps trying: the one failover and
retry policy of the consumer (commits, committed offsets, metadata) and the admin client.

- :class:`Ring`: the brokers a client knows and the one it asks now (``current``). It starts
  with the ``bootstrap.servers`` entries; the cluster's other brokers join once learnt
  (DescribeCluster), **in a random order per client**, as the Rust SDK picks replicas at
  random: when a broker fails, the clients that used it spread over the survivors instead of
  all moving to the same next one (which may be down too).
- :func:`call_sync` / :func:`call_async`: one request at ``current``; after a retriable
  failure (:attr:`~tidelog.errors.TidelogError.retriable`: the broker down, stalled, shutting
  down, or unable to reach the controller) the ring moves on and the request is tried again
  after a backoff (doubling from 50 ms up to 1 s) until the deadline; a fatal answer (a fenced
  commit, an unknown topic, a topic that exists) is raised at once, never tried elsewhere.
  Each attempt waits at most ``per_attempt`` (``request.timeout.ms``) and never past the
  deadline (``default.api.timeout.ms``), so a stalled broker costs one attempt, not the call.

Two retriable answers are about a transaction's or a group's state, not about the broker:
CONCURRENT_TRANSACTIONS (retried here like the others, but without moving on or reporting the
broker) and UNSTABLE_OFFSET_COMMIT (raised at once: the consumer waits for the transaction
holding the group's offsets while it keeps its group session alive, see
:mod:`tidelog._consumer_core`).

Every retry is logged (the client's logger, at info level; the first failure of a broker is a
warning and goes to ``error_cb``, through the client's :class:`~tidelog._events.Reporter`), so
a call that retries for a minute never does so silently.

Only requests that can be repeated go through here: reads, commits of the same offsets with
the same generation, and admin calls (a create or delete retried after a lost answer reports
that the topic exists, or is unknown, if the first attempt went through, as in Kafka). The
producer keeps its own rules: its sends follow leaders and resend idempotently, and its
metadata read gives each attempt a whole ``request.timeout.ms`` however short
``max.block.ms`` is, which this policy's deadline would cut.

Invariants: ``current`` is always in ``ring``; ``ring`` starts with the bootstrap addresses
and has no duplicates; ``ids`` is empty on a single node, whose advertised address may not be
reachable from here (a proxy, NAT), so only the bootstrap addresses are used there; one
failure moves ``current`` at most once, however many concurrent calls saw it
(:meth:`Ring.move_on` names the broker that failed and does nothing if ``current`` already
moved past it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from ._config import target
from ._events import Reporter
from .errors import ErrorCode, TidelogError, UnstableOffsetCommitError, from_rpc_error
from .v1 import admin_service_pb2

T = TypeVar("T")

_LOG = logging.getLogger("tidelog.failover")

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


class Ring:
    """See the module docs. Pure state, no I/O; ``rng`` is for tests. ``reporter`` hears of
    every failed and answered attempt (default: one that only logs, to ``tidelog.failover``)."""

    def __init__(
        self, bootstrap: Sequence[str], rng: random.Random | None = None, reporter: Reporter | None = None
    ) -> None:
        if not bootstrap:
            raise ValueError("a ring needs at least one broker")
        self.reporter = reporter or Reporter(_LOG, None, list(bootstrap))
        self.log = self.reporter.log
        self.ring = list(dict.fromkeys(bootstrap))
        self.current = self.ring[0]
        self.ids: dict[int, str] = {}
        self.learnt = False
        self._rng = rng or random.Random()

    def adopt(self, resp: admin_service_pb2.DescribeClusterResponse) -> None:
        """Takes in what DescribeCluster answered (see the module docs for the order)."""
        if len(resp.brokers) > 1:
            self.ids = {b.id: target(b.address) for b in resp.brokers}
            others = [a for a in dict.fromkeys(self.ids.values()) if a not in self.ring]
            self._rng.shuffle(others)
            self.ring += others
        self.learnt = True

    def move_on(self, failed: str) -> None:
        """``failed`` did not answer: the current broker becomes the next one of the ring
        (unless another failure already moved it; a ring of one stays where it is)."""
        if failed != self.current or len(self.ring) < 2:
            return
        self.current = self.ring[(self.ring.index(failed) + 1) % len(self.ring)]
        self.log.debug("broker %s failed; moving on to %s", failed, self.current)


class Schedule:
    """One request's attempts: how long each may wait, and the backoff before the next one."""

    def __init__(
        self, timeout: float, per_attempt: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.deadline = clock() + timeout
        self.per_attempt = per_attempt
        self._backoff = _FIRST_BACKOFF
        self.attempts = 0

    def attempt_timeout(self) -> float:
        self.attempts += 1
        return max(0.0, min(self.per_attempt, self.deadline - self._clock()))

    def left(self) -> float:
        """Seconds until the deadline."""
        return max(0.0, self.deadline - self._clock())

    def retry_after(self, err: TidelogError) -> float:
        """The delay before the next attempt; raises ``err`` when it is fatal or when no
        attempt would start before the deadline."""
        if (
            not err.retriable
            or isinstance(err, UnstableOffsetCommitError)
            or self._clock() + self._backoff >= self.deadline
        ):
            raise err
        delay = self._backoff
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        return delay


def state_answer(err: TidelogError) -> bool:
    """Whether a retriable error is the broker's answer about a transaction's or a group's
    state (the broker is fine: no failover, no report)."""
    return err.code in (ErrorCode.CONCURRENT_TRANSACTIONS, ErrorCode.UNSTABLE_OFFSET_COMMIT)


def _failed(ring: Ring, addr: str, e: Exception) -> TidelogError:
    """The error of a failed attempt at ``addr``; a retriable one is reported and moves the
    ring on (also when the call gives up: the next call then starts elsewhere)."""
    err = from_rpc_error(e) if isinstance(e, grpc.RpcError) else e
    assert isinstance(err, TidelogError)
    if err.retriable and not state_answer(err):
        ring.reporter.failed(addr, err)
        ring.move_on(addr)
    return err


def _retry_after(ring: Ring, schedule: Schedule, addr: str, err: TidelogError) -> float:
    """The backoff before the next attempt, logged; raises ``err`` when the call gives up."""
    try:
        delay = schedule.retry_after(err)
    except TidelogError:
        if err.retriable and not isinstance(err, UnstableOffsetCommitError):
            ring.log.warning("giving up after %d attempts: %s", schedule.attempts, err)
        raise
    ring.log.info(
        "attempt %d at %s failed (%s); retrying at %s in %.2f s (giving up in %.1f s)",
        schedule.attempts,
        addr,
        err,
        ring.current,
        delay,
        schedule.left(),
    )
    return delay


def call_sync(
    ring: Ring,
    attempt: Callable[[str, float], T],
    timeout: float,
    per_attempt: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``attempt(broker, its timeout)`` at the ring's current broker, failing over and retrying
    per the module docs until ``timeout`` seconds passed. ``attempt`` raises a
    :class:`grpc.RpcError` or a :class:`~tidelog.errors.TidelogError` (an error in a response
    body); the last error is raised."""
    schedule = Schedule(timeout, per_attempt, clock)
    while True:
        addr = ring.current
        try:
            got = attempt(addr, schedule.attempt_timeout())
        except (grpc.RpcError, TidelogError) as e:
            err = _failed(ring, addr, e)
        else:
            ring.reporter.answered(addr)
            return got
        sleep(_retry_after(ring, schedule, addr, err))


async def call_async(
    ring: Ring,
    attempt: Callable[[str, float], Awaitable[T]],
    timeout: float,
    per_attempt: float,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """:func:`call_sync` for asyncio (``attempt`` is awaited, so is the backoff)."""
    schedule = Schedule(timeout, per_attempt, clock)
    while True:
        addr = ring.current
        try:
            got = await attempt(addr, schedule.attempt_timeout())
        except (grpc.RpcError, TidelogError) as e:
            err = _failed(ring, addr, e)
        else:
            ring.reporter.answered(addr)
            return got
        await sleep(_retry_after(ring, schedule, addr, err))
