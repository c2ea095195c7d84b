"""confluent-kafka parity of records and client configuration, against a real broker: null
values (tombstones) distinct from empty ones, ``Message``'s accessors and timestamp types,
``bootstrap.servers`` with ``PLAINTEXT://`` (and TLS refused), ``auto.offset.reset``'s
aliases."""

from __future__ import annotations

import time

import grpc
import pytest
from conftest import Broker, eventually, free_ports, read_all, unique

from tidelog import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    AdminClient,
    ConfigError,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicExistsError,
    TopicPartition,
    _wire,
)
from tidelog.aio import AIOConsumer, AIOProducer
from tidelog.v1 import record_pb2, records_service_pb2, records_service_pb2_grpc


@pytest.mark.parametrize("key", [None, b"k"])
def test_a_null_value_is_encoded_as_protobuf_encodes_a_tombstone(key):
    rec = record_pb2.Record(null_value=True, timestamp_ms=7)
    if key is not None:
        rec.key = key
    want = record_pb2.RecordBatch(records=[rec]).SerializeToString()
    assert _wire.encode_record(key, None, None, 7) == want
    empty = record_pb2.RecordBatch.FromString(_wire.encode_record(key, b"", None, 7)).records[0]
    assert not empty.null_value and empty.value == b""


def test_null_and_empty_values_round_trip_apart(broker: Broker, admin: AdminClient):
    topic = unique("null")
    admin.create_topic(topic, num_partitions=1)
    delivered: list[Message] = []
    with Producer({"bootstrap.servers": broker.addr, "compression.type": "none"}) as p:
        p.produce(topic, None, key=b"gone", on_delivery=lambda err, msg: delivered.append(msg))
        p.produce(topic, b"", key=b"empty", on_delivery=lambda err, msg: delivered.append(msg))
        p.produce(
            topic, "text", key=b"full", headers={"h": b"1"}, on_delivery=lambda e, m: delivered.append(m)
        )
        p.produce(topic, key=b"default")  # value omitted: None, as in confluent-kafka
        assert p.flush(10) == 0
    assert [m.value() for m in delivered] == [None, b"", b"text"]
    got = sorted(read_all(broker.addr, topic, 1, 4), key=lambda m: m.offset())
    assert [(m.key(), m.value()) for m in got] == [
        (b"gone", None),
        (b"empty", b""),
        (b"full", b"text"),
        (b"default", None),
    ]
    assert [len(m) for m in got] == [0, 0, 4, 0]
    assert got[0].headers() is None and got[2].headers() == [("h", b"1")]
    assert all(m.error() is None and m.topic() == topic and m.partition() == 0 for m in got)


async def test_null_values_round_trip_through_asyncio(broker: Broker, admin: AdminClient):
    topic = unique("anull")
    admin.create_topic(topic, num_partitions=1)
    async with AIOProducer({"bootstrap.servers": broker.addr}) as p:
        first = await p.send_and_wait(topic, None, key=b"a")
        second = await p.send_and_wait(topic, b"", key=b"b")
    assert (first.value(), second.value()) == (None, b"")
    async with AIOConsumer({"bootstrap.servers": broker.addr}) as c:
        await c.assign([TopicPartition(topic, 0, 0)])
        got: list[Message] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += await c.getmany(10, timeout=0.5)
    assert [(m.key(), m.value()) for m in got] == [(b"a", None), (b"b", b"")]


def test_timestamps_say_whether_the_producer_or_the_broker_set_them(broker: Broker, admin: AdminClient):
    topic = unique("ts")
    admin.create_topic(topic, num_partitions=1)
    with Producer({"bootstrap.servers": broker.addr}) as p:
        fut = p.produce_future(topic, b"created", timestamp=1_700_000_000_123)
        assert p.flush(10) == 0
    assert fut.result().timestamp() == (TIMESTAMP_CREATE_TIME, 1_700_000_000_123)
    # A record without a create time (as another client may send): the broker's append time.
    before = int(time.time() * 1000)
    batch = record_pb2.RecordBatch(records=[record_pb2.Record(value=b"appended")])
    req = records_service_pb2.ProduceRequest(request_id=1, topic=topic, partition=0, acks=3, records=batch)
    with grpc.insecure_channel(broker.addr) as ch:
        resp = next(iter(records_service_pb2_grpc.RecordServiceStub(ch).Produce(iter([req]), timeout=10)))
    assert resp.error_code == 0, resp.error_message
    got = sorted(read_all(broker.addr, topic, 1, 2), key=lambda m: m.offset())
    assert got[0].timestamp() == (TIMESTAMP_CREATE_TIME, 1_700_000_000_123)
    kind, ts = got[1].timestamp()
    assert kind == TIMESTAMP_LOG_APPEND_TIME and ts == resp.append_time_ms and ts >= before


def test_bootstrap_servers_take_plaintext_urls_and_refuse_tls(broker: Broker, admin: AdminClient):
    topic = unique("plain")
    admin.create_topic(topic, num_partitions=1)
    dead = free_ports(1)[0]
    servers = f"PLAINTEXT://{broker.addr}, plaintext://127.0.0.1:{dead}"
    with Producer({"bootstrap.servers": servers}) as p:
        p.produce(topic, b"v")
        assert p.flush(10) == 0
    # The consumer and the admin client fail over from a dead first entry.
    c = Consumer({"bootstrap.servers": f"PLAINTEXT://127.0.0.1:{dead},PLAINTEXT://{broker.addr}"})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        assert eventually(lambda: c.poll(0.2), what="a record").value() == b"v"
    finally:
        c.close()
    with AdminClient({"bootstrap.servers": f"PLAINTEXT://{broker.addr}"}) as a:
        assert a.describe_topic(topic).num_partitions == 1
    for bad, match in (
        ("SSL://h:9093", "needs ssl.ca.location"),
        (f"PLAINTEXT://{broker.addr},SASL_SSL://h:9094", "mixes PLAINTEXT:// and SASL_SSL://"),
    ):
        for cls in (Producer, Consumer, AdminClient):
            with pytest.raises(ConfigError, match=match):
                cls({"bootstrap.servers": bad})
    with pytest.raises(ConfigError, match="unknown protocol"):
        Producer({"bootstrap.servers": "kafka://h:1"})
    with pytest.raises(ConfigError, match="security.protocol"):
        Consumer({"bootstrap.servers": broker.addr, "security.protocol": "SSL"})
    # ConfigError is a KafkaException carrying _INVALID_ARG, as confluent-kafka raises.
    with pytest.raises(KafkaException) as e:
        AdminClient({"bootstrap.servers": "SSL://h:1"})
    assert e.value.args[0].code() == KafkaError._INVALID_ARG


@pytest.mark.parametrize(
    "reset,start",
    [("smallest", "earliest"), ("beginning", "earliest"), ("largest", "latest"), ("end", "latest")],
)
def test_auto_offset_reset_aliases(broker: Broker, admin: AdminClient, reset: str, start: str):
    topic = unique("reset")
    admin.create_topic(topic, num_partitions=1)
    with Producer({"bootstrap.servers": broker.addr}) as p:
        for i in range(3):
            p.produce(topic, f"old-{i}")
        assert p.flush(10) == 0
    c = Consumer({"bootstrap.servers": broker.addr, "auto.offset.reset": reset})
    try:
        c.assign([TopicPartition(topic, 0)])
        assert c.position([TopicPartition(topic, 0)])[0].offset == (0 if start == "earliest" else 3)
        with Producer({"bootstrap.servers": broker.addr}) as p:
            p.produce(topic, "new")
            assert p.flush(10) == 0
        got: list[bytes | None] = []
        eventually(lambda: got.extend(m.value() for m in c.consume(10, 0.2)) or b"new" in got, what="new")
    finally:
        c.close()
    assert got == ([b"old-0", b"old-1", b"old-2", b"new"] if start == "earliest" else [b"new"])


def test_bad_auto_offset_reset_is_a_config_error():
    with pytest.raises(ConfigError, match="auto.offset.reset"):
        Consumer({"bootstrap.servers": "127.0.0.1:1", "auto.offset.reset": "oldest"})


def test_sdk_errors_are_kafka_exceptions(broker: Broker, admin: AdminClient):
    topic = unique("exists")
    admin.create_topic(topic)
    with pytest.raises(KafkaException) as e:
        admin.create_topic(topic)
    assert isinstance(e.value, TopicExistsError)
    err = e.value.args[0]
    assert err.code() == KafkaError.TOPIC_ALREADY_EXISTS and err.name() == "TOPIC_ALREADY_EXISTS"
    assert not err.retriable() and not err.fatal() and topic in err.str()


def test_kafka_errors_of_sdk_errors_and_message_accessors():
    """No broker: librdkafka's numbers for SDK errors, and Message's confluent-kafka shape."""
    import pickle

    from tidelog import (
        TIMESTAMP_NOT_AVAILABLE,
        ClosedError,
        DeliveryTimeoutError,
        ErrorCode,
        GroupNotEmptyError,
        ProducerFencedError,
        RetriableError,
        UnknownTopicError,
        kafka_error,
    )

    cases = [
        (UnknownTopicError("t", ErrorCode.UNKNOWN_TOPIC), KafkaError.UNKNOWN_TOPIC_OR_PART),
        (UnknownTopicError("t", grpc.StatusCode.NOT_FOUND), KafkaError.UNKNOWN_TOPIC_OR_PART),
        (DeliveryTimeoutError("late"), KafkaError._MSG_TIMED_OUT),
        (RetriableError("down", grpc.StatusCode.UNAVAILABLE), KafkaError._TRANSPORT),
        (RetriableError("slow", grpc.StatusCode.DEADLINE_EXCEEDED), KafkaError._TIMED_OUT),
        (GroupNotEmptyError("g", ErrorCode.NON_EMPTY_GROUP), KafkaError.NON_EMPTY_GROUP),
        (ClosedError("closed"), KafkaError._DESTROY),
        (ProducerFencedError("old", ErrorCode.PRODUCER_FENCED), KafkaError.PRODUCER_FENCED),
        (ValueError("not ours"), KafkaError._FAIL),
    ]
    for exc, code in cases:
        assert kafka_error(exc).code() == code, exc
    fenced = kafka_error(cases[-2][0])
    assert fenced.fatal() and not fenced.retriable() and fenced.exception is cases[-2][0]
    assert kafka_error(cases[3][0]).retriable()
    back = pickle.loads(pickle.dumps(cases[0][0]))
    assert isinstance(back, UnknownTopicError) and back.code == ErrorCode.UNKNOWN_TOPIC
    err = KafkaError(KafkaError._PARTITION_EOF)
    assert (
        err == KafkaError._PARTITION_EOF and err.name() == "_PARTITION_EOF" and "_PARTITION_EOF" in str(err)
    )

    m = Message("t", 1, 5, None, None)
    assert (m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers(), len(m)) == (
        "t",
        1,
        5,
        None,
        None,
        None,
        0,
    )
    assert m.timestamp() == (TIMESTAMP_NOT_AVAILABLE, -1) and m.error() is None and m.latency() is None
    m.set_value(b"abc")
    m.set_headers([("h", b"v")])
    assert len(m) == 3 and m.header("h") == b"v" and m == Message("t", 1, 5, None, b"abc", [("h", b"v")])
    assert TopicPartition("t").partition == -1
