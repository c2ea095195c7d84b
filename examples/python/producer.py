#!/usr/bin/env python3
"""Produce ``--count`` keyed records to a topic (created if missing) and report deliveries.

python examples/python/producer.py --topic orders --count 1000
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from tidelog import AdminClient, Message, Producer, TidelogError, TopicExistsError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--broker", default="127.0.0.1:9690")
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--count", type=int, default=1000)
    args = ap.parse_args()

    with AdminClient({"bootstrap.servers": args.broker}) as admin, contextlib.suppress(TopicExistsError):
        admin.create_topic(args.topic, num_partitions=args.partitions)

    failed = 0

    def on_delivery(err: TidelogError | None, msg: Message) -> None:
        nonlocal failed
        if err is not None:
            failed += 1
            print(f"delivery failed: {err}", file=sys.stderr)

    with Producer({"bootstrap.servers": args.broker, "client.id": "example-producer"}) as producer:
        for i in range(args.count):
            producer.produce(args.topic, f"order {i}", key=f"customer-{i % 10}", on_delivery=on_delivery)
            producer.poll(0)  # serve delivery callbacks as we go
        left = producer.flush(30)
    ok = args.count - failed - left
    print(f"produced {ok} records to {args.topic} ({failed} failed, {left} unconfirmed)")
    return 1 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main())
