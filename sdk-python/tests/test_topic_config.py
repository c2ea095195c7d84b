"""Altering a topic's settings through the Python AdminClient against a real broker process:
the change applies at once, sources say which values are the topic's own, reset restores the
broker's default, bad keys are refused on the client."""

from __future__ import annotations

import os

import pytest
from conftest import Broker, read_all, unique

from tidelog import AdminClient, ConfigError, FatalError, Producer


def test_alter_topic_config(broker: Broker, admin: AdminClient) -> None:
    topic = unique("cfg")
    t = admin.create_topic(topic, config={"max.batch.bytes": 2048})
    assert t.config_sources["max.batch.bytes"] == "topic"
    assert t.config_sources["retention.ms"] == "default"

    t = admin.alter_topic_config(topic, {"max.batch.bytes": 65536, "fsync": "always", "retention.ms": 60000})
    assert t.config["max.batch.bytes"] == 65536 and t.config["fsync"] == "always"
    assert {k for k, v in t.config_sources.items() if v == "topic"} == {
        "max.batch.bytes",
        "fsync",
        "retention.ms",
    }
    # The new limit applies at once: a 30 KiB record fits now.
    p = Producer({"bootstrap.servers": broker.addr, "compression.type": "none"})
    delivered: list[object] = []
    p.produce(topic, b"x" * 30_000, on_delivery=lambda err, msg: delivered.append(err or msg))
    assert p.flush(30) == 0
    assert not isinstance(delivered[0], Exception), delivered

    t = admin.alter_topic_config(topic, reset=["retention.ms"])
    assert t.config_sources["retention.ms"] == "default"
    assert admin.describe_topic(topic).config["retention.ms"] == 7 * 24 * 3600 * 1000
    with pytest.raises(ConfigError):
        admin.alter_topic_config(topic, reset=["retention"])
    with pytest.raises(FatalError):
        admin.alter_topic_config(topic, {"max.batch.bytes": 0})


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_a_lowered_batch_limit_splits_the_producers_batches(
    broker: Broker, admin: AdminClient, compression: str
) -> None:
    """A producer that read the topic's batch limit before it was lowered still seals batches
    under the old one: the broker refuses them as BATCH_TOO_LARGE and the producer resends
    them in parts until they fit (Kafka's KIP-126), so every record is stored once, in order;
    a single record over the new limit fails."""
    topic = unique("shrink")
    admin.create_topic(topic)
    cfg = {"bootstrap.servers": broker.addr, "compression.type": compression, "linger.ms": 500}
    with Producer(cfg) as p:
        p.produce_future(topic, b"first").result(10)  # the topic's limit is read: 1 MiB
        admin.alter_topic_config(topic, {"max.batch.bytes": 16 * 1024})
        values = [os.urandom(1024) for _ in range(400)]  # incompressible: ~400 KiB batches
        futures = [p.produce_future(topic, v) for v in values]
        assert p.flush(30) == 0
        assert [f.result(10).offset() for f in futures] == list(range(1, 401))
        too_big = p.produce_future(topic, os.urandom(64 * 1024))
        with pytest.raises(FatalError, match="max_batch_bytes"):
            too_big.result(10)
    got = read_all(broker.addr, topic, 1, 401)
    assert [m.value() for m in got[1:]] == values
