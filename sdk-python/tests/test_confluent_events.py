"""confluent-kafka parity of what clients report besides records, against real brokers (and
dead loopback ports): ``error_cb``, ``logger`` warnings instead of silent polls, logged admin
retries, and ``stats_cb`` statistics."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from conftest import Broker, eventually, free_ports, unique

from tidelog import (
    AdminClient,
    Consumer,
    KafkaError,
    Producer,
    QueueFullError,
    RetriableError,
    TopicPartition,
)


class Captured(logging.Handler):
    """A logger's records, kept for the test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


def after_poll(client: Any, check: Any) -> Any:
    """A check for ``eventually`` that first serves the client's callbacks (``poll``)."""

    def run() -> Any:
        client.poll(0.1)
        return check()

    return run


def logger() -> tuple[logging.Logger, Captured]:
    log = logging.getLogger(unique("test-client"))
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = Captured()
    log.addHandler(handler)
    return log, handler


def codes(errors: list[KafkaError]) -> set[int]:
    return {e.code() for e in errors}


def test_producer_reports_a_dead_broker_to_error_cb_and_its_logger():
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    errors: list[KafkaError] = []
    log, captured = logger()
    p = Producer({"bootstrap.servers": dead, "error_cb": errors.append, "logger": log, "max.block.ms": 1500})
    try:
        with pytest.raises(RetriableError):
            p.produce("t", b"v")  # metadata cannot be read within max.block.ms
        eventually(after_poll(p, lambda: {KafkaError._ALL_BROKERS_DOWN} <= codes(errors)), 10)
    finally:
        p.close(0)
    assert KafkaError._TRANSPORT in codes(errors)
    assert all(e.retriable() and not e.fatal() for e in errors if e.code() == KafkaError._TRANSPORT)
    warnings = captured.lines(logging.WARNING)
    assert any(dead in w for w in warnings) and any("all 1 known brokers are down" in w for w in warnings)
    # Once per outage: retries while the broker stays down are debug lines, not warnings.
    assert sum(dead in w for w in warnings) == 1


def test_a_full_buffer_is_a_buffer_error(broker: Broker, admin: AdminClient):
    topic = unique("full")
    admin.create_topic(topic)
    broker_paused = False
    p = Producer({"bootstrap.servers": broker.addr, "buffer.memory": 65536, "max.block.ms": 200})
    try:
        p.produce(topic, b"warm-up")  # reads the metadata while the broker answers
        assert p.flush(10) == 0
        broker.pause(True)
        broker_paused = True
        with pytest.raises(BufferError) as e:
            for _ in range(1000):
                p.produce(topic, b"x" * 1000)
        assert isinstance(e.value, QueueFullError) and e.value.args[0].code() == KafkaError._QUEUE_FULL
    finally:
        if broker_paused:
            broker.pause(False)
        assert p.flush(30) == 0
        p.close()


def test_consumer_reports_a_dead_broker_and_a_missing_topic_instead_of_polling_silently(broker: Broker):
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    errors: list[KafkaError] = []
    log, captured = logger()
    c = Consumer({"bootstrap.servers": dead, "error_cb": errors.append, "logger": log})
    try:
        c.assign([TopicPartition("t", 0, 0)])
        eventually(lambda: c.poll(0.1) is None and KafkaError._TRANSPORT in codes(errors), 10, "error_cb")
    finally:
        c.close()
    assert any(dead in w for w in captured.lines(logging.WARNING))

    errors.clear()
    log, captured = logger()
    missing = unique("missing")
    cfg = {
        "bootstrap.servers": broker.addr,
        "group.id": unique("grp"),
        "error_cb": errors.append,
        "logger": log,
    }
    c = Consumer(cfg)
    try:
        c.subscribe([missing])
        eventually(lambda: c.poll(0.1) is None and errors, 15, "error_cb for the missing topic")
    finally:
        c.close()
    assert codes(errors) == {KafkaError.UNKNOWN_TOPIC_OR_PART} and len(errors) == 1
    assert missing in errors[0].str()
    assert any(f"Subscribed topic not available: {missing}" in w for w in captured.lines(logging.WARNING))


def test_admin_retries_are_logged_and_reported():
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    errors: list[KafkaError] = []
    log, captured = logger()
    cfg: dict[str, Any] = {
        "bootstrap.servers": dead,
        "request.timeout.ms": 300,
        "default.api.timeout.ms": 1500,
        "error_cb": errors.append,
        "logger": log,
    }
    with AdminClient(cfg) as admin, pytest.raises(RetriableError):
        admin.describe_topic("t")
    retries = [line for line in captured.lines(logging.INFO) if "retrying" in line]
    assert len(retries) >= 2 and all(dead in line for line in retries)
    assert any("giving up" in w for w in captured.lines(logging.WARNING))
    assert KafkaError._TRANSPORT in codes(errors)


def test_stats_cb_gets_statistics_every_interval(broker: Broker, admin: AdminClient):
    topic, group = unique("stats"), unique("grp")
    admin.create_topic(topic, num_partitions=2)
    stats: list[dict[str, Any]] = []

    def collect(s: str) -> None:
        stats.append(json.loads(s))

    base = {"bootstrap.servers": broker.addr, "stats_cb": collect, "statistics.interval.ms": 100}
    p = Producer(base)
    try:
        for i in range(10):
            p.produce(topic, f"v{i}", key=f"k{i}")
        assert p.flush(10) == 0
        eventually(lambda: p.poll(0.1) >= 0 and stats and stats[-1]["txmsgs"] == 10, 10, "producer stats")
    finally:
        p.close()
    last = stats[-1]
    assert last["type"] == "producer" and last["msg_cnt"] == 0 and last["txmsg_bytes"] > 0
    assert last["brokers"][broker.addr]["state"] == "UP" and last["brokers"][broker.addr]["nodeid"] == 1
    assert last["ts"] > 0 and last["time"] > 0 and last["name"].startswith("tidelog-python#producer-")

    stats.clear()
    c = Consumer({**base, "group.id": group, "auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic])

        def read_all_reported() -> bool:
            c.poll(0.1)
            if not stats or stats[-1]["rxmsgs"] != 10 or topic not in stats[-1]["topics"]:
                return False
            parts = stats[-1]["topics"][topic]["partitions"].values()
            return sum(p["app_offset"] for p in parts) == 10

        eventually(read_all_reported, 15, "consumer stats of 10 records read")
    finally:
        c.close()
    last = stats[-1]
    assert last["type"] == "consumer" and last["cgrp"]["rebalance_cnt"] >= 1
    assert last["cgrp"]["assignment_size"] == 2
    parts = last["topics"][topic]["partitions"]
    assert sum(p["hi_offset"] for p in parts.values()) == 10

    stats.clear()
    with AdminClient(base) as a:
        a.describe_topic(topic)
        eventually(lambda: stats, 10, "admin stats")
    assert stats[0]["type"] == "admin" and stats[0]["tx"] >= 1


def test_statistics_are_off_by_default(broker: Broker):
    stats: list[str] = []
    p = Producer({"bootstrap.servers": broker.addr, "stats_cb": stats.append})
    try:
        assert p.poll(0.3) == 0
    finally:
        p.close()
    assert stats == []


async def test_asyncio_clients_call_error_cb_and_stats_cb_on_the_loop(broker: Broker, admin: AdminClient):
    import asyncio
    import threading

    from tidelog.aio import AIOConsumer, AIOProducer

    topic = unique("aio-events")
    admin.create_topic(topic)
    loop_thread = threading.get_ident()
    stats: list[dict[str, Any]] = []
    threads: set[int] = set()

    def collect(s: str) -> None:
        threads.add(threading.get_ident())
        stats.append(json.loads(s))

    cfg = {"bootstrap.servers": broker.addr, "stats_cb": collect, "statistics.interval.ms": 50}
    async with AIOProducer(cfg) as p:
        await p.send_and_wait(topic, b"v")
        deadline = asyncio.get_running_loop().time() + 10
        while not (stats and stats[-1]["txmsgs"] == 1) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
    assert stats and stats[-1]["type"] == "producer" and stats[-1]["txmsgs"] == 1
    assert threads == {loop_thread}

    errors: list[KafkaError] = []
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    async with AIOConsumer({"bootstrap.servers": dead, "error_cb": errors.append}) as c:
        await c.assign([TopicPartition("t", 0, 0)])
        deadline = asyncio.get_running_loop().time() + 10
        while not errors and asyncio.get_running_loop().time() < deadline:
            assert await c.getmany(10, timeout=0.05) == []
    assert KafkaError._TRANSPORT in codes(errors)
