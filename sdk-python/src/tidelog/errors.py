"""Errors raised by the SDK: one small hierarchy over the broker's error codes and gRPC status.

Every error carries the broker's human message and says whether retrying can help:

- :class:`RetriableError`: the same request may succeed later (not leader, shutting down, a
  storage error, the broker unreachable). The producer already retries these by itself until
  ``delivery.timeout.ms``; you see them only when that runs out.
- :class:`FatalError`: retrying the same request cannot succeed (unknown topic, a batch too
  large, a fenced producer, a stale group generation).
- :class:`ConfigError`: a bad configuration key or value, raised at construction.

Transactions (a producer with ``transactional.id``) add three kinds, as confluent-kafka tells
them apart with ``KafkaError.fatal()``, ``txn_requires_abort()`` and ``retriable()``:

- fatal: :class:`ProducerFencedError` (another instance with the same transactional id
  initialised, or the coordinator aborted this one's transaction after its timeout) and
  :class:`FatalTransactionError`: the producer can do nothing more; close it and create a new
  one (``kafka_error(e).fatal()`` is True);
- abortable: :class:`TransactionAbortableError` (a record of the transaction failed, a group
  rebalance fenced the offsets sent, the coordinator refused the transaction's state): abort
  the transaction, then begin a new one (``txn_requires_abort()`` is True, as is
  ``e.txn_requires_abort``);
- retriable: a transactional call that timed out (:class:`TransactionTimeoutError`) or found
  the coordinator unavailable for its whole timeout: call it again (``retriable()``).

Misuse (committing without a transaction, producing outside one) is a
:class:`TransactionStateError` (``_STATE``), neither fatal nor abortable.

Error codes are the proto's stable ``ErrorCode`` numbers (:class:`ErrorCode`).

confluent-kafka's shapes, for code written against it: :class:`KafkaError` (``code()``,
``name()``, ``str()``, ``retriable()``, ``fatal()``, and librdkafka's numbers as constants:
``KafkaError._PARTITION_EOF``, ``KafkaError.UNKNOWN_TOPIC_OR_PART``, ...) and
:class:`KafkaException`, whose ``args[0]`` is a :class:`KafkaError`. Every SDK error is a
:class:`KafkaException`: ``except KafkaException as e: e.args[0].code()`` works for all of
them, and :func:`kafka_error` gives the :class:`KafkaError` of any SDK error.
"""

from __future__ import annotations

import builtins
import enum
from typing import Any

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
    AUTHORIZATION_FAILED = 17
    INVALID_TXN_STATE = 18
    CONCURRENT_TRANSACTIONS = 19
    UNSTABLE_OFFSET_COMMIT = 20
    INVALID_RECORD = 21

    @property
    def retriable(self) -> bool:
        return self in _RETRIABLE_CODES


_RETRIABLE_CODES = frozenset(
    {
        ErrorCode.STORAGE_ERROR,
        ErrorCode.NOT_LEADER,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.CONCURRENT_TRANSACTIONS,
        ErrorCode.UNSTABLE_OFFSET_COMMIT,
    }
)


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


class KafkaError:
    """An error as confluent-kafka reports it: a librdkafka error number with its name and a
    reason. ``msg.error()`` returns one (e.g. ``_PARTITION_EOF``), ``error_cb`` receives one,
    and every SDK error carries one as ``args[0]`` (see :func:`kafka_error`).

    Compares equal to its code (``err == KafkaError._PARTITION_EOF``) and to another
    :class:`KafkaError` with the same code. ``exception`` is the SDK error it stands for, if any.
    """

    # librdkafka's local errors (negative) and Kafka's broker errors, as confluent-kafka names them.
    _BAD_MSG = -199
    _BAD_COMPRESSION = -198
    _DESTROY = -197
    _FAIL = -196
    _TRANSPORT = -195
    _RESOLVE = -193
    _MSG_TIMED_OUT = -192
    _PARTITION_EOF = -191
    _UNKNOWN_PARTITION = -190
    _UNKNOWN_TOPIC = -188
    _ALL_BROKERS_DOWN = -187
    _INVALID_ARG = -186
    _TIMED_OUT = -185
    _QUEUE_FULL = -184
    _SSL = -181
    _UNKNOWN_GROUP = -179
    _STATE = -172
    _NOT_IMPLEMENTED = -170
    _AUTHENTICATION = -169
    _NO_OFFSET = -168
    _PURGE_QUEUE = -152
    _FATAL = -150
    _FENCED = -144
    UNKNOWN = -1
    NO_ERROR = 0
    OFFSET_OUT_OF_RANGE = 1
    INVALID_MSG = 2
    UNKNOWN_TOPIC_OR_PART = 3
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_FOR_PARTITION = 6
    REQUEST_TIMED_OUT = 7
    BROKER_NOT_AVAILABLE = 8
    MSG_SIZE_TOO_LARGE = 10
    ILLEGAL_GENERATION = 22
    TOPIC_AUTHORIZATION_FAILED = 29
    GROUP_AUTHORIZATION_FAILED = 30
    CLUSTER_AUTHORIZATION_FAILED = 31
    INCONSISTENT_GROUP_PROTOCOL = 23
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_CONFIG = 40
    INVALID_REQUEST = 42
    POLICY_VIOLATION = 44
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    INVALID_PRODUCER_EPOCH = 47
    INVALID_TXN_STATE = 48
    CONCURRENT_TRANSACTIONS = 51
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
    KAFKA_STORAGE_ERROR = 56
    UNKNOWN_PRODUCER_ID = 59
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
    INVALID_RECORD = 87
    UNSTABLE_OFFSET_COMMIT = 88
    PRODUCER_FENCED = 90

    __slots__ = ("_code", "_fatal", "_reason", "_retriable", "_txn_requires_abort", "exception")

    def __init__(
        self,
        error: int,
        reason: str | None = None,
        fatal: bool = False,
        retriable: bool = False,
        txn_requires_abort: bool = False,
    ) -> None:
        self._code = int(error)
        self._reason = reason
        self._fatal = fatal
        self._retriable = retriable
        self._txn_requires_abort = txn_requires_abort
        self.exception: TidelogError | None = None

    def code(self) -> int:
        """The error number (a class constant, e.g. ``KafkaError._PARTITION_EOF``)."""
        return self._code

    def name(self) -> builtins.str:
        """The constant's name, e.g. ``"_PARTITION_EOF"``."""
        return _KAFKA_NAMES.get(self._code, f"ERR_{self._code}")

    def str(self) -> builtins.str:
        """The reason: what happened, for people."""
        return self._reason or _KAFKA_DESCRIPTIONS.get(self._code, self.name())

    def fatal(self) -> bool:
        """True if the client that reported it can no longer be used (create a new one)."""
        return self._fatal

    def retriable(self) -> bool:
        """True if the operation may succeed when retried."""
        return self._retriable

    def txn_requires_abort(self) -> bool:
        """True if the producer's current transaction failed and must be aborted
        (``abort_transaction()``) before a new one begins; the producer itself is fine."""
        return self._txn_requires_abort

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KafkaError):
            return self._code == other._code
        if isinstance(other, int):
            return self._code == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._code)

    def __str__(self) -> builtins.str:
        return f'KafkaError{{code={self.name()},val={self._code},str="{self.str()}"}}'

    __repr__ = __str__


_KAFKA_NAMES: dict[int, str] = {
    v: k for k, v in vars(KafkaError).items() if isinstance(v, int) and k.lstrip("_").isupper()
}
_KAFKA_DESCRIPTIONS: dict[int, str] = {
    KafkaError._DESTROY: "Local: Broker handle destroyed",
    KafkaError._FAIL: "Local: Communication failure with broker",
    KafkaError._TRANSPORT: "Local: Broker transport failure",
    KafkaError._MSG_TIMED_OUT: "Local: Message timed out",
    KafkaError._PARTITION_EOF: "Broker: No more messages",
    KafkaError._ALL_BROKERS_DOWN: "Local: All broker connections are down",
    KafkaError._INVALID_ARG: "Local: Invalid argument or configuration",
    KafkaError._TIMED_OUT: "Local: Timed out",
    KafkaError._QUEUE_FULL: "Local: Queue full",
    KafkaError._STATE: "Local: Erroneous state",
    KafkaError._PURGE_QUEUE: "Local: Purged in queue",
    KafkaError._FENCED: "Local: This instance has been fenced by a newer instance",
    KafkaError.INVALID_TXN_STATE: "Broker: Producer attempted a transactional operation in an invalid state",
    KafkaError.CONCURRENT_TRANSACTIONS: "Broker: Producer attempted to update a transaction while another"
    " concurrent operation on the same transaction was ongoing",
    KafkaError.UNSTABLE_OFFSET_COMMIT: "Broker: There are unstable offsets that need to be cleared",
    KafkaError._NOT_IMPLEMENTED: "Local: Not implemented",
    KafkaError._SSL: "Local: SSL error",
    KafkaError._AUTHENTICATION: "Local: Authentication failure",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "Broker: Topic authorization failed",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "Broker: Group authorization failed",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "Broker: Cluster authorization failed",
    KafkaError.UNKNOWN_TOPIC_OR_PART: "Broker: Unknown topic or partition",
    KafkaError.TOPIC_ALREADY_EXISTS: "Broker: Topic already exists",
    KafkaError.OFFSET_OUT_OF_RANGE: "Broker: Offset out of range",
    KafkaError.INVALID_RECORD: "Broker: Broker failed to validate record",
}


class KafkaException(Exception):
    """confluent-kafka's exception: ``args[0]`` is a :class:`KafkaError` (``raise
    KafkaException(msg.error())`` works as with confluent-kafka). Base of every SDK error."""


class TidelogError(KafkaException):
    """Base of every SDK error.

    ``code`` is an :class:`ErrorCode` for broker errors, a :class:`grpc.StatusCode` for transport
    or RPC-level failures, or ``None`` for client-side errors. As a :class:`KafkaException`, its
    ``args[0]`` is the equivalent :class:`KafkaError` (``e.args[0].code()``).
    """

    retriable: bool = False
    #: The producer's transaction failed and must be aborted (``abort_transaction()``).
    txn_requires_abort: bool = False

    def __init__(self, message: str, code: ErrorCode | grpc.StatusCode | None = None) -> None:
        self.message = message
        self.code = code
        super().__init__(_to_kafka_error(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.code))

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
    """A newer instance of this producer exists (for a transactional producer: another one
    called ``init_transactions`` with the same ``transactional.id``, or the coordinator aborted
    this one's transaction after ``transaction.timeout.ms``); this one must be closed.
    ``kafka_error(e).fatal()`` is True."""


class FatalTransactionError(FatalError):
    """The transactional producer can do nothing more (an abort the coordinator refused, or
    the producer failed fatally before): close it and create a new one, which
    ``init_transactions`` then recovers. ``kafka_error(e).fatal()`` is True."""


class TransactionAbortableError(FatalError):
    """The current transaction cannot commit (a record of it failed, the offsets sent were
    fenced by a group rebalance, the coordinator refused a call in the transaction's state):
    call ``abort_transaction()``, then begin a new transaction. ``txn_requires_abort`` (and
    ``kafka_error(e).txn_requires_abort()``) is True; ``cause`` is the error behind it."""

    txn_requires_abort = True

    def __init__(
        self,
        message: str,
        code: ErrorCode | grpc.StatusCode | None = None,
        cause: TidelogError | None = None,
    ) -> None:
        self.cause = cause
        super().__init__(message, code)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.code, self.cause))


class TransactionStateError(FatalError):
    """A transactional call that does not fit the producer's state: ``begin_transaction``
    before ``init_transactions``, ``commit_transaction`` without an open transaction,
    ``produce`` outside a transaction on a transactional producer, a transactional call on a
    producer without ``transactional.id``. ``_STATE``; neither fatal nor abortable."""


class TransactionTimeoutError(RetriableError):
    """A transactional call did not finish within its timeout (the records of the
    transaction were not all delivered yet, or the coordinator stayed unavailable): it may
    go on in the background; call it again. ``_TIMED_OUT``, retriable."""


class PurgedError(FatalError):
    """A record produced in a transaction that was aborted before the record was sent:
    it was never written. ``_PURGE_QUEUE``."""


class UnstableOffsetCommitError(RetriableError):
    """The group's committed offsets are not stable: an open transaction will commit offsets
    of the group (``UNSTABLE_OFFSET_COMMIT``). Retried by the consumer until the transaction
    ends or ``default.api.timeout.ms`` passes."""


class InvalidRecordError(FatalError):
    """The broker refused a batch for what one of its records holds: a record without a key
    on a compacted topic (``cleanup.policy`` compact), where every record needs a key
    (``INVALID_RECORD``). Not retriable: the batch's records were not written; set a key on
    every record."""


class UnknownGroupError(FatalError):
    """The consumer group does not exist (no members and no committed offsets)."""


class GroupNotEmptyError(FatalError):
    """The group has members: stop its consumers before deleting it or resetting its offsets."""


class IllegalGenerationError(FatalError):
    """A group commit or sync carried a stale generation: a rebalance happened, rejoin first."""


class AuthenticationError(FatalError):
    """The broker refused the client's credentials (gRPC ``UNAUTHENTICATED``): no bearer token
    where one is required, or an expired, unsigned or wrongly issued one. ``_AUTHENTICATION``."""


class AuthorizationError(FatalError):
    """The broker's ACLs do not allow the operation (``PERMISSION_DENIED``, or a produce
    answered ``AUTHORIZATION_FAILED``): ``TOPIC_AUTHORIZATION_FAILED`` (or the group's or the
    cluster's, when the broker's message names them)."""


class QueueFullError(RetriableError, BufferError):
    """``produce`` waited ``max.block.ms`` for room in ``buffer.memory``. Also a
    :class:`BufferError`, as confluent-kafka raises when its queue is full."""


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
    ErrorCode.AUTHORIZATION_FAILED: AuthorizationError,
    ErrorCode.UNSTABLE_OFFSET_COMMIT: UnstableOffsetCommitError,
    ErrorCode.INVALID_RECORD: InvalidRecordError,
}

#: The metadata key of a failed call's ``ErrorCode`` name (``ERROR_CODE_NOT_LEADER``, ...).
ERROR_CODE_METADATA = "x-tidelog-error-code"

#: Error codes a failed unary call's metadata is trusted for (the gRPC status alone does not
#: tell them apart: FAILED_PRECONDITION, UNAVAILABLE). Others keep the status's meaning.
_METADATA_CODES = frozenset(
    {
        ErrorCode.PRODUCER_FENCED,
        ErrorCode.ILLEGAL_GENERATION,
        ErrorCode.INVALID_TXN_STATE,
        ErrorCode.CONCURRENT_TRANSACTIONS,
        ErrorCode.UNSTABLE_OFFSET_COMMIT,
    }
)


def metadata_code(err: grpc.RpcError) -> ErrorCode | None:
    """The ``ErrorCode`` a failed call names in its ``x-tidelog-error-code`` metadata, if any."""
    for getter in ("trailing_metadata", "initial_metadata"):
        fn = getattr(err, getter, None)
        if fn is None:
            continue
        try:
            md = fn() or ()
        except Exception:  # a call object that has no metadata to give
            continue
        for item in md:
            key, value = item[0], item[1]
            if key == ERROR_CODE_METADATA:
                name = (value.decode() if isinstance(value, bytes) else str(value)).removeprefix(
                    "ERROR_CODE_"
                )
                return ErrorCode.__members__.get(name)
    return None


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
    ec = metadata_code(err)
    if ec is not None and ec in _METADATA_CODES:
        return from_code(ec, details)
    if code == grpc.StatusCode.NOT_FOUND:
        return UnknownTopicError(details, code)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return TopicExistsError(details, code)
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return OffsetOutOfRangeError(details, code)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(details, code)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return AuthorizationError(details, code)
    if code in _RETRIABLE_STATUS:
        return RetriableError(details, code)
    return FatalError(details, code)


# ---- confluent-kafka's error numbers for SDK errors -----------------------------------------

_KAFKA_CODE_OF_ERROR_CODE: dict[ErrorCode, int] = {
    ErrorCode.UNKNOWN_TOPIC: KafkaError.UNKNOWN_TOPIC_OR_PART,
    ErrorCode.UNKNOWN_PARTITION: KafkaError.UNKNOWN_TOPIC_OR_PART,
    ErrorCode.BATCH_TOO_LARGE: KafkaError.MSG_SIZE_TOO_LARGE,
    ErrorCode.CORRUPT_BATCH: KafkaError.INVALID_MSG,
    ErrorCode.INVALID_REQUEST: KafkaError.INVALID_REQUEST,
    ErrorCode.STORAGE_ERROR: KafkaError.KAFKA_STORAGE_ERROR,
    ErrorCode.OFFSET_OUT_OF_RANGE: KafkaError.OFFSET_OUT_OF_RANGE,
    ErrorCode.NOT_LEADER: KafkaError.NOT_LEADER_FOR_PARTITION,
    ErrorCode.SHUTTING_DOWN: KafkaError.BROKER_NOT_AVAILABLE,
    ErrorCode.OUT_OF_ORDER_SEQUENCE: KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    ErrorCode.PRODUCER_FENCED: KafkaError.PRODUCER_FENCED,
    ErrorCode.UNKNOWN_PRODUCER: KafkaError.UNKNOWN_PRODUCER_ID,
    ErrorCode.ILLEGAL_GENERATION: KafkaError.ILLEGAL_GENERATION,
    ErrorCode.INCONSISTENT_GROUP: KafkaError.INCONSISTENT_GROUP_PROTOCOL,
    ErrorCode.UNKNOWN_GROUP: KafkaError.GROUP_ID_NOT_FOUND,
    ErrorCode.NON_EMPTY_GROUP: KafkaError.NON_EMPTY_GROUP,
    ErrorCode.AUTHORIZATION_FAILED: KafkaError.TOPIC_AUTHORIZATION_FAILED,
    ErrorCode.INVALID_TXN_STATE: KafkaError.INVALID_TXN_STATE,
    ErrorCode.CONCURRENT_TRANSACTIONS: KafkaError.CONCURRENT_TRANSACTIONS,
    ErrorCode.UNSTABLE_OFFSET_COMMIT: KafkaError.UNSTABLE_OFFSET_COMMIT,
    ErrorCode.INVALID_RECORD: KafkaError.INVALID_RECORD,
}

_KAFKA_CODE_OF_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.NOT_FOUND: KafkaError.UNKNOWN_TOPIC_OR_PART,
    grpc.StatusCode.ALREADY_EXISTS: KafkaError.TOPIC_ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE: KafkaError.OFFSET_OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE: KafkaError._TRANSPORT,
    grpc.StatusCode.CANCELLED: KafkaError._TRANSPORT,
    grpc.StatusCode.ABORTED: KafkaError._TRANSPORT,
    grpc.StatusCode.DEADLINE_EXCEEDED: KafkaError._TIMED_OUT,
    grpc.StatusCode.INVALID_ARGUMENT: KafkaError.INVALID_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: KafkaError._STATE,
    grpc.StatusCode.UNIMPLEMENTED: KafkaError._NOT_IMPLEMENTED,
    grpc.StatusCode.UNAUTHENTICATED: KafkaError._AUTHENTICATION,
    grpc.StatusCode.PERMISSION_DENIED: KafkaError.TOPIC_AUTHORIZATION_FAILED,
}


def _authorization_code(message: str) -> int:
    """The authorization error number for a refusal: the group's or the cluster's when the
    broker's message names that resource (and no topic), else the topic's."""
    low = message.lower()
    if "topic" not in low:
        if "group" in low:
            return KafkaError.GROUP_AUTHORIZATION_FAILED
        if "cluster" in low:
            return KafkaError.CLUSTER_AUTHORIZATION_FAILED
    return KafkaError.TOPIC_AUTHORIZATION_FAILED


#: gRPC's words for a TLS failure, in the details of the UNAVAILABLE status it fails calls
#: with: a broker certificate not signed by the configured CA ("Tls handshake failed
#: (TSI_PROTOCOL_FAILURE): ... CERTIFICATE_VERIFY_FAILED"), one not naming the address the
#: client connects to ("Custom verification check failed with error: UNAUTHENTICATED:
#: Hostname Verification Check failed."), or a client certificate the broker refused ("Unwrap
#: failed (TSI_DATA_CORRUPTED)": TLS 1.3 refuses it after the client's side of the handshake).
_TLS_FAILURE = ("handshake failed", "(tsi_", "verification check failed")

#: SDK error classes whose number does not depend on ``code`` (checked in this order).
_KAFKA_CODE_OF_CLASS: list[tuple[type[TidelogError], int]] = [
    (ConfigError, KafkaError._INVALID_ARG),
    (DeliveryTimeoutError, KafkaError._MSG_TIMED_OUT),
    (TransactionStateError, KafkaError._STATE),
    (TransactionTimeoutError, KafkaError._TIMED_OUT),
    (PurgedError, KafkaError._PURGE_QUEUE),
    (QueueFullError, KafkaError._QUEUE_FULL),
    (ClosedError, KafkaError._DESTROY),
    (TopicExistsError, KafkaError.TOPIC_ALREADY_EXISTS),
    (UnknownGroupError, KafkaError.GROUP_ID_NOT_FOUND),
    (GroupNotEmptyError, KafkaError.NON_EMPTY_GROUP),
]


def _kafka_code(e: TidelogError) -> int:
    if isinstance(e, TransactionAbortableError) and e.cause is not None:
        return _kafka_code(e.cause)
    for cls, number in _KAFKA_CODE_OF_CLASS:
        if isinstance(e, cls):
            return number
    if isinstance(e, AuthorizationError):
        return _authorization_code(e.message)
    if isinstance(e.code, ErrorCode):
        return _KAFKA_CODE_OF_ERROR_CODE.get(e.code, KafkaError.UNKNOWN)
    if isinstance(e.code, grpc.StatusCode):
        if e.code == grpc.StatusCode.UNAVAILABLE and any(w in e.message.lower() for w in _TLS_FAILURE):
            return KafkaError._SSL  # as librdkafka reports a failed TLS handshake
        return _KAFKA_CODE_OF_STATUS.get(e.code, KafkaError._FAIL)
    if isinstance(e, UnknownTopicError):
        return KafkaError.UNKNOWN_TOPIC_OR_PART
    if isinstance(e, OffsetOutOfRangeError):
        return KafkaError.OFFSET_OUT_OF_RANGE
    return KafkaError._TRANSPORT if e.retriable else KafkaError._FAIL


def _to_kafka_error(e: TidelogError) -> KafkaError:
    k = KafkaError(
        _kafka_code(e),
        str(e),
        fatal=isinstance(e, ProducerFencedError | FatalTransactionError),
        retriable=e.retriable,
        txn_requires_abort=e.txn_requires_abort,
    )
    k.exception = e
    return k


def kafka_error(e: BaseException) -> KafkaError:
    """The :class:`KafkaError` of an error: an SDK error's own (``args[0]``); ``_FAIL`` for
    anything else."""
    if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError):
        return e.args[0]
    return KafkaError(KafkaError._FAIL, str(e) or type(e).__name__)
