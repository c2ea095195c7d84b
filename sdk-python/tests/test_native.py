"""The compiled extension (``tidelog._native``) against the pure-Python code it replaces: the
same bytes for every record, the same partitions, the same open-batch behaviour, the same
messages and positions from every Subscribe response, and through a real broker the same
records read back whichever path queued them.

These tests skip when the extension is not built or ``TIDELOG_PURE_PYTHON=1`` is set;
``scripts/test.sh`` checks that it is built, and runs the producer tests both ways.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import os
import pickle
import random
import weakref

import pytest
from conftest import REPO, Broker, read_all, unique

from tidelog import AdminClient, Consumer, Producer, _accel, _staging, _wire, partitioner
from tidelog._fetch import Fetcher
from tidelog.aio import AIOProducer
from tidelog.errors import ClosedError, ErrorCode, FatalError, KafkaError
from tidelog.types import TIMESTAMP_LOG_APPEND_TIME, PyMessage
from tidelog.v1 import record_pb2, records_service_pb2

native = _accel.native
pytestmark = pytest.mark.skipif(native is None, reason="tidelog._native not built or disabled")

VECTORS = json.loads((REPO / "proto" / "testdata" / "partitioner.json").read_text())


def _random_record(
    rng: random.Random,
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None, int]:
    def blob(n: int) -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(n))

    key = None if rng.random() < 0.3 else blob(rng.choice([0, 1, 16, 200]))
    value = None if rng.random() < 0.1 else blob(rng.choice([0, 1, 127, 128, 300, 16384]))
    headers = None
    if rng.random() < 0.4:
        headers = [
            (rng.choice(["", "a", "traceparent", "é"]), blob(rng.choice([0, 3, 130]))) for _ in range(3)
        ]
    ts = rng.choice([0, 1, 127, 128, 1_700_000_000_123, (1 << 62) + 5])
    return key, value, headers, ts


def test_records_encode_to_the_same_bytes_as_python_and_protobuf():
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    for _ in range(500):
        key, value, headers, ts = _random_record(rng)
        got = native.encode_record(key, value, headers, ts)
        assert got == _wire.py_encode_record(key, value, headers, ts), f"seed {seed}"
        rec = record_pb2.RecordBatch.FromString(got).records[0]
        assert rec.key == (key or b"") and rec.HasField("key") == (key is not None), f"seed {seed}"
        assert rec.value == (value or b"") and rec.null_value == (value is None), f"seed {seed}"
        assert [(h.key, h.value) for h in rec.headers] == (headers or []), f"seed {seed}"
        assert rec.timestamp_ms == ts, f"seed {seed}"


def test_murmur2_matches_the_shared_vectors():
    for case in VECTORS["kafka_reference"] + VECTORS["cases"]:
        key = bytes.fromhex(case["key_hex"])
        assert native.murmur2(key) == case["murmur2"] == partitioner.murmur2(key), case


@pytest.mark.parametrize("impl", ["native", "python"])
def test_open_batches_fill_and_empty_alike(impl: str):
    batch = native.OpenBatch() if impl == "native" else _staging.PyOpenBatch()
    assert (batch.count, batch.size, batch.opened) == (0, 0, 0.0)
    batch.append(b"ab", ("e1",), 66, 5.0, True)
    batch.append(b"cde", None, 67, 6.0, False)
    batch.append(b"f", ("e3",), 65, 7.0, True)
    assert (batch.count, batch.size, batch.opened) == (3, 6, 5.0)
    assert batch.take() == (b"abcdef", [("e1",), None, ("e3",)], 198, 5.0, 2)
    assert (batch.count, batch.size, batch.opened) == (0, 0, 0.0)
    assert batch.take() == (b"", [], 0, 0.0, 0)


def test_the_compiled_produce_path_queues_what_python_would(broker: Broker, admin: AdminClient):
    """Every shape of record the fast path takes (key or none, tombstone, str, explicit
    partition, explicit timestamp, callbacks and futures) reads back as produced, keyed records
    on the partition every SDK picks; records it does not take go the Python way."""
    topic = unique("native")
    admin.create_topic(topic, num_partitions=4)
    p = Producer({"bootstrap.servers": broker.addr, "linger.ms": 2, "batch.size": 4096})
    delivered: list[tuple[object, object]] = []
    try:
        p.produce(topic, b"first")  # reads the topic's metadata: the Python path
        p.flush(10)
        fast = p._core.appender
        assert fast is not None
        before = fast.appended
        want: list[tuple[bytes | None, bytes | None, int | None, int | None]] = []
        for i in range(300):
            key = f"k{i % 17}".encode() if i % 3 else None
            value = None if i % 50 == 7 else (b"v%d-" % i) * (i % 40)
            part = i % 4 if i % 5 == 0 and key is None else None
            ts = 1_700_000_000_000 + i if i % 7 == 0 else None
            # Every fourth record has no callback: its entry is None, and the offsets the
            # others report must still be their own.
            cb = None if i % 4 == 3 else (lambda e, m: delivered.append((e, m)))
            p.produce(topic, value, key, partition=part, timestamp=ts, on_delivery=cb)
            want.append((key, value, part, ts))
        p.produce(topic, "text value", "text key")  # str: encoded as UTF-8
        fut = p.produce_future(topic, b"future", b"fk")
        taken = fast.appended - before
        assert taken == 302, "every record above goes the compiled way"
        # Not for the fast path: headers, a bytearray, a float timestamp.
        p.produce(topic, b"h", headers={"a": b"1"})
        p.produce(topic, bytearray(b"ba"))
        p.produce(topic, b"ft", timestamp=1_700_000_000_000.0)  # type: ignore[arg-type]
        assert fast.appended - before == taken
        assert p.flush(20) == 0
        assert fut.result(10).partition() == partitioner.partition_for_key(b"fk", 4)
        assert p.poll(0) >= 0 and len(delivered) == 225
        assert all(e is None for e, _ in delivered)
    finally:
        p.close()

    got = read_all(broker.addr, topic, 4, 1 + 300 + 2 + 3)
    assert len(got) == 306
    by_value: dict[tuple[bytes | None, bytes | None], list[object]] = {}
    for m in got:
        by_value.setdefault((m.key(), m.value()), []).append(m)
    for key, value, part, ts in want:
        m = by_value[(key, value)][0]
        if key is not None:
            assert m.partition() == partitioner.partition_for_key(key, 4)
        if part is not None:
            assert any(x.partition() == part for x in by_value[(key, value)])
        if ts is not None:
            assert any(x.timestamp()[1] == ts for x in by_value[(key, value)])
    assert by_value[(b"text key", b"text value")]
    assert by_value[(None, b"h")][0].headers() == [("a", b"1")]
    at = {(m.partition(), m.offset()): m for m in got}
    for _, d in delivered:
        stored = at[(d.partition(), d.offset())]
        assert (stored.key(), stored.value()) == (d.key(), d.value())
    # Offsets per partition are dense and in the order produced.
    for part in range(4):
        offs = sorted(m.offset() for m in got if m.partition() == part)
        assert offs == list(range(len(offs)))


def test_the_compiled_path_leaves_errors_to_python(broker: Broker, admin: AdminClient):
    topic = unique("native-err")
    admin.create_topic(topic, num_partitions=2)
    p = Producer({"bootstrap.servers": broker.addr})
    p.produce(topic, b"x")
    fast = p._core.appender
    before = fast.appended
    with pytest.raises(FatalError, match="partition 5 does not exist") as e:
        p.produce(topic, b"x", partition=5)
    assert e.value.code == ErrorCode.UNKNOWN_PARTITION
    with pytest.raises(FatalError, match="exceeds the broker") as e:
        p.produce(topic, b"x" * (1 << 20))
    assert e.value.code == ErrorCode.BATCH_TOO_LARGE
    assert fast.appended == before
    assert p.flush(10) == 0
    p.close()
    with pytest.raises(ClosedError):
        p.produce(topic, b"after close")


def _with_crc(b: records_service_pb2.Batch) -> records_service_pb2.Batch:
    """``b`` with the CRC-32C of its records, as the broker serves it."""
    b.crc32c = native.crc32c(b.records.SerializeToString())
    return b


def _random_response(rng: random.Random) -> records_service_pb2.SubscribeResponse:
    resp = records_service_pb2.SubscribeResponse(
        partition=rng.randrange(8), high_watermark=rng.randrange(1 << 40), throttle_time_ms=rng.randrange(3)
    )
    if rng.random() < 0.3:
        resp.read_from = rng.randrange(0, 40)
    base = rng.randrange(0, 20)
    for _ in range(rng.randrange(0, 4)):
        recs = []
        for _ in range(rng.randrange(1, 6)):
            key, value, headers, ts = _random_record(rng)
            r = record_pb2.Record(
                timestamp_ms=ts, headers=[record_pb2.Header(key=k, value=v) for k, v in headers or []]
            )
            if key is not None:
                r.key = key
            if value is None:
                r.null_value = True
            else:
                r.value = value
            recs.append(r)
        gap = rng.choice([0, 0, 3])  # compacted topics: offsets jump between batches
        resp.batches.append(
            _with_crc(
                records_service_pb2.Batch(
                    base_offset=base + gap,
                    record_count=len(recs),
                    append_time_ms=rng.choice([-1, 0, 1_700_000_000_999]),
                    records=record_pb2.RecordBatch(records=recs),
                )
            )
        )
        base += gap + len(recs)
    return resp


def test_subscribe_responses_decode_to_the_same_messages_and_positions():
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    for _ in range(300):
        resp = _random_response(rng)
        start = rng.choice([None, 0, 5, 12, 30])
        starts_py: dict[int, int | None] = {resp.partition: start}
        starts_rs = dict(starts_py)
        want = Fetcher._decode("t", resp, starts_py)
        got = native.decode_subscribe(resp.SerializeToString(), "t", starts_rs)
        assert got is not None, f"seed {seed}"
        p, hw, throttle, msgs, nbytes = got
        assert (p, hw, throttle) == (resp.partition, resp.high_watermark, resp.throttle_time_ms), (
            f"seed {seed}"
        )
        assert msgs == want, f"seed {seed}"
        assert [m.timestamp() for m in msgs] == [m.timestamp() for m in want], f"seed {seed}"
        assert nbytes == sum(map(len, want)) and starts_rs == starts_py, f"seed {seed}"


def test_a_batch_that_fails_its_crc_is_an_error_not_records():
    """As the Rust SDK and Kafka's consumers: a payload damaged on disk or on the way fails
    its batch's CRC-32C, in the compiled decoder (uncompressed) and in the Python one
    (compressed, checked with the compiled CRC)."""
    assert native.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C
    recs = record_pb2.RecordBatch(records=[record_pb2.Record(value=b"value-%d" % i) for i in range(3)])
    good = _with_crc(records_service_pb2.Batch(base_offset=7, record_count=3, records=recs))
    resp = records_service_pb2.SubscribeResponse(partition=0, batches=[good])
    raw = resp.SerializeToString()
    starts: dict[int, int | None] = {0: 0}
    assert native.decode_subscribe(raw, "t", starts) is not None
    damaged = raw.replace(b"value-1", b"value-X")
    starts = {0: 0}
    with pytest.raises(ValueError, match="CRC mismatch in batch at offset 7"):
        native.decode_subscribe(damaged, "t", starts)
    assert starts == {0: 0}
    packed = _wire.compress(_wire.Compression.LZ4, recs.SerializeToString())
    compressed = records_service_pb2.Batch(
        base_offset=7, record_count=3, compression=1, compressed_records=packed, crc32c=native.crc32c(packed)
    )
    assert [r.value for r in _wire.decode_batch(compressed)] == [b"value-0", b"value-1", b"value-2"]
    compressed.crc32c ^= 1
    with pytest.raises(FatalError, match="CRC mismatch in batch at offset 7"):
        _wire.decode_batch(compressed)


def test_compressed_or_corrupt_responses_change_nothing():
    resp = records_service_pb2.SubscribeResponse(partition=1)
    resp.batches.append(
        records_service_pb2.Batch(
            base_offset=0, record_count=1, compression=1, compressed_records=b"\x04\x22"
        )
    )
    starts: dict[int, int | None] = {1: 0}
    assert native.decode_subscribe(resp.SerializeToString(), "t", starts) is None
    assert starts == {1: 0}
    good = _random_response(random.Random(7))
    good.batches.append(
        _with_crc(
            records_service_pb2.Batch(
                base_offset=99,
                record_count=1,
                records=record_pb2.RecordBatch(records=[record_pb2.Record(value=b"v")]),
            )
        )
    )
    raw = good.SerializeToString()
    for cut in (len(raw) - 1, len(raw) // 2, 3):
        starts = {good.partition: 0}
        with pytest.raises(ValueError, match="malformed"):
            native.decode_subscribe(raw[:cut], "t", starts)
        assert starts == {good.partition: 0}
    # Offsets past what a signed 64-bit position holds, after a valid batch: refused whole.
    huge = records_service_pb2.SubscribeResponse(partition=1)
    one = record_pb2.RecordBatch(records=[record_pb2.Record(value=b"v")])
    huge.batches.append(_with_crc(records_service_pb2.Batch(base_offset=0, record_count=1, records=one)))
    huge.batches.append(
        _with_crc(records_service_pb2.Batch(base_offset=(1 << 64) - 1, record_count=1, records=one))
    )
    starts = {1: 0}
    with pytest.raises(ValueError, match="beyond i64"):
        native.decode_subscribe(huge.SerializeToString(), "t", starts)
    assert starts == {1: 0}


async def test_the_asyncio_producer_takes_the_compiled_path_too(broker: Broker, admin: AdminClient):
    topic = unique("native-aio")
    admin.create_topic(topic, num_partitions=2)
    async with AIOProducer({"bootstrap.servers": broker.addr, "linger.ms": 2}) as p:
        await (await p.send(topic, b"first", b"k"))  # reads the topic's metadata: the Python path
        fast = p._core.appender
        before = fast.appended
        futs = [await p.send(topic, b"v%d" % i, b"k%d" % (i % 5)) for i in range(200)]
        assert fast.appended - before == 200
        delivered = await asyncio.gather(*futs)
    got = {(m.partition(), m.offset()): m for m in read_all(broker.addr, topic, 2, 201)}
    assert len(got) == 201
    for i, d in enumerate(delivered):
        assert d.value() == b"v%d" % i and d.partition() == partitioner.partition_for_key(b"k%d" % (i % 5), 2)
        assert got[(d.partition(), d.offset())].value() == d.value()


def test_a_closed_producer_is_collected_with_its_appender(broker: Broker, admin: AdminClient):
    """The core and its compiled appender refer to each other: the GC must see through the
    compiled object to free them."""
    topic = unique("native-gc")
    admin.create_topic(topic, num_partitions=1)
    p = Producer({"bootstrap.servers": broker.addr, "linger.ms": 60_000})
    p.produce(topic, b"x")
    p.flush(10)
    p.produce(topic, b"y", on_delivery=lambda e, m, p=p: p.poll(0))  # refers to the producer
    assert p._core.appender.appended == 1
    core = weakref.ref(p._core)
    p.close()
    del p
    gc.collect()
    assert core() is None


@pytest.mark.parametrize(
    "args",
    [
        ("t", 1, 5, b"k", b"v"),
        ("t", 0, -1, None, None, None, 0),
        ("topic", 3, 7, b"", b"", [("a", b"1"), ("b", b"")], 1_700_000_000_123),
        ("t", 2, 9, None, b"x" * 10, [], 5, TIMESTAMP_LOG_APPEND_TIME),
        ("t", 2, 9, None, None, None, 0, None, KafkaError(ErrorCode.NONE, "_PARTITION_EOF")),
    ],
)
def test_the_compiled_message_behaves_as_the_python_one(args: tuple[object, ...]):
    n, py = native.Message(*args), PyMessage(*args)
    for accessor in ("topic", "partition", "offset", "key", "value", "headers", "timestamp", "error"):
        assert getattr(n, accessor)() == getattr(py, accessor)(), accessor
    assert (len(n), repr(n), n.header("a"), n.header("zz")) == (
        len(py),
        repr(py),
        py.header("a"),
        py.header("zz"),
    )
    assert n.latency() is None and n.leader_epoch() is None
    assert n == native.Message(*args) and n != native.Message("other", *args[1:]) and n != "x"
    assert pickle.loads(pickle.dumps(n)) == n and copy.copy(n) == n
    with pytest.raises(TypeError, match="unhashable"):
        hash(n)
    n.set_value(b"new")
    n.set_key(None)
    n.set_headers([])
    assert (n.value(), n.key(), n.headers(), len(n)) == (b"new", None, None, 3)


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_a_batch_damaged_on_the_brokers_disk_stops_the_consumer_with_its_offset(
    own_broker: Broker, compression: str
) -> None:
    """A byte flipped inside a sealed segment (the broker serves it as stored): the consumer
    raises a fatal CRC error naming the batch instead of handing out the damaged records."""
    b = own_broker
    with AdminClient({"bootstrap.servers": b.addr}) as a:
        a.create_topic("dmg", config={"segment.bytes": 65536, "max.batch.bytes": 16384})
    with Producer({"bootstrap.servers": b.addr, "compression.type": compression, "linger.ms": 0}) as p:
        for i in range(300):
            p.produce("dmg", os.urandom(400))
            if i % 10 == 9:
                p.flush(10)  # batches of about ten records
    b.kill9()
    segment = sorted((b.data_dir / "topics" / "dmg" / "0").glob("*.log"))[0]
    data = bytearray(segment.read_bytes())
    assert len(data) > 30000, "the first segment is sealed and long enough"
    data[30000] ^= 0xFF
    segment.write_bytes(bytes(data))
    b.start()
    c = Consumer({"bootstrap.servers": b.addr, "group.id": unique("dmg"), "auto.offset.reset": "earliest"})
    try:
        c.subscribe(["dmg"])
        with pytest.raises(FatalError, match="CRC mismatch in batch at offset"):
            for _ in range(100):
                c.poll(0.2)
    finally:
        c.close()
