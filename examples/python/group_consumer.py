#!/usr/bin/env python3
"""A consumer-group member: prints every record of its assigned partitions as
``partition/offset key=K value=V`` and its assignments on stderr. Run several (Python or the
Rust example, in any mix) with the same ``--group`` to split the partitions; stop one and the
others take over. Exits after ``--idle-ms`` without records (if given), committing what it
printed and leaving the group.

    python examples/python/group_consumer.py --topic orders --group billing
"""

from __future__ import annotations

import argparse
import sys

from tidelog import Consumer, TopicPartition


def show(partitions: list[TopicPartition]) -> str:
    return "[" + ", ".join(f'("{tp.topic}", {tp.partition})' for tp in partitions) + "]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--broker", default="127.0.0.1:9690")
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--group", default="billing")
    ap.add_argument("--idle-ms", type=int, default=None, help="exit after this long without a record")
    args = ap.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.broker,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "auto.commit.interval.ms": 1000,
            "client.id": "example-python",
        }
    )
    consumer.subscribe(
        [args.topic],
        on_assign=lambda _c, ps: print(f"assigned {show(ps)}", file=sys.stderr, flush=True),
        on_revoke=lambda _c, ps: print(f"revoked {show(ps)}", file=sys.stderr, flush=True),
    )
    timeout = None if args.idle_ms is None else args.idle_ms / 1000
    try:
        while True:
            msg = consumer.poll(timeout)
            if msg is None:
                break  # idle for --idle-ms
            if msg.error():
                continue  # an event, not a record (only with enable.partition.eof)
            key = (msg.key() or b"").decode(errors="replace")
            value = (msg.value() or b"").decode(errors="replace")
            print(f"{msg.partition()}/{msg.offset()} key={key} value={value}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
