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

import grpc

from ._channel import TokenSource, Transport
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


def _transactional_id(v: Any) -> str:
    s = _str(v)
    if not s or len(s) > 255 or any(not c.isprintable() for c in s):
        raise ValueError("expected 1-255 printable characters")
    return s


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


#: ``bootstrap.servers`` entry prefixes: plaintext and TLS (Kafka's and gRPC's spellings), and
#: Kafka's SASL ones (TLS or plaintext, with a bearer token).
_PLAIN_PREFIXES = ("plaintext://", "http://", "grpc://")
_TLS_PREFIXES = ("ssl://", "https://", "grpcs://")
_SASL_SSL_PREFIXES = ("sasl_ssl://",)
_SASL_PLAIN_PREFIXES = ("sasl_plaintext://",)
_ALL_PREFIXES = _PLAIN_PREFIXES + _TLS_PREFIXES + _SASL_SSL_PREFIXES + _SASL_PLAIN_PREFIXES

#: The security protocols (``security.protocol``, lower case).
_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
#: Those reached with TLS, and those whose calls carry a bearer token.
_TLS_PROTOCOLS = ("ssl", "sasl_ssl")
_SASL_PROTOCOLS = ("sasl_plaintext", "sasl_ssl")


def _entry_protocol(entry: str) -> str | None:
    """``plaintext``, ``ssl``, ``sasl_plaintext`` or ``sasl_ssl`` for an entry with a protocol
    prefix, None for a bare host:port."""
    low = entry.strip().lower()
    if low.startswith(_PLAIN_PREFIXES):
        return "plaintext"
    if low.startswith(_TLS_PREFIXES):
        return "ssl"
    if low.startswith(_SASL_SSL_PREFIXES):
        return "sasl_ssl"
    if low.startswith(_SASL_PLAIN_PREFIXES):
        return "sasl_plaintext"
    return None


def _bootstrap(v: Any) -> str:
    """Checks every entry of a ``bootstrap.servers`` list: ``host:port``,
    ``PLAINTEXT://host:port``, ``SSL://host:port``, ``SASL_SSL://host:port`` or
    ``SASL_PLAINTEXT://host:port``. (Whether the entries agree with each other and with
    ``security.protocol`` is checked once every key is known, by :func:`parse`.)"""
    s = _str(v)
    for entry in (e.strip() for e in s.split(",")):
        low = entry.lower()
        if "://" in low and _entry_protocol(low) is None:
            raise ValueError(
                f"{entry!r}: unknown protocol (expected host:port, PLAINTEXT://host:port,"
                " SSL://host:port, SASL_SSL://host:port or SASL_PLAINTEXT://host:port)"
            )
    return s


def _security_protocol(v: Any) -> str:
    s = str(v).strip().lower()
    if s not in _PROTOCOLS:
        raise ValueError("expected PLAINTEXT, SSL, SASL_SSL or SASL_PLAINTEXT")
    return s


_SASL_UNSUPPORTED = "not supported: Tidelog brokers accept OAUTHBEARER (JWT) tokens"


def _sasl_mechanism(v: Any) -> str:
    s = str(v).strip().upper()
    if s != "OAUTHBEARER":
        raise ValueError(f"{s or 'an empty mechanism'} is {_SASL_UNSUPPORTED}")
    return s


def _endpoint_identification(v: Any) -> str:
    s = str(v).strip().lower()
    if s in ("none", ""):
        raise ValueError(
            "'none' is not supported: gRPC always checks that the broker's certificate names the"
            " host or IP the client connects to; give each broker a certificate whose"
            " subjectAltName holds its advertised address, and keep 'https'"
        )
    if s != "https":
        raise ValueError("expected https")
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
        "host:port (or PLAINTEXT://host:port, SSL://host:port) of a broker, or a comma list of"
        " them: the producer"
        " uses the first, the consumer and admin client fail over to the others; clients learn"
        " the rest of the cluster from it",
    ),
    "client.id": Key("tidelog-python", _str, "free-form name shown by the broker"),
    "security.protocol": Key(
        None,
        _security_protocol,
        "PLAINTEXT, SSL (TLS), SASL_SSL (TLS and a bearer token) or SASL_PLAINTEXT (a bearer"
        " token without TLS); default: the protocol of the bootstrap.servers entries, else"
        " PLAINTEXT",
    ),
    "sasl.mechanism": Key(None, _sasl_mechanism, "OAUTHBEARER (JWT bearer tokens): the only one"),
    "sasl.mechanisms": Key(None, _sasl_mechanism, "librdkafka's name of sasl.mechanism"),
    "oauth_cb": Key(
        None,
        _callable,
        "oauth_cb(sasl.oauthbearer.config) -> (token, expiry_seconds_since_epoch): called at"
        " construction and again before the token expires (SASL_*)",
    ),
    "sasl.oauthbearer.config": Key(None, _str, "the string oauth_cb is called with"),
    "sasl.oauthbearer.token": Key(None, _str, "a static bearer token (JWT), instead of oauth_cb (SASL_*)"),
    "ssl.ca.location": Key(
        None, _str, "PEM file of the CA(s) the brokers' certificates must chain to (required for SSL)"
    ),
    "ssl.certificate.location": Key(
        None, _str, "PEM file of this client's certificate (chain), for brokers requiring mTLS"
    ),
    "ssl.key.location": Key(
        None, _str, "PEM file of the unencrypted private key of ssl.certificate.location"
    ),
    "ssl.endpoint.identification.algorithm": Key(
        "https",
        _endpoint_identification,
        "https: the broker's certificate must name its host (none: not supported)",
    ),
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
    "batch.size": Key(
        256 * 1024, _int(1024, 1 << 20), "max encoded bytes per batch (capped by the topic's max.batch.bytes)"
    ),
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
    "leader.probe.ms": Key(
        1_000,
        _int(0, 3_600_000),
        "in a cluster, a request unanswered this long makes the producer ask the other brokers who"
        " leads its partition, and resend there if another broker leads it (0: never)",
    ),
    "metadata.max.age.ms": Key(300_000, _int(0, 86_400_000), "re-read a topic's partition count this often"),
    "transactional.id": Key(
        None,
        _transactional_id,
        "makes the producer transactional (exactly once: init_transactions, begin_transaction,"
        " commit_transaction, ...); implies enable.idempotence; one id per producer instance"
        " role: a new instance with the same id fences the older one",
    ),
    "transaction.timeout.ms": Key(
        60_000,
        _int(1_000, 900_000),
        "how long a transaction may stay open before the coordinator aborts it (and fences this producer)",
    ),
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
    "isolation.level": Key(
        "read_uncommitted",
        _choice("read_uncommitted", "read_committed"),
        "read_committed: only records of committed transactions (and non-transactional ones),"
        " up to the last stable offset; read_uncommitted: everything",
    ),
    "request.timeout.ms": _REQUEST_TIMEOUT,
    "default.api.timeout.ms": _API_TIMEOUT,
}

ADMIN_KEYS: dict[str, Key] = {
    **_COMMON,
    "request.timeout.ms": _REQUEST_TIMEOUT,
    "default.api.timeout.ms": _API_TIMEOUT,
}


def parse(
    config: Mapping[str, Any], keys: Mapping[str, Key], kind: str, transport: Transport | None = None
) -> dict[str, Any]:
    """Validates ``config`` against ``keys``; returns every key with its (parsed) value, and
    the client's transport under :data:`TRANSPORT`: ``transport`` if given (a client sharing
    another's), else the one the security keys describe (:func:`make_transport`; TLS files
    are read here)."""
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
    out["security.protocol"] = _protocol(out, kind)
    out[TRANSPORT] = transport if transport is not None else make_transport(out, kind)
    return out


#: The key of a parsed configuration holding the client's :class:`~tidelog._channel.Transport`
#: (not a configuration key: it is derived from ``security.protocol`` and the ``ssl.*`` keys).
TRANSPORT = "_transport"

_SSL_FILES = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location")


def _protocol(cfg: dict[str, Any], kind: str) -> str:
    """The security protocol: ``security.protocol`` if given, else the one the
    ``bootstrap.servers`` entries name (plaintext if none does). Entries naming another
    protocol than ``security.protocol``, or each other's, are a :class:`ConfigError`: every
    broker is reached the same way."""
    named = {p for e in cfg["bootstrap.servers"].split(",") if (p := _entry_protocol(e)) is not None}
    given: str | None = cfg["security.protocol"]
    if len(named) > 1:
        mixed = " and ".join(f"{p.upper()}://" for p in sorted(named))
        raise ConfigError(
            f"{kind} config bootstrap.servers mixes {mixed} entries: every broker"
            " is reached with the same security.protocol"
        )
    if given is not None and named and named != {given}:
        raise ConfigError(
            f"{kind} config security.protocol={given.upper()} but bootstrap.servers has"
            f" {named.pop().upper()}:// entries"
        )
    protocol = given or (named.pop() if named else "plaintext")
    if protocol not in _TLS_PROTOCOLS:
        ssl_set = [k for k in _SSL_FILES if cfg[k] is not None]
        if ssl_set:
            raise ConfigError(
                f"{kind} config sets {', '.join(ssl_set)} but security.protocol is"
                f" {protocol.upper()}; set security.protocol=SSL or SASL_SSL (or use SSL:// or"
                " SASL_SSL:// servers) to connect with TLS"
            )
    if protocol not in _SASL_PROTOCOLS:
        token_set = [k for k in ("oauth_cb", "sasl.oauthbearer.token") if cfg.get(k) is not None]
        if token_set:
            raise ConfigError(
                f"{kind} config sets {', '.join(token_set)} but security.protocol is"
                f" {protocol.upper()}: bearer tokens are sent only with SASL; set"
                " security.protocol=SASL_SSL (TLS) or SASL_PLAINTEXT, with sasl.mechanism=OAUTHBEARER"
            )
    return protocol


def _read_pem(cfg: dict[str, Any], key: str, kind: str, marker: bytes, what: str) -> bytes:
    """The contents of the PEM file ``cfg[key]`` names; a missing, unreadable or non-PEM file
    is a :class:`ConfigError` naming the key and the path."""
    path = cfg[key]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{kind} config {key}={path!r}: cannot read it: {e.strerror or e}") from None
    if marker not in data:
        raise ConfigError(f"{kind} config {key}={path!r}: not a PEM file with {what}")
    return data


def _tokens(cfg: dict[str, Any], kind: str) -> TokenSource | None:
    """The bearer tokens of a SASL client: ``sasl.oauthbearer.token`` or ``oauth_cb`` (called
    here a first time: a failing callback is a :class:`ConfigError`); None without SASL."""
    protocol = cfg["security.protocol"]
    if protocol not in _SASL_PROTOCOLS:
        return None
    cb, token = cfg["oauth_cb"], cfg["sasl.oauthbearer.token"]
    if cb is not None and token is not None:
        raise ConfigError(f"{kind} config sets both oauth_cb and sasl.oauthbearer.token: set one")
    if cb is None and token is None:
        raise ConfigError(
            f"{kind} config security.protocol={protocol.upper()} needs a bearer token: set oauth_cb"
            " (a function returning (token, expiry)) or sasl.oauthbearer.token (a JWT)"
        )
    if token is not None:
        if not token.strip():
            raise ConfigError(f"{kind} config sasl.oauthbearer.token is empty")
        return TokenSource(token=token.strip())
    try:
        return TokenSource(callback=cb, config=cfg["sasl.oauthbearer.config"])
    except Exception as e:
        raise ConfigError(f"{kind} config oauth_cb failed: {e!r}") from None


def make_transport(cfg: dict[str, Any], kind: str) -> Transport:
    """The client's transport (see :mod:`tidelog._channel`): plaintext, or TLS with the CA of
    ``ssl.ca.location`` and, for mTLS, the client certificate and key of
    ``ssl.certificate.location`` and ``ssl.key.location``. The files are read here, once.
    Its calls carry ``client.id`` and, with SASL, the bearer token (:func:`_tokens`)."""
    client_id, tokens = cfg.get("client.id"), _tokens(cfg, kind)
    if cfg["security.protocol"] not in _TLS_PROTOCOLS:
        return Transport(None, client_id, tokens)
    if cfg["ssl.ca.location"] is None:
        raise ConfigError(
            f"{kind} config security.protocol={cfg['security.protocol'].upper()} needs"
            " ssl.ca.location: the PEM file of the CA that signed the brokers' certificates"
        )
    cert, key = cfg["ssl.certificate.location"], cfg["ssl.key.location"]
    if (cert is None) != (key is None):
        given, missing = (
            ("ssl.certificate.location", "ssl.key.location")
            if key is None
            else ("ssl.key.location", "ssl.certificate.location")
        )
        raise ConfigError(
            f"{kind} config sets {given} but not {missing}: a client certificate needs both"
            " (or neither, without mTLS)"
        )
    ca = _read_pem(cfg, "ssl.ca.location", kind, b"-----BEGIN CERTIFICATE-----", "a CA certificate")
    chain = private_key = None
    if cert is not None:
        chain = _read_pem(
            cfg, "ssl.certificate.location", kind, b"-----BEGIN CERTIFICATE-----", "a certificate"
        )
        private_key = _read_pem(cfg, "ssl.key.location", kind, b"PRIVATE KEY-----", "a private key")
        if b"ENCRYPTED" in private_key:
            raise ConfigError(
                f"{kind} config ssl.key.location={key!r}: the private key is encrypted, which is"
                " not supported (no ssl.key.password); give an unencrypted key"
            )
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=private_key, certificate_chain=chain
    )
    return Transport(creds, client_id, tokens)


def target(bootstrap: str) -> str:
    """The gRPC target for a ``bootstrap.servers`` value (its first entry), without a
    protocol prefix."""
    first = bootstrap.split(",")[0].strip()
    for prefix in _ALL_PREFIXES:
        if first.lower().startswith(prefix):
            first = first[len(prefix) :]
    return first.rstrip("/")


def targets(bootstrap: str) -> list[str]:
    """The gRPC targets of every entry of a ``bootstrap.servers`` value, without duplicates."""
    return list(dict.fromkeys(target(e) for e in bootstrap.split(",") if e.strip()))
