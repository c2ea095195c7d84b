"""The asyncio clients against a real broker."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Broker, unique

from tidelog import AdminClient, Message, TopicPartition, UnknownTopicError
from tidelog.aio import AIOConsumer, AIOProducer


async def test_aio_round_trip_and_group_iteration(broker: Broker, admin: AdminClient):
    topic, group = unique("aio"), unique("grp")
    admin.create_topic(topic, num_partitions=3)
    async with AIOProducer({"bootstrap.servers": broker.addr, "compression.type": "zstd"}) as p:
        first = await p.send_and_wait(topic, b"first", key=b"k0", headers={"h": "v"})
        assert first.offset() == 0 and first.header("h") == b"v"
        futs = [await p.send(topic, f"v{i}", key=f"k{i % 9}") for i in range(999)]
        assert await p.flush(20) == 0
        delivered = [f.result() for f in futs]
    assert len({(m.partition(), m.offset()) for m in delivered}) == 999
    assigned: list[list[TopicPartition]] = []

    async def on_assign(c: AIOConsumer, ps: list[TopicPartition]) -> None:
        assigned.append(ps)

    got: list[Message] = []
    async with AIOConsumer(
        {"bootstrap.servers": broker.addr, "group.id": group, "auto.offset.reset": "earliest"}
    ) as c:
        await c.subscribe([topic], on_assign=on_assign)

        async def collect() -> None:
            async for m in c:
                got.append(m)
                if len(got) == 1000:
                    return

        await asyncio.wait_for(collect(), 30)
        await c.commit()
        committed = await c.committed([TopicPartition(topic, p) for p in range(3)])
    assert assigned and len(assigned[0]) == 3
    assert sorted(m.value() for m in got) == sorted([b"first"] + [f"v{i}".encode() for i in range(999)])
    assert sum(tp.offset or 0 for tp in committed) == 1000


async def test_aio_errors_and_manual_assignment(broker: Broker, admin: AdminClient):
    topic = unique("aio")
    admin.create_topic(topic, num_partitions=2)
    async with AIOProducer({"bootstrap.servers": broker.addr}) as p:
        with pytest.raises(UnknownTopicError):
            await p.send("missing-topic", b"x")
        for i in range(10):
            await p.send(topic, str(i), partition=1)
    async with AIOConsumer({"bootstrap.servers": broker.addr}) as c:
        await c.assign([TopicPartition(topic, 1, 4)])
        msgs = await c.getmany(100, timeout=5)
        while len(msgs) < 6:
            msgs += await c.getmany(100, timeout=5)
        assert [m.value() for m in msgs] == [str(i).encode() for i in range(4, 10)]
        assert c.position(TopicPartition(topic, 1)) == 10
