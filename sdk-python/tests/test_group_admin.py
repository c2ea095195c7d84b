"""Group administration through the Python AdminClient against a real broker process: list,
describe an unknown group, delete (refused while the group has members), reset offsets with a
dry run, each target and clamping."""

from __future__ import annotations

import pytest
from conftest import Broker, eventually, unique

from tidelog import (
    AdminClient,
    ConfigError,
    Consumer,
    GroupNotEmptyError,
    Producer,
    UnknownGroupError,
)


def test_list_delete_and_reset_offsets(broker: Broker, admin: AdminClient) -> None:
    topic, group = unique("ga"), unique("grp")
    admin.create_topic(topic, num_partitions=2)
    p = Producer({"bootstrap.servers": broker.addr})
    for i in range(20):
        p.produce(topic, str(i).encode(), partition=i % 2)
    assert p.flush(30) == 0

    c = Consumer(
        {
            "bootstrap.servers": broker.addr,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    got: list[object] = []
    eventually(lambda: len(got) >= 6 or got.extend(c.consume(10, 0.2)) or None, what="6 records")
    c.commit(asynchronous=False)
    listed = eventually(
        lambda: next((g for g in admin.list_groups() if g.group == group and g.state == "stable"), None),
        what="the group listed as stable",
    )
    assert listed.members == 1 and listed.protocol
    with pytest.raises(GroupNotEmptyError):
        admin.delete_group(group)
    with pytest.raises(GroupNotEmptyError):
        admin.reset_offsets(group, topic, to="earliest")
    c.close()
    eventually(
        lambda: any(g.group == group and g.members == 0 for g in admin.list_groups()) or None,
        what="the group empty after its member left",
    )

    with pytest.raises(UnknownGroupError):
        admin.describe_group(unique("nobody"))
    with pytest.raises(ConfigError):
        admin.reset_offsets(group, topic, to="earliest", offset=3)

    before = admin.committed(group, topic)
    plan = admin.reset_offsets(group, topic, to="earliest", dry_run=True)
    assert [(r.partition, r.before, r.after) for r in plan] == [
        (0, before.get(0), 0),
        (1, before.get(1), 0),
    ]
    assert admin.committed(group, topic) == before

    admin.reset_offsets(group, topic, offset=1000, partitions=[0])
    admin.reset_offsets(group, topic, to="earliest", partitions=[1])
    admin.reset_offsets(group, topic, shift_by=4, partitions=[1])
    assert admin.committed(group, topic) == {0: 10, 1: 4}
    admin.reset_offsets(group, topic, shift_by=-100)
    assert admin.committed(group, topic) == {0: 0, 1: 0}
    admin.reset_offsets(group, topic, timestamp_ms=2**62)
    assert admin.committed(group, topic) == {0: 10, 1: 10}

    assert admin.delete_group(group) == 2
    assert admin.committed(group, topic) == {}
    assert all(g.group != group for g in admin.list_groups())
    with pytest.raises(UnknownGroupError):
        admin.delete_group(group)
