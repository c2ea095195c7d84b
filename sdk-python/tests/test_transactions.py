"""Transactions (exactly once) against a real broker: a transactional producer's commits and
aborts as read_committed and read_uncommitted consumers see them, the last stable offset,
zombie fencing, the coordinator's timeout, offsets committed in a transaction, the admin
calls, and a consume-transform-produce application killed with SIGKILL again and again.

Every wait polls with a deadline; nothing sleeps to wait for state.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Broker, eventually, unique

from tidelog import (
    OFFSET_BEGINNING,
    AdminClient,
    ConfigError,
    Consumer,
    ConsumerGroupMetadata,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    ProducerFencedError,
    PurgedError,
    TidelogError,
    TopicPartition,
    TransactionAbortableError,
    TransactionState,
    TransactionStateError,
    TransactionTimeoutError,
    UnstableOffsetCommitError,
    kafka_error,
)
from tidelog.aio import AIOProducer

APP = Path(__file__).with_name("eos_app.py")
SRC = Path(__file__).resolve().parents[1] / "src"


def txn_producer(addr: str, tid: str, **extra: object) -> Producer:
    return Producer({"bootstrap.servers": addr, "transactional.id": tid, "linger.ms": 2, **extra})


def read(
    addr: str,
    topic: str,
    partitions: int,
    isolation: str,
    done: Callable[[list[Message]], bool],
    timeout: float = 20,
    settle: float = 0.0,
) -> list[Message]:
    """Every record of ``topic`` from offset 0 at ``isolation``, until ``done(records)`` or
    ``timeout`` seconds; then ``settle`` seconds more, to catch any record beyond."""
    c = Consumer({"bootstrap.servers": addr, "enable.auto.commit": False, "isolation.level": isolation})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Message] = []
    try:
        deadline = time.monotonic() + timeout
        while not done(out) and time.monotonic() < deadline:
            out += [m for m in c.consume(1000, 0.2) if m.error() is None]
        extra = time.monotonic() + settle
        while time.monotonic() < extra:
            out += [m for m in c.consume(1000, 0.1) if m.error() is None]
    finally:
        c.close()
    return sorted(out, key=lambda m: (m.partition(), m.offset()))


def values(msgs: list[Message]) -> list[bytes]:
    return [m.value() or b"" for m in msgs]


def at_least(n: int) -> Callable[[list[Message]], bool]:
    return lambda msgs: len(msgs) >= n


@pytest.fixture
def txn_topic(admin: AdminClient) -> str:
    name = unique("txn")
    admin.create_topic(name, num_partitions=2)
    return name


# ---- configuration and local state -------------------------------------------------------


def test_transactional_config_implies_idempotence_and_refuses_contradictions(broker: Broker):
    with pytest.raises(ConfigError, match="enable.idempotence"):
        Producer({"bootstrap.servers": broker.addr, "transactional.id": "x", "enable.idempotence": False})
    with pytest.raises(ConfigError, match="acks=all"):
        Producer({"bootstrap.servers": broker.addr, "transactional.id": "x", "acks": 1})
    with pytest.raises(ConfigError, match=r"transactional\.id"):
        Producer({"bootstrap.servers": broker.addr, "transactional.id": ""})
    with pytest.raises(ConfigError, match="isolation.level"):
        Consumer({"bootstrap.servers": broker.addr, "isolation.level": "serializable"})
    p = Producer({"bootstrap.servers": broker.addr, "transactional.id": unique("cfg"), "acks": "all"})
    try:
        assert p._cfg["enable.idempotence"] is True
    finally:
        p.close()


def test_calls_out_of_order_are_state_errors(broker: Broker, txn_topic: str):
    plain = Producer({"bootstrap.servers": broker.addr})
    try:
        with pytest.raises(TransactionStateError, match="transactional.id"):
            plain.init_transactions()
    finally:
        plain.close()
    p = txn_producer(broker.addr, unique("state"))
    try:
        with pytest.raises(TransactionStateError) as e:
            p.produce(txn_topic, b"too early")
        err = kafka_error(e.value)
        assert err.code() == KafkaError._STATE and not err.fatal() and not err.txn_requires_abort()
        with pytest.raises(TransactionStateError, match="init_transactions"):
            p.begin_transaction()
        p.init_transactions()
        with pytest.raises(TransactionStateError):
            p.init_transactions()
        with pytest.raises(TransactionStateError, match="outside a transaction"):
            p.produce(txn_topic, b"no transaction")
        with pytest.raises(TransactionStateError, match="no transaction to commit"):
            p.commit_transaction()
        with pytest.raises(TransactionStateError, match="no transaction to abort"):
            p.abort_transaction()
        p.begin_transaction()
        with pytest.raises(TransactionStateError, match="not finished"):
            p.begin_transaction()
        p.commit_transaction()  # an empty transaction: nothing to tell the coordinator
        p.begin_transaction()
        p.abort_transaction()
        with pytest.raises(TransactionStateError, match="outside a transaction"):
            p.produce(txn_topic, b"after the abort")
    finally:
        p.close()


# ---- commit, abort, last stable offset ----------------------------------------------------


def test_commit_makes_a_transaction_over_two_partitions_visible_to_read_committed(
    broker: Broker, txn_topic: str
):
    p = txn_producer(broker.addr, unique("commit"))
    delivered: list[Message] = []
    try:
        p.init_transactions()
        p.begin_transaction()
        for i in range(20):
            p.produce(
                txn_topic, f"v{i}".encode(), partition=i % 2, on_delivery=lambda e, m: delivered.append(m)
            )
        p.commit_transaction()
    finally:
        p.close()
    # commit_transaction served every delivery callback, as flush does.
    assert len(delivered) == 20 and {m.partition() for m in delivered} == {0, 1}
    got = read(broker.addr, txn_topic, 2, "read_committed", at_least(20), settle=0.5)
    assert sorted(values(got)) == sorted(f"v{i}".encode() for i in range(20))
    assert {m.partition() for m in got} == {0, 1}


def test_abort_hides_records_from_read_committed_only(broker: Broker, txn_topic: str):
    p = txn_producer(broker.addr, unique("abort"))
    try:
        p.init_transactions()
        p.begin_transaction()
        for i in range(6):
            p.produce(txn_topic, f"aborted-{i}".encode(), partition=i % 2)
        assert p.flush(10) == 0  # written to the log, then aborted
        p.abort_transaction()
        p.begin_transaction()
        for i in range(4):
            p.produce(txn_topic, f"committed-{i}".encode(), partition=i % 2)
        p.commit_transaction()
    finally:
        p.close()
    committed = read(broker.addr, txn_topic, 2, "read_committed", at_least(4), settle=0.5)
    assert sorted(values(committed)) == [f"committed-{i}".encode() for i in range(4)]
    # The aborted records and the markers leave gaps in the offsets read_committed returns.
    assert any(m.offset() > 0 for m in committed)
    uncommitted = read(broker.addr, txn_topic, 2, "read_uncommitted", at_least(10), settle=0.5)
    assert sorted(values(uncommitted)) == sorted(
        [f"aborted-{i}".encode() for i in range(6)] + [f"committed-{i}".encode() for i in range(4)]
    )


def test_abort_fails_records_not_sent_yet_with_purge(broker: Broker, txn_topic: str):
    p = txn_producer(broker.addr, unique("purge"), **{"linger.ms": 60_000})
    errors: list[TidelogError | None] = []
    try:
        p.init_transactions()
        p.begin_transaction()
        for i in range(5):
            p.produce(
                txn_topic, f"never-{i}".encode(), partition=0, on_delivery=lambda e, m: errors.append(e)
            )
        p.abort_transaction(10)  # returns at once: the records were still in their open batch
        assert len(errors) == 5 and all(isinstance(e, PurgedError) for e in errors)
        assert kafka_error(PurgedError("x")).code() == KafkaError._PURGE_QUEUE
        # The sequence numbers of the purged records were never used: the next transaction
        # appends (OUT_OF_ORDER_SEQUENCE otherwise).
        p.begin_transaction()
        p.produce(txn_topic, b"kept", partition=0)
        p.commit_transaction(10)
    finally:
        p.close()
    got = read(broker.addr, txn_topic, 2, "read_uncommitted", at_least(1), settle=0.5)
    assert values(got) == [b"kept"]


def test_read_committed_stops_at_the_last_stable_offset_until_the_commit(broker: Broker, txn_topic: str):
    plain = Producer({"bootstrap.servers": broker.addr})
    plain.produce(txn_topic, b"before", partition=0)
    assert plain.flush(10) == 0
    p = txn_producer(broker.addr, unique("lso"))
    reader = Consumer(
        {"bootstrap.servers": broker.addr, "enable.auto.commit": False, "isolation.level": "read_committed"}
    )
    try:
        p.init_transactions()
        p.begin_transaction()
        for i in range(5):
            p.produce(txn_topic, f"open-{i}".encode(), partition=0)
        assert p.flush(10) == 0  # in the log, in an open transaction
        # A non-transactional record after the open transaction's first one: held back too.
        plain.produce(txn_topic, b"after", partition=0)
        assert plain.flush(10) == 0
        uncommitted = read(broker.addr, txn_topic, 1, "read_uncommitted", at_least(7))
        assert values(uncommitted) == [b"before"] + [f"open-{i}".encode() for i in range(5)] + [b"after"]

        reader.assign([TopicPartition(txn_topic, 0, 0)])
        seen: list[Message] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            seen += [m for m in reader.consume(100, 0.1) if m.error() is None]
        assert values(seen) == [b"before"]  # nothing at or above the last stable offset
        _low, lso = reader.get_watermark_offsets(TopicPartition(txn_topic, 0), cached=True) or (0, 0)
        assert lso == 1  # the high watermark of a read_committed fetch is the last stable offset

        p.commit_transaction()
        deadline = time.monotonic() + 20
        while len(seen) < 7 and time.monotonic() < deadline:
            seen += [m for m in reader.consume(100, 0.2) if m.error() is None]
        assert values(seen) == [b"before"] + [f"open-{i}".encode() for i in range(5)] + [b"after"]
        # Positions are the last consumed offset + 1, whatever the gaps.
        assert reader.position([TopicPartition(txn_topic, 0)])[0].offset == seen[-1].offset() + 1
    finally:
        reader.close()
        p.close()
        plain.close()


# ---- fencing and the coordinator's timeout --------------------------------------------------


def test_a_second_instance_fences_the_first(broker: Broker, txn_topic: str):
    tid = unique("zombie")
    first = txn_producer(broker.addr, tid)
    second = txn_producer(broker.addr, tid)
    try:
        first.init_transactions()
        first.begin_transaction()
        for i in range(4):
            first.produce(txn_topic, f"zombie-{i}".encode(), partition=i % 2)
        assert first.flush(10) == 0  # written, in the first's open transaction

        second.init_transactions()  # fences the first, aborts its open transaction

        with pytest.raises(ProducerFencedError) as e:
            first.commit_transaction(20)
        err = kafka_error(e.value)
        assert err.fatal() and not err.retriable() and err.code() == KafkaError.PRODUCER_FENCED
        with pytest.raises(ProducerFencedError):
            first.produce(txn_topic, b"after being fenced")
        with pytest.raises(KafkaException) as e2:
            first.begin_transaction()
        assert kafka_error(e2.value).fatal()

        second.begin_transaction()
        second.produce(txn_topic, b"second", partition=0)
        second.commit_transaction()
    finally:
        first.close(1)
        second.close()
    committed = read(broker.addr, txn_topic, 2, "read_committed", at_least(1), settle=1.0)
    assert values(committed) == [b"second"]
    uncommitted = read(broker.addr, txn_topic, 2, "read_uncommitted", at_least(5))
    assert len(uncommitted) == 5  # the first's records are there, aborted


def test_the_coordinator_aborts_a_transaction_left_open_past_its_timeout(
    broker: Broker, admin: AdminClient, txn_topic: str
):
    tid = unique("abandoned")
    abandoned = txn_producer(broker.addr, tid, **{"transaction.timeout.ms": 1000})
    other = txn_producer(broker.addr, unique("other"))
    try:
        abandoned.init_transactions()
        abandoned.begin_transaction()
        for i in range(3):
            abandoned.produce(txn_topic, f"abandoned-{i}".encode(), partition=0)
        assert abandoned.flush(10) == 0
        # ... and nothing more from it: the coordinator aborts the transaction after 1 s.

        def aborted() -> bool:
            listed = {t.transactional_id: t for t in admin.list_transactions().result()}
            return listed[tid].state == TransactionState.COMPLETE_ABORT

        eventually(aborted, 20, "the coordinator to abort the abandoned transaction")
        other.init_transactions()
        other.begin_transaction()
        other.produce(txn_topic, b"later", partition=0)
        other.commit_transaction()
        got = read(broker.addr, txn_topic, 2, "read_committed", at_least(1), settle=0.5)
        assert values(got) == [b"later"]  # the reader moved past the aborted transaction
        # The abandoned producer was fenced by the abort.
        with pytest.raises(ProducerFencedError) as e:
            abandoned.commit_transaction(20)
        assert kafka_error(e.value).fatal()
    finally:
        abandoned.close(1)
        other.close()


# ---- offsets in transactions ---------------------------------------------------------------


def test_send_offsets_to_transaction_commits_the_group_offsets_only_with_the_transaction(
    broker: Broker, admin: AdminClient
):
    source, sink, group = unique("in"), unique("out"), unique("g")
    admin.create_topic(source, num_partitions=2)
    admin.create_topic(sink, num_partitions=2)
    plain = Producer({"bootstrap.servers": broker.addr})
    for i in range(30):
        plain.produce(source, f"rec-{i}".encode(), key=f"k{i % 5}".encode())
    assert plain.flush(10) == 0
    plain.close()

    consumer = Consumer(
        {
            "bootstrap.servers": broker.addr,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    p = txn_producer(broker.addr, unique("ctp"))

    def committed() -> dict[int, int]:
        try:
            return admin.committed(group, source)
        except TidelogError:
            return {-1: -1}

    def transform_batch(n: int) -> list[Message]:
        got: list[Message] = []
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            got += [m for m in consumer.consume(n - len(got), 0.2) if m.error() is None]
        assert len(got) == n
        p.begin_transaction()
        for m in got:
            p.produce(sink, (m.value() or b"").upper(), key=m.key())
        p.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata()
        )
        return got

    try:
        p.init_transactions()
        consumer.subscribe([source])
        eventually(lambda: len(consumer.assignment()) == 2, 20, "an assignment")
        meta = consumer.consumer_group_metadata()
        assert isinstance(meta, ConsumerGroupMetadata) and meta.group_id == group
        assert meta.generation_id > 0 and meta.member_id == consumer.memberid()

        # Aborted: the group's offsets do not move.
        transform_batch(10)
        with pytest.raises(UnstableOffsetCommitError):
            admin.committed(group, source)  # an open transaction holds offsets of the group
        p.abort_transaction()
        assert admin.committed(group, source) == {}
        for tp in consumer.assignment():  # as an application does after an abort
            consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))

        # Committed: they move to the positions sent.
        first = transform_batch(12)
        sent = {tp.partition: tp.offset for tp in consumer.position(consumer.assignment())}
        p.commit_transaction()
        assert committed() == sent
        assert sum(sent.values()) == 12  # offset = records read, as no record was skipped
        second = transform_batch(18)
        p.commit_transaction()
        assert sum(committed().values()) == 30
    finally:
        consumer.close()  # enable.auto.commit=false: commits nothing on close
        p.close()
    assert sum(admin.committed(group, source).values()) == 30
    out = read(broker.addr, sink, 2, "read_committed", at_least(30), settle=0.5)
    assert sorted(values(out)) == sorted((m.value() or b"").upper() for m in first + second)


def test_offsets_of_a_stale_generation_make_the_transaction_abortable(broker: Broker, admin: AdminClient):
    source, group = unique("in"), unique("g")
    admin.create_topic(source, num_partitions=1)
    p = txn_producer(broker.addr, unique("stale"))
    try:
        p.init_transactions()
        p.begin_transaction()
        p.produce(source, b"x", partition=0)
        stale = ConsumerGroupMetadata(group, generation_id=7, member_id="gone")
        with pytest.raises(TransactionAbortableError) as e:
            p.send_offsets_to_transaction([TopicPartition(source, 0, 1)], stale)
        err = kafka_error(e.value)
        assert err.txn_requires_abort() and not err.fatal()
        with pytest.raises(TransactionAbortableError):
            p.commit_transaction()
        with pytest.raises(TransactionAbortableError):
            p.produce(source, b"y", partition=0)
        p.abort_transaction()
        p.begin_transaction()  # the producer goes on
        p.produce(source, b"z", partition=0)
        p.commit_transaction()
    finally:
        p.close()
    assert values(read(broker.addr, source, 1, "read_committed", at_least(1), settle=0.5)) == [b"z"]


def test_a_group_consumer_waits_for_offsets_held_by_an_open_transaction(broker: Broker, admin: AdminClient):
    source, group = unique("in"), unique("g")
    admin.create_topic(source, num_partitions=1)
    plain = Producer({"bootstrap.servers": broker.addr})
    for i in range(10):
        plain.produce(source, f"r{i}".encode(), partition=0)
    assert plain.flush(10) == 0
    plain.close()
    p = txn_producer(broker.addr, unique("holder"))
    consumer = Consumer(
        {
            "bootstrap.servers": broker.addr,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        p.init_transactions()
        p.begin_transaction()
        p.send_offsets_to_transaction([TopicPartition(source, 0, 6)], group)  # a group id alone: not checked
        consumer.subscribe([source])
        first: list[Message] = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # the assignment waits for stable offsets
            first += [m for m in consumer.consume(10, 0.1) if m.error() is None]
        assert first == []
        p.commit_transaction()
        deadline = time.monotonic() + 20
        while len(first) < 4 and time.monotonic() < deadline:
            first += [m for m in consumer.consume(10, 0.2) if m.error() is None]
        assert [m.offset() for m in first] == [6, 7, 8, 9]  # from the offsets the commit stored
    finally:
        consumer.close()
        p.close()


def test_without_auto_commit_nothing_is_committed_on_rebalance_or_close(broker: Broker, admin: AdminClient):
    source, group = unique("in"), unique("g")
    admin.create_topic(source, num_partitions=2)
    plain = Producer({"bootstrap.servers": broker.addr})
    for i in range(20):
        plain.produce(source, f"r{i}".encode(), partition=i % 2)
    assert plain.flush(10) == 0
    plain.close()
    conf = {
        "bootstrap.servers": broker.addr,
        "group.id": group,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "auto.commit.interval.ms": 50,
    }
    first, second = Consumer(conf), Consumer(conf)
    try:
        first.subscribe([source])
        got: list[Message] = []
        deadline = time.monotonic() + 20
        while len(got) < 20 and time.monotonic() < deadline:
            got += [m for m in first.consume(20, 0.2) if m.error() is None]
        assert len(got) == 20
        first.poll(0.3)  # what the last poll returned counts as processed now
        second.subscribe([source])  # a rebalance: the first revokes its partitions
        eventually(lambda: len(first.assignment()) == 1 or first.poll(0.05), 20, "a rebalance")
        second.close()
        first.close()
        assert admin.committed(group, source) == {}  # neither the revoke nor the closes committed
    finally:
        first.close()
        second.close()


def test_read_committed_latest_starts_at_the_last_stable_offset(broker: Broker, txn_topic: str):
    p = txn_producer(broker.addr, unique("latest"))
    c = Consumer(
        {
            "bootstrap.servers": broker.addr,
            "group.id": unique("g"),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "latest",
        }
    )
    try:
        p.init_transactions()
        p.begin_transaction()
        for i in range(3):
            p.produce(txn_topic, f"open-{i}".encode(), partition=0)
        assert p.flush(10) == 0  # below the high watermark, above the last stable offset
        c.subscribe([txn_topic])
        eventually(lambda: len(c.assignment()) == 2 or c.poll(0.05), 20, "an assignment")
        got: list[Message] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # the fetch is open at the last stable offset
            got += [m for m in c.consume(10, 0.1) if m.error() is None]
        assert got == []
        p.commit_transaction()
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            got += [m for m in c.consume(10, 0.2) if m.error() is None]
        assert values(got) == [f"open-{i}".encode() for i in range(3)]  # not skipped as "old"
    finally:
        c.close()
        p.close()


# ---- admin and asyncio -----------------------------------------------------------------------


def test_admin_lists_describes_and_aborts_transactions(broker: Broker, admin: AdminClient, txn_topic: str):
    tid = unique("admin")
    p = txn_producer(broker.addr, tid)
    try:
        p.init_transactions()
        p.begin_transaction()
        p.produce(txn_topic, b"hanging", partition=1)
        assert p.flush(10) == 0
        listed = admin.list_transactions(states=[TransactionState.ONGOING]).result()
        assert tid in [t.transactional_id for t in listed]
        futures = admin.describe_transactions([tid, unique("unknown")])
        d = futures[tid].result()
        assert d.state == TransactionState.ONGOING and d.transaction_timeout_ms == 60_000
        assert d.topic_partitions == [TopicPartition(txn_topic, 1)] and d.transaction_start_time_ms
        unknown = next(f for t, f in futures.items() if t != tid)
        with pytest.raises(TidelogError, match="unknown"):
            unknown.result()

        admin.abort_transaction(tid).result()
        assert admin.describe_transactions([tid])[tid].result().state == TransactionState.COMPLETE_ABORT
        assert tid not in [
            t.transactional_id for t in admin.list_transactions(states=[TransactionState.ONGOING]).result()
        ]
        with pytest.raises(TidelogError):
            admin.abort_transaction(tid).result()  # nothing open any more
        with pytest.raises(ProducerFencedError):
            p.commit_transaction(20)
    finally:
        p.close(1)
    assert read(broker.addr, txn_topic, 2, "read_committed", lambda m: False, timeout=1.0) == []


async def test_aio_producer_commits_and_aborts(broker: Broker, txn_topic: str):
    async with AIOProducer(
        {"bootstrap.servers": broker.addr, "transactional.id": unique("aio"), "linger.ms": 2}
    ) as p:
        await p.init_transactions()
        await p.begin_transaction()
        futs = [await p.send(txn_topic, f"a{i}".encode(), partition=i % 2) for i in range(4)]
        await p.abort_transaction()
        assert all(f.done() for f in futs)
        await p.begin_transaction()
        futs = [await p.send(txn_topic, f"c{i}".encode(), partition=i % 2) for i in range(4)]
        await p.commit_transaction()
        assert all(f.done() and f.exception() is None for f in futs)
        with pytest.raises(TransactionStateError):
            await p.send(txn_topic, b"outside")
    got = read(broker.addr, txn_topic, 2, "read_committed", at_least(4), settle=0.5)
    assert sorted(values(got)) == [f"c{i}".encode() for i in range(4)]


def test_transaction_errors_tell_fatal_abortable_and_retriable_apart():
    cause = TidelogError("record too large")
    abortable = kafka_error(TransactionAbortableError("abort it", None, cause))
    assert abortable.txn_requires_abort() and not abortable.fatal() and not abortable.retriable()
    fenced = kafka_error(ProducerFencedError("fenced"))
    assert fenced.fatal() and not fenced.txn_requires_abort()
    timeout = kafka_error(TransactionTimeoutError("slow"))
    assert timeout.retriable() and timeout.code() == KafkaError._TIMED_OUT
    assert kafka_error(UnstableOffsetCommitError("busy")).retriable()


# ---- a consume-transform-produce application, killed again and again ------------------------


class App:
    """``eos_app.py`` as a child process; its stdout lines are collected by a thread."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out, err = self.proc.stdout, self.proc.stderr
        threading.Thread(target=lambda: [self.lines.append(x.strip()) for x in out], daemon=True).start()
        threading.Thread(target=lambda: [self.errors.append(x.rstrip()) for x in err], daemon=True).start()

    def commits(self) -> int:
        return sum(1 for line in self.lines if line.startswith("committed"))

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode


@pytest.fixture
def apps() -> Iterator[list[App]]:
    started: list[App] = []
    yield started
    for a in started:
        if a.proc.poll() is None:
            a.kill9()


def test_consume_transform_produce_survives_sigkill_exactly_once(
    broker: Broker, admin: AdminClient, apps: list[App]
):
    seed = int(os.environ.get("TIDELOG_EOS_SEED", random.randrange(1 << 30)))
    print(f"eos kill test seed: {seed} (TIDELOG_EOS_SEED={seed} repeats it)")
    rng = random.Random(seed)
    source, sink, group, tid = unique("eos-in"), unique("eos-out"), unique("eos-g"), unique("eos-tx")
    admin.create_topic(source, num_partitions=3)
    admin.create_topic(sink, num_partitions=3)
    total, keys = 600, 12
    # The input is transactional too, with an aborted transaction after every 50 records: the
    # application reads it read_committed, across the gaps they and the markers leave.
    src = txn_producer(broker.addr, unique("eos-src"))
    src.init_transactions()
    for chunk in range(0, total, 50):
        src.begin_transaction()
        for i in range(chunk, chunk + 50):
            src.produce(source, f"record-{i}".encode(), key=f"key-{i % keys}".encode())
        src.commit_transaction()
        src.begin_transaction()
        for i in range(5):
            src.produce(source, b"junk", key=f"key-{i}".encode())
        assert src.flush(20) == 0
        src.abort_transaction()
    src.close()
    args = [broker.addr, source, sink, group, tid, "8", "15"]

    kills = 0
    for _ in range(4):  # bounded rounds: start, let it commit at least once, SIGKILL it
        app = App(args)
        apps.append(app)
        eventually(lambda a=app: a.commits() > 0, 40, "the application to commit a transaction")
        time.sleep(rng.uniform(0.0, 0.4))  # the kill lands anywhere in the next transactions
        app.kill9()
        kills += 1
        if any(line.startswith("fatal") for line in app.lines):
            pytest.fail(f"the application failed fatally: {app.lines[-5:]} {app.errors[-20:]}")

    app = App(args)  # the last instance finishes the input
    apps.append(app)

    def output_complete() -> bool:
        got = read(broker.addr, sink, 3, "read_committed", at_least(total), timeout=2)
        return len(got) >= total

    eventually(output_complete, 90, f"the output to hold {total} records (app: {app.lines[-3:]})")
    assert app.stop() == 0, app.errors[-20:]
    assert kills == 4

    inputs = read(broker.addr, source, 3, "read_committed", at_least(total), settle=0.5)
    assert len(inputs) == total and b"junk" not in values(inputs)
    outputs = read(broker.addr, sink, 3, "read_committed", at_least(total), settle=1.0)
    expected = {
        (m.key(), (m.value() or b"").upper() + f"|{m.partition()}:{m.offset()}".encode()) for m in inputs
    }
    got = [(m.key(), m.value()) for m in outputs]
    assert len(got) == total, f"{len(got)} records in the output, {total} expected (seed {seed})"
    assert set(got) == expected, f"seed {seed}"  # each input record exactly once
    for key in {k for k, _ in expected}:
        want = [
            f"{m.partition()}:{m.offset()}" for m in inputs if m.key() == key
        ]  # inputs: sorted by (partition, offset); one key has one partition
        have = [(v or b"").decode().rsplit("|", 1)[1] for k, v in got if k == key]
        assert have == want, f"order of {key!r} (seed {seed})"
    uncommitted = read(broker.addr, sink, 3, "read_uncommitted", at_least(total), settle=0.5)
    assert len(uncommitted) >= total  # aborted attempts of the killed instances may be there too
    print(f"output: {len(got)} committed records, {len(uncommitted) - len(got)} aborted ones, {kills} kills")
