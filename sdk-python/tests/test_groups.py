"""Consumer groups against a real broker: Python members, and groups mixing Python and Rust
members (real example processes, SIGKILLed) that must split partitions disjointly and
completely and process every record at least once."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, Broker, binary, eventually, unique

from tidelog import (
    AdminClient,
    Consumer,
    IllegalGenerationError,
    Message,
    OffsetOutOfRangeError,
    Producer,
    TopicPartition,
)


def produce(addr: str, topic: str, start: int, count: int) -> None:
    with Producer({"bootstrap.servers": addr, "linger.ms": 1}) as p:
        for i in range(start, start + count):
            p.produce(topic, str(i), key=f"k{i}")
        assert p.flush(30) == 0


def consumer(addr: str, group: str, **extra: object) -> Consumer:
    cfg = {"bootstrap.servers": addr, "group.id": group, "auto.offset.reset": "earliest", **extra}
    return Consumer(cfg)


def test_two_python_members_split_partitions_and_commit(broker: Broker, admin: AdminClient):
    topic, group = unique("g"), unique("grp")
    admin.create_topic(topic, num_partitions=4)
    produce(broker.addr, topic, 0, 400)
    a = consumer(broker.addr, group)
    assigned_a: list[list[TopicPartition]] = []
    a.subscribe([topic], on_assign=lambda c, ps: assigned_a.append(ps))
    eventually(lambda: a.poll(0.1) or None, what="first record for member a")
    b = consumer(broker.addr, group)
    b.subscribe([topic])
    seen: dict[tuple[int, int], Message] = {}

    def split() -> bool:
        for m in a.consume(100, 0.05) + b.consume(100, 0.05):
            seen[(m.partition(), m.offset())] = m
        pa, pb = set(a.assignment()), set(b.assignment())
        return bool(pa and pb and not pa & pb and len(pa | pb) == 4)

    eventually(split, what="a disjoint, complete split over two members")
    eventually(
        lambda: (
            (
                [seen.update({(m.partition(), m.offset()): m for m in c.consume(500, 0.05)}) for c in (a, b)]
                and len(seen) >= 399
            )
            or None
        ),
        what="every record consumed",
    )
    assert any(len(ps) == 4 for ps in assigned_a)  # a had everything before b joined
    a.commit()
    b.commit()
    committed = a.committed([TopicPartition(topic, p) for p in range(4)]) if a.assignment() else []
    assert all(
        tp.offset is not None for tp in committed if TopicPartition(tp.topic, tp.partition) in a.assignment()
    )
    a.close()
    # b takes over a's partitions (a left, so at once) and nothing is lost.
    eventually(lambda: len(b.assignment()) == 4, what="b owning every partition after a left")
    b.close()
    lag = admin.describe_group(group).lag
    assert sum(lag.values()) <= 1  # only records still in progress may be uncommitted


def test_seek_pause_resume_position_and_stale_commits(broker: Broker, admin: AdminClient):
    topic, group = unique("s"), unique("grp")
    admin.create_topic(topic, num_partitions=1)
    produce(broker.addr, topic, 0, 100)
    c = consumer(broker.addr, group, **{"enable.auto.commit": False})
    c.subscribe([topic])
    first = eventually(lambda: c.poll(0.2), what="first record")
    assert first.offset() == 0
    tp = TopicPartition(topic, 0)
    c.seek(TopicPartition(topic, 0, 90))
    m = eventually(lambda: c.poll(0.2), what="record after seek")
    assert m.offset() == 90
    assert c.position([tp])[0].offset == 91
    c.commit(m)
    assert c.committed([tp])[0].offset == 91
    c.pause([tp])
    assert c.poll(0.3) is None
    c.resume([tp])
    assert eventually(lambda: c.poll(0.2), what="record after resume").offset() == 91
    # A commit outside membership while the group has a member is fenced.
    with Consumer({"bootstrap.servers": broker.addr, "group.id": group}) as outsider:
        outsider.assign([TopicPartition(topic, 0, 0)])
        with pytest.raises(IllegalGenerationError):
            outsider.commit(offsets=[TopicPartition(topic, 0, 5)])
    c.close()


def test_poll_one_at_a_time_hands_out_every_record_once_across_seeks(broker: Broker, admin: AdminClient):
    """poll() takes a buffered record in one step when it is the next of its partition; small
    responses (many buffered chunks) and seeks back and forth into buffered records still give
    each record exactly once, in order, from where the seek put the position."""
    topic = unique("poll1")
    admin.create_topic(topic, num_partitions=1)
    produce(broker.addr, topic, 0, 300)
    c = Consumer({"bootstrap.servers": broker.addr, "enable.auto.commit": False, "fetch.max.bytes": 1024})
    c.assign([TopicPartition(topic, 0, 0)])

    def read(n: int) -> list[int]:
        out: list[int] = []
        deadline = time.monotonic() + 20
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                assert m.value() == str(m.offset()).encode()
                out.append(m.offset())
        return out

    assert read(120) == list(range(120))
    c.seek(TopicPartition(topic, 0, 40))  # back, into records already handed out
    assert read(30) == list(range(40, 70))
    c.seek(TopicPartition(topic, 0, 250))  # forward, past records still buffered
    assert read(50) == list(range(250, 300))
    assert c.poll(0.3) is None, "nothing after the end"
    assert c.position([TopicPartition(topic, 0)])[0].offset == 300
    c.close()


def test_partitions_without_commits_do_not_reset_the_committed_ones(broker: Broker, admin: AdminClient):
    """A topic with committed offsets for some partitions only: those start from their
    commits, and only the others by auto.offset.reset (all of them used to be reset)."""
    topic, group = unique("partly"), unique("grp")
    admin.create_topic(topic, num_partitions=3)
    with Producer({"bootstrap.servers": broker.addr, "linger.ms": 1}) as p:
        for part in range(3):
            for i in range(10):
                p.produce(topic, f"{part}-{i}", partition=part)
        assert p.flush(30) == 0
    with consumer(broker.addr, group, **{"enable.auto.commit": False}) as c:
        c.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        c.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 9)], asynchronous=False)
    c = consumer(broker.addr, group, **{"enable.auto.commit": False})
    c.subscribe([topic])
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def all_read() -> bool:
        for m in c.consume(30, timeout=0.2):
            if m.error() is None:
                got[m.partition()].append(m.offset())
        return len(got[0]) >= 3 and len(got[1]) >= 1 and len(got[2]) >= 10

    eventually(all_read, what="the records after the commits, and all of partition 2")
    assert (got[0], got[1], got[2]) == ([7, 8, 9], [9], list(range(10)))
    c.close()


def test_auto_commit_is_at_least_once(broker: Broker, admin: AdminClient):
    """Records returned by the last poll before close count as unprocessed: a new member of the
    group gets them again; records of earlier polls are never redelivered."""
    topic, group = unique("a"), unique("grp")
    admin.create_topic(topic, num_partitions=1)
    produce(broker.addr, topic, 0, 50)
    c = consumer(broker.addr, group, **{"auto.commit.interval.ms": 50})
    c.subscribe([topic])
    got: list[Message] = []
    eventually(lambda: got.extend(c.consume(10, 0.2)) or len(got) >= 30, what="30 records")
    last_batch_start = got[-1].offset()  # what the latest consume returned is "in progress"
    c._rt.stop()  # simulate a crash: no final commit, no leave
    committed = AdminClient({"bootstrap.servers": broker.addr}).committed(group, topic).get(0, 0)
    assert committed <= last_batch_start + 1
    d = consumer(broker.addr, group, **{"session.timeout.ms": 1000})
    d.subscribe([topic])
    again = eventually(lambda: d.poll(0.5), timeout=30, what="redelivery to a new member")
    assert again.offset() == committed  # resumes exactly at the commit: nothing skipped
    d.close()


# ---- mixed Python + Rust groups ------------------------------------------------------------

_TP = re.compile(r'\("([^"]+)", (\d+)\)')


class Member:
    """A group member process (the Rust or Python example) whose output is collected."""

    def __init__(self, kind: str, addr: str, topic: str, group: str) -> None:
        if kind == "rust":
            cmd = [
                str(binary("group_consumer")),
                "--broker",
                f"http://{addr}",
                "--topic",
                topic,
                "--group",
                group,
            ]
        else:
            script = REPO / "examples" / "python" / "group_consumer.py"
            cmd = [sys.executable, str(script), "--broker", addr, "--topic", topic, "--group", group]
        self.kind = kind
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.records: set[tuple[int, int]] = set()
        self.assignment: set[int] | None = None
        self.lock = threading.Lock()
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            p, o = line.split()[0].split("/")
            with self.lock:
                self.records.add((int(p), int(o)))

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "assigned" in line:
                with self.lock:
                    self.assignment = {int(p) for _, p in _TP.findall(line)}

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.mark.parametrize("victim", ["rust", "python"])
def test_mixed_group_splits_and_survives_a_killed_member(broker: Broker, admin: AdminClient, victim: str):
    topic, group = unique("mix"), unique("grp")
    admin.create_topic(topic, num_partitions=4)
    produce(broker.addr, topic, 0, 1000)
    members = {
        "rust": Member("rust", broker.addr, topic, group),
        "python": Member("python", broker.addr, topic, group),
    }
    try:

        def split() -> bool:
            a, b = members["rust"].assignment, members["python"].assignment
            return bool(a and b and not a & b and a | b == {0, 1, 2, 3})

        eventually(
            split, timeout=30, what="disjoint, complete assignments across the Rust and Python members"
        )
        produce(broker.addr, topic, 1000, 1000)
        survivor = members["python" if victim == "rust" else "rust"]
        members[victim].kill9()
        produce(broker.addr, topic, 2000, 1000)
        offsets = admin.list_offsets(topic, "latest")
        everything = {(p, o) for p, end in offsets.items() for o in range(end)}
        assert len(everything) == 3000

        def covered() -> bool:
            with members["rust"].lock, members["python"].lock:
                return everything <= members["rust"].records | members["python"].records

        eventually(covered, timeout=60, what=f"every record processed after the {victim} member was killed")
        assert survivor.assignment == {0, 1, 2, 3}
    finally:
        for m in members.values():
            m.stop()


# ---- regressions: robustness of the group session and consumer options --------------------


def test_group_member_rejoins_after_a_broker_restart(own_broker: Broker):
    b = own_broker
    with AdminClient({"bootstrap.servers": b.addr}) as a:
        a.create_topic("r", num_partitions=2)
    produce(b.addr, "r", 0, 10)
    c = consumer(b.addr, "rg", **{"auto.commit.interval.ms": 100})
    c.subscribe(["r"])
    got: set[int] = set()
    eventually(
        lambda: got.update(int(m.value()) for m in c.consume(100, 0.1)) or len(got) == 10, what="10 records"
    )
    b.kill9()
    b.start()  # same port and data; the group's membership is gone with the old process
    produce(b.addr, "r", 10, 10)
    eventually(
        lambda: got.update(int(m.value()) for m in c.consume(100, 0.1)) or len(got) == 20,
        timeout=30,
        what="records produced after the restart, through a rejoined session",
    )
    assert len(c.assignment()) == 2
    c.close()


def test_resubscribe_changes_topics_and_reset_error_never_skips(broker: Broker, admin: AdminClient):
    t1, t2, group = unique("s1"), unique("s2"), unique("grp")
    admin.create_topic(t1, num_partitions=1)
    admin.create_topic(t2, num_partitions=1)
    produce(broker.addr, t2, 0, 3)
    c = consumer(broker.addr, group)
    c.subscribe([t1])
    c.subscribe([t2])  # at once, while the first join is still in flight
    m = eventually(lambda: c.poll(0.2), what="a record of the second topic")
    assert m.topic() == t2
    assert {tp.topic for tp in c.assignment()} == {t2}
    c.close()
    # auto.offset.reset=error: no committed offset → an error, and no silent jump to the end.
    fresh = consumer(broker.addr, unique("grp"), **{"auto.offset.reset": "error"})
    fresh.subscribe([t2])
    with pytest.raises(OffsetOutOfRangeError):
        eventually(lambda: fresh.poll(0.2), what="the reset error")
    produce(broker.addr, t2, 3, 1)
    assert fresh.poll(0.5) is None  # still stopped: nothing skipped
    fresh.seek(TopicPartition(t2, 0, 0))
    assert eventually(lambda: fresh.poll(0.2), what="record after seek").offset() == 0
    fresh.close()


def test_manual_assignment_with_a_group_auto_commits(broker: Broker, admin: AdminClient):
    topic, group = unique("m"), unique("grp")
    admin.create_topic(topic, num_partitions=1)
    produce(broker.addr, topic, 0, 5)
    c = consumer(broker.addr, group, **{"auto.commit.interval.ms": 50})
    c.assign([TopicPartition(topic, 0, 0)])
    eventually(lambda: len(c.consume(10, 0.1)) == 5 or None, what="5 records")
    c.poll(0.05)  # the 5 records count as processed now
    eventually(lambda: admin.committed(group, topic).get(0) == 5, what="auto-commit of a manual assignment")
    c.close()
