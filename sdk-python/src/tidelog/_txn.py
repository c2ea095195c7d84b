"""The transactional producer's half of exactly once (Kafka's KIP-98 and KIP-447), shared by
:class:`tidelog.Producer` and :class:`tidelog.aio.AIOProducer`.

The broker's transaction coordinator keeps each transaction; this keeps the producer's side:
its state, the partitions that joined the open transaction, and the first failure that
dooms it. It lives in the :class:`~tidelog._producer_core.ProducerCore` (``core.txn``); its
``async`` methods run on the engine loop, the others from any thread under ``core.lock``.

::

    UNINITIALIZED ─init─▶ READY ─begin─▶ IN_TRANSACTION ─commit─▶ COMMITTING ─▶ READY
                                              │   ▲                    │
                             a record fails,  │   └──── abort ◀────────┤ (ABORTING ─▶ READY)
                        a call is refused     ▼                        │
                                       ABORTABLE_ERROR ─── abort ──────┘
    fenced (another instance initialised, or the coordinator timed the transaction out),
    or an abort refused: FATAL_ERROR (the producer is closed; create a new one)

Partitions join the transaction before their first batch is sent (the broker refuses a
transactional batch for a partition it was not told of): ``produce`` notes a partition new to
the transaction (:meth:`Transactions.want`), the sender starts one ``AddPartitionsToTransaction``
for every partition noted meanwhile (:meth:`Transactions.start_adding`, at most one call at a
time) and sends nothing to a partition until its call succeeded (:meth:`Transactions.sendable`);
the call overlaps ``linger.ms``. A failed call fails those partitions' queued records and makes
the transaction abortable (a fenced producer: fatal).

``commit_transaction`` sends everything queued and waits for it (stopping early if the
transaction became abortable), then ``EndTransaction(commit)``; ``abort_transaction`` first
fails the records not sent yet (``_PURGE_QUEUE``: they were never written), waits for those in
flight, then ``EndTransaction(abort)``. A transaction the coordinator never heard of (nothing
produced, no offsets sent) ends without a call. Every coordinator call is retried while the
answer is retryable (the coordinator moving, CONCURRENT_TRANSACTIONS while the previous
transaction's markers are written, a broker down: the next one passes the call on) for the
caller's timeout, 30 s by default; running out of it is a retriable
:class:`~tidelog.errors.TransactionTimeoutError` and the call may be made again (ending a
transaction twice is harmless: the coordinator answers a repeated end with success).

Invariants: nothing is sent to a partition before the coordinator added it to the open
transaction; ``EndTransaction`` is called only once no record of the transaction is queued or in
flight and no ``AddPartitionsToTransaction`` is under way; sequence numbers are the producer's
(they go on across transactions of one epoch; a new epoch, from ``init_transactions``, starts
every partition at 0).
"""

from __future__ import annotations

import asyncio
import enum
import time
from typing import TYPE_CHECKING, Any

import grpc

from ._failover import state_answer
from .errors import (
    FatalError,
    FatalTransactionError,
    ProducerFencedError,
    PurgedError,
    TidelogError,
    TransactionAbortableError,
    TransactionStateError,
    TransactionTimeoutError,
    from_rpc_error,
    metadata_code,
)
from .types import ConsumerGroupMetadata, TopicPartition
from .v1 import (
    group_service_pb2,
    offsets_service_pb2,
    transaction_service_pb2,
    transaction_service_pb2_grpc,
)

if TYPE_CHECKING:
    from ._producer_core import ProducerCore

TP = tuple[str, int]

#: How long a coordinator call is retried when the caller gives no timeout.
COORDINATOR_RETRY = 30.0
_FIRST_BACKOFF = 0.02
_MAX_BACKOFF = 0.5


class TxnState(enum.Enum):
    """Where a transactional producer is (see the module docs)."""

    UNINITIALIZED = "uninitialized"
    READY = "ready"
    IN_TRANSACTION = "in transaction"
    COMMITTING = "committing"
    ABORTING = "aborting"
    ABORTABLE_ERROR = "abortable error"
    FATAL_ERROR = "fatal error"


def window(timeout: float | None) -> float:
    """How long a coordinator call may retry: the caller's timeout (seconds; None or
    negative: the default, :data:`COORDINATOR_RETRY`)."""
    return COORDINATOR_RETRY if timeout is None or timeout < 0 else float(timeout)


class Transactions:
    """The transactional state of one producer (``core``); see the module docs."""

    def __init__(self, core: ProducerCore, transactional_id: str, timeout_ms: int) -> None:
        self.core = core
        self.id = transactional_id
        self.timeout_ms = timeout_ms
        # Guarded by core.lock:
        self.state = TxnState.UNINITIALIZED
        #: Partitions the coordinator added to the open transaction.
        self.added: set[TP] = set()
        #: Partitions with records queued, not yet asked for.
        self.to_add: set[TP] = set()
        #: Partitions of the AddPartitionsToTransaction under way.
        self.adding: set[TP] = set()
        #: The coordinator may have an open transaction (a partition or offsets were sent).
        self.touched = False
        #: Why the transaction must be aborted (state ABORTABLE_ERROR).
        self.error: TransactionAbortableError | None = None
        # On the loop:
        self._adding_task: asyncio.Task[None] | None = None
        self._broker = 0

    # ---- checks (any thread) --------------------------------------------------------------

    def _fatal_locked(self) -> TidelogError | None:
        if self.core.fatal is not None:
            self.state = TxnState.FATAL_ERROR
            return self.core.fatal
        if self.state is TxnState.FATAL_ERROR:
            return FatalTransactionError("the transactional producer failed fatally: create a new one")
        return None

    def _abortable_locked(self) -> TransactionAbortableError:
        err = self.error
        if err is None:  # not reached: the state is set together with the error
            err = TransactionAbortableError("the transaction failed: abort it")
        return TransactionAbortableError(
            f"the transaction cannot commit: abort it ({err.message})", err.code, err.cause or err
        )

    def check_produce(self) -> None:
        """Raises unless records may be produced now (caller holds ``core.lock``)."""
        if self.state is TxnState.IN_TRANSACTION:
            return
        fatal = self._fatal_locked()
        if fatal is not None:
            raise fatal
        if self.state is TxnState.ABORTABLE_ERROR:
            raise self._abortable_locked()
        raise TransactionStateError(
            f"produce() outside a transaction (the producer is {self.state.value}): a producer with"
            " transactional.id produces only between begin_transaction() and"
            " commit_transaction()/abort_transaction()"
        )

    def want(self, tp: TP) -> bool:
        """Notes that ``tp`` has a record of the open transaction; True if it is new to the
        transaction (the sender must be woken to add it). Caller holds ``core.lock``."""
        if tp in self.added or tp in self.to_add or tp in self.adding:
            return False
        self.to_add.add(tp)
        return True

    def sendable(self, tp: TP) -> bool:
        """Whether batches of ``tp`` may be sent (caller holds ``core.lock``)."""
        return tp in self.added

    # ---- failures (engine loop) -----------------------------------------------------------

    def set_abortable(self, err: TransactionAbortableError) -> None:
        with self.core.lock:
            if self.state in (TxnState.IN_TRANSACTION, TxnState.COMMITTING):
                self.state = TxnState.ABORTABLE_ERROR
                self.error = err
        self.core.log.info("transaction of %s must be aborted: %s", self.id, err)

    def fail_fatal(self, err: TidelogError) -> None:
        """The producer can do nothing more: closes it (failing every queued record)."""
        with self.core.lock:
            self.state = TxnState.FATAL_ERROR
        self.core.log.error("transactional producer %s failed fatally: %s", self.id, err)
        self.core.fail_fatal(err)

    def on_record_failed(self, err: TidelogError) -> None:
        """A record failed (called before its delivery is reported)."""
        if isinstance(err, PurgedError):
            return
        if isinstance(err, ProducerFencedError):
            with self.core.lock:
                self.state = TxnState.FATAL_ERROR
            return
        self.set_abortable(
            TransactionAbortableError(f"a record of the transaction was not delivered: {err}", err.code, err)
        )

    # ---- the coordinator (engine loop) ----------------------------------------------------

    async def call(self, method: str, request: Any, retry_for: float) -> Any:
        """One TransactionService call, retried while retryable for ``retry_for`` seconds
        (see the module docs). Any broker passes the call on to the coordinator; a broker
        that fails (not one that answers) is left for the next one."""
        core = self.core
        deadline = time.monotonic() + retry_for
        backoff = _FIRST_BACKOFF
        attempts = 0
        while True:
            addr = core.brokers[self._broker % len(core.brokers)]
            stub = transaction_service_pb2_grpc.TransactionServiceStub(core.channel_to(addr))
            left = deadline - time.monotonic()
            attempts += 1
            try:
                resp = await getattr(stub, method)(request, timeout=max(min(core.request_timeout, left), 0.1))
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e)
                answered = metadata_code(e) is not None or state_answer(err)
            else:
                core.reporter.answered(addr)
                return resp
            if not err.retriable:
                raise err
            if time.monotonic() + backoff >= deadline:
                raise TransactionTimeoutError(
                    f"{method} for transactional id {self.id!r} did not succeed within {retry_for:g} s"
                    f" ({attempts} attempts; last: {err}); it may be called again"
                ) from err
            if not answered:
                core.reporter.failed(addr, err, f"calling the transaction coordinator ({method})")
                self._broker += 1
            core.log.info("%s failed (%s); retrying in %.2f s", method, err, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _ids(self) -> tuple[int, int]:
        with self.core.lock:
            return self.core.producer_id, self.core.producer_epoch

    async def init(self, timeout: float | None) -> None:
        """InitTransactions: this instance's producer id and epoch; older instances with the
        same transactional id are fenced, and an open transaction of theirs is aborted."""
        with self.core.lock:
            fatal = self._fatal_locked()
            if fatal is not None:
                raise fatal
            if self.state is not TxnState.UNINITIALIZED:
                raise TransactionStateError("init_transactions() was called already")
        req = transaction_service_pb2.InitTransactionsRequest(
            transactional_id=self.id, transaction_timeout_ms=self.timeout_ms
        )
        resp = await self.call("InitTransactions", req, window(timeout))
        with self.core.lock:
            self.core.producer_id, self.core.producer_epoch = resp.producer_id, resp.producer_epoch
            self.core.reset_sequences()
            self.state = TxnState.READY
        self.core.log.info(
            "transactional id %s: producer id %d epoch %d", self.id, resp.producer_id, resp.producer_epoch
        )
        self.core.wake()

    def begin(self) -> None:
        """Begins a transaction (locally: the coordinator hears of it with its first partition
        or offsets)."""
        with self.core.lock:
            fatal = self._fatal_locked()
            if fatal is not None:
                raise fatal
            if self.state is TxnState.UNINITIALIZED:
                raise TransactionStateError("call init_transactions() before begin_transaction()")
            if self.state is not TxnState.READY:
                raise TransactionStateError(
                    f"begin_transaction(): the previous transaction is not finished ({self.state.value})"
                )
            self.state = TxnState.IN_TRANSACTION
            self.added.clear()
            self.to_add.clear()
            self.touched = False
            self.error = None

    def start_adding(self) -> None:
        """Starts an AddPartitionsToTransaction for the partitions noted since the last one,
        unless one is under way (called by the sender before each pass)."""
        with self.core.lock:
            if self._adding_task is not None or not self.to_add:
                return
            if self.state not in (TxnState.IN_TRANSACTION, TxnState.COMMITTING, TxnState.ABORTABLE_ERROR):
                return
            tps = sorted(self.to_add)
            self.to_add.clear()
            self.adding = set(tps)
            self.touched = True
        self._adding_task = asyncio.get_running_loop().create_task(self._add(tps))

    async def _add(self, tps: list[TP]) -> None:
        by_topic: dict[str, list[int]] = {}
        for t, p in tps:
            by_topic.setdefault(t, []).append(p)
        pid, epoch = self._ids()
        req = transaction_service_pb2.AddPartitionsToTransactionRequest(
            transactional_id=self.id,
            producer_id=pid,
            producer_epoch=epoch,
            partitions=[
                group_service_pb2.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()
            ],
        )
        try:
            await self.call("AddPartitionsToTransaction", req, COORDINATOR_RETRY)
        except TidelogError as e:
            if isinstance(e, ProducerFencedError):
                self.fail_fatal(e)
            else:
                names = ", ".join(f"{t}/{p}" for t, p in tps)
                err = TransactionAbortableError(
                    f"adding partitions {names} to the transaction failed: {e}", e.code, e
                )
                self.set_abortable(err)
                self.core.fail_queued(set(tps), err)
        else:
            with self.core.lock:
                self.added.update(tps)
        finally:
            with self.core.lock:
                self.adding = set()
            self._adding_task = None
            self.core.wake()

    async def send_offsets(
        self,
        offsets: list[TopicPartition],
        group: ConsumerGroupMetadata | str,
        timeout: float | None,
    ) -> None:
        """AddOffsetsToTransaction: the group's offsets commit with the transaction, if it
        commits. Offsets that are None or negative are left out (as librdkafka does)."""
        meta = group if isinstance(group, ConsumerGroupMetadata) else ConsumerGroupMetadata(str(group))
        if not meta.group_id:
            raise TransactionStateError("send_offsets_to_transaction() needs the consumer's group id")
        by_topic: dict[str, list[offsets_service_pb2.PartitionOffset]] = {}
        for tp in offsets:
            if tp.offset is None or tp.offset < 0 or tp.partition < 0:
                continue
            by_topic.setdefault(tp.topic, []).append(
                offsets_service_pb2.PartitionOffset(partition=tp.partition, offset=tp.offset)
            )
        with self.core.lock:
            if self.state is not TxnState.IN_TRANSACTION:
                fatal = self._fatal_locked()
                if fatal is not None:
                    raise fatal
                if self.state is TxnState.ABORTABLE_ERROR:
                    raise self._abortable_locked()
                raise TransactionStateError(
                    f"send_offsets_to_transaction(): no transaction is open ({self.state.value}):"
                    " call begin_transaction() first"
                )
            if not by_topic:
                return
            self.touched = True
        pid, epoch = self._ids()
        req = transaction_service_pb2.AddOffsetsToTransactionRequest(
            transactional_id=self.id,
            producer_id=pid,
            producer_epoch=epoch,
            group=meta.group_id,
            offsets=[transaction_service_pb2.TopicOffsets(topic=t, offsets=os) for t, os in by_topic.items()],
            generation=max(meta.generation_id, 0),
            member_id=meta.member_id,
        )
        try:
            await self.call("AddOffsetsToTransaction", req, window(timeout))
        except TransactionTimeoutError:
            raise
        except ProducerFencedError as e:
            self.fail_fatal(e)
            raise
        except TidelogError as e:
            err = TransactionAbortableError(
                f"sending offsets of group {meta.group_id!r} failed: {e}", e.code, e
            )
            self.set_abortable(err)
            raise err from e

    def start_end(self, commit: bool) -> None:
        """Checks that the transaction may be committed (aborted) and moves to COMMITTING
        (ABORTING): nothing more may be produced. A commit or abort that timed out may be
        called again; an abort may follow a commit that failed or timed out."""
        with self.core.lock:
            fatal = self._fatal_locked()
            if fatal is not None:
                raise fatal
            s = self.state
            if commit:
                if s is TxnState.ABORTABLE_ERROR:
                    raise self._abortable_locked()
                if s not in (TxnState.IN_TRANSACTION, TxnState.COMMITTING):
                    raise TransactionStateError(f"commit_transaction(): no transaction to commit ({s.value})")
                self.state = TxnState.COMMITTING
            else:
                if s not in (
                    TxnState.IN_TRANSACTION,
                    TxnState.COMMITTING,
                    TxnState.ABORTING,
                    TxnState.ABORTABLE_ERROR,
                ):
                    raise TransactionStateError(f"abort_transaction(): no transaction to abort ({s.value})")
                self.state = TxnState.ABORTING

    def must_stop_waiting(self, commit: bool) -> TidelogError | None:
        """While a commit (an abort) waits for its records: the error that ends the wait
        early (the producer failed; for a commit also: the transaction became abortable), else
        None."""
        with self.core.lock:
            fatal = self._fatal_locked()
            if fatal is not None:
                return fatal
            if commit and self.state is TxnState.ABORTABLE_ERROR:
                return self._abortable_locked()
        return None

    def undelivered(self, what: str, timeout: float | None) -> TransactionTimeoutError:
        """The error of a commit or abort whose records were not all delivered in time."""
        return TransactionTimeoutError(
            f"{what}: {self.core.pending} records of the transaction not delivered within"
            f" {timeout:g} s; call it again (or abort)"
        )

    async def purge(self) -> None:
        """Fails the records of the transaction not sent yet (an abort): they were never
        written, so they need not wait for the broker."""
        err = PurgedError("the transaction was aborted before the record was sent")
        with self.core.lock:
            self.to_add.clear()
        self.core.fail_queued(None, err)

    async def finish(self, commit: bool, timeout: float | None) -> None:
        """EndTransaction, once every record of the transaction is delivered or failed."""
        task = self._adding_task
        if task is not None:
            await asyncio.wait({task})  # bounded by its own retries
        with self.core.lock:
            fatal = self._fatal_locked()
            if fatal is not None:
                raise fatal
            if commit and self.state is TxnState.ABORTABLE_ERROR:
                raise self._abortable_locked()
            touched = self.touched
        if touched:
            pid, epoch = self._ids()
            req = transaction_service_pb2.EndTransactionRequest(
                transactional_id=self.id, producer_id=pid, producer_epoch=epoch, commit=commit
            )
            try:
                resp = await self.call("EndTransaction", req, window(timeout))
            except TransactionTimeoutError:
                raise
            except ProducerFencedError as e:
                self.fail_fatal(e)
                raise
            except TidelogError as e:
                if commit:
                    err = TransactionAbortableError(f"committing the transaction failed: {e}", e.code, e)
                    self.set_abortable(err)
                    raise err from e
                fatal_err = FatalTransactionError(f"aborting the transaction failed: {e}", e.code)
                self.fail_fatal(fatal_err)
                raise fatal_err from e
            if resp.markers_pending:
                self.core.log.info(
                    "transaction of %s ended; %d markers still being written by the coordinator",
                    self.id,
                    resp.markers_pending,
                )
        with self.core.lock:
            self.state = TxnState.READY
            self.added.clear()
            self.to_add.clear()
            self.touched = False
            self.error = None


def not_transactional() -> FatalError:
    return TransactionStateError("the producer has no transactional.id: transactions need one in its config")


def bound(timeout: float | None, request_timeout: float) -> float:
    """How long a synchronous caller waits for a transactional call that retries for
    ``window(timeout)`` (a safety net: the call bounds itself)."""
    return window(timeout) + COORDINATOR_RETRY + 2 * request_timeout + 5


def left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (None: no deadline)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
