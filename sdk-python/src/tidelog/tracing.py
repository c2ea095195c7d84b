"""OpenTelemetry tracing of records: W3C trace context carried in record headers, and spans
named and attributed after OpenTelemetry's messaging semantic conventions (the same contract
as the broker and the Rust SDK).

- Producing (:class:`tidelog.Producer`, :class:`tidelog.aio.AIOProducer`): each record gets a
  ``send {topic}`` span (kind PRODUCER) covering the ``produce``/``send`` call, and its context
  goes into the record's ``traceparent`` (and ``tracestate``) header through the globally
  configured propagator, unless the record already carries a ``traceparent`` header. The
  broker's ``append {topic}`` span for the batch is a child of it.
- Consuming: :func:`process_span` wraps the handling of one record in a ``process {topic}``
  span (kind CONSUMER) whose parent is the producer's context taken from the record's
  headers, so the spans created inside it join the producer's trace.

Spans come from the global tracer provider (``opentelemetry.trace.get_tracer("tidelog")``).
Everything is a no-op when ``opentelemetry`` is not installed (``pip install tidelog[otel]``
adds the API; an SDK with an exporter is the application's choice) or when no SDK is
configured: the producer then adds no headers, at the cost of one look at the global tracer
provider per record.
Headers are only added for a recording span (an SDK is configured and sampled the record).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from .types import Message

__all__ = ["TRACEPARENT", "TRACESTATE", "process_span"]

#: The record headers carrying the W3C trace context.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

SYSTEM = "tidelog"
_HeadersArg = Mapping[str, Any] | list[tuple[str, Any]] | None


class _Api:
    """The parts of opentelemetry-api used here, imported once on first use."""

    def __init__(self) -> None:
        from opentelemetry import propagate, trace

        from . import __version__

        self.trace = trace
        self.propagate = propagate
        self.version = __version__
        #: Provider types that mean "no SDK configured": spans would not be recorded.
        self.idle = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self.producer = trace.SpanKind.PRODUCER
        self.consumer = trace.SpanKind.CONSUMER
        self._provider: object = None
        self._tracer: Tracer | None = None
        self._lock = threading.Lock()
        # get_tracer_provider() probes os.environ on every call until a provider is set (about
        # 1 us, a quarter of produce()); the global it returns is one attribute read. Use that
        # when it exists, unless the provider is named by the environment (loaded on first use).
        self._direct = hasattr(trace, "_TRACER_PROVIDER") and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ

    def active_provider(self) -> object:
        """The global tracer provider if it is an SDK's (spans may be recorded), else None."""
        provider = self.trace._TRACER_PROVIDER if self._direct else self.trace.get_tracer_provider()
        if provider is None or isinstance(provider, self.idle):
            return None
        return provider

    def tracer(self, provider: object) -> Tracer:
        """The "tidelog" tracer of the global ``provider`` (cached: it is set only once)."""
        tracer = self._tracer
        if tracer is None or provider is not self._provider:
            with self._lock:
                tracer = self.trace.get_tracer("tidelog", self.version)
                self._provider, self._tracer = provider, tracer
        return tracer


_UNLOADED: Any = object()
_api: Any = _UNLOADED


def _load() -> _Api | None:
    """opentelemetry-api, or None when it is not installed (imported lazily, once)."""
    global _api
    if _api is _UNLOADED:
        try:
            _api = _Api()
        except ImportError:
            _api = None
    api: _Api | None = _api
    return api


def _has_traceparent(headers: _HeadersArg) -> bool:
    if not headers:
        return False
    if isinstance(headers, Mapping):
        return TRACEPARENT in headers
    return any(h[0] == TRACEPARENT for h in headers)


def _body_size(value: object) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, memoryview):
        return value.nbytes
    return 0  # None (a tombstone), or a type stage() rejects


def sending_traced() -> bool:
    """Whether :func:`start_send` would start a span now (the producer's fast path checks)."""
    api = _api if _api is not _UNLOADED else _load()
    return api is not None and api.active_provider() is not None


def start_send(
    topic: str, value: object, headers: _HeadersArg, partition: int | None
) -> tuple[Span | None, Any]:
    """Starts the ``send {topic}`` span of one record and injects its context into the
    record's headers. Returns ``(span, headers)``; span None (and ``headers`` unchanged) when
    tracing is not active. The caller ends the span with :func:`end_send`."""
    api = _api if _api is not _UNLOADED else _load()
    if api is None:
        return None, headers
    provider = api.active_provider()
    if provider is None:
        return None, headers
    attrs: dict[str, str | int] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": topic,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.body.size": _body_size(value),
    }
    if partition is not None and partition >= 0:
        attrs["messaging.destination.partition.id"] = str(partition)
    span = api.tracer(provider).start_span(f"send {topic}", kind=api.producer, attributes=attrs)
    if not span.is_recording():
        span.end()
        return None, headers
    if not _has_traceparent(headers):
        carrier: dict[str, str] = {}
        api.propagate.inject(carrier, context=api.trace.set_span_in_context(span))
        if carrier:
            items = list(headers.items() if isinstance(headers, Mapping) else headers or ())
            items += [(k, v.encode()) for k, v in carrier.items()]
            headers = items
    return span, headers


def end_send(span: Span, partition: int | None, error: BaseException | None = None) -> None:
    """Ends a span of :func:`start_send`: with the partition the record went to, or failed."""
    if partition is not None:
        span.set_attribute("messaging.destination.partition.id", str(partition))
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end()


def _carrier(msg: Message, fields: set[str]) -> dict[str, str]:
    """The record's headers the propagator reads, as strings (the first of each name)."""
    out: dict[str, str] = {}
    for k, v in msg.headers() or ():
        name = k.lower()
        if name in fields and name not in out:
            out[name] = v.decode("utf-8", "replace")
    return out


@contextlib.contextmanager
def process_span(msg: Message, group: str | None = None) -> Iterator[Span | None]:
    """Wraps the processing of one consumed record (from :class:`tidelog.Consumer` or
    :class:`tidelog.aio.AIOConsumer`) in a ``process {topic}`` span, kind CONSUMER, the
    current span inside the block; its parent is the trace context in the record's headers
    (else the current context), so spans created inside join the producer's trace::

        for msg in consumer.consume(100, 1.0):
            with tidelog.tracing.process_span(msg, group="billing"):
                handle(msg)

    Attributes: ``messaging.system`` ("tidelog"), ``messaging.destination.name``,
    ``messaging.destination.partition.id``, ``messaging.operation.type`` and
    ``messaging.operation.name`` ("process"), ``messaging.tidelog.message.offset``, and
    ``messaging.consumer.group.name`` when ``group`` is given. An exception leaving the block
    is recorded (status ERROR, ``error.type``) and propagates.

    Yields the span, or None when opentelemetry is not installed."""
    api = _api if _api is not _UNLOADED else _load()
    if api is None:
        yield None
        return
    topic = msg.topic()
    attrs: dict[str, str | int] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(msg.partition()),
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
    }
    if msg.offset() >= 0:
        attrs["messaging.tidelog.message.offset"] = msg.offset()
    if group is not None:
        attrs["messaging.consumer.group.name"] = group
    carrier = _carrier(msg, api.propagate.get_global_textmap().fields)
    parent = api.propagate.extract(carrier) if carrier else None
    tracer = api.tracer(api.trace.get_tracer_provider())
    with tracer.start_as_current_span(
        f"process {topic}", context=parent, kind=api.consumer, attributes=attrs
    ) as span:
        try:
            yield span
        except BaseException as e:
            if span.is_recording():
                span.set_attribute("error.type", type(e).__qualname__)
            raise
