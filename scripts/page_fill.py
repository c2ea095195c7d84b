#!/usr/bin/env python3
"""What one MB written into the page cache costs this machine in CPU, for the bench summaries.

    python3 scripts/page_fill.py DIR [MIB]    # prints one JSON object

Every byte a broker appends is copied into page-cache pages, and a cluster on one machine
does it once per replica. On a physical host that copy runs near memory speed; on a VM whose
host takes back the memory the guest frees (free page reporting: `/sys/module/page_reporting`),
the first touch of such a page faults in the host and costs many times more. This measures
both cases in the bench's own run, as CPU milliseconds per MB of this process:

- `fresh_ms_per_mb`: MIB MiB written into a new file (pages the kernel takes from its free
  lists, whatever the host did with them);
- `reused_ms_per_mb`: the same, right after deleting that file (the pages just freed, which
  the host has not taken back yet).

Nothing is fsynced: the figure is the write call's CPU, not the disk. The files are removed.
"""

from __future__ import annotations

import json
import os
import resource
import sys

CHUNK = 1 << 20


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_ms_per_mb(path: str, mib: int, chunk: bytes) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = cpu_s()
        for _ in range(mib):
            os.write(fd, chunk)
        spent = cpu_s() - start
    finally:
        os.close(fd)
    return 1000 * spent / (mib * CHUNK / 1e6)


def main() -> None:
    directory = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    chunk = b"\x5a" * CHUNK
    path = os.path.join(directory, "page-fill.tmp")
    try:
        fresh = write_ms_per_mb(path, mib, chunk)
        os.unlink(path)
        reused = write_ms_per_mb(path, mib, chunk)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    print(json.dumps({"mib": mib, "fresh_ms_per_mb": fresh, "reused_ms_per_mb": reused}))


if __name__ == "__main__":
    main()
