"""An OTLP/gRPC trace receiver for tests: a grpcio server on a free loopback port implementing
``opentelemetry.proto.collector.trace.v1.TraceService/Export``, keeping every span it is sent
(with its resource's attributes), thread-safely, and helpers to find spans and wait for them.

::

    r = OtlpReceiver()                    # r.endpoint == "http://127.0.0.1:PORT"
    ...  # processes export with OTEL_EXPORTER_OTLP_ENDPOINT=r.endpoint
    [append] = r.wait_for(lambda s: s.name == "append t", what="the broker's span")
    r.stop()

The ``otlp`` fixture (conftest.py) starts one per test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

KINDS = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
STATUS = {
    trace_pb2.Status.STATUS_CODE_UNSET: "UNSET",
    trace_pb2.Status.STATUS_CODE_OK: "OK",
    trace_pb2.Status.STATUS_CODE_ERROR: "ERROR",
}


def any_value(v: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as a Python value (str, bool, int, float, bytes, list, dict, None)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, which)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Span:
    """One received span; ids are lower-case hex ("" for no parent)."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    links: tuple[Link, ...]
    resource: dict[str, Any]
    scope: str
    status: str
    status_message: str
    start_ns: int
    end_ns: int

    @property
    def service(self) -> str | None:
        return self.resource.get("service.name")

    @property
    def context(self) -> tuple[str, str]:
        """(trace id, span id): what a child's parent or a link points at."""
        return (self.trace_id, self.span_id)

    @property
    def parent(self) -> tuple[str, str] | None:
        """(trace id, parent span id), or None for a root span."""
        return (self.trace_id, self.parent_span_id) if self.parent_span_id else None

    @property
    def linked(self) -> list[tuple[str, str]]:
        """The (trace id, span id) of each link."""
        return [(link.trace_id, link.span_id) for link in self.links]

    def is_child_of(self, other: Span) -> bool:
        return self.parent == other.context

    def __repr__(self) -> str:
        parent = f" parent={self.parent_span_id}" if self.parent_span_id else ""
        return f"Span({self.name!r} {self.kind} {self.service} {self.trace_id}/{self.span_id}{parent})"


def traceparent_of(span: Span) -> str:
    """The W3C traceparent value (sampled) that a record produced in ``span`` carries,
    ignoring the flags."""
    return f"00-{span.trace_id}-{span.span_id}"


def parse_traceparent(value: bytes | str) -> tuple[str, str]:
    """(trace id, span id) of a W3C traceparent header value."""
    text = value.decode() if isinstance(value, bytes) else value
    version, trace_id, span_id, _flags = text.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16, text
    return (trace_id, span_id)


class _Service(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        got: list[Span] = []
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        Span(
                            name=s.name,
                            kind=KINDS.get(s.kind, str(s.kind)),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            attributes=attributes(s.attributes),
                            links=tuple(
                                Link(link.trace_id.hex(), link.span_id.hex(), attributes(link.attributes))
                                for link in s.links
                            ),
                            resource=resource,
                            scope=ss.scope.name,
                            status=STATUS.get(s.status.code, str(s.status.code)),
                            status_message=s.status.message,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        self.receiver._add(got)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """See the module docs. Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spans: list[Span] = []
        self.exports = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Service(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        assert self.port, "could not bind a loopback port"
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _add(self, spans: list[Span]) -> None:
        with self._cond:
            self._spans += spans
            self.exports += 1
            self._cond.notify_all()

    def spans(
        self,
        name: str | None = None,
        kind: str | None = None,
        service: str | None = None,
        trace_id: str | None = None,
    ) -> list[Span]:
        """The spans received so far (in arrival order), filtered by whatever is given."""
        with self._cond:
            got = list(self._spans)
        return [
            s
            for s in got
            if (name is None or s.name == name)
            and (kind is None or s.kind == kind)
            and (service is None or s.service == service)
            and (trace_id is None or s.trace_id == trace_id)
        ]

    def by_id(self, span_id: str) -> Span | None:
        """The span with this (hex) id, if received."""
        with self._cond:
            return next((s for s in self._spans if s.span_id == span_id), None)

    def trace_ids(self, **filters: str) -> set[str]:
        return {s.trace_id for s in self.spans(**filters)}

    def wait_for(
        self, match: Callable[[Span], bool], count: int = 1, timeout: float = 20.0, what: str = "spans"
    ) -> list[Span]:
        """The received spans that ``match``, once there are at least ``count`` of them; fails
        after ``timeout`` seconds, listing what did arrive."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [s for s in self._spans if match(s)]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({(s.service, s.name, s.kind) for s in self._spans}, key=str)
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {count} {what} "
                        f"(got {len(got)}; received {len(self._spans)} spans: {names})"
                    )
                self._cond.wait(left)

    def wait_named(
        self, name: str, count: int = 1, kind: str | None = None, service: str | None = None, **kw: Any
    ) -> list[Span]:
        """``wait_for`` spans called ``name`` (of that ``kind`` and ``service`` if given)."""
        return self.wait_for(
            lambda s: (
                s.name == name
                and (kind is None or s.kind == kind)
                and (service is None or s.service == service)
            ),
            count,
            what=f"{name!r} spans" + (f" of {service}" if service else ""),
            **kw,
        )

    def stop(self) -> None:
        self._server.stop(grace=None).wait(10)
