"""The producers against a real 3-broker cluster (separate processes, RF = 3, acks=all,
idempotent): they route each partition to its leader, learnt from NOT_LEADER answers, and
follow a new leader after the old one is SIGKILLed or SIGSTOPped, storing every record once,
in order, at the offset its delivery reported. Records are read back with the Python consumer
from a surviving replica."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

import pytest
from conftest import Cluster, read_all, unique

from tidelog import Message, Producer
from tidelog.aio import AIOProducer

pytestmark = pytest.mark.timeout(60)

# Short timeouts: a stream to a dead broker is noticed at once, a stalled one within seconds.
FAST = {"linger.ms": 2, "request.timeout.ms": 3000, "retry.backoff.ms": 20, "delivery.timeout.ms": 45_000}


def check_log(got: list[Message], sent: dict[int, list[str]], delivered: list[Message]) -> None:
    """Per partition: offsets 0..n-1 without gaps, the values in send order, each once, and
    every delivery at the offset it reported."""
    by_partition: dict[int, list[Message]] = {}
    for m in got:
        by_partition.setdefault(m.partition, []).append(m)
    for p, values in sent.items():
        log = sorted(by_partition.get(p, []), key=lambda m: m.offset)
        assert [m.offset for m in log] == list(range(len(log))), f"partition {p}: gap or duplicate offset"
        assert [m.value.decode() for m in log] == values, f"partition {p}: lost, duplicated or reordered"
    stored = {(m.partition, m.offset): m.value for m in got}
    for d in delivered:
        assert stored.get((d.partition, d.offset)) == d.value, f"{d.value!r} not at {d.partition}/{d.offset}"


def test_producers_bootstrapped_at_a_follower_route_partitions_to_their_leaders(cluster: Cluster):
    """Sync then asyncio producer, both given a broker that does not lead partition 0: every
    record reaches its partition's leader (a follower answers NOT_LEADER, it never forwards)."""
    topic = unique("routed")
    cluster.create_topic(topic, partitions=3)
    follower = next(n for n in cluster.serving() if n != cluster.leader(topic, 0))
    cfg = {"bootstrap.servers": cluster.addr(follower), "acks": "all", "enable.idempotence": True, **FAST}
    n = 600
    sent: dict[int, list[str]] = {0: [], 1: [], 2: []}
    with Producer(cfg) as p:
        futs: list[Future[Message]] = []
        for i in range(n):
            futs.append(p.produce_future(topic, f"sync-{i}", partition=i % 3))
            sent[i % 3].append(f"sync-{i}")
        assert p.flush(30) == 0
    delivered = [f.result() for f in futs]

    async def produce_aio() -> list[Message]:
        async with AIOProducer(cfg) as ap:
            pending = []
            for i in range(n):
                pending.append(await ap.send(topic, f"aio-{i}", partition=i % 3))
                sent[i % 3].append(f"aio-{i}")
            return list(await asyncio.wait_for(asyncio.gather(*pending), 30))

    delivered += asyncio.run(produce_aio())
    got = read_all(cluster.addr(follower), topic, 3, 2 * n)
    assert len(got) == 2 * n, f"{len(got)} records stored for {2 * n} produced"
    check_log(got, sent, delivered)


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_idempotent_producer_follows_a_new_leader_when_the_leader_fails(cluster: Cluster, fault: str):
    """The producer is bootstrapped at the partition's leader, which is SIGKILLed (its streams
    break at once) or SIGSTOPped (they go silent: the producer gives up on them after
    request.timeout.ms) while up to 200 records are unacknowledged: the producer finds the new
    leader among the survivors and resends; no delivery fails, nothing is stored twice or out
    of order."""
    topic = unique("failover")
    cluster.create_topic(topic)
    leader = cluster.leader(topic)
    cfg = {"bootstrap.servers": cluster.addr(leader), "acks": "all", "enable.idempotence": True, **FAST}
    n, window, kill_at = 3000, 200, 1000
    futs: list[Future[Message]] = []
    with Producer(cfg) as p:
        for i in range(n):
            futs.append(p.produce_future(topic, f"r-{i}", partition=0))
            if i >= window:
                futs[i - window].result(40)  # bounded pace: at most `window` unacknowledged
            if i == kill_at and fault == "sigkill":
                cluster.brokers[leader].kill9()
            elif i == kill_at:
                cluster.brokers[leader].pause(True)
        assert p.flush(40) == 0
    delivered = [f.result() for f in futs]  # raises if any delivery failed
    survivor = cluster.leader(topic)
    assert survivor != leader
    got = read_all(cluster.addr(survivor), topic, 1, n)
    assert len(got) == n, f"{len(got)} records stored for {n} produced"
    check_log(got, {0: [f"r-{i}" for i in range(n)]}, delivered)
