"""What a client tells the application besides records: ``error_cb``, ``stats_cb`` and its log
lines (``logger``), as confluent-kafka's clients do.

- :class:`Reporter`: one per client. A broker that fails (down, stalled, refusing) is logged as
  a warning and reported to ``error_cb`` once per outage, with librdkafka's codes
  (``_TRANSPORT``, ``_TIMED_OUT``, ...), and ``_ALL_BROKERS_DOWN`` once when every known broker
  failed; the next answer from it logs that it is back and re-arms the report. Retries of the
  same outage are logged at debug level, so a dead broker neither floods the log nor goes
  unnoticed. Other events (a subscribed topic that does not exist) go through :meth:`warn`.
- :class:`StatsTimer`: when ``stats_cb`` is due (every ``statistics.interval.ms``; 0 = never).
- :func:`stats_json`: librdkafka's statistics envelope (``name``, ``client_id``, ``type``,
  ``ts``, ``time``, ``age``) around a client's own figures, as a JSON string.

Where callbacks run is the client's choice (the ``sink``): the synchronous producer and
consumer queue them and run them in the application's thread from ``poll()`` (as
confluent-kafka does); the asyncio clients run them on the loop; the admin client in the
thread whose call hit the error.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import KafkaError, TidelogError, kafka_error

ErrorSink = Callable[[KafkaError], None]

_INSTANCES = itertools.count(1)


def client_logger(cfg: dict[str, Any], role: str) -> logging.Logger:
    """The client's logger: the configured ``logger``, else ``tidelog.<role>``."""
    given = cfg.get("logger")
    return given if given is not None else logging.getLogger(f"tidelog.{role}")


def safe_call(log: logging.Logger, what: str, cb: Callable[..., Any], *args: Any) -> None:
    """Calls an application callback where an exception must not stop the client (the
    asyncio loop, the admin client's workers): logs it instead."""
    try:
        cb(*args)
    except Exception:
        log.exception("%s raised", what)


class Reporter:
    """See the module docs. Thread-safe. ``sink`` receives the errors for ``error_cb`` (None:
    log only); ``bootstrap`` are the brokers known at start (more join as they are reported)."""

    def __init__(self, log: logging.Logger, sink: ErrorSink | None, bootstrap: list[str]) -> None:
        self.log = log
        self._sink = sink
        self._lock = threading.Lock()
        self._known = set(bootstrap)
        #: Brokers failing now → what the last failure was.
        self.down: dict[str, str] = {}
        self._all_down = False

    def failed(self, addr: str, err: TidelogError, doing: str = "") -> None:
        """A request or stream at ``addr`` failed retriably (``doing`` says what it was)."""
        with self._lock:
            self._known.add(addr)
            first = addr not in self.down
            self.down[addr] = str(err)
            all_down = not self._all_down and self._known <= self.down.keys()
            self._all_down = self._all_down or all_down
            count = len(self._known)
        context = f" ({doing})" if doing else ""
        if not first:
            self.log.debug("broker %s still failing%s: %s", addr, context, err)
            return
        self.log.warning("broker %s failed%s: %s; retrying", addr, context, err)
        self.error(KafkaError(kafka_error(err).code(), f"{addr}: {err}", retriable=True))
        if all_down:
            self.log.warning("all %d known brokers are down", count)
            self.error(KafkaError(KafkaError._ALL_BROKERS_DOWN, f"{count}/{count} brokers are down"))

    def answered(self, addr: str) -> None:
        """``addr`` answered: it is up (cheap when it was not down)."""
        if addr not in self.down:
            return
        with self._lock:
            was = self.down.pop(addr, None)
            if was is not None:
                self._all_down = False
        if was is not None:
            self.log.info("broker %s is answering again", addr)

    def state(self, addr: str) -> str:
        """``"UP"`` or ``"DOWN"``, as librdkafka's statistics name broker states."""
        return "DOWN" if addr in self.down else "UP"

    def known(self) -> list[str]:
        with self._lock:
            return sorted(self._known)

    def warn(self, err: KafkaError) -> None:
        """Logs a warning and reports ``err`` to ``error_cb``."""
        self.log.warning("%s", err.str())
        self.error(err)

    def error(self, err: KafkaError) -> None:
        """Reports ``err`` to ``error_cb`` (through the sink)."""
        if self._sink is not None:
            self._sink(err)


class StatsTimer:
    """When statistics are due: every ``interval_ms`` (0 = never)."""

    def __init__(self, interval_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval_ms / 1000
        self._clock = clock
        self.next_at = clock() + self.interval if interval_ms > 0 else None

    def due(self) -> bool:
        """True (and schedules the next one) if statistics are due now."""
        if self.next_at is None:
            return False
        now = self._clock()
        if now < self.next_at:
            return False
        self.next_at = max(self.next_at + self.interval, now)
        return True

    def cap(self, left: float | None) -> float | None:
        """A wait of ``left`` seconds (None: forever), cut to end when statistics are due."""
        if self.next_at is None:
            return left
        until = max(0.0, self.next_at - self._clock())
        return until if left is None else min(left, until)


class StatsEnvelope:
    """librdkafka's top-level statistics fields for one client instance."""

    def __init__(self, kind: str, client_id: str) -> None:
        self.kind = kind
        self.client_id = client_id
        self.name = f"{client_id}#{kind}-{next(_INSTANCES)}"
        self._started = time.monotonic()

    def json(self, fields: dict[str, Any]) -> str:
        now = time.monotonic()
        head = {
            "name": self.name,
            "client_id": self.client_id,
            "type": self.kind,
            "ts": int(now * 1e6),
            "time": int(time.time()),
            "age": int((now - self._started) * 1e6),
        }
        return json.dumps({**head, **fields})


def broker_stats(reporter: Reporter, ids: dict[int, str] | None = None) -> dict[str, Any]:
    """librdkafka's ``brokers`` object: per known broker, its name, node id (-1 if unknown) and
    state (``UP``/``DOWN``)."""
    node = {a: i for i, a in (ids or {}).items()}
    return {
        a: {"name": a, "nodeid": node.get(a, -1), "state": reporter.state(a)}
        for a in sorted({*reporter.known(), *node})
    }
