"""Exactly once through a real three-broker cluster (RF=3): the consume-transform-produce
application ``eos_app.py`` runs in rounds while, per round, the controller (the transaction and
group coordinator), the leader of an output partition or the application alone is SIGKILLed.
A killed broker stays down until the survivors took over its role and the application
committed through them; then the application itself is SIGKILLed (mid-transaction: it pauses
inside each one) and the broker restarts on its data and port. A last instance drains the
input (the group's committed offsets reach the input's end). A read_committed reader, through
each broker, then sees every input record transformed exactly once, in input order per key; a
read_uncommitted reader sees at least as many records.

The bootstrap brokers and the fault delays come from a seeded RNG (printed);
``TIDELOG_EOS_CLUSTER_SEED=<seed>`` repeats those choices (not the cluster's own timing).
Every wait polls with a deadline; only the random fault delays sleep.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

import pytest
from conftest import Cluster, eventually
from test_transactions import App, at_least, read

from tidelog import AdminClient, Message, Producer, TidelogError

pytestmark = pytest.mark.timeout(60)

TOTAL, KEYS = 600, 13
GROUP, TXN_ID = "eos-g", "eos-tx"
PER_TXN, PAUSE_MS = "10", "30"  # ~30 ms inside each transaction: kills land mid-transaction
FAULTS = ("kill the controller", "kill the leader of out/0", "kill the application only")


@pytest.fixture
def apps() -> Iterator[list[App]]:
    started: list[App] = []
    yield started
    for a in started:
        if a.proc.poll() is None:
            a.kill9()


def diagnostics(cluster: Cluster, apps: list[App], seed: int) -> None:
    """What the application instances said and the tail of each broker's log."""
    print(f"---- failed with seed {seed} (TIDELOG_EOS_CLUSTER_SEED={seed} repeats it)")
    for i, a in enumerate(apps):
        print(f"---- eos_app instance {i} (exit {a.proc.poll()}): stdout tail")
        print("\n".join(a.lines[-25:]))
        print(f"---- eos_app instance {i}: stderr tail")
        print("\n".join(a.errors[-40:]))
    for n in cluster.brokers:
        log = cluster.root / f"node-{n}.log"
        tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
        print(f"---- broker {n} ({cluster.addr(n)}): tail of {log}")
        print("\n".join(tail))


def check_exactly_once(inputs: list[Message], outputs: list[Message], where: str) -> None:
    """``outputs`` (read_committed, sorted by partition and offset) hold every input record
    transformed exactly once (``VALUE|p:o``, same key), in input order per key."""
    expected = {(m.partition(), m.offset()): m for m in inputs}
    seen: dict[tuple[int, int], int] = {}
    order: dict[bytes | None, list[tuple[int, int]]] = {}
    for m in outputs:
        value = (m.value() or b"").decode()
        body, _, origin = value.rpartition("|")
        p, _, o = origin.partition(":")
        assert p.isdigit() and o.isdigit(), f"{where}: output {value!r} has no provenance"
        pos = (int(p), int(o))
        src = expected.get(pos)
        assert src is not None, f"{where}: output {value!r} names no input record"
        assert body.encode() == (src.value() or b"").upper() and m.key() == src.key(), (
            f"{where}: output {m.key()!r}={value!r} is not input {pos} {src.key()!r}={src.value()!r}"
        )
        seen[pos] = seen.get(pos, 0) + 1
        order.setdefault(m.key(), []).append(pos)
    dups = sorted(pos for pos, n in seen.items() if n > 1)
    assert not dups, f"{where}: {len(dups)} input records transformed more than once, e.g. {dups[:5]}"
    missing = sorted(set(expected) - set(seen))
    assert not missing, f"{where}: {len(missing)} input records never came out, e.g. {missing[:5]}"
    for key, got in order.items():
        want = sorted(pos for pos, m in expected.items() if m.key() == key)
        assert got == want, f"{where}: key {key!r} out of input order"
    assert len(outputs) == len(inputs)


def test_consume_transform_produce_is_exactly_once_through_broker_failures(cluster: Cluster, apps: list[App]):
    seed = int(os.environ.get("TIDELOG_EOS_CLUSTER_SEED", random.randrange(1 << 30)))
    print(f"eos cluster test seed: {seed} (TIDELOG_EOS_CLUSTER_SEED={seed} repeats it)")
    rng = random.Random(seed)
    every = ",".join(cluster.addr(n) for n in cluster.brokers)
    admin = AdminClient({"bootstrap.servers": every, "request.timeout.ms": 2000})
    try:
        cluster.create_topic("in", partitions=2, replication_factor=3)
        cluster.create_topic("out", partitions=2, replication_factor=3)
        cfg = {"bootstrap.servers": cluster.addr(1), "acks": "all", "enable.idempotence": True}
        with Producer({**cfg, "linger.ms": 2}) as p:
            for i in range(TOTAL):
                p.produce("in", f"v{i}".encode(), key=f"k{i % KEYS}".encode())
            assert p.flush(30) == 0
        end = admin.list_offsets("in", "latest")
        assert sum(end.values()) == TOTAL and len(end) == 2, end

        def start_app(at: int) -> App:
            app = App([cluster.addr(at), "in", "out", GROUP, TXN_ID, PER_TXN, PAUSE_MS])
            apps.append(app)
            return app

        def alive(app: App) -> None:
            if app.proc.poll() is not None:
                raise AssertionError(f"the application exited with {app.proc.returncode}: {app.lines[-3:]}")
            fatal = [line for line in app.lines if line.startswith("fatal")]
            assert not fatal, f"the application failed fatally: {fatal}"

        def committed_some(app: App) -> bool:
            alive(app)
            return app.commits() > 0

        for fault in FAULTS:
            controller, out_leader = cluster.controller(), cluster.leader("out", 0)
            victim = {FAULTS[0]: controller, FAULTS[1]: out_leader}.get(fault)
            at = rng.choice([n for n in cluster.brokers if n != victim])
            print(
                f"{fault} (broker {victim}; controller {controller}, out/0 leader {out_leader}), app at {at}"
            )
            app = start_app(at)
            eventually(lambda a=app: committed_some(a), 30, f"the application at {at} to commit")
            time.sleep(rng.uniform(0.0, 0.6))  # the fault lands anywhere in the next transactions
            if victim is not None:
                cluster.brokers[victim].kill9()
                # The broker stays down until the survivors took over its role (a broker back
                # before the election timeout would fail nothing over) and the application
                # committed a transaction through them.
                took_over = cluster.controller() if fault == FAULTS[0] else cluster.leader("out", 0)
                before = app.commits()
                eventually(
                    lambda a=app, n=before: committed_some(a) and a.commits() > n,
                    30,
                    f"the application to commit after broker {took_over} took over from {victim}",
                )
                print(f"  broker {took_over} took over; the application committed through it")
            time.sleep(rng.uniform(0.0, 0.8))  # the application's kill lands anywhere too
            alive(app)
            app.kill9()
            print(f"  app killed after {app.commits()} commits: {app.lines[-1:]}")
            if victim is not None:
                cluster.brokers[victim].start()  # same data dir and port

        # The last instance, undisturbed, drains the input: the group's committed offsets
        # (moved only by the transactions' commits) reach the input's end.
        app = start_app(rng.choice(list(cluster.brokers)))

        def drained() -> bool:
            alive(app)
            try:
                return admin.committed(GROUP, "in") == end
            except TidelogError as e:
                if e.retriable:  # an open transaction holds the offsets, or no coordinator yet
                    return False
                raise

        eventually(drained, 40, f"the input to be drained (offsets at {end})")
        print(f"  last instance: {app.lines[-1:]} (earlier instances committed the rest)")
        # The input may have been drained by earlier instances before this one finished
        # starting: a SIGTERM before its handler is installed (during imports) kills it.
        eventually(lambda: "ready" in app.lines, 60, "the last instance to be ready")
        assert app.stop() == 0, app.errors[-20:]

        inputs = read(every, "in", 2, "read_uncommitted", at_least(TOTAL), settle=0.3)
        assert sorted(m.value() for m in inputs) == sorted(f"v{i}".encode() for i in range(TOTAL))
        committed: list[Message] = []
        failures: list[str] = []
        for n in cluster.brokers:  # RF=3: each broker serves the partitions itself
            committed = read(cluster.addr(n), "out", 2, "read_committed", at_least(TOTAL), settle=0.5)
            try:
                check_exactly_once(inputs, committed, f"read_committed through broker {n} (seed {seed})")
            except AssertionError as e:
                failures.append(str(e).splitlines()[0])
                dup_at: dict[str, list[tuple[int, int]]] = {}
                for m in committed:
                    dup_at.setdefault((m.value() or b"").decode(), []).append((m.partition(), m.offset()))
                print(
                    f"broker {n}: outputs at several out offsets:",
                    {v: pos for v, pos in dup_at.items() if len(pos) > 1},
                )
        assert not failures, failures
        uncommitted = read(every, "out", 2, "read_uncommitted", at_least(TOTAL), settle=0.5)
        assert len(uncommitted) >= len(committed), f"{len(uncommitted)} < {len(committed)}"
        print(f"output: {len(committed)} committed records, {len(uncommitted) - len(committed)} aborted")
    except BaseException:
        diagnostics(cluster, apps, seed)
        raise
    finally:
        admin.close()
