"""confluent-kafka parity of the consumer, against a real broker: subscribe needs a group.id,
unsubscribe, store_offsets with enable.auto.offset.store=false, incremental_assign /
incremental_unassign, partition EOF events, watermarks, offsets_for_times and logical offsets."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import Broker, eventually, unique

from tidelog import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    AdminClient,
    ConfigError,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)


def produce(addr: str, topic: str, values: list[str], partition: int = 0) -> None:
    """Produces ``values`` to one partition and waits until they are acknowledged."""
    with Producer({"bootstrap.servers": addr, "linger.ms": 0}) as p:
        for v in values:
            p.produce(topic, v, partition=partition)
        assert p.flush(10) == 0


def drain(c: Consumer, until: Any, timeout: float = 15) -> list[Message]:
    """Polls ``c`` until ``until(received)`` is true (or fails after ``timeout`` s)."""
    got: list[Message] = []
    eventually(lambda: got.extend(c.consume(100, 0.1)) or until(got), timeout, "records")
    return got


def poll_for(c: Consumer, seconds: float) -> list[Message]:
    """Everything ``c`` returns within ``seconds`` (to check that nothing more comes)."""
    got: list[Message] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got += c.consume(100, 0.05)
    return got


def test_subscribe_without_group_id_is_refused(broker: Broker):
    c = Consumer({"bootstrap.servers": broker.addr})
    try:
        with pytest.raises(ConfigError, match="group.id"):
            c.subscribe(["t"])
        assert c.assignment() == []
    finally:
        c.close()


def test_unsubscribe_leaves_the_group_and_subscribe_joins_again(broker: Broker, admin: AdminClient):
    topic, group = unique("unsub"), unique("grp")
    admin.create_topic(topic, num_partitions=2)
    produce(broker.addr, topic, ["a", "b"])
    revoked: list[list[TopicPartition]] = []
    cfg = {"bootstrap.servers": broker.addr, "group.id": group, "auto.offset.reset": "earliest"}
    c = Consumer(cfg)
    try:
        c.subscribe([topic], on_revoke=lambda _c, ps: revoked.append(ps))
        assert [m.value() for m in drain(c, lambda got: len(got) == 2)] == [b"a", b"b"]
        c.unsubscribe()
        assert c.assignment() == []
        c.poll(0)  # serves on_revoke
        assert revoked == [[TopicPartition(topic, 0), TopicPartition(topic, 1)]]
        assert admin.describe_group(group).members == []
        assert sum(admin.committed(group, topic).values()) == 2  # committed on the way out
        produce(broker.addr, topic, ["c"])
        assert poll_for(c, 0.3) == []  # not subscribed: nothing comes
        c.subscribe([topic])
        assert [m.value() for m in drain(c, lambda got: len(got) == 1)] == [b"c"]
    finally:
        c.close()


def test_store_offsets_decides_what_commits_commit(broker: Broker, admin: AdminClient):
    topic, group = unique("store"), unique("grp")
    admin.create_topic(topic, num_partitions=1)
    produce(broker.addr, topic, [str(i) for i in range(10)])
    cfg = {
        "bootstrap.servers": broker.addr,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": 100,
    }
    c = Consumer(cfg)
    try:
        c.subscribe([topic])
        got = drain(c, lambda got: len(got) == 10)
        c.store_offsets(got[4])  # processed up to offset 4: the next is 5
        eventually(lambda: admin.committed(group, topic).get(0) == 5, what="auto-commit of the stored offset")
        # Polling goes on, but only stored offsets are committed.
        assert poll_for(c, 0.5) == []
        assert admin.committed(group, topic) == {0: 5}
        c.store_offsets(offsets=[TopicPartition(topic, 0, 8)])
        assert c.commit(asynchronous=False) == [TopicPartition(topic, 0, 8)]
        assert admin.committed(group, topic) == {0: 8}
        with pytest.raises(ValueError):
            c.store_offsets()
    finally:
        c.close()
    assert admin.committed(group, topic) == {0: 8}  # close commits the stored offsets, no more
    auto = Consumer({"bootstrap.servers": broker.addr, "group.id": group})
    try:
        with pytest.raises(ConfigError, match="enable.auto.offset.store"):
            auto.store_offsets(offsets=[TopicPartition(topic, 0, 1)])
    finally:
        auto.close()


def test_incremental_assign_and_unassign(broker: Broker, admin: AdminClient):
    topic = unique("incr")
    admin.create_topic(topic, num_partitions=3)
    for p in range(3):
        produce(broker.addr, topic, [f"{p}-0", f"{p}-1"], partition=p)
    c = Consumer({"bootstrap.servers": broker.addr, "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, 0)])
        first = eventually(lambda: c.poll(0.2), what="a record")
        assert first.value() == b"0-0"  # one record of p0 taken so far
        c.incremental_assign([TopicPartition(topic, 1, 1), TopicPartition(topic, 2, OFFSET_END)])
        assert c.assignment() == [TopicPartition(topic, p) for p in range(3)]
        got = drain(c, lambda got: len(got) == 2)
        # p0 goes on where it was (no redelivery), p1 starts at 1, p2 at its end.
        assert sorted(m.value() for m in got) == [b"0-1", b"1-1"]
        c.incremental_unassign([TopicPartition(topic, 0)])
        assert c.assignment() == [TopicPartition(topic, 1), TopicPartition(topic, 2)]
        produce(broker.addr, topic, ["0-late"], partition=0)
        produce(broker.addr, topic, ["2-late"], partition=2)
        got = drain(c, lambda got: any(m.value() == b"2-late" for m in got))
        got += poll_for(c, 0.3)
        assert [m.value() for m in got] == [b"2-late"]  # nothing of the unassigned p0
        with pytest.raises(Exception, match="already assigned"):
            c.incremental_assign([TopicPartition(topic, 1)])
        with pytest.raises(Exception, match="not assigned"):
            c.incremental_unassign([TopicPartition(topic, 0)])
        c.unassign()
        assert c.assignment() == []
    finally:
        c.close()


def eof_and_values(msgs: list[Message]) -> list[tuple[int, Any]]:
    """(partition, value) per record, (partition, ("EOF", offset)) per EOF event."""
    out: list[tuple[int, Any]] = []
    for m in msgs:
        err = m.error()
        if err is None:
            out.append((m.partition(), m.value()))
        else:
            assert err.code() == KafkaError._PARTITION_EOF and err == KafkaError._PARTITION_EOF
            out.append((m.partition(), ("EOF", m.offset())))
    return out


def test_partition_eof_events_once_per_end(broker: Broker, admin: AdminClient):
    topic = unique("eof")
    admin.create_topic(topic, num_partitions=2)
    produce(broker.addr, topic, ["a", "b", "c"], partition=0)
    c = Consumer({"bootstrap.servers": broker.addr, "enable.partition.eof": True})
    try:
        c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
        got = eof_and_values(drain(c, lambda got: sum(m.error() is not None for m in got) == 2))
        got += eof_and_values(poll_for(c, 0.3))  # no more events while nothing new comes
        assert [x for x in got if x[0] == 0] == [(0, b"a"), (0, b"b"), (0, b"c"), (0, ("EOF", 3))]
        assert [x for x in got if x[0] == 1] == [(1, ("EOF", 0))]  # empty: its end at once
        produce(broker.addr, topic, ["d", "e"], partition=0)
        events = drain(c, lambda got: any(m.error() is not None for m in got))
        assert eof_and_values(events) == [(0, b"d"), (0, b"e"), (0, ("EOF", 5))]
        with pytest.raises(ValueError, match="an event, not a record"):
            c.commit(message=events[-1])
        assert c.position([TopicPartition(topic, 0)])[0].offset == 5  # events move no position
    finally:
        c.close()
    # Off by default: records only.
    c = Consumer({"bootstrap.servers": broker.addr})
    try:
        c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
        got = drain(c, lambda got: len(got) >= 5) + poll_for(c, 0.3)
        assert all(m.error() is None for m in got) and len(got) == 5
    finally:
        c.close()


def test_watermarks_offsets_for_times_and_logical_offsets(broker: Broker, admin: AdminClient):
    topic = unique("wm")
    admin.create_topic(topic, num_partitions=1)
    c = Consumer({"bootstrap.servers": broker.addr})
    try:
        tp = TopicPartition(topic, 0)
        assert c.get_watermark_offsets(tp) == (0, 0)
        assert c.get_watermark_offsets(tp, cached=True) == (OFFSET_INVALID, OFFSET_INVALID)
        produce(broker.addr, topic, ["a0", "a1", "a2"])
        # A time after every batch of the first flush and before the next: clock polled, no sleep.
        mid = int(time.time() * 1000) + 1
        eventually(lambda: time.time() * 1000 > mid, 5, "the clock to pass the mark")
        produce(broker.addr, topic, ["b3", "b4"])
        assert c.get_watermark_offsets(tp, timeout=5) == (0, 5)
        found = c.offsets_for_times(
            [TopicPartition(topic, 0, mid), TopicPartition(topic, 0, 0)], timeout=10
        ) + c.offsets_for_times([TopicPartition(topic, 0, int(time.time() * 1000) + 3_600_000)])
        assert [t.offset for t in found] == [3, 0, -1]  # -1: nothing at or after that time
        c.assign([TopicPartition(topic, 0, OFFSET_END)])
        assert c.position([tp])[0].offset == 5
        c.seek(TopicPartition(topic, 0, OFFSET_BEGINNING))
        assert [m.value() for m in drain(c, lambda got: len(got) == 5)][:1] == [b"a0"]
        assert c.get_watermark_offsets(tp, cached=True) == (OFFSET_INVALID, 5)
        c.seek(TopicPartition(topic, 0, found[0].offset))
        assert [m.value() for m in drain(c, lambda got: len(got) == 2)] == [b"b3", b"b4"]
    finally:
        c.close()
