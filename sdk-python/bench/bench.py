#!/usr/bin/env python3
"""Python SDK throughput: produce then consume ``--records`` records of ``--record-size``
bytes against a running broker, and print records/s, MB/s and this process's CPU time per
record (user + system, all its threads: the client's cost) for each (``--json`` for
machines). Bounded by count and ``--max-seconds``. Compare with the Rust SDK on the same
broker: ``tidelog bench produce --sdk`` and ``tidelog bench consume`` (docs/PERFORMANCE.md).

    python sdk-python/bench/bench.py --broker 127.0.0.1:9690 --records 200000 --record-size 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from tidelog import AdminClient, Consumer, Producer, TopicPartition


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--broker", default="127.0.0.1:9690")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--acks", default="all")
    ap.add_argument("--compression", default="none")
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256 * 1024)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--poll", action="store_true", help="consume with poll(1.0), one record per call")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    topic = f"pybench-{uuid.uuid4().hex[:8]}"
    with AdminClient({"bootstrap.servers": args.broker}) as admin:
        admin.create_topic(topic, num_partitions=args.partitions)
    value = b"x" * args.record_size
    producer = Producer(
        {
            "bootstrap.servers": args.broker,
            "acks": args.acks,
            "compression.type": args.compression,
            "linger.ms": args.linger_ms,
            "batch.size": args.batch_size,
        }
    )
    deadline = time.monotonic() + args.max_seconds
    start, cpu = time.monotonic(), time.process_time()
    sent = 0
    while sent < args.records and time.monotonic() < deadline:
        for _ in range(1000):
            producer.produce(topic, value)
        sent += 1000
    left = producer.flush(max(1.0, deadline - time.monotonic()))
    produce_s = time.monotonic() - start
    produce_cpu = time.process_time() - cpu
    producer.close()
    acked = sent - left

    consumer = Consumer({"bootstrap.servers": args.broker, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(args.partitions)])
    start, cpu = time.monotonic(), time.process_time()
    got = 0
    limit = deadline + args.max_seconds
    if args.poll:  # as most confluent-kafka applications read: one record per call
        while got < acked and time.monotonic() < limit:
            for _ in range(10_000):
                msg = consumer.poll(1.0)
                if msg is not None and msg.error() is None:
                    got += 1
                if got >= acked:
                    break
    else:
        while got < acked and time.monotonic() < limit:
            got += len(consumer.consume(10_000, 1.0))
    consume_s = time.monotonic() - start
    consume_cpu = time.process_time() - cpu
    consumer.close()

    mb = args.record_size / 1e6
    result = {
        "records": acked,
        "record_size": args.record_size,
        "produce_records_per_s": round(acked / produce_s),
        "produce_mb_per_s": round(acked * mb / produce_s, 1),
        "consume_records_per_s": round(got / consume_s),
        "consume_mb_per_s": round(got * mb / consume_s, 1),
        "produce_cpu_us_per_record": round(produce_cpu / max(acked, 1) * 1e6, 2),
        "consume_cpu_us_per_record": round(consume_cpu / max(got, 1) * 1e6, 2),
        "consume_by": "poll" if args.poll else "consume",
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    return 0 if got == acked == args.records else 1


if __name__ == "__main__":
    sys.exit(main())
