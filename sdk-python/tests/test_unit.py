"""Unit tests (no broker): partitioner vectors, record encoding, compression, config, errors."""

from __future__ import annotations

import json

import grpc
import lz4.frame
import pytest
from conftest import REPO

from tidelog import ConfigError, ErrorCode, Producer, _wire, murmur2, partition_for_key
from tidelog._config import CONSUMER_KEYS, parse
from tidelog.assignor import Member, assign
from tidelog.errors import FatalError, RetriableError, UnknownTopicError, from_code
from tidelog.v1 import record_pb2, records_service_pb2

VECTORS = json.loads((REPO / "proto" / "testdata" / "partitioner.json").read_text())


def test_murmur2_matches_kafka_reference_values():
    for case in VECTORS["kafka_reference"]:
        assert murmur2(bytes.fromhex(case["key_hex"])) == case["murmur2"], case


def test_partitions_match_the_shared_vectors():
    assert len(VECTORS["cases"]) >= 15
    for case in VECTORS["cases"]:
        key = bytes.fromhex(case["key_hex"])
        assert murmur2(key) == case["murmur2"], case
        for n, want in case["partitions"].items():
            assert partition_for_key(key, int(n)) == want, (case["key_hex"], n)


@pytest.mark.parametrize(
    "key,value,headers,ts",
    [
        (None, b"v", None, 0),
        (b"", b"", None, 0),
        (b"k" * 300, b"x" * 20000, [("a", b"1"), ("", b""), ("trace", b"\x00\xff")], 1_700_000_000_123),
        (b"key", b"", [("h", b"")], 1),
    ],
)
def test_encode_record_is_what_protobuf_encodes(key, value, headers, ts):
    rec = record_pb2.Record(
        value=value, timestamp_ms=ts, headers=[record_pb2.Header(key=k, value=v) for k, v in headers or []]
    )
    if key is not None:
        rec.key = key
    want = record_pb2.RecordBatch(records=[rec]).SerializeToString()
    assert _wire.encode_record(key, value, headers, ts) == want
    back = record_pb2.RecordBatch.FromString(_wire.encode_record(key, value, headers, ts)).records[0]
    assert back.HasField("key") == (key is not None)


def test_produce_request_bytes_equal_the_public_message():
    parts = [_wire.encode_record(b"k%d" % i, b"v" * i, None, 5) for i in range(10)]
    payload = b"".join(parts)
    header = records_service_pb2.ProduceRequest(request_id=7, topic="t", partition=2, record_count=10)
    raw = _wire.produce_request_bytes(header, payload, _wire.Compression.NONE)
    parsed = records_service_pb2.ProduceRequest.FromString(raw)
    assert parsed.request_id == 7 and parsed.partition == 2
    assert [r.key for r in parsed.records.records] == [b"k%d" % i for i in range(10)]


@pytest.mark.parametrize("codec", [_wire.Compression.LZ4, _wire.Compression.ZSTD])
def test_compression_round_trips(codec):
    raw = b"".join(_wire.encode_record(None, b"abc" * 100, None, i + 1) for i in range(100))
    packed = _wire.compress(codec, raw)
    assert len(packed) < len(raw) // 5
    assert _wire.decompress(codec, packed) == raw


def test_corrupt_and_oversized_payloads_are_refused():
    with pytest.raises(FatalError, match="corrupt compressed batch"):
        _wire.decompress(_wire.Compression.LZ4, b"not an lz4 frame")
    bomb = lz4.frame.compress(b"\x00" * (_wire.MAX_DECOMPRESSED_BYTES + 10))
    with pytest.raises(FatalError, match="inflates beyond"):
        _wire.decompress(_wire.Compression.LZ4, bomb)
    with pytest.raises(FatalError, match="unknown compression codec"):
        _wire.decompress(9, b"")


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown producer config key 'lingerms'"):
        Producer({"bootstrap.servers": "127.0.0.1:1", "lingerms": 5})
    with pytest.raises(ConfigError, match="linger.ms=-1"):
        Producer({"bootstrap.servers": "127.0.0.1:1", "linger.ms": -1})
    with pytest.raises(ConfigError, match="needs 'bootstrap.servers'"):
        Producer({})
    with pytest.raises(ConfigError, match="compression.type"):
        Producer({"bootstrap.servers": "x:1", "compression.type": "snappy"})
    with pytest.raises(ConfigError, match="requires acks=all"):
        Producer({"bootstrap.servers": "x:1", "acks": "1", "enable.idempotence": True})
    cfg = parse(
        {"bootstrap.servers": "h:1", "enable.auto.commit": "false", "group.id": "g"}, CONSUMER_KEYS, "c"
    )
    assert cfg["enable.auto.commit"] is False and cfg["auto.offset.reset"] == "latest"


def test_error_codes_split_retriable_from_fatal():
    assert isinstance(from_code(ErrorCode.NOT_LEADER, "x"), RetriableError)
    assert isinstance(from_code(ErrorCode.STORAGE_ERROR, "x"), RetriableError)
    assert isinstance(from_code(ErrorCode.UNKNOWN_TOPIC, "x"), UnknownTopicError)
    e = from_code(ErrorCode.BATCH_TOO_LARGE, "too big")
    assert isinstance(e, FatalError) and not e.retriable and str(e) == "BATCH_TOO_LARGE: too big"
    assert "unknown error code 99" in str(from_code(99, "?"))
    assert grpc.StatusCode.UNAVAILABLE  # the status codes used by from_rpc_error exist


def test_assignors_cover_every_partition_once():
    members = [Member("m-b", ["a", "b"]), Member("m-a", ["a"]), Member("m-c", ["b"], [("b", 0), ("b", 1)])]
    counts = {"a": 5, "b": 3}
    for name in ("range", "roundrobin", "sticky"):
        plan = assign(name, members, counts)
        got = sorted(tp for tps in plan.values() for tp in tps)
        assert got == sorted([("a", p) for p in range(5)] + [("b", p) for p in range(3)]), name
        for m in members:
            assert all(t in m.topics for t, _ in plan[m.member_id]), name
    sticky = assign("sticky", members, counts)
    assert {("b", 0), ("b", 1)} <= set(sticky["m-c"])  # kept what it owned
    sizes = sorted(len(v) for v in sticky.values())
    assert sizes[-1] - sizes[0] <= 1


def test_routes_follow_leader_hints_and_fall_back_past_lost_brokers():
    from tidelog._producer_core import _Routes

    brokers = ["a:1", "b:2"]
    r = _Routes(brokers)
    tp = ("t", 0)
    assert r.target(tp) == "a:1" and r.clustered
    r.not_leader(tp, "http://c:3")  # a leader the producer did not know yet
    assert r.target(tp) == "c:3" and brokers == ["a:1", "b:2", "c:3"]
    r.broker_lost("c:3")  # its leader is gone: back to the fallback
    assert r.target(tp) == "a:1"
    r.not_leader(tp, "")  # no leader known (an election): ask the next broker
    assert r.target(tp) == "b:2"
    r.broker_lost("b:2")
    assert r.target(tp) == "c:3"
    assert not _Routes(["only:1"]).clustered


def test_consumer_reads_each_partition_from_a_replica_passing_over_failed_brokers():
    from tidelog._consumer_core import route_for

    ids = {1: "a:1", 2: "b:2", 3: "c:3"}
    assert route_for([1, 2], 1, 1, ids, {}) == "a:1"  # the describing broker holds it
    assert route_for([2, 3], 0, 1, ids, {}) == "b:2"  # elsewhere, leader unknown: first replica
    assert route_for([2, 3], 3, 1, ids, {}) == "c:3"  # a known leader that is a replica
    assert route_for([2, 3], 1, 1, ids, {}) == "b:2"  # a "leader" that is no replica is ignored
    assert route_for([1, 2], 1, 1, ids, {"a:1": 1}) == "b:2"  # its own broker failed
    assert route_for([2, 3], 0, 1, ids, {"b:2": 1}) == "c:3"  # the first replica failed
    # Every replica failed: the least recent failure is tried again, not always the first.
    assert route_for([2, 3], 0, 1, ids, {"b:2": 2, "c:3": 1}) == "c:3"
    assert route_for([2, 3], 0, None, ids, {}) == "b:2"  # bootstrapped under another name
    assert route_for([4], 0, 1, ids, {}) is None  # no address for the replica
