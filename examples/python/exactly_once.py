#!/usr/bin/env python3
"""Exactly once, consume-transform-produce: reads ``--input`` as a member of ``--group``
(read_committed), writes each record transformed to ``--output`` with the same key, and commits
the consumed offsets in the same transaction as the output. Killed at any moment and started
again with the same ``--transactional-id``, it neither loses nor duplicates a record: the new
instance fences the old one and aborts its open transaction, and resumes from the offsets of
the last committed transaction. The Python twin of examples/rust/src/bin/exactly_once.rs (same
arguments, same transform: value ``v`` of input partition ``p`` at offset ``o`` becomes
``V|p:o``).

    python examples/python/exactly_once.py --input orders --output orders-upper \\
        --group upper --transactional-id upper-1
"""

from __future__ import annotations

import argparse
import sys
import time

from tidelog import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
    kafka_error,
)


def transform(m: Message) -> bytes:
    return (m.value() or b"").upper() + f"|{m.partition()}:{m.offset()}".encode()


def next_offsets(records: list[Message]) -> list[TopicPartition]:
    """Per partition the records came from: the offset after the last of them."""
    last: dict[tuple[str, int], int] = {}
    for m in records:
        tp = (m.topic() or "", m.partition() or 0)
        last[tp] = max(last.get(tp, -1), m.offset() or 0)
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(last.items())]


def rewind(consumer: Consumer) -> None:
    """After an abort: back to the group's committed offsets, so the records are read again."""
    assigned = consumer.assignment()
    if assigned:
        for tp in consumer.committed(assigned, timeout=60):
            offset = tp.offset if tp.offset is not None and tp.offset >= 0 else OFFSET_BEGINNING
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default="127.0.0.1:9690")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--transactional-id", required=True)
    ap.add_argument("--per-transaction", type=int, default=100, help="most records per transaction")
    ap.add_argument("--idle-ms", type=int, default=None, help="exit after this long without a record")
    args = ap.parse_args()

    producer = Producer({"bootstrap.servers": args.broker, "transactional.id": args.transactional_id})
    producer.init_transactions(timeout=60)
    consumer = Consumer(
        {
            "bootstrap.servers": args.broker,
            "group.id": args.group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,  # offsets are committed only in the transactions
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([args.input])
    idle_since = time.monotonic()
    try:
        while args.idle_ms is None or time.monotonic() - idle_since < args.idle_ms / 1000:
            records = [m for m in consumer.consume(args.per_transaction, timeout=0.2) if m.error() is None]
            if not records:
                continue
            idle_since = time.monotonic()
            metadata = consumer.consumer_group_metadata()
            producer.begin_transaction()
            try:
                for m in records:
                    producer.produce(args.output, transform(m), key=m.key())
                # A rebalance (or a lost group session) meanwhile: these records may be
                # another member's now.
                if consumer.consumer_group_metadata() != metadata:
                    raise KafkaException(
                        KafkaError(KafkaError._STATE, "the group rebalanced", txn_requires_abort=True)
                    )
                # The offsets of exactly these records, not the consumer's positions now
                # (which a rebalance may have moved): the next offset of each partition.
                producer.send_offsets_to_transaction(next_offsets(records), metadata)
                producer.commit_transaction()
                print(f"committed {len(records)} records", file=sys.stderr)
            except KafkaException as e:
                if kafka_error(e).fatal():
                    print(f"fenced by a newer instance: {e}", file=sys.stderr)
                    return 3
                print(
                    f"transaction failed ({e}); aborting and resuming from the committed offsets",
                    file=sys.stderr,
                )
                producer.abort_transaction()
                rewind(consumer)
    finally:
        consumer.close()
        producer.close(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
