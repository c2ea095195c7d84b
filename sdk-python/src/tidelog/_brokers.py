"""The brokers a consumer talks to: a :class:`~tidelog._failover.Ring` of them, a channel to each.

A consumer sends its group session, commits and metadata calls to one broker at a time, the
ring's ``current`` (the first bootstrap broker at first). In a cluster any broker routes group
calls to the coordinator on the controller, so when the current broker fails the consumer
moves on along the ring (learnt once from DescribeCluster, :meth:`Brokers.learn`; its order is
random per client, see :mod:`tidelog._failover`) and carries on there, as the Rust SDK's group
member does. Reads go to brokers that hold the partitions (see :mod:`tidelog._consumer_core`),
which needs the brokers by id: ``ids``. Unary calls wait ``request.timeout.ms`` per attempt
and retry across brokers until their deadline (:meth:`Brokers.call`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import grpc

from ._channel import Transport, aio_channel
from ._events import Reporter
from ._failover import Ring, call_async
from .errors import from_rpc_error
from .v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    group_service_pb2_grpc,
    offsets_service_pb2_grpc,
    records_service_pb2,
    records_service_pb2_grpc,
    security_service_pb2_grpc,
    transaction_service_pb2_grpc,
)

T = TypeVar("T")


class Stubs(NamedTuple):
    """The services of one broker, over one channel (a ``grpc.aio`` or a blocking one)."""

    records: records_service_pb2_grpc.RecordServiceStub
    admin: admin_service_pb2_grpc.AdminServiceStub
    offsets: offsets_service_pb2_grpc.OffsetServiceStub
    groups: group_service_pb2_grpc.GroupServiceStub
    security: security_service_pb2_grpc.SecurityServiceStub
    transactions: transaction_service_pb2_grpc.TransactionServiceStub
    #: ``RecordService.Subscribe`` answering the responses' raw bytes, for a decoder that
    #: reads them itself (``tidelog._native.decode_subscribe``).
    subscribe_raw: Any

    @classmethod
    def of(cls, channel: grpc.Channel | grpc.aio.Channel) -> Stubs:
        return cls(
            records_service_pb2_grpc.RecordServiceStub(channel),
            admin_service_pb2_grpc.AdminServiceStub(channel),
            offsets_service_pb2_grpc.OffsetServiceStub(channel),
            group_service_pb2_grpc.GroupServiceStub(channel),
            security_service_pb2_grpc.SecurityServiceStub(channel),
            transaction_service_pb2_grpc.TransactionServiceStub(channel),
            channel.unary_stream(
                "/tidelog.v1.RecordService/Subscribe",
                request_serializer=records_service_pb2.SubscribeRequest.SerializeToString,
                response_deserializer=None,
            ),
        )


class Brokers(Ring):
    """See the module docs. Used on one asyncio loop (channels belong to it). ``timeout`` is
    one attempt's (``request.timeout.ms``), ``api_timeout`` a whole call's default
    (``default.api.timeout.ms``), in seconds; every channel, to any broker, uses
    ``transport`` (plaintext or TLS)."""

    def __init__(
        self,
        bootstrap: list[str],
        timeout: float,
        api_timeout: float,
        transport: Transport,
        reporter: Reporter | None = None,
    ) -> None:
        super().__init__(bootstrap, reporter=reporter)
        self.transport = transport
        self.timeout = timeout
        self.api_timeout = api_timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Stubs] = {}

    def stubs(self, addr: str | None = None) -> Stubs:
        """The stubs of ``addr`` (default: the current broker); its channel opens on first use."""
        addr = addr or self.current
        s = self._stubs.get(addr)
        if s is None:
            ch = self._channels[addr] = aio_channel(addr, self.transport)
            s = self._stubs[addr] = Stubs.of(ch)
        return s

    async def learn(self) -> None:
        """Learns the cluster's brokers from the current one, once. Best effort: a failure
        leaves the ring as it is (the consumer keeps its bootstrap brokers) and the next call
        tries again; a broker older than clusters (no DescribeCluster) is a single node."""
        if self.learnt:
            return
        try:
            resp = await self.stubs().admin.DescribeCluster(
                admin_service_pb2.DescribeClusterRequest(), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                err = from_rpc_error(e)
                failed = self.current
                self.log.debug("cannot learn the cluster from %s: %s", failed, err)
                if err.retriable:
                    self.reporter.failed(failed, err, "learning the cluster")
                    self.move_on(failed)  # the next call (or learn) starts at the next one
                return
            resp = admin_service_pb2.DescribeClusterResponse()
        self.reporter.answered(self.current)
        self.adopt(resp)

    async def retry(self, attempt: Callable[[str, float], Awaitable[T]], timeout: float | None = None) -> T:
        """``attempt(broker, its timeout)`` at the current broker, failing over and retrying
        after retriable failures until ``timeout`` (default ``api_timeout``) seconds passed
        (:func:`~tidelog._failover.call_async`); raises the last failure. Only for requests
        that can be repeated (reads, and commits of the same offsets with the same generation)."""
        await self.learn()
        return await call_async(self, attempt, self.api_timeout if timeout is None else timeout, self.timeout)

    async def call(
        self, method: Callable[[Stubs], Any], request: Any, timeout: float | None = None
    ) -> tuple[str, Any]:
        """A unary call, retried as :meth:`retry` says. Returns the broker that answered and
        its answer."""

        async def attempt(addr: str, t: float) -> tuple[str, Any]:
            return addr, await method(self.stubs(addr))(request, timeout=t)

        return await self.retry(attempt, timeout)

    async def close(self) -> None:
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for ch in channels:
            await ch.close()
