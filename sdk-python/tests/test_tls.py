"""TLS and mTLS against real brokers (``tidelog serve --tls-cert/--tls-key [--tls-ca
[--tls-require-client-cert]]``), with confluent-kafka's keys: ``security.protocol``,
``ssl.ca.location``, ``ssl.certificate.location``, ``ssl.key.location``.

The certificates are made here, with ``cryptography``: a CA, a broker certificate from it
(SAN IP 127.0.0.1 and DNS localhost), a client certificate from it, a second, unrelated CA
with its own client certificate, and a broker certificate from the CA naming another host.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, Cluster, eventually, unique
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tidelog import (
    AdminClient,
    ConfigError,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    RetriableError,
    TidelogError,
    TopicPartition,
)
from tidelog.admin import NewTopic
from tidelog.aio import AIOConsumer, AIOProducer

# ---- certificates ----------------------------------------------------------------------------

_NOW = datetime.datetime.now(datetime.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: x509.Name, key: Any) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(hours=1))
        .not_valid_after(_NOW + datetime.timedelta(days=2))
    )


@dataclass
class Ca:
    key: Any
    cert: x509.Certificate

    @classmethod
    def make(cls, cn: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        cert = (
            _builder(cn, _name(cn), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, cn: str, server: bool, names: list[x509.GeneralName] | None = None) -> tuple[Any, Any]:
        """A leaf certificate and its key. A broker's serves clients and, in a cluster, is
        also the client certificate it presents to its peers: both usages."""
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        b = (
            _builder(cn, self.cert.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return key, b.sign(self.key, hashes.SHA256())


def _write(directory: Path, stem: str, key: Any, cert: x509.Certificate) -> tuple[Path, Path]:
    pem, key_pem = directory / f"{stem}.pem", directory / f"{stem}.key"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pem, key_pem


@dataclass
class Pki:
    ca: Path  # the CA of the brokers and of the good client certificate
    broker_cert: Path  # SAN IP 127.0.0.1, DNS localhost
    broker_key: Path
    client_cert: Path  # signed by ca
    client_key: Path
    other_ca: Path  # an unrelated CA
    other_client_cert: Path  # signed by other_ca
    other_client_key: Path
    misnamed_cert: Path  # signed by ca, but for DNS elsewhere.invalid only
    misnamed_key: Path
    encrypted_key: Path  # client_key, encrypted with a password


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = Ca.make("tidelog test CA"), Ca.make("unrelated CA")
    ca_pem, _ = _write(d, "ca", ca.key, ca.cert)
    other_pem, _ = _write(d, "other-ca", other.key, other.cert)
    local = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    broker = _write(d, "broker", *ca.issue("broker", True, local))
    client_key, client_cert = ca.issue("client", False)
    client = _write(d, "client", client_key, client_cert)
    other_client = _write(d, "other-client", *other.issue("client", False))
    misnamed = _write(d, "misnamed", *ca.issue("elsewhere", True, [x509.DNSName("elsewhere.invalid")]))
    encrypted = d / "encrypted.key"
    encrypted.write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return Pki(ca_pem, *broker, *client, other_pem, *other_client, *misnamed, encrypted)


# ---- brokers and clients ---------------------------------------------------------------------


def _tls_args(pki: Pki, mtls: bool = False, cert: Path | None = None, key: Path | None = None) -> list[str]:
    args = ["--tls-cert", str(cert or pki.broker_cert), "--tls-key", str(key or pki.broker_key)]
    if mtls:
        args += ["--tls-ca", str(pki.ca), "--tls-require-client-cert"]
    return args


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker whose listener speaks only TLS (no client certificates asked for)."""
    d = tmp_path_factory.mktemp("tls-broker")
    b = Broker(d / "data", args=_tls_args(pki), log=d / "broker.log")
    yield b
    b.stop()


@pytest.fixture(scope="module")
def mtls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker refusing clients without a certificate signed by the CA (mTLS)."""
    d = tmp_path_factory.mktemp("mtls-broker")
    b = Broker(d / "data", args=_tls_args(pki, mtls=True), log=d / "broker.log")
    yield b
    b.stop()


def ssl_conf(
    servers: str, ca: Path, cert: Path | None = None, key: Path | None = None, **extra: Any
) -> dict[str, Any]:
    """A TLS client config (security.protocol=SSL), short timeouts so failures come quickly."""
    conf: dict[str, Any] = {
        "bootstrap.servers": servers,
        "security.protocol": "SSL",
        "ssl.ca.location": str(ca),
        **extra,
    }
    if cert is not None:
        conf["ssl.certificate.location"] = str(cert)
    if key is not None:
        conf["ssl.key.location"] = str(key)
    return conf


#: Bounds a failing admin call: 1 s per attempt, 3 s in all.
FAST_FAIL = {"request.timeout.ms": 1000, "default.api.timeout.ms": 3000}


def expect_refused(conf: dict[str, Any], code: int) -> TidelogError:
    """An admin call with ``conf`` fails, retriably, with the confluent ``code``, within a
    bounded time (the client's timeouts, plus slack)."""
    start = time.monotonic()
    with AdminClient({**conf, **FAST_FAIL}) as a, pytest.raises(RetriableError) as e:
        a.describe_cluster()
    assert time.monotonic() - start < 15
    assert e.value.args[0].code() == code, e.value
    return e.value


def produce_and_consume(conf: dict[str, Any], topic: str, partitions: int, n: int = 20) -> None:
    """Produces ``n`` records with ``conf`` (sync Producer), reads them back with a group
    consumer, and checks the producer's internal admin client (list_topics) also connects."""
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    with Producer({**conf, "delivery.timeout.ms": 20_000}) as p:
        for i in range(n):
            p.produce(topic, f"v{i}".encode(), key=f"k{i}".encode(), on_delivery=on_delivery)
        assert p.flush(30) == 0
        assert topic in p.list_topics(timeout=10).topics
    assert not errors and len(delivered) == n
    c = Consumer({**conf, "group.id": unique("g"), "auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic])
        got: list[Message] = []

        def all_read() -> bool:
            got.extend(m for m in c.consume(100, 0.5) if m.error() is None)
            return len(got) >= n

        eventually(all_read, 30, f"{n} records over TLS")
        c.commit(asynchronous=False)
        assert topic in c.list_topics(timeout=10).topics
    finally:
        c.close()
    assert sorted(m.value() for m in got) == sorted(f"v{i}".encode() for i in range(n))


# ---- (a) a TLS broker ------------------------------------------------------------------------


def test_plaintext_client_is_refused_by_a_tls_broker(tls_broker: Broker):
    err = expect_refused({"bootstrap.servers": tls_broker.addr}, KafkaError._TRANSPORT)
    assert "UNAVAILABLE" in str(err)
    # The producer fails its records within delivery.timeout.ms (it cannot read the metadata).
    start = time.monotonic()
    p = Producer(
        {
            "bootstrap.servers": tls_broker.addr,
            "max.block.ms": 2000,
            "delivery.timeout.ms": 2000,
            "request.timeout.ms": 1000,
        }
    )
    try:
        with pytest.raises(KafkaException):
            p.produce("anything", b"v")
            assert p.flush(10) == 0  # not reached if produce raised; fails the test otherwise
            raise AssertionError("the plaintext producer delivered to a TLS broker")
    finally:
        p.close(5)
    assert time.monotonic() - start < 20


def test_ssl_client_produces_and_consumes(tls_broker: Broker, pki: Pki):
    topic = unique("tls")
    conf = ssl_conf(tls_broker.addr, pki.ca)
    with AdminClient(conf) as a:
        a.create_topic(topic, num_partitions=3)
        assert a.describe_cluster().brokers  # learnt over TLS
    produce_and_consume(conf, topic, 3)
    # SSL:// entries imply security.protocol=SSL; the certificate names localhost too.
    implied = {"bootstrap.servers": f"SSL://localhost:{tls_broker.port}", "ssl.ca.location": str(pki.ca)}
    with AdminClient(implied) as a:
        assert a.describe_topic(topic).num_partitions == 3


async def test_aio_ssl_client_produces_and_consumes(tls_broker: Broker, pki: Pki):
    topic = unique("tls-aio")
    conf = ssl_conf(f"SSL://{tls_broker.addr}", pki.ca)
    with AdminClient(conf) as a:
        a.create_topic(topic, num_partitions=2)
    async with AIOProducer(conf) as p:
        first = await asyncio.wait_for(p.send_and_wait(topic, b"first", partition=1), 20)
        assert first.offset() == 0
        for i in range(9):
            await p.send(topic, f"v{i}", partition=1)
        assert await p.flush(20) == 0
    async with AIOConsumer(conf) as c:
        await c.assign([TopicPartition(topic, 1, 0)])
        got: list[Message] = []

        async def read() -> None:
            while len(got) < 10:
                got.extend(await c.getmany(100, timeout=1))

        await asyncio.wait_for(read(), 20)
    assert [m.value() for m in got] == [b"first"] + [f"v{i}".encode() for i in range(9)]


async def test_aio_ssl_client_with_the_wrong_ca_fails(tls_broker: Broker, pki: Pki):
    conf = ssl_conf(tls_broker.addr, pki.other_ca, **FAST_FAIL)
    async with AIOConsumer(conf) as c:
        with pytest.raises(RetriableError) as e:
            await asyncio.wait_for(c.get_watermark_offsets(TopicPartition("anything", 0)), 20)
    assert e.value.args[0].code() == KafkaError._SSL


def test_ssl_client_with_the_wrong_ca_is_refused(tls_broker: Broker, pki: Pki):
    err = expect_refused(ssl_conf(tls_broker.addr, pki.other_ca), KafkaError._SSL)
    assert "handshake" in str(err).lower()
    # error_cb reports it as librdkafka does: _SSL, retriable.
    errors: list[KafkaError] = []
    p = Producer(
        {
            **ssl_conf(tls_broker.addr, pki.other_ca),
            "error_cb": errors.append,
            "max.block.ms": 2000,
            "delivery.timeout.ms": 2000,
            "request.timeout.ms": 1000,
        }
    )
    try:
        with pytest.raises(KafkaException):
            p.produce("anything", b"v")
            p.flush(10)
            raise AssertionError("a producer trusting another CA delivered")
        eventually(lambda: (p.poll(0.1), errors)[1], 10, "error_cb")
    finally:
        p.close(5)
    ssl = [e for e in errors if e.code() == KafkaError._SSL]
    assert ssl and all(e.retriable() and not e.fatal() for e in ssl), errors


def test_broker_certificate_must_name_the_host(pki: Pki, tmp_path: Path):
    """ssl.endpoint.identification.algorithm=https (the default, the only one): a certificate
    from the right CA that does not name 127.0.0.1 or localhost is refused."""
    b = Broker(
        tmp_path / "data",
        args=_tls_args(pki, cert=pki.misnamed_cert, key=pki.misnamed_key),
        log=tmp_path / "broker.log",
    )
    try:
        expect_refused(ssl_conf(f"127.0.0.1:{b.port}", pki.ca), KafkaError._SSL)
        # localhost may resolve to ::1 too, where nothing listens: gRPC then reports whichever
        # address it tried last (connection refused, or the TLS failure on 127.0.0.1).
        start = time.monotonic()
        conf = {**ssl_conf(f"localhost:{b.port}", pki.ca), **FAST_FAIL}
        with AdminClient(conf) as a, pytest.raises(RetriableError) as e:
            a.describe_cluster()
        assert time.monotonic() - start < 15
        err = e.value.args[0]
        assert err.code() == KafkaError._SSL or (
            err.code() == KafkaError._TRANSPORT and "::1" in err.str()
        ), err
    finally:
        b.stop()


# ---- (b) an mTLS broker ----------------------------------------------------------------------


def test_mtls_without_a_client_certificate_is_refused(mtls_broker: Broker, pki: Pki):
    expect_refused(ssl_conf(mtls_broker.addr, pki.ca), KafkaError._SSL)
    expect_refused({"bootstrap.servers": mtls_broker.addr}, KafkaError._TRANSPORT)


def test_mtls_with_a_certificate_from_another_ca_is_refused(mtls_broker: Broker, pki: Pki):
    conf = ssl_conf(mtls_broker.addr, pki.ca, pki.other_client_cert, pki.other_client_key)
    expect_refused(conf, KafkaError._SSL)


def test_mtls_with_the_client_certificate_works(mtls_broker: Broker, pki: Pki, tmp_path: Path):
    # The files are read once, when a client is made: copies deleted afterwards don't matter
    # (the producer's and consumer's internal admin clients share their owner's credentials).
    copies = tmp_path / "pem"
    copies.mkdir()
    for f in (pki.ca, pki.client_cert, pki.client_key):
        shutil.copy(f, copies / f.name)
    conf = ssl_conf(
        f"SSL://127.0.0.1:{mtls_broker.port}",
        copies / pki.ca.name,
        copies / pki.client_cert.name,
        copies / pki.client_key.name,
    )
    topic, other = unique("mtls"), unique("mtls")
    admin = AdminClient(conf)
    producer = Producer(conf)
    shutil.rmtree(copies)
    try:
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=1), NewTopic(other, num_partitions=2)], request_timeout=10
        )
        assert [f.result(20) for f in futures.values()] == [None, None]
        producer.produce(topic, b"x", partition=0)
        assert producer.flush(20) == 0
        assert topic in producer.list_topics(timeout=10).topics
    finally:
        producer.close(5)
        admin.close()
    produce_and_consume(ssl_conf(mtls_broker.addr, pki.ca, pki.client_cert, pki.client_key), other, 2)


async def test_aio_mtls_with_the_client_certificate_works(mtls_broker: Broker, pki: Pki):
    conf = ssl_conf(mtls_broker.addr, pki.ca, pki.client_cert, pki.client_key)
    topic = unique("mtls-aio")
    with AdminClient(conf) as a:
        a.create_topic(topic, num_partitions=1)
    async with AIOProducer(conf) as p:
        msg = await asyncio.wait_for(p.send_and_wait(topic, b"v"), 20)
    async with AIOConsumer(conf) as c:
        await c.assign([TopicPartition(topic, 0, msg.offset())])
        got = await c.getone(timeout=20)
    assert got is not None and got.value() == b"v"


# ---- a TLS cluster: every broker is reached with the same credentials -------------------------


def _eventually_admin(conf: dict[str, Any], call: Callable[[AdminClient], Any], what: str) -> Any:
    """``call`` with a fresh admin client until it returns a truthy value (a retriable error:
    not yet)."""

    def attempt() -> Any:
        try:
            with AdminClient({**conf, "request.timeout.ms": 2000}) as a:
                return call(a)
        except TidelogError as e:
            if e.retriable:
                return None
            raise

    return eventually(attempt, 40, what)


def test_tls_cluster_clients_reach_every_broker_with_tls(pki: Pki, tmp_path: Path):
    env = {
        "TIDELOG_TLS_CERT": str(pki.broker_cert),
        "TIDELOG_TLS_KEY": str(pki.broker_key),
        "TIDELOG_TLS_CA": str(pki.ca),
    }
    cluster = Cluster(tmp_path, 3, env)
    try:
        conf = ssl_conf(f"SSL://{cluster.addr(1)}", pki.ca)
        topic = unique("tls-cluster")
        _eventually_admin(
            conf, lambda a: a.describe_cluster().controller_id in cluster.brokers, "a controller"
        )
        _eventually_admin(conf, lambda a: a.create_topic(topic, 3, replication_factor=1) or True, "the topic")

        def led_by(n: int) -> set[int]:
            """The partitions broker ``n`` says it leads (a broker knows its own for sure)."""
            try:
                with AdminClient(ssl_conf(f"SSL://{cluster.addr(n)}", pki.ca, **FAST_FAIL)) as a:
                    parts = a.describe_topic(topic).partitions
            except TidelogError:
                return set()  # not applied there yet
            return {p.partition for p in parts if p.leader == n}

        def leaders() -> set[int] | None:
            led = {n: led_by(n) for n in cluster.brokers}
            return {n for n, ps in led.items() if ps} if set().union(*led.values()) == {0, 1, 2} else None

        leaders_of_all = eventually(leaders, 40, "a leader of every partition")
        # Partitions led by brokers other than the bootstrap one: reaching them needs TLS too.
        assert leaders_of_all - {1}, f"every partition is led by the bootstrap broker: {leaders_of_all}"
        produce_and_consume(conf, topic, 3, n=30)
    finally:
        cluster.stop()


# ---- (c) configuration errors ----------------------------------------------------------------

CLIENTS: list[Callable[[dict[str, Any]], Any]] = [Producer, Consumer, AdminClient, AIOProducer, AIOConsumer]


def _refused(conf: dict[str, Any], match: str) -> None:
    for cls in CLIENTS:
        with pytest.raises(ConfigError, match=match) as e:
            cls(conf)
        assert e.value.args[0].code() == KafkaError._INVALID_ARG


@pytest.mark.parametrize(
    "conf,match",
    [
        ({"security.protocol": "SSL"}, "needs ssl.ca.location"),
        ({"bootstrap.servers": "SSL://h:1"}, "needs ssl.ca.location"),
        ({"security.protocol": "SASL_SSL"}, "needs a bearer token"),
        ({"security.protocol": "sasl_plaintext"}, "needs a bearer token"),
        ({"bootstrap.servers": "SASL_SSL://h:1"}, "needs a bearer token"),
        (
            {"bootstrap.servers": "SASL_SSL://h:1", "sasl.oauthbearer.token": "t"},
            "SASL_SSL needs ssl.ca.location",
        ),
        (
            {"security.protocol": "TLS"},
            "security.protocol.*expected PLAINTEXT, SSL, SASL_SSL or SASL_PLAINTEXT",
        ),
        ({"bootstrap.servers": "SSL://h:1,PLAINTEXT://h:2"}, "mixes PLAINTEXT:// and SSL://"),
        ({"bootstrap.servers": "SSL://h:1", "security.protocol": "PLAINTEXT"}, "SSL:// entries"),
        ({"bootstrap.servers": "PLAINTEXT://h:1", "security.protocol": "SSL"}, "PLAINTEXT:// entries"),
        ({"ssl.ca.location": "/x.pem"}, "sets ssl.ca.location but security.protocol is PLAINTEXT"),
        ({"bootstrap.servers": "kafka://h:1"}, "unknown protocol"),
    ],
)
def test_security_config_errors(conf: dict[str, Any], match: str):
    _refused({"bootstrap.servers": "h:1", **conf}, match)


def test_ssl_file_errors_name_the_key_and_path(pki: Pki, tmp_path: Path):
    base = {"bootstrap.servers": "SSL://127.0.0.1:1", "ssl.ca.location": str(pki.ca)}
    _refused(
        {**base, "ssl.certificate.location": str(pki.client_cert)},
        "sets ssl.certificate.location but not ssl.key.location",
    )
    _refused(
        {**base, "ssl.key.location": str(pki.client_key)},
        "sets ssl.key.location but not ssl.certificate.location",
    )
    missing = tmp_path / "missing.pem"
    _refused({**base, "ssl.ca.location": str(missing)}, f"ssl.ca.location='{missing}': cannot read it")
    _refused(
        {**base, "ssl.certificate.location": str(missing), "ssl.key.location": str(pki.client_key)},
        f"ssl.certificate.location='{missing}': cannot read it",
    )
    _refused(
        {**base, "ssl.certificate.location": str(pki.client_cert), "ssl.key.location": str(tmp_path)},
        f"ssl.key.location='{tmp_path}': cannot read it",
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    _refused({**base, "ssl.ca.location": str(garbage)}, f"ssl.ca.location='{garbage}': not a PEM file")
    # A certificate where the key should be.
    _refused(
        {**base, "ssl.certificate.location": str(pki.client_cert), "ssl.key.location": str(pki.ca)},
        "ssl.key.location=.*not a PEM file with a private key",
    )
    _refused(
        {
            **base,
            "ssl.certificate.location": str(pki.client_cert),
            "ssl.key.location": str(pki.encrypted_key),
        },
        "private key is encrypted",
    )
    for value in ("none", ""):
        _refused({**base, "ssl.endpoint.identification.algorithm": value}, "is not supported")
    # https (the default) is accepted; an SSL:// entry implies SSL; nothing connects yet.
    with AdminClient({**base, "ssl.endpoint.identification.algorithm": "HTTPS"}) as a:
        assert a is not None
