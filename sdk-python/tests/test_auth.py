"""Bearer-token (SASL OAUTHBEARER, JWT) authentication and ``client.id`` against a real broker
started with ``[auth] require_authentication = true`` and ``[auth.jwt]`` (an EC P-256 public
key, an issuer and an audience).

Tokens are minted here by hand (ES256: base64url header and payload, and the raw r||s
signature ``cryptography``'s DER one converts to), so no JWT library is needed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Broker, unique
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tidelog import (
    AdminClient,
    AuthenticationError,
    ConfigError,
    Consumer,
    ErrorCode,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from tidelog._channel import TokenSource, aio_channel, sync_channel
from tidelog._config import ADMIN_KEYS, PRODUCER_KEYS, TRANSPORT, parse
from tidelog._producer_core import ProducerCore
from tidelog.aio import AIOConsumer, AIOProducer
from tidelog.errors import AuthorizationError, from_code, kafka_error
from tidelog.v1 import security_service_pb2, security_service_pb2_grpc

ISSUER = "https://issuer.test"
AUDIENCE = "tidelog"

# ---- tokens ------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    """An ES256 JWT signed by ``key``: ``iss``/``aud``/``sub`` and a 10-minute lifetime,
    overridden by ``claims``."""
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "nbf": now - 5, "exp": now + 600}
    payload.update(claims)
    header = {"alg": "ES256", "typ": "JWT"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class AuthBroker:
    def __init__(self, broker: Broker, key: ec.EllipticCurvePrivateKey) -> None:
        self.broker = broker
        self.key = key
        self.addr = broker.addr

    def token(self, **claims: Any) -> str:
        return mint(self.key, **claims)

    def conf(self, **extra: Any) -> dict[str, Any]:
        """A SASL_PLAINTEXT client configuration with a valid static token."""
        return {
            "bootstrap.servers": self.addr,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "OAUTHBEARER",
            "sasl.oauthbearer.token": self.token(),
            **extra,
        }


@contextlib.contextmanager
def issuer_broker(auth_section: str, prefix: str) -> Iterator[tuple[Broker, Any]]:
    """A broker trusting a fresh EC P-256 issuer key (``[auth.jwt]`` with ``ISSUER`` and
    ``AUDIENCE``) under the given ``[auth]`` settings; yields the broker and the private key
    to mint tokens with."""
    key = ec.generate_private_key(ec.SECP256R1())
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        root = Path(d)
        pem = root / "issuer.pem"
        pem.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        config = root / "broker.toml"
        config.write_text(
            f"[auth]\n{auth_section}\n[auth.jwt]\n"
            f'keys = "{pem}"\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
        )
        b = Broker(root / "data", args=["--config", str(config)], log=root / "broker.log")
        try:
            yield b, key
        finally:
            b.stop()


@pytest.fixture(scope="module")
def auth() -> Iterator[AuthBroker]:
    with issuer_broker("require_authentication = true", "tidelog-auth-") as (b, key):
        yield AuthBroker(b, key)


def _produce_one(conf: dict[str, Any], topic: str, value: bytes) -> None:
    errors: list[Any] = []
    p = Producer({**conf, "delivery.timeout.ms": 10_000})
    p.produce(topic, value, on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(15) == 0
    assert errors == [None]
    p.close()


def _consume(conf: dict[str, Any], topic: str, n: int, group: bool = True) -> list[bytes]:
    c = Consumer({**conf, "group.id": unique("g"), "auto.offset.reset": "earliest"})
    try:
        if group:
            c.subscribe([topic])
        else:
            c.assign([TopicPartition(topic, 0, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                got.append(msg.value())
        return got
    finally:
        c.close()


# ---- with valid tokens -------------------------------------------------------------------------


def test_static_token_produce_consume_admin(auth: AuthBroker) -> None:
    conf = auth.conf()
    topic = unique("auth")
    with AdminClient(conf) as admin:
        admin.create_topic(topic, num_partitions=1)
        assert topic in {t.name for t in admin.list_topic_descriptions()}
    _produce_one(conf, topic, b"hello")
    assert _consume(conf, topic, 1) == [b"hello"]
    with AdminClient(conf) as admin:
        admin.delete_topic(topic)


def test_oauth_cb_produce_consume(auth: AuthBroker) -> None:
    calls: list[Any] = []

    def oauth_cb(config: Any) -> tuple[str, float]:
        calls.append(config)
        return auth.token(), time.time() + 600

    conf = {
        "bootstrap.servers": f"SASL_PLAINTEXT://{auth.addr}",
        "sasl.mechanisms": "OAUTHBEARER",
        "sasl.oauthbearer.config": "scope=tidelog",
        "oauth_cb": oauth_cb,
    }
    topic = unique("auth-cb")
    with AdminClient(conf) as admin:
        admin.create_topic(topic, num_partitions=1)
    _produce_one(conf, topic, b"via-callback")
    assert _consume(conf, topic, 1, group=False) == [b"via-callback"]
    assert calls and set(calls) == {"scope=tidelog"}


def test_oauth_cb_asyncio_clients(auth: AuthBroker) -> None:
    def oauth_cb(_config: Any) -> tuple[str, float]:
        return auth.token(), time.time() + 600

    conf: dict[str, Any] = {
        "bootstrap.servers": auth.addr,
        "security.protocol": "SASL_PLAINTEXT",
        "oauth_cb": oauth_cb,
    }
    topic = unique("auth-aio")
    with AdminClient(conf) as admin:
        admin.create_topic(topic, num_partitions=1)

    async def run() -> list[bytes]:
        async with AIOProducer(conf) as p:
            await p.send_and_wait(topic, b"aio")
        got: list[bytes] = []
        async with AIOConsumer({**conf, "group.id": unique("g"), "auto.offset.reset": "earliest"}) as c:
            await c.subscribe([topic])
            msg = await asyncio.wait_for(c.getone(), 20)
            got.append(msg.value())
        return got

    assert asyncio.run(asyncio.wait_for(run(), 40)) == [b"aio"]


def test_token_refreshed_before_expiry() -> None:
    now = [1000.0]
    issued: list[float] = []

    def cb(_config: Any) -> tuple[str, float]:
        issued.append(now[0])
        return f"t{len(issued)}", now[0] + 100  # 100 s tokens: refreshed when < 20 s remain

    src = TokenSource(callback=cb, clock=lambda: now[0])
    assert src.token() == "t1"
    now[0] = 1079.0
    assert src.token() == "t1"
    now[0] = 1081.0
    assert src.token() == "t2"
    assert issued == [1000.0, 1081.0]


# ---- refused credentials -----------------------------------------------------------------------


def _assert_authentication_error(e: BaseException) -> None:
    err = kafka_error(e)
    assert err.code() == KafkaError._AUTHENTICATION, err
    assert not err.retriable()


def test_no_token_is_an_authentication_error(auth: AuthBroker) -> None:
    conf = {"bootstrap.servers": auth.addr, "default.api.timeout.ms": 10_000}
    t0 = time.monotonic()
    with AdminClient(conf) as admin, pytest.raises(AuthenticationError) as info:
        admin.list_topic_descriptions()
    _assert_authentication_error(info.value)
    assert time.monotonic() - t0 < 8, "an authentication failure must not be retried"

    errors: list[Any] = []
    p = Producer({"bootstrap.servers": auth.addr, "delivery.timeout.ms": 10_000, "max.block.ms": 5_000})
    try:
        p.produce("anything", b"x", partition=0, on_delivery=lambda err, msg: errors.append(err))
    except KafkaException as e:  # the metadata read may fail first
        errors.append(e.args[0])
    p.flush(15)
    p.close()
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() == KafkaError._AUTHENTICATION
    assert not errors[0].retriable()


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, id="expired"),
        pytest.param({"iss": "https://someone.else"}, id="wrong-issuer"),
        pytest.param({"aud": "another-service"}, id="wrong-audience"),
    ],
)
def test_bad_tokens_are_refused(auth: AuthBroker, claims: dict[str, Any]) -> None:
    conf = {**auth.conf(), "sasl.oauthbearer.token": auth.token(**claims)}
    with AdminClient(conf) as admin, pytest.raises(AuthenticationError) as info:
        admin.describe_cluster()
    _assert_authentication_error(info.value)


def test_bad_signature_is_refused(auth: AuthBroker) -> None:
    forged = mint(ec.generate_private_key(ec.SECP256R1()))  # another key than the issuer's
    conf = {**auth.conf(), "sasl.oauthbearer.token": forged}
    with AdminClient(conf) as admin, pytest.raises(AuthenticationError) as info:
        admin.describe_cluster()
    _assert_authentication_error(info.value)


# ---- client id ---------------------------------------------------------------------------------


def test_client_id_and_principal_reach_the_broker(auth: AuthBroker) -> None:
    transport = parse(auth.conf(**{"client.id": "billing-7"}), ADMIN_KEYS, "admin")[TRANSPORT]
    ch = sync_channel(auth.addr, transport)
    try:
        me = security_service_pb2_grpc.SecurityServiceStub(ch).WhoAmI(
            security_service_pb2.WhoAmIRequest(), timeout=10
        )
    finally:
        ch.close()
    assert me.client_id == "billing-7"
    assert "alice" in me.principal

    async def aio_whoami() -> Any:
        ch = aio_channel(auth.addr, transport)
        try:
            stub = security_service_pb2_grpc.SecurityServiceStub(ch)
            return await stub.WhoAmI(security_service_pb2.WhoAmIRequest(), timeout=10)
        finally:
            await ch.close()

    assert asyncio.run(aio_whoami()).client_id == "billing-7"

    # Without a token the call is refused before it reaches the service.
    raw = grpc.insecure_channel(auth.addr)
    try:
        with pytest.raises(grpc.RpcError) as info:
            security_service_pb2_grpc.SecurityServiceStub(raw).WhoAmI(
                security_service_pb2.WhoAmIRequest(), metadata=[("x-tidelog-client-id", "x")], timeout=10
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        raw.close()


# ---- configuration and error mapping (no broker) -----------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "GSSAPI"])
def test_other_sasl_mechanisms_are_refused(mechanism: str) -> None:
    with pytest.raises(ConfigError, match="Tidelog brokers accept OAUTHBEARER"):
        Producer(
            {
                "bootstrap.servers": "127.0.0.1:1",
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": mechanism,
                "sasl.oauthbearer.token": "t",
            }
        )


def test_sasl_config_checks() -> None:
    base = {"bootstrap.servers": "127.0.0.1:1"}
    with pytest.raises(ConfigError, match="oauth_cb"):
        parse({**base, "security.protocol": "SASL_PLAINTEXT"}, ADMIN_KEYS, "admin")
    with pytest.raises(ConfigError, match="SASL_SSL"):
        parse({**base, "sasl.oauthbearer.token": "t"}, ADMIN_KEYS, "admin")
    with pytest.raises(ConfigError, match="SASL"):
        parse({**base, "security.protocol": "SSL", "oauth_cb": lambda c: ("t", 0)}, ADMIN_KEYS, "admin")
    with pytest.raises(ConfigError, match="both"):
        parse(
            {
                **base,
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.oauthbearer.token": "t",
                "oauth_cb": lambda c: ("t", 0),
            },
            ADMIN_KEYS,
            "admin",
        )
    with pytest.raises(ConfigError, match="ssl.ca.location"):
        parse({"bootstrap.servers": "SASL_SSL://h:1", "sasl.oauthbearer.token": "t"}, ADMIN_KEYS, "admin")
    cfg = parse({"bootstrap.servers": "SASL_PLAINTEXT://h:1", "sasl.oauthbearer.token": "t"}, ADMIN_KEYS, "a")
    assert cfg["security.protocol"] == "sasl_plaintext"
    assert cfg[TRANSPORT].metadata() == [
        ("x-tidelog-client-id", "tidelog-python"),
        ("authorization", "Bearer t"),
    ]
    with pytest.raises(ConfigError, match="mixes"):
        parse({"bootstrap.servers": "SASL_PLAINTEXT://h:1,h:2,PLAINTEXT://h:3"}, ADMIN_KEYS, "a")


def test_authorization_errors_map_to_kafka_numbers() -> None:
    e = from_code(int(ErrorCode.AUTHORIZATION_FAILED), "User:bob may not write topic t")
    assert isinstance(e, AuthorizationError)
    assert e.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED == 29
    assert not e.retriable and not e.args[0].retriable()
    assert AuthorizationError("may not read group g", grpc.StatusCode.PERMISSION_DENIED).args[0].code() == (
        KafkaError.GROUP_AUTHORIZATION_FAILED
    )
    assert AuthenticationError("no", grpc.StatusCode.UNAUTHENTICATED).args[0].code() == -169


def test_producer_honours_throttle_time() -> None:
    cfg = parse({"bootstrap.servers": "127.0.0.1:1"}, PRODUCER_KEYS, "producer")
    core = ProducerCore(cfg, lambda *a: None, lambda: None)
    core._throttle("127.0.0.1:1", 300)
    core._throttle("127.0.0.1:1", 100)
    stats = core.stats()
    assert stats["throttle_ms"] == 400
    assert stats["brokers"]["127.0.0.1:1"]["throttle"] == {
        "cnt": 2,
        "sum": 400,
        "min": 100,
        "max": 300,
        "avg": 200,
    }
    assert core._throttled_until["127.0.0.1:1"] > time.monotonic() + 0.2
