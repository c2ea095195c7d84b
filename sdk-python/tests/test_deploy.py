"""The files under deploy/ (docker compose, Prometheus, Grafana) are valid and agree with what
the brokers really export. Docker cannot run here, so: the compose file parses and is
consistent (three brokers with distinct ids and one peer list, every mounted file exists,
Prometheus scrapes each broker's metrics port), and every metric the Grafana dashboard queries
is exported by a real 3-broker cluster with traffic and a consumer group."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import Cluster, eventually, unique
from prometheus_client.parser import text_string_to_metric_families

from tidelog import Consumer, Producer

pytestmark = pytest.mark.timeout(90)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_is_consistent() -> None:
    c = compose()
    services = c["services"]
    assert {"broker1", "broker2", "broker3", "jaeger", "prometheus", "grafana"} <= set(services)
    peers = set()
    ids = set()
    for n in (1, 2, 3):
        cmd = services[f"broker{n}"]["command"]
        assert cmd[0] == "serve"
        args = dict(zip(cmd[1::2], cmd[2::2], strict=False))
        ids.add(args["--node-id"])
        peers.add(args["--peers"])
        assert args["--metrics-listen"].endswith(":9790")
        assert services[f"broker{n}"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert ids == {"1", "2", "3"}, "distinct node ids"
    assert len(peers) == 1, "one peer list for every broker"
    for member in next(iter(peers)).split(","):
        node, addr = member.split("=")
        assert addr.split(":")[0] == f"broker{node}", member
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"mounted {src} does not exist"
        for dep in svc.get("depends_on", []):
            assert dep in services, dep
    assert (DEPLOY / "Dockerfile").exists()
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == ["broker1:9790", "broker2:9790", "broker3:9790"]
    grafana = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/datasources.yml").read_text())
    assert {d["uid"] for d in grafana["datasources"]} == {"prometheus", "jaeger"}


def dashboard_metrics() -> set[str]:
    dash = json.loads((DEPLOY / "grafana/dashboards/tidelog.json").read_text())
    names: set[str] = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "prometheus"
            names |= set(re.findall(r"\b((?:tidelog|process)_[a-z_]+)", t["expr"]))
    return names


def exported(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_dashboard_metric_is_exported(cluster: Cluster) -> None:
    topic = unique("dash")
    cluster.create_topic(topic, partitions=1, replication_factor=3)
    leader = cluster.leader(topic)
    with Producer({"bootstrap.servers": cluster.addr(leader), "acks": "all"}) as p:
        for i in range(5):
            p.produce(topic, f"v{i}".encode(), partition=0)
        assert p.flush(30) == 0
    c = Consumer(
        {"bootstrap.servers": cluster.addr(leader), "group.id": unique("g"), "auto.offset.reset": "earliest"}
    )
    c.subscribe([topic])
    m = eventually(
        lambda: (lambda m: m if m is not None and m.error() is None else None)(c.poll(0.2)), what="a record"
    )
    c.commit(m, asynchronous=False)
    c.close()
    wanted = dashboard_metrics()
    assert wanted, "the dashboard queries metrics"

    def missing() -> set[str] | None:
        have: set[str] = set()
        for b in cluster.brokers.values():
            assert b.metrics_url
            have |= exported(b.metrics_url)
        left = {w for w in wanted if w not in have}
        return left or None

    # Everything a panel asks for, on some broker (lag and follower lag on the leader).
    last: list[set[str] | None] = [None]

    def all_there() -> bool | None:
        last[0] = missing()
        return last[0] is None or None

    try:
        eventually(all_there, what="every dashboard metric exported")
    except AssertionError as e:
        raise AssertionError(f"not exported: {last[0]}") from e
