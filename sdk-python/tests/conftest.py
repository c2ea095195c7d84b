"""Shared test support: real ``tidelog`` broker processes on free loopback ports (a single
node, or a cluster of separate processes), and helpers.

The broker binary is ``$TIDELOG_BIN`` or ``target/debug/tidelog`` of this repository (built
by the test command before the Python tests run); the Rust example binaries sit beside it.
Every wait polls with a deadline; nothing sleeps to wait for state.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

from tidelog import AdminClient, Consumer, Message, TidelogError, TopicExistsError, TopicPartition

if TYPE_CHECKING:
    from otlp_receiver import OtlpReceiver

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def binary(name: str) -> Path:
    base = (
        Path(os.environ["TIDELOG_BIN"]).parent if "TIDELOG_BIN" in os.environ else REPO / "target" / "debug"
    )
    path = (
        Path(os.environ["TIDELOG_BIN"]) if name == "tidelog" and "TIDELOG_BIN" in os.environ else base / name
    )
    if not path.exists():
        pytest.fail(f"{path} not found: run `cargo build --workspace` first (scripts/test.sh does)")
    return path


def eventually(check: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    """Polls ``check`` until it returns a truthy value, or fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Broker:
    """A real broker process. ``port=0`` picks a free port; restart keeps port and data.
    ``args`` are extra ``serve`` arguments; ``log`` gets its stderr (else it is dropped);
    ``env`` is added to the environment it inherits."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        args: Sequence[str] = (),
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.args = list(args)
        self.log = log
        self.env = {**os.environ, **env} if env else None
        self.proc: subprocess.Popen[str] | None = None
        self.paused = False
        self.start()

    def start(self) -> None:
        cmd = [str(binary("tidelog")), "serve", "--listen", f"127.0.0.1:{self.port}"]
        cmd += ["--data-dir", str(self.data_dir), *self.args]
        if self.log is None:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env
            )
        else:
            with self.log.open("a") as err:
                self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=self.env)
        assert self.proc.stdout is not None
        line = ""
        for line in self.proc.stdout:
            if "listening" in line:
                break
        else:
            pytest.fail(f"broker did not start (last output {line!r})")
        self.addr = line.split()[3].removeprefix("http://")
        self.port = int(self.addr.rsplit(":", 1)[1])
        # "... metrics http://127.0.0.1:PORT/metrics" (or "metrics off").
        metrics = line.rsplit(" metrics ", 1)[-1].strip()
        self.metrics_url: str | None = metrics if metrics.startswith("http") else None
        # Keep draining stdout so the broker never blocks on a full pipe.
        out = self.proc.stdout
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def pause(self, paused: bool) -> None:
        """SIGSTOP (or SIGCONT): the process keeps its sockets but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
        self.paused = paused

    @property
    def serving(self) -> bool:
        """Running and not paused."""
        return self.proc is not None and self.proc.poll() is None and not self.paused

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.pause(False)  # a stopped process would hold SIGTERM until SIGCONT
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held until all are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """A cluster of broker processes with ids 1..size on fixed free loopback ports. Topics
    have the cluster's default replication factor (3, at most the size) unless created with
    another. Logs go to ``root/node-N.log``; ``env`` is added to every broker's environment."""

    def __init__(self, root: Path, size: int = 3, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.ports = dict(enumerate(free_ports(size), start=1))
        peers = ",".join(f"{n}=127.0.0.1:{p}" for n, p in self.ports.items())
        self.brokers: dict[int, Broker] = {}
        try:
            for n, port in self.ports.items():
                args = ["--node-id", str(n), "--peers", peers]
                self.brokers[n] = Broker(root / f"node-{n}", port, args, root / f"node-{n}.log", env)
        except BaseException:
            self.stop()
            raise

    def addr(self, n: int) -> str:
        return f"127.0.0.1:{self.ports[n]}"

    def serving(self) -> list[int]:
        """The brokers running and not paused."""
        return [n for n, b in self.brokers.items() if b.serving]

    def stop(self) -> None:
        for b in self.brokers.values():
            b.stop()

    def _admin(self, n: int) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.addr(n), "request.timeout.ms": 2000})

    def create_topic(
        self, name: str, partitions: int = 1, replication_factor: int = 0, timeout: float = 30
    ) -> None:
        """Creates ``name`` once the metadata group has a controller, and waits until every
        serving broker has applied it and each partition has a leader."""

        def created() -> bool:
            try:
                with self._admin(self.serving()[0]) as a:
                    a.create_topic(
                        name,
                        num_partitions=partitions,
                        replication_factor=replication_factor,
                        config={"fsync": "always"},
                    )
                return True
            except TopicExistsError:
                return True  # an earlier attempt that timed out went through
            except TidelogError as e:
                if e.retriable:
                    return False  # no controller elected yet
                raise

        def applied() -> bool:
            for n in self.serving():
                try:
                    with self._admin(n) as a:
                        a.describe_topic(name)
                except TidelogError:
                    return False
            return True

        eventually(created, timeout, "a controller to create the topic")
        eventually(applied, timeout, f"every broker to apply topic {name}")
        for p in range(partitions):
            self.leader(name, p, timeout)

    def controller(self, timeout: float = 30) -> int:
        """The controller (the metadata group's leader, coordinator of every group), as a
        serving broker reports it once one is elected."""

        def find() -> int | None:
            for n in self.serving():
                try:
                    with self._admin(n) as a:
                        c = a.describe_cluster().controller_id
                except TidelogError:
                    continue
                if c in self.serving():
                    return c
            return None

        return eventually(find, timeout, f"a controller (logs in {self.root})")

    def leader(self, topic: str, partition: int = 0, timeout: float = 30) -> int:
        """The partition's leader, as the leader itself reports it (the others may lag, and
        a broker holding no replica knows none)."""

        def find() -> int | None:
            for n in self.serving():
                try:
                    with self._admin(n) as a:
                        parts = a.describe_topic(topic).partitions
                except TidelogError:
                    continue  # not applied there yet, or the broker is down
                if parts[partition].leader == n:
                    return n
            return None

        return eventually(find, timeout, f"a leader of {topic}/{partition} (logs in {self.root})")


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """One broker shared by the tests that don't kill it (each test uses its own topics)."""
    with tempfile.TemporaryDirectory(prefix="tidelog-pytest-") as d:
        b = Broker(Path(d) / "data")
        yield b
        b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker for one test (which may kill and restart it)."""
    b = Broker(tmp_path / "data")
    yield b
    b.stop()


@pytest.fixture
def admin(broker: Broker) -> Iterator[AdminClient]:
    with AdminClient({"bootstrap.servers": broker.addr}) as a:
        yield a


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A 3-broker cluster for one test (which may kill its brokers)."""
    c = Cluster(tmp_path)
    yield c
    c.stop()


def read_all(addr: str, topic: str, partitions: int, expect: int, timeout: float = 20) -> list[Message]:
    """Every record of ``topic`` from offset 0, through a manually assigned consumer, until
    ``expect`` records arrived or ``timeout`` seconds passed."""
    c = Consumer({"bootstrap.servers": addr, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Message] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            out += c.consume(1000, 0.5)
    finally:
        c.close()
    return out


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic(admin: AdminClient) -> str:
    """A fresh 3-partition topic."""
    name = unique("t")
    admin.create_topic(name, num_partitions=3)
    return name


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    """An OTLP/gRPC trace receiver on a free loopback port (``otlp.endpoint``) collecting the
    spans exported to it (tests/otlp_receiver.py; imported here only when a test uses it)."""
    from otlp_receiver import OtlpReceiver

    r = OtlpReceiver()
    yield r
    r.stop()
