"""confluent-kafka parity of the admin client, against real brokers: create_topics /
delete_topics / create_partitions / delete_records / delete_consumer_groups / alter_configs
returning futures, list_topics' ClusterMetadata, list_groups, describe_configs."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import pytest
from conftest import Broker, eventually, unique

from tidelog import (
    OFFSET_END,
    RESOURCE_BROKER,
    RESOURCE_TOPIC,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigError,
    ConfigResource,
    ConfigSource,
    Consumer,
    DeletedRecords,
    FatalError,
    GroupNotEmptyError,
    KafkaError,
    KafkaException,
    NewPartitions,
    NewTopic,
    Producer,
    RetriableError,
    TopicExistsError,
    TopicPartition,
    UnknownGroupError,
    UnknownTopicError,
)

DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000


def after_poll(client: Any, check: Any) -> Any:
    """A check for ``eventually`` that first serves the client's callbacks (``poll``)."""

    def run() -> Any:
        client.poll(0.1)
        return check()

    return run


def results(futures: dict) -> dict:
    """Each future's result, or the exception it raised."""
    out = {}
    for k, f in futures.items():
        try:
            out[k] = f.result(30)
        except Exception as e:
            out[k] = e
    return out


def test_create_and_delete_topics_return_futures(broker: Broker, admin: AdminClient):
    a, b, existing = unique("ca"), unique("cb"), unique("cx")
    admin.create_topic(existing)
    fs = admin.create_topics(
        [
            NewTopic(a, num_partitions=3, replication_factor=1, config={"retention.ms": "60000"}),
            NewTopic(b),  # -1: the broker's defaults
            NewTopic(existing, 1),
            NewTopic(unique("bad"), 1, config={"unclean.leader.election.enable": "true"}),
        ]
    )
    assert all(isinstance(f, concurrent.futures.Future) for f in fs.values())
    got = results(fs)
    assert got[a] is None and got[b] is None
    assert isinstance(got[existing], TopicExistsError)
    assert got[existing].args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    bad = next(v for k, v in got.items() if k.startswith("bad"))
    assert isinstance(bad, ConfigError) and "unclean.leader.election.enable" in str(bad)
    described = admin.describe_topic(a)
    assert described.num_partitions == 3 and described.config["retention.ms"] == 60000
    assert admin.describe_topic(b).num_partitions == 1

    # validate_only checks and creates nothing.
    new = unique("cv")
    got = results(admin.create_topics([NewTopic(new, 2), NewTopic(a, 2)], validate_only=True))
    assert got[new] is None and isinstance(got[a], TopicExistsError)
    with pytest.raises(UnknownTopicError):
        admin.describe_topic(new)

    got = results(admin.delete_topics([a, b, new], operation_timeout=30))
    assert got[a] is None and got[b] is None
    assert isinstance(got[new], UnknownTopicError) and isinstance(got[new], KafkaException)
    assert got[new].args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert a not in admin.list_topics().topics
    with pytest.raises(TypeError):
        admin.create_topics(NewTopic(a, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate"):
        admin.create_topics([NewTopic(a, 1), NewTopic(a, 2)])


def test_admin_futures_run_concurrently(own_broker: Broker):
    """With the broker stalled (SIGSTOP) every call waits its whole timeout: four topics in
    one call fail together, in about one timeout, not four in a row."""
    cfg = {"bootstrap.servers": own_broker.addr, "request.timeout.ms": 1000, "default.api.timeout.ms": 1500}
    with AdminClient(cfg) as admin:
        admin.describe_cluster()  # learnt while the broker answers
        own_broker.pause(True)
        try:
            start = time.monotonic()
            fs = admin.create_topics([NewTopic(unique("slow"), 1) for _ in range(4)])
            assert not any(f.done() for f in fs.values())  # returns at once
            got = results(fs)
            elapsed = time.monotonic() - start
        finally:
            own_broker.pause(False)
    assert all(isinstance(e, RetriableError) for e in got.values()), got
    assert elapsed < 4, f"{elapsed:.1f} s: the calls ran one after another"


def test_list_topics_returns_cluster_metadata(broker: Broker, admin: AdminClient):
    topic = unique("meta")
    admin.create_topic(topic, num_partitions=3)
    md = admin.list_topics(timeout=10)
    assert md.cluster_id and md.controller_id == 1
    port = int(broker.addr.rsplit(":", 1)[1])
    assert md.brokers[1].id == 1 and (md.brokers[1].host, md.brokers[1].port) == ("127.0.0.1", port)
    assert md.orig_broker_id == 1 and md.orig_broker_name == broker.addr
    t = md.topics[topic]
    assert t.topic == topic and t.error is None and sorted(t.partitions) == [0, 1, 2]
    p = t.partitions[2]
    assert (p.id, p.leader, p.replicas, p.isrs, p.error) == (2, 1, [1], [1], None)

    one = admin.list_topics(topic)
    assert list(one.topics) == [topic]
    missing = admin.list_topics(unique("nope")).topics
    (gone,) = missing.values()
    assert (
        gone.error is not None
        and gone.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        and not gone.partitions
    )

    # The producer and the consumer answer the same.
    with Producer({"bootstrap.servers": broker.addr}) as prod:
        assert sorted(prod.list_topics(topic).topics[topic].partitions) == [0, 1, 2]
    c = Consumer({"bootstrap.servers": broker.addr})
    try:
        assert topic in c.list_topics(timeout=10).topics
    finally:
        c.close()


def test_groups_list_and_delete_with_futures(broker: Broker, admin: AdminClient):
    topic, idle, busy = unique("grp-t"), unique("idle"), unique("busy")
    admin.create_topic(topic)
    with Producer({"bootstrap.servers": broker.addr}) as p:
        p.produce(topic, b"x")
        assert p.flush(10) == 0
    # "idle" has a committed offset and no members; "busy" has a member.
    c = Consumer({"bootstrap.servers": broker.addr, "group.id": idle, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0)])
    c.commit(offsets=[TopicPartition(topic, 0, 1)])
    c.close()
    member = Consumer({"bootstrap.servers": broker.addr, "group.id": busy, "auto.offset.reset": "earliest"})
    try:
        member.subscribe([topic])
        eventually(after_poll(member, lambda: member.assignment()), 15, "an assignment")
        listed = admin.list_groups(busy)
        assert [(g.id, g.protocol_type, g.error, g.members) for g in listed] == [(busy, "consumer", None, 1)]
        assert {idle, busy} <= {g.group for g in admin.list_groups()}
        got = results(admin.delete_consumer_groups([idle, busy, unique("never")], request_timeout=10))
    finally:
        member.close()
    assert got[idle] is None
    assert (
        isinstance(got[busy], GroupNotEmptyError) and got[busy].args[0].code() == KafkaError.NON_EMPTY_GROUP
    )
    (unknown,) = [v for k, v in got.items() if k not in (idle, busy)]
    assert isinstance(unknown, UnknownGroupError) and unknown.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND
    assert admin.list_groups(idle) == []
    assert admin.delete_groups([busy])[busy].result(30) is None  # no member left: deletable


def test_alter_configs_replaces_and_incremental_alter_configs_changes_some(
    broker: Broker, admin: AdminClient
):
    topic = unique("cfg")
    admin.create_topic(topic, config={"max.batch.bytes": 2048, "retention.bytes": 10_000_000})
    res = ConfigResource(RESOURCE_TOPIC, topic, set_config={"retention.ms": "60000"})
    assert results(admin.alter_configs([res])) == {res: None}
    t = admin.describe_topic(topic)
    # Kafka's AlterConfigs: the keys not given went back to the broker's defaults.
    assert t.config["retention.ms"] == 60000 and t.config_sources["retention.ms"] == "topic"
    assert (
        t.config_sources["max.batch.bytes"] == "default" and t.config_sources["retention.bytes"] == "default"
    )

    inc = ConfigResource(
        "topic",
        topic,
        incremental_configs=[
            ConfigEntry("max.message.bytes", "65536", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ],
    )
    inc.add_incremental_config(
        ConfigEntry("segment.ms", "3600000", incremental_operation=AlterConfigOpType.SET)
    )
    assert results(admin.incremental_alter_configs([inc])) == {inc: None}
    entries = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    (configs,) = results(entries).values()
    assert configs["max.batch.bytes"].value == "65536"
    assert configs["max.batch.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG
    assert configs["segment.ms"].value == "3600000" and not configs["segment.ms"].is_default
    assert configs["retention.ms"].value == str(DEFAULT_RETENTION_MS) and configs["retention.ms"].is_default
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG

    broker_res = ConfigResource(RESOURCE_BROKER, "1", set_config={"x": "1"})
    bad_key = ConfigResource(RESOURCE_TOPIC, topic, set_config={"retention": "1"})
    unknown = ConfigResource(RESOURCE_TOPIC, unique("nope"), set_config={"retention.ms": "1"})
    got = results(admin.alter_configs([broker_res, bad_key, unknown]))
    assert isinstance(got[broker_res], ConfigError) and isinstance(got[bad_key], ConfigError)
    assert isinstance(got[unknown], UnknownTopicError)
    assert admin.describe_topic(topic).config["segment.ms"] == 3600000  # the bad ones changed nothing


def test_create_partitions(broker: Broker, admin: AdminClient):
    topic = unique("grow")
    admin.create_topic(topic, num_partitions=2)
    assert results(admin.create_partitions([NewPartitions(topic, 4)], validate_only=True)) == {topic: None}
    assert admin.describe_topic(topic).num_partitions == 2
    got = results(admin.create_partitions([NewPartitions(topic, 4), NewPartitions(unique("nope"), 3)]))
    assert got[topic] is None
    (unknown,) = [v for k, v in got.items() if k != topic]
    assert isinstance(unknown, UnknownTopicError)
    t = admin.describe_topic(topic)
    assert t.num_partitions == 4 and [p.partition for p in t.partitions] == [0, 1, 2, 3]
    with Producer({"bootstrap.servers": broker.addr}) as p:
        f = p.produce_future(topic, b"in a new partition", partition=3)
        assert p.flush(10) == 0
    assert f.result().partition() == 3 and f.result().offset() == 0
    for count in (4, 3):  # not above the current count
        err = admin.create_partitions([NewPartitions(topic, count)])[topic].exception(30)
        assert isinstance(err, FatalError) and not err.retriable, err
    err = admin.create_partitions([NewPartitions(topic, 3)], validate_only=True)[topic].exception(30)
    assert isinstance(err, FatalError)


def test_delete_records(broker: Broker, admin: AdminClient):
    topic = unique("trim")
    admin.create_topic(topic, num_partitions=2)
    with Producer({"bootstrap.servers": broker.addr, "linger.ms": 0}) as p:
        for i in range(10):
            p.produce(topic, f"a{i}", partition=0)
        for i in range(4):
            p.produce(topic, f"b{i}", partition=1)
        assert p.flush(10) == 0
    first, second = TopicPartition(topic, 0, 6), TopicPartition(topic, 1, OFFSET_END)
    got = results(admin.delete_records([first, second]))
    assert got == {first: DeletedRecords(6), second: DeletedRecords(4)}
    assert [(p.partition, p.log_start_offset) for p in admin.describe_topic(topic).partitions] == [
        (0, 6),
        (1, 4),
    ]
    c = Consumer({"bootstrap.servers": broker.addr, "auto.offset.reset": "earliest"})
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0)) == (6, 10)
        # A position below the new start: auto.offset.reset applies.
        c.assign([TopicPartition(topic, 0, 2)])
        values: list[bytes | None] = []
        eventually(
            lambda: values.extend(m.value() for m in c.consume(10, 0.2)) or len(values) >= 4, what="a6.."
        )
        assert values == [b"a6", b"a7", b"a8", b"a9"]
    finally:
        c.close()
    unknown = TopicPartition(unique("nope"), 0, 1)
    assert isinstance(results(admin.delete_records([unknown]))[unknown], UnknownTopicError)
    beyond = TopicPartition(topic, 0, 100)
    err = results(admin.delete_records([beyond]))[beyond]
    assert isinstance(err, KafkaException) and not isinstance(err, RetriableError)
    with pytest.raises(ValueError):
        admin.delete_records([TopicPartition(topic, 0)])  # no offset
