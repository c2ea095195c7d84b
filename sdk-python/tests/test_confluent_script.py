"""A confluent-kafka program (``confluent_script.py``, written as confluent-kafka's README and
examples write one) runs against a real Tidelog broker with only its import lines changed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import Broker, unique

from tidelog import AdminClient

SCRIPT = Path(__file__).with_name("confluent_script.py")
IMPORTS = [
    ("from confluent_kafka import ", "from tidelog import "),
    ("from confluent_kafka.admin import ", "from tidelog.admin import "),
]


def as_tidelog(source: str) -> str:
    """The script with its confluent_kafka imports pointed at tidelog, and nothing else."""
    out = source
    for old, new in IMPORTS:
        out = out.replace(old, new)
    changed = [(a, b) for a, b in zip(source.splitlines(), out.splitlines(), strict=True) if a != b]
    assert len(changed) == 2 and all(a.startswith("from confluent_kafka") for a, _ in changed), changed
    return out


def test_a_confluent_kafka_script_runs_unchanged_but_its_imports(
    broker: Broker, admin: AdminClient, tmp_path
):
    topic, group, count = unique("script"), unique("grp"), 25
    script = tmp_path / "script.py"
    script.write_text(as_tidelog(SCRIPT.read_text()))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    run = subprocess.run(
        [sys.executable, str(script), broker.addr, topic, group, str(count)],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"Topic {topic} created"
    assert lines[1] == f"Topic {topic} has 3 partitions"
    delivered = [line for line in lines if line.startswith("Message delivered to")]
    assert len(delivered) == count + 1
    assert {re.sub(r"\[\d\]$", "", line) for line in delivered} == {f"Message delivered to {topic} "}
    assert "0 messages were not delivered" in lines
    assert not [line for line in lines if "failed" in line]
    assert "Assignment: [0, 1, 2]" in lines
    received = [
        line.removeprefix("Received message: ") for line in lines if line.startswith("Received message")
    ]
    assert sorted(received) == sorted(f"message {i}" for i in range(count))
    assert "Received tombstone for key deleted" in lines
    assert f"Committed {count + 1} records" in lines
    assert lines[-1] == f"Done: received {count + 1} of {count + 1}"
    # The group's offsets are committed: every record, once.
    assert sum(admin.committed(group, topic).values()) == count + 1
