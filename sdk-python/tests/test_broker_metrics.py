"""The broker's Prometheus endpoint, scraped over HTTP and parsed with Prometheus's own
Python text parser (``prometheus_client.parser``), against real broker processes.

Single node: counters move as records are produced and consumed; a group's lag is the
partition's high watermark minus its committed offset; process metrics are there. Three
brokers: the leader of a partition reports it under-replicated while a replica is SIGKILLed,
and no longer once the replica is back."""

from __future__ import annotations

import urllib.request

import pytest
from conftest import Broker, Cluster, eventually, unique
from prometheus_client.parser import text_string_to_metric_families

from tidelog import AdminClient, Consumer, Producer

pytestmark = pytest.mark.timeout(90)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(broker: Broker) -> Samples:
    """Every sample of the broker's /metrics, by (name, labels)."""
    assert broker.metrics_url, "the broker serves metrics by default"
    with urllib.request.urlopen(broker.metrics_url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_traffic_offsets_and_group_lag(own_broker: Broker) -> None:
    topic = unique("metered")
    boot = {"bootstrap.servers": own_broker.addr}
    AdminClient(boot).create_topic(topic, num_partitions=2)
    tp0 = {"topic": topic, "partition": "0"}
    before = scrape(own_broker)
    assert value(before, "tidelog_topic_partition_current_offset", **tp0) == 0
    assert (value(before, "process_resident_memory_bytes") or 0) > 0
    assert (value(before, "process_open_fds") or 0) > 0
    ok_before = value(before, "tidelog_produce_batches_total", code="ERROR_CODE_UNSPECIFIED") or 0

    with Producer({**boot, "linger.ms": 0}) as p:
        for i in range(10):
            p.produce(topic, f"v{i}".encode(), partition=0)
            p.flush(10)  # one batch each
    after = scrape(own_broker)
    assert value(after, "tidelog_topic_partition_current_offset", **tp0) == 10
    assert value(after, "tidelog_topic_partition_records_in_total", **tp0) == 10
    assert (value(after, "tidelog_topic_partition_bytes_in_total", **tp0) or 0) > 0
    assert value(after, "tidelog_topic_partition_leader", **tp0) == 1
    assert (
        value(after, "tidelog_produce_batches_total", code="ERROR_CODE_UNSPECIFIED") or 0
    ) >= ok_before + 10
    assert (value(after, "tidelog_produce_latency_seconds_count", acks="all") or 0) >= 10

    group = unique("lagging")
    c = Consumer({**boot, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = 0
    for _ in range(200):
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            got += 1
            if got == 4:
                c.commit(m, asynchronous=False)
                break
    assert got == 4
    lagging = {**tp0, "group": group}

    def committed() -> Samples | None:
        s = scrape(own_broker)
        return s if value(s, "tidelog_consumergroup_current_offset", **lagging) == 4 else None

    samples = eventually(committed, what="the committed offset in /metrics")
    # Lag = high watermark - committed offset, as the broker computes it.
    assert value(samples, "tidelog_consumergroup_lag", **lagging) == 6
    assert (value(samples, "tidelog_topic_partition_records_out_total", **tp0) or 0) >= 4
    c.close()


def test_under_replicated_partitions_follow_a_killed_replica(cluster: Cluster) -> None:
    topic = unique("replicated")
    cluster.create_topic(topic, partitions=1, replication_factor=3)
    leader = cluster.leader(topic)
    victim = next(n for n in cluster.serving() if n != leader)
    with Producer({"bootstrap.servers": cluster.addr(leader), "acks": "all"}) as p:
        p.produce(topic, b"first", partition=0)
        assert p.flush(30) == 0
    tp = {"topic": topic, "partition": "0"}

    def under() -> float | None:
        return value(
            scrape(cluster.brokers[leader]), "tidelog_topic_partition_under_replicated_partition", **tp
        )

    eventually(lambda: under() == 0 or None, what="an in-sync partition")
    cluster.brokers[victim].kill9()
    # Writes go on (2 of 3), and the leader sees the third replica fall behind.
    with Producer({"bootstrap.servers": cluster.addr(leader), "acks": "all"}) as p:
        for i in range(3):
            p.produce(topic, f"while-down-{i}".encode(), partition=0)
        assert p.flush(30) == 0
    eventually(lambda: under() == 1 or None, what="the partition under-replicated")
    total = value(scrape(cluster.brokers[leader]), "tidelog_under_replicated_partitions")
    assert total is not None and total >= 1
    cluster.brokers[victim].start()
    eventually(lambda: under() == 0 or None, timeout=60, what="the partition in sync again")


def test_replicas_read_just_written_entries_from_memory(cluster: Cluster) -> None:
    """A leader sends what it just appended to its followers, and every replica applies it,
    from the entries it keeps in memory (``raft/recent.rs``), not by reading its log back."""
    topic = unique("recent")
    cluster.create_topic(topic, partitions=1, replication_factor=3)
    leader = cluster.leader(topic)
    replicas = cluster.serving()
    assert leader in replicas and len(replicas) == 3

    def from_memory(node: int) -> float:
        return value(scrape(cluster.brokers[node]), "tidelog_raft_entry_reads_total", source="memory") or 0

    before = {n: from_memory(n) for n in replicas}
    batches = 20
    with Producer({"bootstrap.servers": cluster.addr(leader), "acks": "all", "linger.ms": 0}) as p:
        for i in range(batches):
            p.produce(topic, f"r{i}".encode(), partition=0)
            assert p.flush(30) == 0  # one batch, one Raft entry each
    # The leader read each entry at least once (to replicate or apply it), every follower once
    # (to apply it), all from memory.
    for n in replicas:

        def grew(n: int = n) -> bool | None:
            return from_memory(n) - before[n] >= batches or None

        eventually(grew, what=f"broker {n}'s memory reads")
    # What they keep is counted (bounded at 256 MiB a broker): every replica holds some, if
    # only the metadata group's latest entries (that group never sleeps).
    for n in replicas:
        held = value(scrape(cluster.brokers[n]), "tidelog_raft_recent_bytes")
        assert held is not None and 0 < held <= 256 << 20, f"broker {n} holds {held} bytes"
