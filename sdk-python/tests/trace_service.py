"""A traced Python "service" the tracing tests run as a process of its own (one global tracer
provider per process, as in a real deployment), configured only through the standard
variables: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set it installs an opentelemetry-sdk
TracerProvider (resource from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``) exporting
over OTLP/gRPC with a BatchSpanProcessor, flushed at exit.

    trace_service.py produce BROKER TOPIC COUNT [--root NAME] [--preset TRACEPARENT] [--aio]
    trace_service.py consume BROKER TOPIC GROUP COUNT [--aio]

``produce`` sends COUNT records (value ``order-i``, key ``customer-{i % 3}``; inside a span
called NAME if given; the first record with a ``traceparent`` header of its own if
``--preset``) and prints one JSON line per delivered record. ``consume`` reads COUNT records
as a member of GROUP, handles each inside ``tidelog.tracing.process_span`` with a child span
``handle {topic}``, commits, and prints one JSON line per record.

``--no-sdk`` (before the command) installs no TracerProvider (the API alone). Run with
``sys.modules["opentelemetry"] = None`` set first (as if it were not installed), it installs
none either and checks that opentelemetry cannot be imported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from tidelog import Consumer, Message, Producer
from tidelog.aio import AIOConsumer, AIOProducer
from tidelog.tracing import process_span

#: Started with opentelemetry blocked (tests/test_tracing.py does, before anything is imported).
NO_OTEL = "opentelemetry" in sys.modules and sys.modules["opentelemetry"] is None

DEADLINE_S = 60


def setup_tracing(args: argparse.Namespace) -> Any:
    if NO_OTEL:
        try:
            import opentelemetry  # noqa: F401
        except ImportError:
            return None
        raise SystemExit("opentelemetry is importable")
    if args.no_sdk or not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


@contextlib.contextmanager
def span(name: str | None) -> Iterator[None]:
    """An application span called ``name`` (nothing without a name or without opentelemetry)."""
    if name is None or NO_OTEL:
        yield
        return
    from opentelemetry import trace

    with trace.get_tracer("trace_service").start_as_current_span(name):
        yield


def report(msg: Message) -> None:
    print(
        json.dumps(
            {
                "partition": msg.partition(),
                "offset": msg.offset(),
                "value": (msg.value() or b"").decode(),
                "headers": [[k, v.decode()] for k, v in msg.headers() or ()],
            }
        ),
        flush=True,
    )


def record(i: int, args: argparse.Namespace) -> tuple[str, str, list[tuple[str, bytes]] | None]:
    headers = [("traceparent", args.preset.encode())] if args.preset and i == 0 else None
    return f"order-{i}", f"customer-{i % 3}", headers


def produce(args: argparse.Namespace) -> None:
    cfg = {"bootstrap.servers": args.broker, "linger.ms": 50}
    with span(args.root):
        if args.aio:

            async def run() -> list[Message]:
                async with AIOProducer(cfg) as p:
                    futs = []
                    for i in range(args.count):
                        value, key, headers = record(i, args)
                        futs.append(await p.send(args.topic, value, key=key, headers=headers))
                    assert await p.flush(DEADLINE_S) == 0
                    return [f.result() for f in futs]

            delivered = asyncio.run(run())
        else:
            with Producer(cfg) as p:
                futs = []
                for i in range(args.count):
                    value, key, headers = record(i, args)
                    futs.append(p.produce_future(args.topic, value, key=key, headers=headers))
                assert p.flush(DEADLINE_S) == 0
                delivered = [f.result() for f in futs]
    for m in delivered:
        report(m)


def handle(msg: Message, group: str) -> None:
    with process_span(msg, group=group) as s:
        if s is None:
            print(json.dumps({"process_span": None}), flush=True)
        with span(f"handle {msg.topic()}"):
            report(msg)


def consume(args: argparse.Namespace) -> None:
    cfg = {
        "bootstrap.servers": args.broker,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    deadline = time.monotonic() + DEADLINE_S
    seen = 0
    if args.aio:

        async def run() -> int:
            n = 0
            async with AIOConsumer(cfg) as c:
                await c.subscribe([args.topic])
                while n < args.count and time.monotonic() < deadline:
                    for m in await c.getmany(100, timeout=0.5):
                        handle(m, args.group)
                        n += 1
                await c.commit()
            return n

        seen = asyncio.run(run())
    else:
        c = Consumer(cfg)
        try:
            c.subscribe([args.topic])
            while seen < args.count and time.monotonic() < deadline:
                for m in c.consume(100, 0.5):
                    handle(m, args.group)
                    seen += 1
            c.commit(asynchronous=False)
        finally:
            c.close()
    if seen < args.count:
        raise SystemExit(f"consumed {seen} of {args.count} records in {DEADLINE_S} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-sdk", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("broker")
    p.add_argument("topic")
    p.add_argument("count", type=int)
    p.add_argument("--root")
    p.add_argument("--preset")
    p.add_argument("--aio", action="store_true")
    c = sub.add_parser("consume")
    c.add_argument("broker")
    c.add_argument("topic")
    c.add_argument("group")
    c.add_argument("count", type=int)
    c.add_argument("--aio", action="store_true")
    args = ap.parse_args()
    provider = setup_tracing(args)
    try:
        produce(args) if args.command == "produce" else consume(args)
    finally:
        if provider is not None:
            provider.shutdown()  # exports what is left


if __name__ == "__main__":
    main()
