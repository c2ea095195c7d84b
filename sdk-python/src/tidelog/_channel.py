"""gRPC channels to the broker, with the options every client needs, plaintext or TLS, and the
metadata every call carries.

A client's :class:`Transport` is built once, from its configuration (``security.protocol``,
the ``ssl.*`` and ``sasl.*`` keys and ``client.id``, see :func:`tidelog._config.make_transport`),
and every channel the client opens, to any broker, uses it: a cluster is reached with the same
credentials throughout. Every call on such a channel, unary or streaming, sync or asyncio,
carries ``x-tidelog-client-id`` and, with SASL (OAUTHBEARER), ``authorization: Bearer
<token>``: channel interceptors add them, so no call site can forget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

# Batches are up to 1 MiB and a subscribe response carries up to fetch.max.bytes plus one
# batch; leave generous headroom over gRPC's 4 MiB default receive limit.
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # A frozen broker (SIGSTOP) keeps the connection open: pings every second, given up after
    # 3 s more, notice it about when its peers have elected new leaders (the Rust SDK's rule).
    ("grpc.keepalive_time_ms", 1_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
    # A restarted broker is reachable again within a second, not after gRPC's default
    # reconnect backoff of up to 2 minutes: in a cluster it may be the partition's leader again.
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

CLIENT_ID_HEADER = "x-tidelog-client-id"

_log = logging.getLogger("tidelog")

#: A token is refreshed when less than this share of its lifetime remains ...
_REFRESH_SHARE = 0.2
#: ... or less than this many seconds, whichever comes first (the smaller margin).
_REFRESH_MARGIN = 60.0
#: After a failed refresh, the callback is not called again for this long (s).
_RETRY_AFTER = 1.0


class TokenSource:
    """The bearer token (a JWT) calls carry: a static one (``sasl.oauthbearer.token``) or the
    one confluent-kafka's ``oauth_cb(sasl.oauthbearer.config)`` returns, as ``(token,
    expiry)`` with ``expiry`` in seconds since the epoch. The callback is called when the
    source is made (the client's construction: a failure is the caller's to report) and
    again, by the first call needing the token, when less than 20 % of the token's lifetime
    (at most 60 s) remains. A failed refresh is logged and the current token kept (the
    broker refuses it once expired). Thread-safe."""

    def __init__(
        self,
        token: str | None = None,
        callback: Callable[[str | None], Any] | None = None,
        config: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._callback = callback
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._token = token
        self._expiry = float("inf")
        self._refresh_at = float("inf")
        self._failed_at = float("-inf")
        if callback is not None:
            self._refresh()

    def _refresh(self) -> None:
        """Calls the callback; raises what it raises, or a ValueError for a bad result."""
        assert self._callback is not None
        got = self._callback(self._config)
        if not isinstance(got, (tuple, list)) or len(got) < 2:
            raise ValueError(f"oauth_cb must return (token, expiry_seconds_since_epoch), got {got!r}")
        token, expiry = got[0], float(got[1])
        if not isinstance(token, str) or not token:
            raise ValueError("oauth_cb returned an empty or non-string token")
        now = self._clock()
        self._token, self._expiry = token, expiry
        margin = min(_REFRESH_MARGIN, max(expiry - now, 0.0) * _REFRESH_SHARE)
        self._refresh_at = expiry - margin

    def token(self) -> str | None:
        """The current token, refreshed first if due."""
        if self._callback is None:
            return self._token
        with self._lock:
            now = self._clock()
            if now >= self._refresh_at and now - self._failed_at >= _RETRY_AFTER:
                try:
                    self._refresh()
                except Exception as e:  # a user callback: keep the current token
                    self._failed_at = now
                    _log.warning("oauth_cb failed (%r); keeping the current token", e)
            return self._token


@dataclass(frozen=True)
class Transport:
    """How a client reaches its brokers: plaintext (``credentials`` None) or TLS with these
    channel credentials (the CA that must sign the brokers' certificates, and the client's
    own certificate for mTLS). The broker's certificate must name the host (or IP) a channel
    connects to: gRPC verifies it against the target, as ``ssl.endpoint.identification.algorithm
    =https`` does. Every call carries ``client_id`` and, if ``tokens`` is set, its bearer token."""

    credentials: Any = None  # grpc.ChannelCredentials (untyped)
    client_id: str | None = None
    tokens: TokenSource | None = None

    @property
    def tls(self) -> bool:
        return self.credentials is not None

    def metadata(self) -> list[tuple[str, str]]:
        """The metadata every call carries."""
        md: list[tuple[str, str]] = []
        if self.client_id:
            md.append((CLIENT_ID_HEADER, self.client_id))
        if self.tokens is not None:
            token = self.tokens.token()
            if token:
                md.append(("authorization", f"Bearer {token}"))
        return md


PLAINTEXT = Transport()


def _merged(existing: Any, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    names = {k for k, _ in extra}
    return [*extra, *((k, v) for k, v in (existing or ()) if k not in names)]


# ---- synchronous channels ----------------------------------------------------------------------


class _SyncDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _SyncMetadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def _details(self, d: Any) -> _SyncDetails:
        return _SyncDetails(
            d.method,
            d.timeout,
            _merged(d.metadata, self._transport.metadata()),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def sync_channel(target: str, transport: Transport) -> grpc.Channel:
    if transport.credentials is not None:
        ch = grpc.secure_channel(target, transport.credentials, options=_OPTIONS)
    else:
        ch = grpc.insecure_channel(target, options=_OPTIONS)
    return grpc.intercept_channel(ch, _SyncMetadata(transport))


# ---- asyncio channels ----------------------------------------------------------------------------


def _aio_details(d: Any, transport: Transport) -> Any:
    return grpc.aio.ClientCallDetails(
        d.method,
        d.timeout,
        grpc.aio.Metadata(*_merged(d.metadata, transport.metadata())),
        d.credentials,
        d.wait_for_ready,
    )


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._transport), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._transport), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_aio_details(details, self._transport), requests)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_aio_details(details, self._transport), requests)


def aio_channel(target: str, transport: Transport) -> grpc.aio.Channel:
    interceptors = [
        cls(transport) for cls in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    ]
    if transport.credentials is not None:
        return grpc.aio.secure_channel(
            target, transport.credentials, options=_OPTIONS, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=_OPTIONS, interceptors=interceptors)
