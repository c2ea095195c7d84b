"""A broker whose disk is full (a real one: a small tmpfs) refuses batches with the retriable
STORAGE_ERROR; the producer retries them and, when it gives up, says why: a full buffer at
``produce`` and the delivery timeout of the queued records both name the broker's refusal.
Once space is freed a new producer's records are stored.

Needs permission to mount tmpfs (root, as on CI); set TIDELOG_SKIP_DISK_FULL=1 to skip it
knowingly on a machine without it (as the Rust disk-full test does)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Broker

from tidelog import AdminClient, DeliveryTimeoutError, Producer, RetriableError


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    if os.environ.get("TIDELOG_SKIP_DISK_FULL"):
        pytest.skip("TIDELOG_SKIP_DISK_FULL is set")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.fail(f"cannot mount tmpfs (need root; or set TIDELOG_SKIP_DISK_FULL=1): {out.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_retried_and_named_when_the_producer_gives_up(full_disk: Path, tmp_path: Path) -> None:
    log = tmp_path / "broker.log"  # outside the full disk
    broker = Broker(full_disk / "data", log=log)
    try:
        with AdminClient({"bootstrap.servers": broker.addr}) as admin:
            admin.create_topic("full", config={"segment.bytes": 1 << 20, "max.batch.bytes": 128 * 1024})
        ballast = full_disk / "ballast"  # deleted later to free space
        ballast.write_bytes(b"\0" * (1 << 20))

        p = Producer(
            {
                "bootstrap.servers": broker.addr,
                "linger.ms": 0,
                "compression.type": "none",
                "buffer.memory": 256 * 1024,
                "max.block.ms": 1000,
                "delivery.timeout.ms": 3000,
            }
        )
        # Records are stored until the disk fills; then the refused ones fill the buffer.
        futures = []
        with pytest.raises(RetriableError, match="buffer full") as full:
            for _ in range(1000):
                futures.append(p.produce_future("full", b"x" * 16 * 1024))
        assert "the broker keeps refusing batches of full/0: STORAGE_ERROR" in str(full.value)
        assert "No space left" in str(full.value)
        with pytest.raises(
            DeliveryTimeoutError, match="the broker's last answer: STORAGE_ERROR .*No space left"
        ):
            futures[-1].result(20)
        p.close()
        assert "No space left" in log.read_text(), "the broker's log says why produces fail"

        ballast.unlink()
        with Producer({"bootstrap.servers": broker.addr, "linger.ms": 0}) as after:
            stored = sum(1 for f in futures if f.exception(20) is None)
            assert stored > 0, "records were stored before the disk filled"
            assert after.produce_future("full", b"after").result(20).offset() == stored, "no gap, no loss"
    finally:
        broker.stop()
