"""Compacted topics (``cleanup.policy`` compact) against a real broker process whose cleaner
runs every 200 ms: the consumers (sync, asyncio, group members) read a log with offset gaps,
a group resumes after a committed offset that was compacted away, keyless records are refused,
and the AdminClient sets and shows the compaction settings.

The model-based check: keyed writes with many overwrites and a few tombstones against a dict;
once the cleaner has compacted past every overwrite, a consumer reading from offset 0 sees for
every key the dict's latest value (None for a tombstone, kept for ``delete.retention.ms``),
offsets strictly increase with gaps, and no key the dict holds is missing. Every wait polls
with a deadline.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Broker, eventually, unique

from tidelog import (
    AdminClient,
    ConfigError,
    Consumer,
    ErrorCode,
    FatalError,
    InvalidRecordError,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
    kafka_error,
)
from tidelog._fetch import Fetcher
from tidelog.admin import topic_config_proto
from tidelog.admin_types import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
)
from tidelog.aio import AIOConsumer
from tidelog.errors import from_code
from tidelog.v1 import admin_service_pb2, record_pb2, records_service_pb2

KEYS = 20
VERSIONS = 30
TOMBSTONED = (3, 7, 11)  # deleted at the end; 11 is then written again
FILLER = 60  # distinct keys after the overwrites: closes the segments holding them
HOUR_MS = 3_600_000
#: A compacted topic that rolls a segment every 2 KiB (batches of at most 1 KiB: a batch must
#: fit in a segment) and is cleaned as soon as anything is dirty.
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.bytes": 2048,
    "max.batch.bytes": 1024,
    "min.cleanable.dirty.ratio": 0.01,
    "delete.retention.ms": HOUR_MS,
}


@pytest.fixture(scope="module")
def cbroker() -> Iterator[Broker]:
    """A broker whose cleaner looks for dirty partitions every 200 ms."""
    with tempfile.TemporaryDirectory(prefix="tidelog-compaction-") as d:
        root = Path(d)
        config = root / "broker.toml"
        config.write_text("[cleaner]\ninterval_ms = 200\n")
        b = Broker(root / "data", args=["--config", str(config)], log=root / "broker.log")
        yield b
        b.stop()


@pytest.fixture(scope="module")
def cadmin(cbroker: Broker) -> Iterator[AdminClient]:
    with AdminClient({"bootstrap.servers": cbroker.addr}) as a:
        yield a


def value(k: int, v: int) -> bytes:
    return f"key-{k:02d} version {v:02d} ".encode().ljust(50, b"x")


@dataclass
class Compacted:
    topic: str
    #: key → its latest value (None: a tombstone).
    model: dict[bytes, bytes | None]
    #: Every record read from offset 0 after compaction, in order.
    records: list[Message]
    high_watermark: int
    cleaned_offset: int


def read_to_end(c: Consumer, end: int, timeout: float = 30) -> list[Message]:
    """Records from ``c`` until one at offset ``end - 1`` (the last, which is never
    compacted away: its key is written once) or ``timeout`` seconds."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while (not out or out[-1].offset() < end - 1) and time.monotonic() < deadline:
        out += [m for m in c.consume(500, 0.5) if m.error() is None]
    return out


@pytest.fixture(scope="module")
def compacted(cbroker: Broker, cadmin: AdminClient) -> Compacted:
    """A compacted topic written with overwrites, tombstones and filler, once the cleaner
    has compacted past every overwrite and tombstone; read back from offset 0."""
    topic = unique("compact")
    cadmin.create_topic(topic, 1, config=COMPACTED)
    model: dict[bytes, bytes | None] = {}
    delivered: list[Message | BaseException] = []
    conf = {"bootstrap.servers": cbroker.addr, "compression.type": "none", "batch.size": 1024}
    with Producer(conf) as p:

        def put(key: bytes, val: bytes | None) -> None:
            model[key] = val
            p.produce(topic, val, key=key, on_delivery=lambda err, msg: delivered.append(err or msg))

        for v in range(VERSIONS):
            for k in range(KEYS):
                put(f"key-{k:02d}".encode(), value(k, v))
        for k in TOMBSTONED:
            put(f"key-{k:02d}".encode(), None)
        put(b"key-11", value(11, 99))  # written again after its delete
        assert p.flush(30) == 0
        last_overwrite = max(m.offset() for m in delivered if isinstance(m, Message))
        for i in range(FILLER):
            put(f"filler-{i:03d}".encode(), value(100 + i, 0))
        assert p.flush(30) == 0
    errors = [e for e in delivered if not isinstance(e, Message)]
    assert not errors, errors
    total = KEYS * VERSIONS + len(TOMBSTONED) + 1 + FILLER
    assert len(delivered) == total

    def cleaned_past_overwrites() -> int | None:
        part = cadmin.describe_topic(topic).partitions[0]
        return part.cleaned_offset if part.cleaned_offset > last_overwrite else None

    cleaned = eventually(cleaned_past_overwrites, 30, f"the cleaner to compact {topic} past {last_overwrite}")
    part = cadmin.describe_topic(topic).partitions[0]
    assert part.high_watermark == total
    assert part.last_cleaned_ms > 0 and 0 <= part.dirty_ratio <= 1, part
    c = Consumer({"bootstrap.servers": cbroker.addr, "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        records = read_to_end(c, total)
        assert c.position([TopicPartition(topic, 0)])[0].offset == total
    finally:
        c.close()
    return Compacted(topic, model, records, total, cleaned)


def latest_per_key(records: list[Message]) -> dict[bytes, bytes | None]:
    out: dict[bytes, bytes | None] = {}
    for m in records:
        key = m.key()
        assert isinstance(key, bytes), f"a record without a key at {m.offset()}"
        out[key] = m.value()
    return out


def check_model(got: list[Message], c: Compacted) -> None:
    offsets = [m.offset() for m in got]
    assert all(a < b for a, b in itertools.pairwise(offsets)), "offsets must strictly increase"
    assert offsets and offsets[-1] == c.high_watermark - 1
    assert len(got) < c.high_watermark, "compaction left no gap"
    # Every key the model holds is there, with its latest value (None for the tombstones,
    # kept for delete.retention.ms), and nothing else.
    assert latest_per_key(got) == c.model


def test_cleaner_metrics_are_scraped_with_prometheus_parser(cbroker: Broker, compacted: Compacted) -> None:
    from test_broker_metrics import scrape, value

    samples = scrape(cbroker)
    tp = {"topic": compacted.topic, "partition": "0"}
    assert (value(samples, "tidelog_cleaner_passes_total") or 0) >= 1
    assert (value(samples, "tidelog_cleaner_removed_records_total") or 0) > 0
    read = value(samples, "tidelog_cleaner_read_bytes_total") or 0
    written = value(samples, "tidelog_cleaner_written_bytes_total") or 0
    assert 0 < written < read, (written, read)
    checkpoint = value(samples, "tidelog_topic_partition_cleaner_checkpoint", **tp) or 0
    assert checkpoint >= compacted.cleaned_offset
    dirty = value(samples, "tidelog_topic_partition_cleaner_dirty_percent", **tp)
    assert dirty is not None and 0 <= dirty <= 100


def test_consumer_from_offset_zero_sees_latest_value_per_key(compacted: Compacted) -> None:
    c = compacted
    check_model(c.records, c)
    assert {k for k, v in c.model.items() if v is None} == {b"key-03", b"key-07"}
    # Compacted below cleaned_offset: one record per key there, and only if none is newer.
    below = [m for m in c.records if m.offset() < c.cleaned_offset]
    keys_below = [m.key() for m in below]
    assert len(keys_below) == len(set(keys_below)), "a key twice in the compacted range"
    above = {m.key() for m in c.records if m.offset() >= c.cleaned_offset}
    assert not above & set(keys_below), "a key kept below cleaned_offset has a newer record"
    # Far fewer records than were written: 20 keys' 30 versions left at most one each.
    assert len(c.records) <= KEYS + FILLER + len(TOMBSTONED) + 1


async def test_aio_consumer_and_seek_into_a_removed_range(cbroker: Broker, compacted: Compacted) -> None:
    c = compacted
    present = [m.offset() for m in c.records]
    gap = next(o for o in range(present[0], c.high_watermark) if o not in set(present))
    after = [m for m in c.records if m.offset() > gap]
    async with AIOConsumer({"bootstrap.servers": cbroker.addr, "enable.auto.commit": False}) as ac:
        await ac.assign([TopicPartition(c.topic, 0, 0)])
        got: list[Message] = []
        deadline = time.monotonic() + 30
        while (not got or got[-1].offset() < c.high_watermark - 1) and time.monotonic() < deadline:
            got += await ac.getmany(500, timeout=0.5)
        assert [(m.offset(), m.key(), m.value()) for m in got] == [
            (m.offset(), m.key(), m.value()) for m in c.records
        ]
        assert ac.position(TopicPartition(c.topic, 0)) == c.high_watermark
        # A seek to an offset that was compacted away resumes at the next record there is.
        await ac.seek(TopicPartition(c.topic, 0, gap))
        again: list[Message] = []
        deadline = time.monotonic() + 30
        while len(again) < len(after) and time.monotonic() < deadline:
            again += await ac.getmany(500, timeout=0.5)
        assert [m.offset() for m in again] == [m.offset() for m in after]
        assert ac.position(TopicPartition(c.topic, 0)) == c.high_watermark


def test_group_resumes_after_a_committed_offset_inside_a_removed_range(
    cbroker: Broker, cadmin: AdminClient, compacted: Compacted
) -> None:
    c = compacted
    present = [m.offset() for m in c.records]
    missing = [o for o in range(present[0], c.high_watermark) if o not in set(present)]
    gap = missing[len(missing) // 2]  # compacted away, with records before and after it
    expected = [m for m in c.records if m.offset() > gap]
    assert expected and present[0] < gap
    group = unique("grp")
    cfg = {
        "bootstrap.servers": cbroker.addr,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    first = Consumer(cfg)
    try:
        first.subscribe([c.topic])
        eventually(lambda: first.consume(10, 0.2), what="a first record for the first member")
        first.commit(offsets=[TopicPartition(c.topic, 0, gap)])
        assert first.committed([TopicPartition(c.topic, 0)])[0].offset == gap
    finally:
        first.close()  # auto-commit is off: the committed offset stays `gap`
    assert cadmin.committed(group, c.topic) == {0: gap}

    second = Consumer(cfg)
    try:
        second.subscribe([c.topic])
        got = read_to_end(second, c.high_watermark)
        # No error, nothing before the committed offset again, nothing skipped after it.
        assert [(m.offset(), m.key(), m.value()) for m in got] == [
            (m.offset(), m.key(), m.value()) for m in expected
        ]
        assert second.position([TopicPartition(c.topic, 0)])[0].offset == c.high_watermark
        second.commit()
        assert second.committed([TopicPartition(c.topic, 0)])[0].offset == c.high_watermark
    finally:
        second.close()
    assert cadmin.describe_group(group).lag == {TopicPartition(c.topic, 0): 0}


def test_keyless_record_is_refused_and_nothing_is_written(cbroker: Broker, cadmin: AdminClient) -> None:
    topic = unique("nokey")
    cadmin.create_topic(topic, 1, config={"cleanup.policy": "compact"})
    delivered: list[Message | BaseException] = []
    with Producer({"bootstrap.servers": cbroker.addr, "linger.ms": 0}) as p:
        p.produce(topic, b"no key", on_delivery=lambda err, msg: delivered.append(err or msg))
        p.flush(30)
        (err,) = delivered
        assert isinstance(err, InvalidRecordError), err
        assert err.code == ErrorCode.INVALID_RECORD and not err.retriable
        assert "key" in str(err), str(err)
        assert kafka_error(err).code() == KafkaError.INVALID_RECORD and not kafka_error(err).retriable()
        assert cadmin.list_offsets(topic) == {0: 0}, "a refused batch must write nothing"
        # The producer goes on: a keyed record is the topic's first.
        f = p.produce_future(topic, b"with a key", key=b"k")
        assert p.flush(30) == 0
        assert f.result().offset() == 0
    assert cadmin.list_offsets(topic) == {0: 1}
    c = Consumer({"bootstrap.servers": cbroker.addr})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = eventually(lambda: c.consume(10, 0.2), what="the keyed record")
        assert [(m.key(), m.value()) for m in got] == [(b"k", b"with a key")]
    finally:
        c.close()


def test_admin_round_trip_of_compaction_settings(cadmin: AdminClient) -> None:
    own = {"cleanup.policy", "delete.retention.ms", "min.cleanable.dirty.ratio", "min.compaction.lag.ms"}
    plain = cadmin.create_topic(unique("plain"))
    assert plain.config["cleanup.policy"] == "delete"
    assert plain.config_sources["cleanup.policy"] == "default"
    assert plain.partitions[0].cleaned_offset == 0 and plain.partitions[0].dirty_ratio == 0

    topic = unique("cfg")
    t = cadmin.create_topic(
        topic,
        config={
            "cleanup.policy": "compact",
            "delete.retention.ms": "1234",  # strings, as confluent-kafka passes them
            "min.cleanable.dirty.ratio": "0.25",
            "min.compaction.lag.ms": 500,
        },
    )
    want = {
        "cleanup.policy": "compact",
        "delete.retention.ms": 1234,
        "min.cleanable.dirty.ratio": 0.25,
        "min.compaction.lag.ms": 500,
    }
    assert {k: t.config[k] for k in own} == want
    assert {k for k, v in t.config_sources.items() if v == "topic"} == own
    d = cadmin.describe_topic(topic)
    assert {k: d.config[k] for k in own} == want

    t = cadmin.alter_topic_config(topic, {"cleanup.policy": "delete, compact", "delete.retention.ms": 0})
    assert t.config["cleanup.policy"] == "compact,delete" and t.config["delete.retention.ms"] == 0
    t = cadmin.alter_topic_config(topic, {"cleanup.policy": ["compact"]}, reset=["min.compaction.lag.ms"])
    assert t.config["cleanup.policy"] == "compact"
    assert t.config_sources["min.compaction.lag.ms"] == "default" and t.config["min.compaction.lag.ms"] == 0
    t = cadmin.alter_topic_config(topic, reset=["cleanup.policy", "min.cleanable.dirty.ratio"])
    assert t.config["cleanup.policy"] == "delete" and t.config_sources["cleanup.policy"] == "default"
    assert t.config["min.cleanable.dirty.ratio"] == 0.5

    # confluent-kafka's calls: string values in, string values out.
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("cleanup.policy", "compact,delete", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("min.cleanable.dirty.ratio", "0.1", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("delete.retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ],
    )
    assert cadmin.incremental_alter_configs([res])[res].result(30) is None
    (entries,) = [f.result(30) for f in cadmin.describe_configs([ConfigResource("topic", topic)]).values()]
    assert entries["cleanup.policy"].value == "compact,delete"
    assert entries["cleanup.policy"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG
    assert entries["min.cleanable.dirty.ratio"].value == "0.1"
    assert entries["delete.retention.ms"].value == str(24 * HOUR_MS)
    assert entries["delete.retention.ms"].is_default

    with pytest.raises(ConfigError, match="cleanup.policy"):
        cadmin.alter_topic_config(topic, {"cleanup.policy": "shred"})
    with pytest.raises(ConfigError):
        cadmin.alter_topic_config(topic, {"min.cleanable.dirty.ratio": "half"})
    with pytest.raises(FatalError, match="min_cleanable_dirty_ratio"):
        cadmin.alter_topic_config(topic, {"min.cleanable.dirty.ratio": 1.5})
    with pytest.raises(FatalError, match="delete_retention_ms"):
        cadmin.create_topic(unique("bad"), config={"cleanup.policy": "compact", "delete.retention.ms": -1})
    assert cadmin.describe_topic(topic).config["cleanup.policy"] == "compact,delete"


# ---- without a broker ---------------------------------------------------------------------------


def batch(base: int, count: int) -> records_service_pb2.Batch:
    recs = [record_pb2.Record(key=b"k%d" % (base + i), value=b"v") for i in range(count)]
    return records_service_pb2.Batch(
        base_offset=base, record_count=count, records=record_pb2.RecordBatch(records=recs)
    )


def test_decode_follows_gaps_and_never_moves_a_start_back() -> None:
    # Asked for 57, compacted away: a batch ending below it, then one after the gap.
    resp = records_service_pb2.SubscribeResponse(partition=0, batches=[batch(50, 3), batch(60, 2)])
    resp.read_from = 57
    starts: dict[int, int | None] = {0: 57}
    got = Fetcher._decode("t", resp, starts)
    assert [m.offset() for m in got] == [60, 61] and starts[0] == 62
    # Only a batch below the start: nothing delivered, and the start stays (a retry resumes
    # there, not at 53).
    starts = {0: 57}
    only_below = records_service_pb2.SubscribeResponse(partition=0, batches=[batch(50, 3)], read_from=57)
    assert Fetcher._decode("t", only_below, starts) == [] and starts[0] == 57
    # Gaps between batches: every record, at base_offset + i.
    starts = {0: 0}
    gappy = records_service_pb2.SubscribeResponse(
        partition=0, batches=[batch(3, 1), batch(9, 2), batch(20, 1)], read_from=0
    )
    assert [m.offset() for m in Fetcher._decode("t", gappy, starts)] == [3, 9, 10, 20] and starts[0] == 21


def test_compaction_config_keys_and_invalid_record_error() -> None:
    tc = topic_config_proto(
        {
            "cleanup.policy": "compact,delete",
            "delete.retention.ms": "10",
            "min.cleanable.dirty.ratio": "0.5",
            "min.compaction.lag.ms": 20,
        }
    )
    assert tc.cleanup_policy == admin_service_pb2.CLEANUP_POLICY_COMPACT_DELETE
    assert (tc.delete_retention_ms, tc.min_cleanable_dirty_ratio, tc.min_compaction_lag_ms) == (10, 0.5, 20)
    for v, want in [
        ("delete", admin_service_pb2.CLEANUP_POLICY_DELETE),
        (" Compact ", admin_service_pb2.CLEANUP_POLICY_COMPACT),
        ("delete,compact", admin_service_pb2.CLEANUP_POLICY_COMPACT_DELETE),
        (["delete", "compact"], admin_service_pb2.CLEANUP_POLICY_COMPACT_DELETE),
    ]:
        assert topic_config_proto({"cleanup.policy": v}).cleanup_policy == want, v
    assert not topic_config_proto({}).HasField("min_cleanable_dirty_ratio")
    for bad in ("", "compact,shred", "retain"):
        with pytest.raises(ConfigError, match="cleanup.policy"):
            topic_config_proto({"cleanup.policy": bad})
    err = from_code(21, "record 0 of the batch has no key")
    assert isinstance(err, InvalidRecordError) and isinstance(err, FatalError) and not err.retriable
    assert err.code == ErrorCode.INVALID_RECORD and kafka_error(err).code() == KafkaError.INVALID_RECORD
    assert kafka_error(err).name() == "INVALID_RECORD"
