"""Unit tests (no broker): partitioner vectors, record encoding, compression, config, errors,
replica choice, and failover with retries (fake calls and clocks; in-process fake brokers)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import lz4.frame
import pytest
from conftest import REPO, free_ports

from tidelog import AdminClient, ConfigError, ErrorCode, Producer, _wire, murmur2, partition_for_key
from tidelog._config import CONSUMER_KEYS, parse
from tidelog._consumer_core import ConsumerCore
from tidelog._failover import Ring, call_async, call_sync
from tidelog.assignor import Member, assign
from tidelog.errors import (
    FatalError,
    IllegalGenerationError,
    RetriableError,
    TopicExistsError,
    UnknownTopicError,
    from_code,
)
from tidelog.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    offsets_service_pb2,
    record_pb2,
    records_service_pb2,
)

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
        (None, b"x" * 1024, None, 1_700_000_000_123),
        (b"k", b"v", None, 1_700_000_000_123),  # the same timestamp again: its cached encoding
        (b"k", b"v", None, 1_700_000_000_124),
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
    assert route_for([2, 3], 3, 1, ids, {}) == "c:3"  # a known leader that is a replica
    assert route_for([1, 2], 1, 1, ids, {"a:1": 1}) == "b:2"  # its own broker failed
    assert route_for([2, 3], 0, 1, ids, {"b:2": 1}) == "c:3"  # a replica failed: the other one
    # Every replica failed: the least recent failure is tried again, not always the first.
    assert route_for([2, 3], 0, 1, ids, {"b:2": 2, "c:3": 1}) == "c:3"
    assert route_for([4], 0, 1, ids, {}) is None  # no address for the replica


def test_consumer_picks_a_random_replica_when_neither_its_broker_nor_a_leader_holds_it():
    """As the Rust SDK: without a holding own broker or known leader, any replica (at random),
    so that consumers spread over the replicas and a dead first replica is not everyone's."""
    from tidelog._consumer_core import route_for

    ids = {1: "a:1", 2: "b:2", 3: "c:3"}
    rng = random.Random(7)
    for leader, own in [(0, 1), (1, 1), (0, None)]:  # no leader / a "leader" that is no replica
        picks = [route_for([2, 3], leader, own, ids, {}, rng) for _ in range(200)]
        assert set(picks) == {"b:2", "c:3"}, (leader, own)
        assert 60 < picks.count("b:2") < 140, (leader, own)  # both sides, roughly evenly
    # A holding broker or a leader is still preferred, every time.
    assert {route_for([1, 2], 2, 1, ids, {}, rng) for _ in range(50)} == {"a:1"}
    assert {route_for([2, 3], 3, 1, ids, {}, rng) for _ in range(50)} == {"c:3"}


def cluster_of(*brokers: tuple[int, str]) -> admin_service_pb2.DescribeClusterResponse:
    return admin_service_pb2.DescribeClusterResponse(
        brokers=[admin_service_pb2.BrokerInfo(id=i, address=a) for i, a in brokers]
    )


def test_ring_learns_the_cluster_in_a_random_order_per_client_after_the_bootstrap_brokers():
    cluster = cluster_of((1, "http://a:1"), (2, "b:2"), (3, "c:3"), (4, "d:4"))
    seconds = set()
    for seed in range(40):
        r = Ring(["b:2", "x:9", "b:2"], random.Random(seed))
        assert r.ring == ["b:2", "x:9"] and r.current == "b:2" and not r.learnt
        r.adopt(cluster)
        assert r.learnt and r.ids == {1: "a:1", 2: "b:2", 3: "c:3", 4: "d:4"}
        assert r.ring[:2] == ["b:2", "x:9"] and sorted(r.ring[2:]) == ["a:1", "c:3", "d:4"]
        seconds.add(r.ring[2])
        # Failing over visits every broker once before coming back.
        seen = [r.current]
        for _ in range(len(r.ring)):
            r.move_on(r.current)
            seen.append(r.current)
        assert seen[:-1] == r.ring and seen[-1] == "b:2"
    assert seconds == {"a:1", "c:3", "d:4"}, "every client would fail over to the same broker"
    # A single node keeps its bootstrap address (the one it advertises may be unreachable).
    single = Ring(["h:1"])
    single.adopt(cluster_of((1, "elsewhere:1")))
    assert single.ring == ["h:1"] and single.ids == {} and single.learnt
    single.move_on("h:1")
    assert single.current == "h:1"
    # One failure moves the ring once, however many calls report it.
    r = Ring(["a:1", "b:2", "c:3"])
    r.move_on("a:1")
    r.move_on("a:1")
    assert r.current == "b:2"


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeTime:
    """A clock that only moves when the code under test sleeps or an attempt takes time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay

    async def asleep(self, delay: float) -> None:
        self.sleep(delay)


def test_a_call_fails_over_past_unreachable_brokers_and_returns_the_first_answer():
    ring, t = Ring(["a:1", "b:2", "c:3"]), FakeTime()
    calls: list[tuple[str, float]] = []

    def attempt(addr: str, timeout: float) -> str:
        calls.append((addr, timeout))
        if addr == "a:1":
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
        if addr == "b:2":
            t.now += 2.0  # stalled until the attempt's deadline
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
        return "answer from c"

    got = call_sync(ring, attempt, timeout=10, per_attempt=2, sleep=t.sleep, clock=t.clock)
    assert got == "answer from c"
    assert [a for a, _ in calls] == ["a:1", "b:2", "c:3"] and all(x <= 2 for _, x in calls)
    assert ring.current == "c:3"  # the next call starts where the last answer came from
    assert t.sleeps == [0.05, 0.1]  # backoff between attempts, doubling


@pytest.mark.parametrize(
    "fatal",
    [
        rpc_error(grpc.StatusCode.ALREADY_EXISTS, "topic t exists"),
        rpc_error(grpc.StatusCode.NOT_FOUND, "unknown topic t"),
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad"),
        from_code(ErrorCode.ILLEGAL_GENERATION, "generation 3 is stale"),
    ],
)
def test_a_brokers_real_answer_is_raised_at_once_not_retried_elsewhere(fatal: Exception):
    ring, t = Ring(["a:1", "b:2"]), FakeTime()
    calls: list[str] = []

    def attempt(addr: str, timeout: float) -> None:
        calls.append(addr)
        raise fatal

    with pytest.raises(FatalError) as e:
        call_sync(ring, attempt, timeout=10, per_attempt=2, sleep=t.sleep, clock=t.clock)
    assert calls == ["a:1"] and ring.current == "a:1" and t.sleeps == []
    assert (e.value is fatal) if isinstance(fatal, FatalError) else (e.value.code == fatal.code())


async def test_retries_go_round_the_ring_with_capped_backoff_until_the_deadline():
    """asyncio flavour; a broker error in a response body (NOT_LEADER: no coordinator
    reachable) is retried like an unreachable broker; each attempt ends by the deadline."""
    ring, t = Ring(["a:1", "b:2", "c:3"]), FakeTime()
    calls: list[tuple[str, float]] = []
    start = t.now

    async def attempt(addr: str, timeout: float) -> None:
        calls.append((addr, timeout))
        t.now += min(timeout, 0.5)
        raise from_code(ErrorCode.NOT_LEADER, "the group coordinator (no answer in time; retry)")

    with pytest.raises(RetriableError, match="NOT_LEADER"):
        await call_async(ring, attempt, timeout=8, per_attempt=3, sleep=t.asleep, clock=t.clock)
    addrs = [a for a, _ in calls]
    assert addrs == (["a:1", "b:2", "c:3"] * 10)[: len(addrs)] and len(addrs) > 5
    assert max(t.sleeps) == 1.0 and t.sleeps[:5] == [0.05, 0.1, 0.2, 0.4, 0.8]
    assert t.now - start <= 8 + 1e-9  # no attempt starts, or waits, past the deadline
    assert all(timeout <= 3 for _, timeout in calls)


def test_consumer_unary_calls_use_request_timeout_ms():
    cfg = parse({"bootstrap.servers": "h:1, g:2", "group.id": "g"}, CONSUMER_KEYS, "consumer")
    core = ConsumerCore(cfg, lambda kind, tps: None)
    assert core.brokers.timeout == 30 and core.brokers.api_timeout == 60
    assert core.brokers.ring == ["h:1", "g:2"]
    cfg = parse(
        {
            "bootstrap.servers": "h:1",
            "request.timeout.ms": "1500",
            "default.api.timeout.ms": 20_000,
            "session.timeout.ms": 5000,
        },
        CONSUMER_KEYS,
        "consumer",
    )
    core = ConsumerCore(cfg, lambda kind, tps: None)
    assert core.brokers.timeout == 1.5 and core.brokers.api_timeout == 20
    assert core.inline_timeout == 5  # the session's own calls end before it would expire
    with pytest.raises(ConfigError, match="request.timeout.ms"):
        parse({"bootstrap.servers": "h:1", "request.timeout.ms": 0}, CONSUMER_KEYS, "consumer")


def test_consumer_buffer_hands_out_chunks_in_order_and_drops_what_it_must() -> None:
    """Records are buffered one response at a time and handed out in order across polls of any
    size: a seek's earlier offsets, a stale fetch epoch, a paused or unassigned partition are
    dropped; an error comes out alone, after the records before it."""
    from tidelog import Message
    from tidelog._fetch import eof_event

    core = ConsumerCore(parse({"bootstrap.servers": "h:1"}, CONSUMER_KEYS, "consumer"), lambda k, t: None)
    a, b = ("t", 0), ("t", 1)
    core.assigned = {a, b}
    core.positions = {a: 3, b: 0}

    def recs(tp: tuple[str, int], offsets: range) -> list[Message]:
        return [Message(tp[0], tp[1], o, None, b"v%d" % o) for o in offsets]

    core.push(0, recs(a, range(0, 6)), a)  # 0..2 lie before the position (a seek to 3)
    core.push(0, recs(b, range(0, 4)), b)
    core.push(0, [eof_event("t", 1, 4)])
    core.push(0, [RetriableError("boom")])
    core.push(0, recs(a, range(6, 8)), a)
    assert core.buffered == 14
    taken = [(m.partition(), m.offset()) for m in core.take(2)]
    assert taken == [(0, 3), (0, 4)] and core.positions[a] == 5
    taken = [(m.partition(), m.offset(), m.error() is not None) for m in core.take(100)]
    assert taken == [(0, 5, False), (1, 0, False), (1, 1, False), (1, 2, False), (1, 3, False), (1, 4, True)]
    assert core.positions == {a: 6, b: 4}
    with pytest.raises(RetriableError, match="boom"):
        core.take(100)
    assert [m.offset() for m in core.take(100)] == [6, 7] and core.buffered == 0

    core.push(0, recs(a, range(8, 10)), a)  # fetched before the seek that bumped the epoch
    core.paused = {b}
    core.push(1, recs(b, range(4, 6)), b)  # paused
    core.fetch_epoch = 1
    core.push(1, recs(("u", 0), range(0, 2)), ("u", 0))  # not assigned
    core.push(1, recs(a, range(8, 9)), a)
    assert [(m.topic(), m.offset()) for m in core.take(100)] == [("t", 8)]
    assert core.buffered == 0 and not core.buffer and core.positions == {a: 9, b: 4}


class FakeCommits:
    """``Brokers.stubs(addr)`` for a commit: answers per broker from a script."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.sent: list[tuple[str, list[offsets_service_pb2.CommitRequest]]] = []

    def __call__(self, addr: str | None = None) -> Any:
        fake = self

        class Call:
            def __init__(self, requests: Iterator[offsets_service_pb2.CommitRequest], timeout: float) -> None:
                self.requests = list(requests)
                assert addr is not None and timeout <= 30
                fake.sent.append((addr, self.requests))

            def __aiter__(self) -> Any:
                return self._answers()

            async def _answers(self) -> Any:
                for req in self.requests:
                    answer = fake.script[addr](req)
                    if isinstance(answer, Exception):
                        raise answer
                    yield offsets_service_pb2.CommitResponse(request_id=req.request_id, error_code=answer)

            def cancel(self) -> None:
                pass

        class Offsets:
            Commit = Call

        class Stubs:
            offsets = Offsets

        return Stubs


def commit_with(script: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[ConsumerCore, FakeCommits]:
    cfg = parse({"bootstrap.servers": "a:1,b:2", "group.id": "g"}, CONSUMER_KEYS, "consumer")
    core = ConsumerCore(cfg, lambda kind, tps: None)
    core.brokers.learnt = True  # no DescribeCluster: the ring is the two bootstrap brokers
    fake = FakeCommits(script)
    monkeypatch.setattr(core.brokers, "stubs", fake)
    core.generation = 4
    return core, fake


async def test_a_commit_fails_over_and_resends_only_what_was_not_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
):
    def a(req: offsets_service_pb2.CommitRequest) -> Any:
        # Topic x is acknowledged, then the broker dies before answering topic y.
        return 0 if req.topic == "x" else rpc_error(grpc.StatusCode.UNAVAILABLE, "broker gone")

    core, fake = commit_with({"a:1": a, "b:2": lambda req: 0}, monkeypatch)
    await core.commit_positions({("x", 0): 5, ("y", 0): 7, ("y", 1): 9})
    assert core.committed == {("x", 0): 5, ("y", 0): 7, ("y", 1): 9}
    assert [addr for addr, _ in fake.sent] == ["a:1", "b:2"] and core.brokers.current == "b:2"
    resent = fake.sent[1][1]
    assert [(r.topic, r.generation, [(o.partition, o.offset) for o in r.offsets]) for r in resent] == [
        ("y", 4, [(0, 7), (1, 9)])
    ]


async def test_a_commit_retry_leaves_out_partitions_another_commit_moved_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
):
    """While the first attempt fails, another commit (say, the application's after a seek)
    lands for partition 0: the retry must not overwrite it with this commit's older offset."""
    core: ConsumerCore | None = None

    def a(req: offsets_service_pb2.CommitRequest) -> Any:
        assert core is not None
        core.committed[("x", 0)] = 3  # acknowledged to the other commit meanwhile
        return rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)

    core, fake = commit_with({"a:1": a, "b:2": lambda req: 0}, monkeypatch)
    await core.commit_positions({("x", 0): 5, ("x", 1): 6})
    assert [(o.partition, o.offset) for o in fake.sent[1][1][0].offsets] == [(1, 6)]
    assert core.committed == {("x", 0): 3, ("x", 1): 6}


async def test_a_fenced_commit_fails_at_once(monkeypatch: pytest.MonkeyPatch):
    core, fake = commit_with(
        {"a:1": lambda req: ErrorCode.ILLEGAL_GENERATION, "b:2": lambda req: 0}, monkeypatch
    )
    with pytest.raises(IllegalGenerationError):
        await core.commit_positions({("x", 0): 5})
    assert [addr for addr, _ in fake.sent] == ["a:1"] and core.committed == {}


class FakeAdmin(admin_service_pb2_grpc.AdminServiceServicer):
    """An in-process AdminService: lists a cluster, and knows one topic."""

    def __init__(self, cluster: admin_service_pb2.DescribeClusterResponse) -> None:
        self.cluster = cluster
        self.calls: list[str] = []

    def DescribeCluster(self, request: Any, context: Any) -> Any:
        self.calls.append("DescribeCluster")
        return self.cluster

    def DescribeTopic(self, request: Any, context: Any) -> Any:
        self.calls.append("DescribeTopic")
        if request.name != "known":
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown topic {request.name}")
        return admin_service_pb2.DescribeTopicResponse(
            topic=admin_service_pb2.TopicDescription(name="known", partition_count=3)
        )

    def CreateTopic(self, request: Any, context: Any) -> Any:
        self.calls.append("CreateTopic")
        context.abort(grpc.StatusCode.ALREADY_EXISTS, f"topic {request.name} exists")


def test_admin_fails_over_to_a_known_broker_and_returns_real_answers_at_once():
    """Two fake brokers; the bootstrap one lists both, answers, then goes away: the admin
    client carries on at the other one. A client listing a dead broker first also works."""
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    cluster = cluster_of((1, addrs[0]), (2, addrs[1]))
    fakes, servers = [FakeAdmin(cluster), FakeAdmin(cluster)], []
    for fake, addr in zip(fakes, addrs, strict=False):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(fake, server)
        assert server.add_insecure_port(addr)
        server.start()
        servers.append(server)
    try:
        cfg = {"bootstrap.servers": addrs[0], "request.timeout.ms": 2000, "default.api.timeout.ms": 10_000}
        with AdminClient(cfg) as admin:
            assert admin.describe_topic("known").num_partitions == 3
            assert fakes[0].calls == ["DescribeCluster", "DescribeTopic"]
            servers[0].stop(None).wait()
            assert admin.describe_topic("known").num_partitions == 3  # from the other broker
            with pytest.raises(UnknownTopicError):
                admin.describe_topic("unknown")
            with pytest.raises(TopicExistsError):
                admin.create_topic("known")
            assert fakes[1].calls == ["DescribeTopic", "DescribeTopic", "CreateTopic"]  # each once
        # Nothing listens at addrs[2]: the client moves on to the next bootstrap broker.
        with AdminClient({**cfg, "bootstrap.servers": f"{addrs[2]},{addrs[1]}"}) as admin:
            assert admin.describe_topic("known").name == "known"
    finally:
        for server in servers:
            server.stop(None)


def test_record_ends_cut_a_batch_into_batches_at_record_boundaries() -> None:
    records = [
        _wire.py_encode_record(
            b"k%d" % i if i % 2 else None, b"v" * (i * 50), [("h", b"1")] if i == 3 else None, i
        )
        for i in range(6)
    ]
    raw = b"".join(records)
    ends = _wire.record_ends(raw)
    assert ends == [sum(len(r) for r in records[: i + 1]) for i in range(6)]
    for cut in ends[:-1]:
        first, second = (record_pb2.RecordBatch.FromString(part).records for part in (raw[:cut], raw[cut:]))
        assert len(first) + len(second) == 6
    assert _wire.record_ends(b"") == []
    with pytest.raises(FatalError):
        _wire.record_ends(raw[:-1])  # the last record runs past the end
    with pytest.raises(FatalError):
        _wire.record_ends(b"\x12\x00")  # field 2: not a record
