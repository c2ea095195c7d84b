"""Altering a topic's settings through the Python AdminClient against a real broker process:
the change applies at once, sources say which values are the topic's own, reset restores the
broker's default, bad keys are refused on the client."""

from __future__ import annotations

import pytest
from conftest import Broker, unique

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
