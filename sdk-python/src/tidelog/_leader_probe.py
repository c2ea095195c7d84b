"""The producer's leader probe: the Rust SDK's rule (``sdk-rust/src/producer/sender.rs``).

A leader frozen by SIGSTOP, or cut off from its peers, keeps the producer's stream open and
answers nothing, so its partitions would wait for ``request.timeout.ms`` (30 s). Instead, a
request unanswered for ``leader.probe.ms`` (1 s) makes the sender ask the *other* brokers who
leads the partition (every quarter of that while it stays unanswered); once one names another
broker (its peers elected a new leader), the sender treats the silent broker as lost and
resends there at once.

Brokers are compared by id: two brokers may name a third by different addresses. A broker that
holds no replica of a partition, knows no leader, or does not answer within half a second says
nothing. Never: report a move for a partition whose leader is, as far as the asked broker
knows, the broker it waits on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from ._config import target
from .v1 import admin_service_pb2, admin_service_pb2_grpc

#: How long one broker may take to answer the probe.
ASK_TIMEOUT = 0.5

#: A partition waiting on a broker: (the broker's address, (topic, partition)).
Stalled = tuple[str, tuple[str, int]]


async def probe(
    channel_to: Callable[[str], grpc.aio.Channel],
    known: dict[int, str],
    stalled: list[Stalled],
) -> list[tuple[str, tuple[str, int], str]]:
    """Asks the brokers of ``known`` (id → address, the producer's view) in turn who leads each
    stalled partition; returns ``(waits_on, (topic, partition), new leader's address)`` for
    each partition another broker says is led elsewhere."""
    left = list(stalled)
    moved: list[tuple[str, tuple[str, int], str]] = []
    for asked in known.values():
        mine = [(w, tp) for w, tp in left if w != asked]
        if not mine:
            continue
        admin = admin_service_pb2_grpc.AdminServiceStub(channel_to(asked))
        try:
            cluster = await admin.DescribeCluster(
                admin_service_pb2.DescribeClusterRequest(), timeout=ASK_TIMEOUT
            )
            theirs = {b.id: target(b.address) for b in cluster.brokers}
            for topic in {tp[0] for _, tp in mine}:
                desc = await admin.DescribeTopic(
                    admin_service_pb2.DescribeTopicRequest(name=topic), timeout=ASK_TIMEOUT
                )
                leaders = {p.partition: p.leader_id for p in desc.topic.partitions}
                for waits_on, tp in [(w, tp) for w, tp in mine if tp[0] == topic]:
                    leader = leaders.get(tp[1], 0)
                    if leader == 0:
                        continue
                    named = [a for a in (known.get(leader), theirs.get(leader)) if a]
                    if waits_on in named or not named:
                        continue  # still the leader, as far as this broker knows
                    moved.append((waits_on, tp, named[0]))
                    left.remove((waits_on, tp))
        except (grpc.aio.AioRpcError, asyncio.TimeoutError):
            continue
        if not left:
            break
    return moved
