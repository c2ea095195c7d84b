"""Errors raised by the SDK: one small hierarchy over the broker's error codes and gRPC status.

Every error carries the broker's human message and says whether retrying can help:

- :class:`RetriableError`: the same request may succeed later (not leader, shutting down, a
  storage error, the broker unreachable). The producer already retries these by itself until
  ``delivery.timeout.ms``; you see them only when that runs out.
- :class:`FatalError`: retrying the same request cannot succeed (unknown topic, a batch too
  large, a fenced producer, a stale group generation).
- :class:`ConfigError`: a bad configuration key or value, raised at construction.

Error codes are the proto's stable ``ErrorCode`` numbers (:class:`ErrorCode`).
"""

from __future__ import annotations

import enum

import grpc


class ErrorCode(enum.IntEnum):
    """The broker's per-request error codes (``tidelog.v1.ErrorCode``; values are stable)."""

    NONE = 0
    UNKNOWN_TOPIC = 1
    UNKNOWN_PARTITION = 2
    BATCH_TOO_LARGE = 3
    CORRUPT_BATCH = 4
    INVALID_REQUEST = 5
    STORAGE_ERROR = 6
    OFFSET_OUT_OF_RANGE = 7
    NOT_LEADER = 8
    SHUTTING_DOWN = 9
    OUT_OF_ORDER_SEQUENCE = 10
    PRODUCER_FENCED = 11
    UNKNOWN_PRODUCER = 12
    ILLEGAL_GENERATION = 13
    INCONSISTENT_GROUP = 14
    UNKNOWN_GROUP = 15
    NON_EMPTY_GROUP = 16

    @property
    def retriable(self) -> bool:
        return self in _RETRIABLE_CODES


_RETRIABLE_CODES = frozenset({ErrorCode.STORAGE_ERROR, ErrorCode.NOT_LEADER, ErrorCode.SHUTTING_DOWN})


def is_retriable_code(code: int) -> bool:
    """Whether a broker ``ErrorCode`` number is retriable (unknown numbers are not)."""
    return code in _RETRIABLE_CODES


_RETRIABLE_STATUS = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


class TidelogError(Exception):
    """Base of every SDK error.

    ``code`` is an :class:`ErrorCode` for broker errors, a :class:`grpc.StatusCode` for transport
    or RPC-level failures, or ``None`` for client-side errors.
    """

    retriable: bool = False

    def __init__(self, message: str, code: ErrorCode | grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        name = self.code.name
        return f"{name}: {self.message}" if self.message else name


class RetriableError(TidelogError):
    """The request may succeed if retried (see the module docs)."""

    retriable = True


class FatalError(TidelogError):
    """Retrying the same request cannot succeed."""


class ConfigError(FatalError, ValueError):
    """A configuration key is unknown or its value is invalid; the message names the key."""


class UnknownTopicError(FatalError):
    """The topic (or partition) does not exist."""


class TopicExistsError(FatalError):
    """A topic with this name already exists."""


class OffsetOutOfRangeError(FatalError):
    """The requested offset is outside [log start offset, log end offset]."""


class ProducerFencedError(FatalError):
    """A newer instance of this idempotent producer exists; this one must be closed."""


class UnknownGroupError(FatalError):
    """The consumer group does not exist (no members and no committed offsets)."""


class GroupNotEmptyError(FatalError):
    """The group has members: stop its consumers before deleting it or resetting its offsets."""


class IllegalGenerationError(FatalError):
    """A group commit or sync carried a stale generation: a rebalance happened, rejoin first."""


class DeliveryTimeoutError(RetriableError):
    """A record was not acknowledged within ``delivery.timeout.ms``."""


class ClosedError(FatalError):
    """The producer or consumer is closed."""


_BY_CODE: dict[ErrorCode, type[TidelogError]] = {
    ErrorCode.UNKNOWN_TOPIC: UnknownTopicError,
    ErrorCode.UNKNOWN_PARTITION: UnknownTopicError,
    ErrorCode.OFFSET_OUT_OF_RANGE: OffsetOutOfRangeError,
    ErrorCode.PRODUCER_FENCED: ProducerFencedError,
    ErrorCode.ILLEGAL_GENERATION: IllegalGenerationError,
    ErrorCode.UNKNOWN_GROUP: UnknownGroupError,
    ErrorCode.NON_EMPTY_GROUP: GroupNotEmptyError,
}


def from_code(code: int, message: str) -> TidelogError:
    """The error for a broker ``ErrorCode`` in a response body."""
    try:
        ec = ErrorCode(code)
    except ValueError:
        return FatalError(f"unknown error code {code}: {message}")
    cls = _BY_CODE.get(ec) or (RetriableError if ec.retriable else FatalError)
    return cls(message, ec)


def from_rpc_error(err: grpc.RpcError) -> TidelogError:
    """The error for a failed RPC (a ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    if code == grpc.StatusCode.NOT_FOUND:
        return UnknownTopicError(details, code)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return TopicExistsError(details, code)
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return OffsetOutOfRangeError(details, code)
    if code in _RETRIABLE_STATUS:
        return RetriableError(details, code)
    return FatalError(details, code)
