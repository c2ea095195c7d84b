"""Shared test support: real ``tidelog`` broker processes on free loopback ports, and helpers.

The broker binary is ``$TIDELOG_BIN`` or ``target/debug/tidelog`` of this repository (built
by the test command before the Python tests run); the Rust example binaries sit beside it.
Every wait polls with a deadline; nothing sleeps to wait for state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tidelog import AdminClient

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
    """A real broker process. ``port=0`` picks a free port; restart keeps port and data."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = data_dir
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                str(binary("tidelog")),
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                str(self.data_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = ""
        for line in self.proc.stdout:
            if "listening" in line:
                break
        else:
            pytest.fail(f"broker did not start (last output {line!r})")
        self.addr = line.split()[3].removeprefix("http://")
        self.port = int(self.addr.rsplit(":", 1)[1])
        # Keep draining stdout so the broker never blocks on a full pipe.
        out = self.proc.stdout
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


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


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic(admin: AdminClient) -> str:
    """A fresh 3-partition topic."""
    name = unique("t")
    admin.create_topic(name, num_partitions=3)
    return name
