"""The brokers a consumer talks to: the current one, the rest of the cluster, a channel to each.

A consumer sends its group session, commits and metadata calls to one broker at a time,
``current`` (the bootstrap broker at first). In a cluster any broker routes group calls to
the coordinator on the controller, so when the current broker fails the consumer moves on to
the next broker of ``ring`` and carries on there, as the Rust SDK's group member does. The
ring is the bootstrap broker, then the cluster's brokers in DescribeCluster's order, learnt
once (:meth:`Brokers.learn`). Reads go to brokers that hold the partitions (see
:mod:`tidelog._consumer_core`), which needs the brokers by id: ``ids``.

Invariants: ``current`` is always in ``ring``; ``ring`` starts with the bootstrap address and
has no duplicates; ``ids`` is empty on a single node, whose advertised address may not be
reachable from here (a proxy, NAT), so only the bootstrap address is ever used there; one
failure moves ``current`` at most once, however many calls saw it (:meth:`Brokers.move_on`
names the broker that failed and does nothing if ``current`` already moved past it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from ._channel import aio_channel
from ._config import target
from .errors import TidelogError, from_rpc_error
from .v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    group_service_pb2_grpc,
    offsets_service_pb2_grpc,
    records_service_pb2_grpc,
)

log = logging.getLogger("tidelog.consumer")


class Stubs(NamedTuple):
    """The services of one broker, over one channel."""

    records: records_service_pb2_grpc.RecordServiceStub
    admin: admin_service_pb2_grpc.AdminServiceStub
    offsets: offsets_service_pb2_grpc.OffsetServiceStub
    groups: group_service_pb2_grpc.GroupServiceStub


class Brokers:
    """See the module docs. Used on one asyncio loop (channels belong to it)."""

    def __init__(self, bootstrap: str, timeout: float) -> None:
        self.current = bootstrap
        self.ring = [bootstrap]
        self.ids: dict[int, str] = {}
        self.timeout = timeout
        self._learnt = False
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Stubs] = {}

    def stubs(self, addr: str | None = None) -> Stubs:
        """The stubs of ``addr`` (default: the current broker); its channel opens on first use."""
        addr = addr or self.current
        s = self._stubs.get(addr)
        if s is None:
            ch = self._channels[addr] = aio_channel(addr)
            s = self._stubs[addr] = Stubs(
                records_service_pb2_grpc.RecordServiceStub(ch),
                admin_service_pb2_grpc.AdminServiceStub(ch),
                offsets_service_pb2_grpc.OffsetServiceStub(ch),
                group_service_pb2_grpc.GroupServiceStub(ch),
            )
        return s

    async def learn(self) -> None:
        """Learns the cluster's brokers from the current one, once. Best effort: a failure
        leaves the ring as it is (the consumer keeps its one broker) and the next call tries
        again; a broker older than clusters (no DescribeCluster) is a single node."""
        if self._learnt:
            return
        try:
            resp = await self.stubs().admin.DescribeCluster(
                admin_service_pb2.DescribeClusterRequest(), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                log.debug("cannot learn the cluster from %s: %s", self.current, from_rpc_error(e))
                return
            resp = admin_service_pb2.DescribeClusterResponse()
        if len(resp.brokers) > 1:
            self.ids = {b.id: target(b.address) for b in resp.brokers}
            self.ring += [a for a in self.ids.values() if a not in self.ring]
        self._learnt = True

    def move_on(self, failed: str) -> None:
        """``failed`` did not answer: the current broker becomes the next one of the ring
        (unless another failure already moved it; a single node stays where it is)."""
        if failed != self.current or len(self.ring) < 2:
            return
        self.current = self.ring[(self.ring.index(failed) + 1) % len(self.ring)]
        log.debug("broker %s failed; moving on to %s", failed, self.current)

    def attempts(self) -> range:
        """One attempt per broker of the ring: a call fails over to each at most once."""
        return range(len(self.ring))

    async def call(self, method: Callable[[Stubs], Any], request: Any) -> tuple[str, Any]:
        """A unary call at the current broker, failing over to the next broker of the ring
        after a retriable failure (the broker down or stalled, or unable to reach the
        controller), each broker once. Returns the broker that answered and its answer;
        raises the last failure. Every call the consumer makes this way can be repeated
        (reads, and commits of the same offsets with the same generation)."""
        await self.learn()
        err: TidelogError | None = None
        for _ in self.attempts():
            addr = self.current
            try:
                return addr, await method(self.stubs(addr))(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e)
            if not err.retriable:
                break
            self.move_on(addr)
        assert err is not None
        raise err

    async def close(self) -> None:
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for ch in channels:
            await ch.close()
