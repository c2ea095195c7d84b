"""End-to-end tracing: W3C trace context in record headers, from a producer service through
the broker to a consumer service, every process exporting its spans over OTLP/gRPC to a
receiver in this test (tests/otlp_receiver.py).

Each "service" is a process of its own with its own global tracer provider, configured only
by the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME): the Python ones
run tests/trace_service.py, the Rust ones are the SDK's example binaries ``producer`` and
``group_consumer``; brokers are real ``tidelog serve`` processes.

The contract (tidelog.tracing, the broker, the Rust SDK): a ``send {topic}`` PRODUCER span per
record whose context is the record's ``traceparent`` header; the broker's ``append {topic}``
SERVER span per batch, child of the batch's first producer context and linked to the others;
a ``process {topic}`` CONSUMER span per consumed record, child of its producer context.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Broker, Cluster, binary, eventually, free_ports, read_all, unique
from otlp_receiver import OtlpReceiver, Span, parse_traceparent

from tidelog import AdminClient, Message, Producer

HERE = Path(__file__).resolve().parent
SERVICE = HERE / "trace_service.py"
BROKER_SERVICE = "tidelog-broker"


def base_env() -> dict[str, str]:
    """This environment without any OTEL_* variable of the developer's, with the SDK importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(HERE.parent / "src")
    return env


def otel_env(otlp: OtlpReceiver | str, service: str) -> dict[str, str]:
    """Exports to ``otlp`` as ``service``, in batches every 100 ms."""
    endpoint = otlp if isinstance(otlp, str) else otlp.endpoint
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


def run(cmd: list[str], env: dict[str, str], timeout: float = 90) -> str:
    """Runs a process to completion; fails on a non-zero exit. Returns its stdout."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**base_env(), **env})
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stdout


def py_service(*args: str, env: dict[str, str], no_otel: bool = False) -> list[dict[str, object]]:
    """Runs tests/trace_service.py; its JSON lines. ``no_otel``: as if opentelemetry were not
    installed (its import blocked before anything is imported)."""
    if no_otel:
        block = "import sys, runpy; sys.modules['opentelemetry'] = None; "
        code = block + f"runpy.run_path({str(SERVICE)!r}, run_name='__main__')"
        out = run([sys.executable, "-c", code, *args], env)  # sys.argv[1:] == args
    else:
        out = run([sys.executable, str(SERVICE), *args], env)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def create_topic(addr: str, topic: str, partitions: int = 3) -> None:
    with AdminClient({"bootstrap.servers": addr}) as a:
        a.create_topic(topic, num_partitions=partitions)


@pytest.fixture
def traced_broker(tmp_path: Path, otlp: OtlpReceiver) -> Iterator[Broker]:
    """A broker exporting its spans to ``otlp`` as tidelog-broker."""
    b = Broker(tmp_path / "data", log=tmp_path / "broker.log", env=otel_env(otlp, BROKER_SERVICE))
    yield b
    b.stop()


def context_of(msg: Message) -> tuple[str, str]:
    """(trace id, span id) of the record's traceparent header; fails without exactly one."""
    values = [v for k, v in msg.headers() or () if k == "traceparent"]
    assert len(values) == 1, f"{msg} should carry one traceparent header"
    return parse_traceparent(values[0])


def check_messaging(span: Span, topic: str, operation: str) -> None:
    a = span.attributes
    assert a["messaging.system"] == "tidelog", span
    assert a["messaging.destination.name"] == topic, span
    assert a["messaging.operation.name"] == operation, span


def check_flow(
    otlp: OtlpReceiver,
    topic: str,
    records: list[Message],
    producer: str,
    consumer: str | None,
    group: str | None,
    leaders: dict[int, int],
    *,
    expect_links: bool = True,
    child_spans: bool = True,
) -> dict[tuple[str, str], Span]:
    """Asserts the spans of ``records`` (as consumed, with their headers): each has a ``send``
    span of ``producer`` whose context its traceparent carries; the broker's ``append`` spans
    (from each partition's leader, per ``leaders``) are children of their batch's first record's
    producer span and link the others; ``consumer``'s ``process`` span of each record is a
    child of its producer span (and, with ``child_spans``, the parent of one ``handle`` span).
    Returns the send spans by context."""
    n = len(records)
    assert n > 0

    # The producer: one PRODUCER span per record, carried in the record's traceparent.
    sends = otlp.wait_named(f"send {topic}", n, kind="PRODUCER", service=producer)
    assert len(sends) == n, sends
    by_ctx = {s.context: s for s in sends}
    assert sorted(by_ctx) == sorted(context_of(m) for m in records), "one send span per record"
    for m in records:
        s = by_ctx[context_of(m)]
        check_messaging(s, topic, "send")
        assert s.attributes["messaging.operation.type"] == "send", s
        assert s.attributes["messaging.message.body.size"] == len(m.value() or b""), s
        assert s.attributes["messaging.destination.partition.id"] == str(m.partition()), s

    # The broker: an append span per batch, parent = first record's producer span, links = the
    # other distinct producer contexts of the batch.
    def appended() -> list[Span] | None:
        ok = [
            s
            for s in otlp.spans(f"append {topic}", "SERVER", BROKER_SERVICE)
            if s.status != "ERROR" and s.attributes.get("messaging.destination.name") == topic
        ]
        seen = {s.parent for s in ok} | {c for s in ok for c in s.linked}
        return ok if set(by_ctx) <= seen else None

    appends = eventually(appended, 30, f"append spans of {BROKER_SERVICE} covering every record")
    at = {(m.partition(), m.offset()): m for m in records}
    for a in appends:
        check_messaging(a, topic, "append")
        attrs = a.attributes
        assert isinstance(attrs["messaging.destination.partition.id"], str), a
        p = int(attrs["messaging.destination.partition.id"])
        assert attrs["rpc.system"] == "grpc", a
        assert attrs["rpc.service"] == "tidelog.v1.RecordService", a
        assert attrs["rpc.method"] == "Produce", a
        assert a.resource["service.instance.id"] == str(leaders[p]), a
        base, count = attrs["messaging.tidelog.batch.base_offset"], attrs["messaging.batch.message_count"]
        assert isinstance(base, int) and isinstance(count, int) and count >= 1, a
        batch = [at[(p, o)] for o in range(base, base + count)]
        assert attrs["messaging.message.body.size"] >= sum(len(m.value() or b"") for m in batch), a
        contexts = [context_of(m) for m in batch]
        assert a.parent == contexts[0], f"{a} should be a child of {by_ctx[contexts[0]]}"
        assert len(a.linked) == len(set(a.linked)), f"{a}: repeated links"
        assert set(a.linked) == set(contexts) - {contexts[0]}, f"{a}: links {a.linked} vs {contexts}"
    if expect_links:
        assert any(a.links for a in appends), "no batch of several records (so no links) was seen"
    for a in otlp.spans(f"append {topic}"):
        if a.status == "ERROR":  # a retried batch (say, sent before the leader was known)
            assert a.attributes.get("error.type"), a

    if consumer is None:
        return by_ctx
    # The consumer: a process span per record, child of the record's producer span.
    procs = otlp.wait_named(f"process {topic}", n, kind="CONSUMER", service=consumer)
    by_record: dict[tuple[int, int], list[Span]] = {}
    for s in procs:
        check_messaging(s, topic, "process")
        key = (
            int(s.attributes["messaging.destination.partition.id"]),
            s.attributes.get("messaging.tidelog.message.offset"),
        )
        by_record.setdefault(key, []).append(s)
    assert sorted(by_record) == sorted(at), "one process span per record"
    for key, spans in by_record.items():
        assert len(spans) == 1, spans
        s = spans[0]
        assert s.attributes["messaging.operation.type"] == "process", s
        assert s.attributes["messaging.consumer.group.name"] == group, s
        assert s.parent == context_of(at[key]), f"{s} should be a child of {by_ctx[context_of(at[key])]}"
    if child_spans:
        handles = otlp.wait_named(f"handle {topic}", n, kind="INTERNAL", service=consumer)
        assert sorted(h.parent or ("", "") for h in handles) == sorted(p.context for p in procs)
    return by_ctx


@pytest.mark.parametrize("api", ["sync", "aio"])
def test_python_producer_to_broker_to_python_consumer_is_one_trace(
    traced_broker: Broker, otlp: OtlpReceiver, api: str
):
    topic, group, n = unique("orders"), unique("billing"), 9
    create_topic(traced_broker.addr, topic)
    aio = ["--aio"] if api == "aio" else []
    produced = py_service(
        "produce", traced_broker.addr, topic, str(n), "--root", "checkout", *aio,
        env=otel_env(otlp, "orders-api"),
    )  # fmt: skip
    assert len(produced) == n
    consumed = py_service(
        "consume", traced_broker.addr, topic, group, str(n), *aio, env=otel_env(otlp, "billing")
    )
    assert sorted(r["value"] for r in consumed) == sorted(f"order-{i}" for i in range(n))

    records = read_all(traced_broker.addr, topic, 3, n)
    assert len(records) == n
    [root] = otlp.wait_named("checkout", service="orders-api")
    check_flow(otlp, topic, records, "orders-api", "billing", group, {0: 1, 1: 1, 2: 1})
    # One trace: the producer service's request, the sends, the broker, the consumer service.
    for name in (f"send {topic}", f"append {topic}", f"process {topic}", f"handle {topic}"):
        spans = otlp.spans(name)
        assert spans and {s.trace_id for s in spans} == {root.trace_id}, (name, spans)
    assert all(s.parent == root.context for s in otlp.spans(f"send {topic}"))
    for s in otlp.spans():
        want = {"checkout": "orders-api", f"send {topic}": "orders-api", f"handle {topic}": "billing"}
        want |= {f"process {topic}": "billing", f"append {topic}": BROKER_SERVICE}
        if s.name in want:
            assert s.service == want[s.name], s

    # A unary RPC's span on the broker (the test's own CreateTopic, without a parent).
    [create] = otlp.wait_named("tidelog.v1.AdminService/CreateTopic", kind="SERVER", service=BROKER_SERVICE)
    assert create.attributes["rpc.system"] == "grpc"
    assert create.attributes["rpc.service"] == "tidelog.v1.AdminService"
    assert create.attributes["rpc.method"] == "CreateTopic"
    assert create.attributes["rpc.grpc.status_code"] == 0
    assert create.resource["service.instance.id"] == "1"


def test_rust_producer_to_python_consumer(traced_broker: Broker, otlp: OtlpReceiver):
    topic, group, n = unique("orders"), unique("billing"), 12
    create_topic(traced_broker.addr, topic)
    out = run(
        [
            str(binary("producer")),
            "--broker",
            f"http://{traced_broker.addr}",
            "--topic",
            topic,
            "--count",
            str(n),
        ],
        otel_env(otlp, "rust-orders"),
    )
    assert f"delivered {n} records" in out, out
    consumed = py_service("consume", traced_broker.addr, topic, group, str(n), env=otel_env(otlp, "billing"))
    assert len(consumed) == n
    records = read_all(traced_broker.addr, topic, 3, n)
    assert len(records) == n
    sends = check_flow(
        otlp, topic, records, "rust-orders", "billing", group, {0: 1, 1: 1, 2: 1},
        expect_links=False,
    )  # fmt: skip
    # Without a parent, every record starts a trace of its own: producer, broker, consumer.
    for send in sends.values():
        [proc] = [s for s in otlp.spans(f"process {topic}") if s.parent == send.context]
        assert proc.trace_id == send.trace_id


def test_python_producer_to_rust_consumer(traced_broker: Broker, otlp: OtlpReceiver):
    topic, group, n = unique("orders"), unique("billing"), 9
    create_topic(traced_broker.addr, topic)
    produced = py_service("produce", traced_broker.addr, topic, str(n), env=otel_env(otlp, "orders-api"))
    assert len(produced) == n
    out = run(
        [
            str(binary("group_consumer")), "--broker", f"http://{traced_broker.addr}",
            "--topic", topic, "--group", group, "--idle-ms", "3000",
        ],
        otel_env(otlp, "rust-billing"),
    )  # fmt: skip
    lines = [line for line in out.splitlines() if " value=order-" in line]
    assert len(lines) == n, out
    records = read_all(traced_broker.addr, topic, 3, n)
    check_flow(
        otlp, topic, records, "orders-api", "rust-billing", group, {0: 1, 1: 1, 2: 1}, child_spans=False
    )


def test_traces_across_a_three_broker_cluster(tmp_path: Path, otlp: OtlpReceiver):
    cluster = Cluster(tmp_path, env=otel_env(otlp, BROKER_SERVICE))
    try:
        topic, group, n = unique("orders"), unique("billing"), 9
        cluster.create_topic(topic, partitions=3)
        leaders = {p: cluster.leader(topic, p) for p in range(3)}
        addr = cluster.addr(1)
        produced = py_service(
            "produce", addr, topic, str(n), "--root", "checkout", env=otel_env(otlp, "orders-api")
        )
        assert len(produced) == n
        consumed = py_service("consume", addr, topic, group, str(n), env=otel_env(otlp, "billing"))
        assert len(consumed) == n
        records = read_all(addr, topic, 3, n)
        assert len(records) == n
        assert leaders == {p: cluster.leader(topic, p) for p in range(3)}, "a leader moved"
        check_flow(otlp, topic, records, "orders-api", "billing", group, leaders)
        [root] = otlp.spans("checkout")
        assert {s.trace_id for s in otlp.spans(f"process {topic}")} == {root.trace_id}
        # Every broker names its cluster as DescribeCluster does.
        appends = otlp.spans(f"append {topic}")
        assert appends and {s.resource.get("tidelog.cluster.id") for s in appends} == {"tidelog-1-2-3"}
        # (check_flow: each append span came from its partition's leader, by node id.) No Raft
        # or other internal RPC is exported by default.
        broker_spans = otlp.spans(service=BROKER_SERVICE)
        internal = [
            s
            for s in broker_spans
            if "internal" in s.name or "Raft" in s.name or "internal" in str(s.attributes.get("rpc.service"))
        ]
        assert not internal, internal[:5]
    finally:
        cluster.stop()


def test_a_record_carrying_a_traceparent_keeps_it(traced_broker: Broker, otlp: OtlpReceiver):
    topic, n = unique("orders"), 4
    create_topic(traced_broker.addr, topic)
    preset = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    produced = py_service(
        "produce", traced_broker.addr, topic, str(n), "--preset", preset, env=otel_env(otlp, "orders-api")
    )
    assert len(produced) == n
    records = read_all(traced_broker.addr, topic, 3, n)
    [first] = [m for m in records if m.value() == b"order-0"]
    assert [v for k, v in first.headers() or () if k == "traceparent"] == [preset.encode()]
    assert first.header("tracestate") is None
    sends = otlp.wait_named(f"send {topic}", n, kind="PRODUCER", service="orders-api")
    assert len(sends) == n  # the first record still has its send span...
    others = [context_of(m) for m in records if m is not first]
    assert sorted(others) == sorted(s.context for s in sends if s.context in others)
    assert parse_traceparent(preset) not in {s.context for s in sends}  # ...but keeps its context


def test_a_broker_whose_collector_is_down_keeps_serving_and_logs_little(tmp_path: Path):
    [closed] = free_ports(1)  # nothing listens there
    log = tmp_path / "broker.log"
    broker = Broker(tmp_path / "data", log=log, env=otel_env(f"http://127.0.0.1:{closed}", BROKER_SERVICE))
    try:
        topic, batches = unique("orders"), 200
        create_topic(broker.addr, topic)
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        with Producer({"bootstrap.servers": broker.addr, "linger.ms": 0}) as p:
            for i in range(batches):  # one batch each: the next waits for the previous ack
                p.produce_future(topic, f"v{i}", headers=[("traceparent", parent)], partition=i % 3).result(
                    10
                )
        records = read_all(broker.addr, topic, 3, batches)
        assert sorted(m.value() for m in records) == sorted(f"v{i}".encode() for i in range(batches))
        with AdminClient({"bootstrap.servers": broker.addr}) as a:
            assert a.describe_topic(topic).partitions
    finally:
        broker.stop()
    lines = log.read_text().splitlines()
    problems = [line for line in lines if " WARN " in line or " ERROR " in line]
    assert len(problems) <= 5, f"{len(problems)} warnings for {batches} batches:\n" + "\n".join(problems[:20])


def test_without_opentelemetry_nothing_is_traced(own_broker: Broker, otlp: OtlpReceiver):
    """opentelemetry not importable (simulated), then the API without an SDK: records flow,
    no traceparent is added, nothing is exported."""
    for no_otel in (True, False):
        topic, group, n = unique("plain"), unique("grp"), 5
        create_topic(own_broker.addr, topic)
        env = otel_env(otlp, "untraced")
        mode = [] if no_otel else ["--no-sdk"]
        produced = py_service(
            *mode, "produce", own_broker.addr, topic, str(n), "--root", "checkout", env=env, no_otel=no_otel
        )
        assert len(produced) == n and all(r["headers"] == [] for r in produced), produced
        for aio in ([], ["--aio"]):
            member = f"{group}-{len(aio)}"
            out = py_service(
                *mode, "consume", own_broker.addr, topic, member, str(n), *aio, env=env, no_otel=no_otel
            )
            records = [r for r in out if "value" in r]
            assert sorted(r["value"] for r in records) == sorted(f"order-{i}" for i in range(n))
            assert all(r["headers"] == [] for r in records)
            # process_span yields None without opentelemetry, a span of the API's no-op otherwise.
            nones = [r for r in out if "process_span" in r]
            assert len(nones) == (n if no_otel else 0), (no_otel, out)
        assert not otlp.spans(), otlp.spans()


def test_contract_details_in_process(broker: Broker, admin: AdminClient):
    """tests/trace_contract.py: parent = current span, tracestate and the application's own
    propagators (baggage) in the headers, ERROR spans of failed calls, the asyncio producer,
    tombstones, and process_span's exceptions and fallback parent."""
    topic = unique("contract")
    admin.create_topic(topic, num_partitions=2)
    out = run([sys.executable, str(HERE / "trace_contract.py"), broker.addr, topic], {})
    assert out.strip().endswith("ok"), out
