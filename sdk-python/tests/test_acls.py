"""ACLs (confluent-kafka's ``create_acls`` / ``describe_acls`` / ``delete_acls``), client quotas
and ``whoami`` against a real broker started with ``[auth] authorization = true``, a superuser
``User:admin`` and ``[auth.jwt]``; clients authenticate with hand-minted ES256 tokens
(``test_auth.mint``) whose ``sub`` is the principal's name.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Broker, unique
from cryptography.hazmat.primitives.asymmetric import ec
from test_auth import issuer_broker, mint

from tidelog import (
    AuthorizationError,
    Consumer,
    FatalError,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
    kafka_error,
)
from tidelog.admin import (
    CLUSTER_RESOURCE_NAME,
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ClientQuotas,
    ResourcePatternType,
    ResourceType,
)

pytestmark = pytest.mark.timeout(90)

TOPIC, LITERAL, PREFIXED = ResourceType.TOPIC, ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
ALLOW, DENY = AclPermissionType.ALLOW, AclPermissionType.DENY
AUTHZ_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}


class SecuredBroker:
    def __init__(self, broker: Broker, key: ec.EllipticCurvePrivateKey) -> None:
        self.broker = broker
        self.key = key
        self.addr = broker.addr

    def conf(self, user: str, **extra: Any) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.addr,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "OAUTHBEARER",
            "sasl.oauthbearer.token": mint(self.key, sub=user),
            **extra,
        }

    def admin(self, user: str = "admin", **extra: Any) -> AdminClient:
        return AdminClient(self.conf(user, **{"default.api.timeout.ms": 10_000, **extra}))


@pytest.fixture(scope="module")
def secured() -> Iterator[SecuredBroker]:
    section = 'authorization = true\nsuperusers = ["User:admin"]'
    with issuer_broker(section, "tidelog-acls-") as (b, key):
        yield SecuredBroker(b, key)


def _produce(conf: dict[str, Any], topic: str, value: bytes) -> KafkaError | None:
    """Produces one record; the error it failed with (None: delivered)."""
    errors: list[Any] = []
    p = Producer({**conf, "delivery.timeout.ms": 10_000, "max.block.ms": 5_000})
    try:
        p.produce(topic, value, partition=0, on_delivery=lambda err, msg: errors.append(err))
    except KafkaException as e:  # the metadata read may be refused first
        errors.append(e.args[0])
    assert p.flush(15) == 0
    p.close()
    assert len(errors) == 1
    return errors[0]


def _read(conf: dict[str, Any], topic: str) -> bytes | KafkaError:
    """The first record of partition 0 of ``topic`` through an assigned consumer (no group), or
    the error reading failed with; bounded in time."""
    c = Consumer({**conf, "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                msg = c.poll(0.5)
            except KafkaException as e:
                return kafka_error(e)
            if msg is not None and not msg.error():
                return bytes(msg.value())
        raise AssertionError(f"nothing read from {topic} in 20 s")
    finally:
        c.close()


def _all_of(principal: str) -> AclBindingFilter:
    return AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        principal,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


# ---- with a broker -----------------------------------------------------------------------------


def test_whoami(secured: SecuredBroker) -> None:
    with secured.admin(**{"client.id": "ops-1"}) as admin:
        assert admin.whoami() == {
            "principal": "User:admin",
            "authenticated_by": "token",
            "authorization_enabled": True,
            "superuser": True,
            "client_id": "ops-1",
        }
    with secured.admin("alice") as alice:
        me = alice.whoami()
    assert me["principal"] == "User:alice" and not me["superuser"] and me["authorization_enabled"]


def test_acls_grant_match_deny_and_delete(secured: SecuredBroker) -> None:
    orders, other, pay = unique("orders"), unique("other"), unique("pay") + "."
    alice = secured.conf("alice")
    write_orders = AclBinding(TOPIC, orders, LITERAL, "User:alice", "*", AclOperation.WRITE, ALLOW)
    read_pay = AclBinding(TOPIC, pay, PREFIXED, "User:alice", "*", AclOperation.READ, ALLOW)
    deny_secret = AclBinding(TOPIC, pay + "secret", LITERAL, "User:alice", "*", AclOperation.READ, DENY)
    acls = [write_orders, read_pay, deny_secret]

    with secured.admin() as admin:
        for t in (orders, other, pay + "open", pay + "secret"):
            admin.create_topic(t, num_partitions=1)
        futures = admin.create_acls(acls)
        assert set(futures) == set(acls)
        for f in futures.values():
            assert f.result(20) is None
        # Adding them again is not an error.
        assert all(f.result(20) is None for f in admin.create_acls([write_orders]).values())

        assert sorted(admin.describe_acls(_all_of("User:alice")).result(20)) == sorted(acls)
        by_name = AclBindingFilter(
            TOPIC, orders, LITERAL, None, None, AclOperation.ANY, AclPermissionType.ANY
        )
        assert admin.describe_acls(by_name).result(20) == [write_orders]
        # MATCH: the ACLs that apply to one resource (the literal one and the prefix).
        match = AclBindingFilter(
            TOPIC,
            pay + "secret",
            ResourcePatternType.MATCH,
            None,
            None,
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        assert set(admin.describe_acls(match).result(20)) == {read_pay, deny_secret}
        denies = AclBindingFilter(
            ResourceType.ANY, None, ResourcePatternType.ANY, "User:alice", None, AclOperation.ANY, DENY
        )
        assert admin.describe_acls(denies).result(20) == [deny_secret]

    # alice may write to orders, and only there.
    assert _produce(alice, orders, b"paid") is None
    err = _produce(alice, other, b"sneaky")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert not err.retriable()
    with secured.admin() as admin:
        assert admin.list_offsets(other) == {0: 0}
        assert admin.list_offsets(orders) == {0: 1}

    # A prefixed READ lets alice read pay.*, except the topic a DENY names (a DENY wins).
    admin_conf = secured.conf("admin")
    for t in (pay + "open", pay + "secret"):
        assert _produce(admin_conf, t, t.encode()) is None
    assert _read(alice, pay + "open") == (pay + "open").encode()
    denied = _read(alice, pay + "secret")
    assert isinstance(denied, KafkaError) and denied.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, denied

    # alice may not manage ACLs.
    with secured.admin("alice") as admin:
        grant = AclBinding(TOPIC, other, LITERAL, "User:alice", "*", AclOperation.WRITE, ALLOW)
        with pytest.raises(KafkaException) as info:
            admin.create_acls([grant])[grant].result(20)
        assert isinstance(info.value, AuthorizationError)
        assert info.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED, info.value
        with pytest.raises(AuthorizationError):
            admin.describe_acls(_all_of("User:alice")).result(20)

    with secured.admin() as admin:
        only_write = AclBindingFilter(TOPIC, orders, LITERAL, "User:alice", "*", AclOperation.WRITE, ALLOW)
        everything = _all_of("User:alice")
        deleted = admin.delete_acls([only_write, everything])
        assert deleted[only_write].result(20) == [write_orders]
        assert sorted(deleted[everything].result(20)) == sorted(acls)
        assert admin.describe_acls(_all_of("User:alice")).result(20) == []
        assert admin.delete_acls([everything])[everything].result(20) == []

    err = _produce(alice, orders, b"again")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    with secured.admin() as admin:
        assert admin.list_offsets(orders) == {0: 1}


def test_create_acls_refuses_one_invalid_binding(secured: SecuredBroker) -> None:
    topic = unique("acl-bad")
    good = AclBinding(TOPIC, topic, LITERAL, "User:bob", "*", AclOperation.READ, ALLOW)
    bad_host = AclBinding(TOPIC, topic, LITERAL, "User:bob", "not-an-ip", AclOperation.READ, ALLOW)
    bad_cluster = AclBinding(
        ResourceType.CLUSTER, "mine", LITERAL, "User:bob", "*", AclOperation.ALTER, ALLOW
    )
    with secured.admin() as admin:
        futures = admin.create_acls([bad_host, good, bad_cluster])
        assert futures[good].result(20) is None
        for bad in (bad_host, bad_cluster):
            with pytest.raises(FatalError) as info:
                futures[bad].result(20)
            assert info.value.args[0].code() == KafkaError.INVALID_REQUEST
        cluster = AclBinding(
            ResourceType.BROKER, CLUSTER_RESOURCE_NAME, LITERAL, "User:bob", "*", AclOperation.DESCRIBE, ALLOW
        )
        assert admin.create_acls([cluster])[cluster].result(20) is None
        bob = admin.describe_acls(_all_of("User:bob")).result(20)
        assert sorted(bob) == sorted([good, cluster])
        removed = admin.delete_acls([_all_of("User:bob")])
        assert sorted(removed[_all_of("User:bob")].result(20)) == sorted(bob)


def test_client_quotas_round_trip(secured: SecuredBroker) -> None:
    with secured.admin() as admin:
        alice = {"user": "alice"}
        got = admin.alter_client_quotas(
            alice, {"producer_byte_rate": 10_000_000, "request_rate": 100}
        ).result(20)
        assert got == {"producer_byte_rate": 10_000_000, "request_rate": 100.0}
        assert admin.alter_client_quotas({"user": None}, {"consumer_byte_rate": 5_000_000}).result(20) == {
            "consumer_byte_rate": 5_000_000
        }
        etl = {"user": "alice", "client-id": "etl"}
        assert admin.alter_client_quotas(etl, {"request_rate": 10.5}).result(20) == {"request_rate": 10.5}

        described = admin.describe_client_quotas().result(20)
        assert isinstance(described, ClientQuotas) and described.effective is None
        quotas = [(e, lim) for e, lim in described.quotas]
        assert (alice, {"producer_byte_rate": 10_000_000, "request_rate": 100.0}) in quotas
        assert ({"user": None}, {"consumer_byte_rate": 5_000_000}) in quotas
        assert (etl, {"request_rate": 10.5}) in quotas

        # The most specific entity setting each limit wins.
        effective = admin.describe_client_quotas(user="User:alice", client_id="etl").result(20).effective
        assert effective == {
            "producer_byte_rate": 10_000_000,
            "consumer_byte_rate": 5_000_000,
            "request_rate": 10.5,
        }
        effective = admin.describe_client_quotas(user="alice", client_id="web").result(20).effective
        assert effective == {
            "producer_byte_rate": 10_000_000,
            "consumer_byte_rate": 5_000_000,
            "request_rate": 100.0,
        }
        assert admin.describe_client_quotas(user="carol").result(20).effective == {
            "consumer_byte_rate": 5_000_000
        }

        # Removing limits; an entity without any goes.
        assert admin.alter_client_quotas(alice, remove=["request_rate"]).result(20) == {
            "producer_byte_rate": 10_000_000
        }
        assert admin.alter_client_quotas(alice, {"producer_byte_rate": None}).result(20) == {}
        for e in (etl, {"user": None}):
            assert admin.alter_client_quotas(e, remove=list(_limits(admin, e))).result(20) == {}
        assert [e for e, _ in admin.describe_client_quotas().result(20).quotas] == []

        with pytest.raises(ValueError, match="unknown quota"):
            admin.alter_client_quotas(alice, {"bytes_per_second": 1})
        with pytest.raises(ValueError, match="entity"):
            admin.alter_client_quotas({"team": "x"}, {"request_rate": 1})

    with secured.admin("alice") as admin, pytest.raises(AuthorizationError) as info:
        admin.alter_client_quotas({"user": "alice"}, {"request_rate": 1e6}).result(20)
    assert info.value.args[0].code() in AUTHZ_CODES


def _limits(admin: AdminClient, entity: dict[str, str | None]) -> dict[str, float]:
    return dict(next(lim for e, lim in admin.describe_client_quotas().result(20).quotas if e == entity))


# ---- the types (no broker) ---------------------------------------------------------------------


def test_acl_types_follow_confluent_kafka() -> None:
    a = AclBinding("topic", "orders", "literal", "User:alice", "*", "write", "allow")
    b = AclBinding(TOPIC, "orders", LITERAL, "User:alice", "*", AclOperation.WRITE, ALLOW)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert ResourceType.CLUSTER is ResourceType.BROKER
    assert AclBinding("cluster", CLUSTER_RESOURCE_NAME, LITERAL, "User:x", "*", "alter", "allow").restype == (
        ResourceType.BROKER
    )
    for bad in (
        dict(restype=ResourceType.ANY),
        dict(resource_pattern_type=ResourcePatternType.MATCH),
        dict(operation=AclOperation.ANY),
        dict(permission_type=AclPermissionType.UNKNOWN),
        dict(name=None),
        dict(operation="FLY"),
    ):
        args: dict[str, Any] = {
            "restype": TOPIC,
            "name": "t",
            "resource_pattern_type": LITERAL,
            "principal": "User:a",
            "host": "*",
            "operation": AclOperation.READ,
            "permission_type": ALLOW,
            **bad,
        }
        with pytest.raises(ValueError):
            AclBinding(**args)
    with pytest.raises(TypeError):
        AclBinding(TOPIC, 3, LITERAL, "User:a", "*", AclOperation.READ, ALLOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AclBindingFilter(ResourceType.UNKNOWN, None, "any", None, None, "any", "any")

    f = AclBindingFilter(TOPIC, "pay.eu", ResourcePatternType.MATCH, None, None, "any", "any")
    assert f != AclBinding(TOPIC, "pay.eu", LITERAL, "User:a", "*", "read", "allow")
    assert f.matches(AclBinding(TOPIC, "pay.", PREFIXED, "User:a", "*", "read", "allow"))
    assert f.matches(AclBinding(TOPIC, "*", LITERAL, "User:a", "*", "read", "allow"))
    assert not f.matches(AclBinding(TOPIC, "pay.e", LITERAL, "User:a", "*", "read", "allow"))
    assert not f.matches(AclBinding(ResourceType.GROUP, "pay.eu", LITERAL, "User:a", "*", "read", "allow"))
    with (
        pytest.raises(ValueError, match="non-empty"),
        AdminClient({"bootstrap.servers": "127.0.0.1:1"}) as admin,
    ):
        admin.create_acls([])
