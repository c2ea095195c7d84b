"""Details of tidelog.tracing's contract, checked in a process of its own (it sets the global
tracer provider and propagator) against a real broker, with an in-memory exporter. Run by
tests/test_tracing.py as ``trace_contract.py BROKER TOPIC`` (TOPIC with 2 partitions); exits
non-zero on the first failed assertion, prints ``ok`` at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tidelog import Consumer, Message, Producer, TopicPartition, UnknownTopicError
from tidelog.aio import AIOProducer
from tidelog.tracing import process_span

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


def finished(name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def context_of(msg: Message) -> tuple[int, int]:
    raw = msg.header("traceparent")
    assert raw is not None, msg
    _, trace_id, span_id, _ = raw.decode().split("-")
    return int(trace_id, 16), int(span_id, 16)


addr, topic = sys.argv[1], sys.argv[2]
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
# The application's own propagators apply: W3C trace context and baggage.
propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))

# 1. The send span's parent is the current context; its tracestate and the baggage go into the
#    record's headers next to the application's; a failed produce() leaves an ERROR span.
incoming = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=1"}
token = context.attach(baggage.set_baggage("tenant", "t7", context=propagate.extract(incoming)))
try:
    with Producer({"bootstrap.servers": addr}) as p:
        sent = p.produce_future(topic, "x", partition=1, headers={"h": "v"}).result(10)
        try:
            p.produce("missing-topic-for-tracing", b"y")
        except UnknownTopicError:
            pass
        else:
            raise AssertionError("produce to a missing topic should fail")
finally:
    context.detach(token)
assert sent.header("h") == b"v"
assert sent.header("tracestate") == b"vendor=1", sent
assert sent.header("baggage") == b"tenant=t7", sent
[send] = finished(f"send {topic}")
assert send.kind == SpanKind.PRODUCER
assert send.parent is not None and send.parent.span_id == int(PARENT_ID, 16)
assert context_of(sent) == (int(TRACE_ID, 16), send.context.span_id)
assert send.attributes is not None
assert send.attributes["messaging.destination.partition.id"] == "1"
assert send.attributes["messaging.message.body.size"] == 1
[failed] = finished("send missing-topic-for-tracing")
assert failed.status.status_code == StatusCode.ERROR, failed.status
assert failed.attributes is not None and failed.attributes["error.type"] == "UnknownTopicError"
assert [e.name for e in failed.events] == ["exception"]


# 2. AIOProducer: the same span (a root here: no current span); a tombstone's body size is 0;
#    the partition is the one the key chose.
async def send_tombstone() -> Message:
    async with AIOProducer({"bootstrap.servers": addr}) as p:
        return await p.send_and_wait(topic, None, key=b"k")


tombstone = asyncio.run(send_tombstone())
[aio_send] = [s for s in finished(f"send {topic}") if s.context.span_id != send.context.span_id]
assert aio_send.parent is None and aio_send.kind == SpanKind.PRODUCER
assert aio_send.attributes is not None
assert aio_send.attributes["messaging.message.body.size"] == 0
assert aio_send.attributes["messaging.destination.partition.id"] == str(tombstone.partition())
assert context_of(tombstone) == (aio_send.context.trace_id, aio_send.context.span_id)
assert tombstone.header("tracestate") is None  # empty: not sent

# 3. process_span: current inside the block; the parent comes from the headers; an exception
#    is recorded and re-raised.
c = Consumer({"bootstrap.servers": addr})
c.assign([TopicPartition(topic, 1, 0)])
got: list[Message] = []
deadline = time.monotonic() + 20
while not got and time.monotonic() < deadline:
    got = c.consume(1, 0.5)
c.close()
assert got and got[0].value() == b"x", got
try:
    with process_span(got[0], group="g") as span:
        assert span is not None and trace.get_current_span() is span
        raise ValueError("bad record")
except ValueError:
    pass
else:
    raise AssertionError("process_span swallowed the exception")
[proc] = finished(f"process {topic}")
assert proc.kind == SpanKind.CONSUMER
assert proc.parent is not None and proc.parent.span_id == send.context.span_id
assert proc.context.trace_id == int(TRACE_ID, 16)
assert proc.status.status_code == StatusCode.ERROR
assert proc.attributes is not None and proc.attributes["error.type"] == "ValueError"
assert proc.attributes["messaging.consumer.group.name"] == "g"
assert proc.attributes["messaging.tidelog.message.offset"] == got[0].offset()

# 4. A record without trace context: the process span is a child of the current span.
with (
    trace.get_tracer("app").start_as_current_span("poll loop") as loop_span,
    process_span(Message(topic, 0, 5, None, b"v")) as plain,
):
    assert plain is not None
[untraced] = [s for s in finished(f"process {topic}") if s.context.span_id != proc.context.span_id]
assert untraced.parent is not None and untraced.parent.span_id == loop_span.get_span_context().span_id
assert untraced.attributes is not None and "messaging.consumer.group.name" not in untraced.attributes
print("ok")
