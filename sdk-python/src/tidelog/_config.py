"""Configuration dictionaries, Kafka-style (``{"bootstrap.servers": "127.0.0.1:9690", ...}``).

Each client declares its keys with a default and a parser; an unknown key or a bad value is a
:class:`~tidelog.errors.ConfigError` naming the key, raised at construction (never later, on
the first send). Values may be given as strings (as from a properties file) or native types.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError("expected an integer, got a boolean")
        n = int(v)
        if not lo <= n <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return n

    return parse


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "yes"):
        return True
    if s in ("false", "0", "no"):
        return False
    raise ValueError("expected true or false")


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = str(v).strip().lower()
        if s not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return s

    return parse


def _offset_reset(v: Any) -> str:
    """Kafka's and librdkafka's names for where a consumer starts without a committed offset."""
    s = str(v).strip().lower()
    mapping = {
        "earliest": "earliest",
        "smallest": "earliest",
        "beginning": "earliest",
        "latest": "latest",
        "largest": "latest",
        "end": "latest",
        "error": "error",
    }
    if s not in mapping:
        raise ValueError("expected earliest (smallest, beginning), latest (largest, end) or error")
    return mapping[s]


def _callable(v: Any) -> Callable[..., Any]:
    if not callable(v):
        raise ValueError(f"expected a function, got {type(v).__name__}")
    return v  # type: ignore[no-any-return]


def _logger(v: Any) -> Any:
    if not isinstance(v, logging.Logger | logging.LoggerAdapter):
        raise ValueError(f"expected a logging.Logger, got {type(v).__name__}")
    return v


#: ``bootstrap.servers`` entry prefixes: plaintext (Kafka's and gRPC's spellings), and the
#: security protocols this SDK cannot speak yet.
_PLAIN_PREFIXES = ("plaintext://", "http://", "grpc://")
_SECURE_PREFIXES = ("ssl://", "sasl_ssl://", "sasl_plaintext://", "https://", "grpcs://")


def _bootstrap(v: Any) -> str:
    """Checks every entry of a ``bootstrap.servers`` list: ``host:port`` or
    ``PLAINTEXT://host:port``; TLS and SASL entries are refused with a clear message."""
    s = _str(v)
    for entry in (e.strip() for e in s.split(",")):
        low = entry.lower()
        if low.startswith(_SECURE_PREFIXES):
            raise ValueError(
                f"{entry!r}: TLS and SASL are not supported yet; use a PLAINTEXT://host:port "
                "(or host:port) listener"
            )
        if "://" in low and not low.startswith(_PLAIN_PREFIXES):
            raise ValueError(f"{entry!r}: unknown protocol (expected host:port or PLAINTEXT://host:port)")
    return s


def _security_protocol(v: Any) -> str:
    s = str(v).strip().lower()
    if s != "plaintext":
        raise ValueError(f"{v!r} is not supported yet (TLS and SASL are not): only plaintext")
    return s


def _acks(v: Any) -> str:
    s = str(v).strip().lower()
    mapping = {"all": "all", "-1": "all", "1": "leader", "leader": "leader", "0": "none", "none": "none"}
    if s not in mapping:
        raise ValueError("expected all (-1), leader (1) or none (0)")
    return mapping[s]


def _assignors(v: Any) -> list[str]:
    names = [s.strip().lower() for s in (v.split(",") if isinstance(v, str) else list(v))]
    for n in names:
        if n not in ("range", "roundrobin", "sticky"):
            raise ValueError(f"unknown assignor {n!r} (expected range, roundrobin or sticky)")
    if not names:
        raise ValueError("at least one assignor is needed")
    return names


@dataclass(frozen=True)
class Key:
    default: Any
    parse: Callable[[Any], Any]
    doc: str


_COMMON: dict[str, Key] = {
    "bootstrap.servers": Key(
        None,
        _bootstrap,
        "host:port (or PLAINTEXT://host:port) of a broker, or a comma list of them: the producer"
        " uses the first, the consumer and admin client fail over to the others; clients learn"
        " the rest of the cluster from it",
    ),
    "client.id": Key("tidelog-python", _str, "free-form name shown by the broker"),
    "security.protocol": Key("plaintext", _security_protocol, "plaintext (TLS and SASL: not yet)"),
    "error_cb": Key(None, _callable, "error_cb(KafkaError): a broker failed, all are down, ..."),
    "stats_cb": Key(None, _callable, "stats_cb(json_str) every statistics.interval.ms"),
    "statistics.interval.ms": Key(0, _int(0, 86_400_000), "how often stats_cb is called (0: never)"),
    "logger": Key(None, _logger, "the logging.Logger the client logs to (default tidelog.<role>)"),
}

# Kafka's split for the consumer's and admin client's unary calls: one attempt waits up to
# request.timeout.ms, and a call retries across brokers until default.api.timeout.ms.
_REQUEST_TIMEOUT = Key(30_000, _int(100, 3_600_000), "how long one attempt of a unary call waits")
_API_TIMEOUT = Key(60_000, _int(100, 3_600_000), "how long a call retries across brokers (attempts included)")

PRODUCER_KEYS: dict[str, Key] = {
    **_COMMON,
    "acks": Key("all", _acks, "all | leader | none (Kafka's -1 / 1 / 0)"),
    "enable.idempotence": Key(True, _bool, "exactly-once appends per partition across retries"),
    "linger.ms": Key(5, _int(0, 60_000), "how long a batch waits for more records"),
    "batch.size": Key(256 * 1024, _int(1024, 1 << 20), "max encoded bytes per batch"),
    "buffer.memory": Key(
        32 << 20, _int(1 << 16, 1 << 34), "bytes of unacknowledged records before produce blocks"
    ),
    "max.block.ms": Key(60_000, _int(0, 3_600_000), "how long produce blocks on a full buffer"),
    "compression.type": Key("lz4", _choice("none", "lz4", "zstd"), "batch codec"),
    "max.in.flight.requests.per.connection": Key(5, _int(1, 64), "batches in flight per partition"),
    "delivery.timeout.ms": Key(
        120_000, _int(1_000, 86_400_000), "time to acknowledge a record, retries included"
    ),
    "request.timeout.ms": Key(30_000, _int(100, 3_600_000), "time to wait for one batch's response"),
    "retry.backoff.ms": Key(50, _int(1, 60_000), "first backoff before a retry (doubles, up to 1 s)"),
    "metadata.max.age.ms": Key(300_000, _int(0, 86_400_000), "re-read a topic's partition count this often"),
}

CONSUMER_KEYS: dict[str, Key] = {
    **_COMMON,
    "group.id": Key(None, _str, "consumer group; required for subscribe() and commits"),
    "auto.offset.reset": Key(
        "latest", _offset_reset, "where to start without a commit: earliest, latest or error"
    ),
    "enable.auto.offset.store": Key(
        True, _bool, "store each polled record's offset for commits (false: only store_offsets())"
    ),
    "enable.partition.eof": Key(False, _bool, "poll() returns a _PARTITION_EOF event at each end"),
    "enable.auto.commit": Key(True, _bool, "commit consumed positions in the background"),
    "auto.commit.interval.ms": Key(5_000, _int(10, 3_600_000), "auto-commit period"),
    "session.timeout.ms": Key(10_000, _int(1_000, 300_000), "member removed after this without heartbeat"),
    "heartbeat.interval.ms": Key(1_000, _int(100, 60_000), "heartbeat period"),
    "partition.assignment.strategy": Key(
        ["sticky", "range", "roundrobin"], _assignors, "assignors in preference order"
    ),
    "fetch.max.bytes": Key(1 << 20, _int(1024, 64 << 20), "max batch bytes per subscribe response"),
    "queued.max.messages": Key(10_000, _int(1, 10_000_000), "records buffered ahead of poll()"),
    "request.timeout.ms": _REQUEST_TIMEOUT,
    "default.api.timeout.ms": _API_TIMEOUT,
}

ADMIN_KEYS: dict[str, Key] = {
    **_COMMON,
    "request.timeout.ms": _REQUEST_TIMEOUT,
    "default.api.timeout.ms": _API_TIMEOUT,
}


def parse(config: Mapping[str, Any], keys: Mapping[str, Key], kind: str) -> dict[str, Any]:
    """Validates ``config`` against ``keys``; returns every key with its (parsed) value."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{kind} config must be a dict of Kafka-style keys, got {type(config).__name__}")
    out: dict[str, Any] = {}
    for name, value in config.items():
        key = keys.get(name)
        if key is None:
            known = ", ".join(sorted(keys))
            raise ConfigError(f"unknown {kind} config key {name!r}; known keys: {known}")
        try:
            out[name] = key.parse(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{kind} config {name}={value!r}: {e}") from None
    for name, key in keys.items():
        out.setdefault(name, key.default)
    if not out["bootstrap.servers"] or not targets(out["bootstrap.servers"]):
        raise ConfigError(f"{kind} config needs 'bootstrap.servers' (host:port of a broker)")
    return out


def target(bootstrap: str) -> str:
    """The gRPC target for a ``bootstrap.servers`` value (its first entry)."""
    first = bootstrap.split(",")[0].strip()
    for prefix in _PLAIN_PREFIXES:
        if first.lower().startswith(prefix):
            first = first[len(prefix) :]
    return first.rstrip("/")


def targets(bootstrap: str) -> list[str]:
    """The gRPC targets of every entry of a ``bootstrap.servers`` value, without duplicates."""
    return list(dict.fromkeys(target(e) for e in bootstrap.split(",") if e.strip()))
