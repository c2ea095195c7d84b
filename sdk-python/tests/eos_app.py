"""An exactly-once consume-transform-produce application, run as a separate process by
``test_transactions.py`` (which SIGKILLs it and starts it again with the same transactional id).

    python eos_app.py BOOTSTRAP INPUT OUTPUT GROUP TRANSACTIONAL_ID RECORDS_PER_TXN [PAUSE_MS]

It reads INPUT as a member of GROUP (read_committed, no auto-commit) and, per transaction,
writes each record to OUTPUT with the same key and the value upper-cased followed by
``|<partition>:<offset>`` of the input record, then commits the consumed positions in the same
transaction. ``PAUSE_MS`` is a pause inside each transaction (after producing, before
committing): the time a real application would spend working, and a window for the test to
kill it with a transaction open. On an abortable error it aborts and rewinds to the group's
committed offsets; on a fatal one (fenced by a newer instance) it exits with status 3.

It prints ``ready`` once its transactional id is initialised and ``committed <n> <total>``
after each commit, and runs until killed (or SIGTERM: it then exits 0).
"""

from __future__ import annotations

import signal
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
    value = m.value() or b""
    return value.upper() + f"|{m.partition()}:{m.offset()}".encode()


def next_offsets(records: list[Message]) -> list[TopicPartition]:
    """Per partition the records came from: the offset after the last of them."""
    last: dict[tuple[str, int], int] = {}
    for m in records:
        tp = (m.topic() or "", m.partition() or 0)
        last[tp] = max(last.get(tp, -1), m.offset() or 0)
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(last.items())]


def rewind(consumer: Consumer) -> None:
    """After an abort: back to the group's committed offsets (what the next commit moves)."""
    assigned = consumer.assignment()
    if not assigned:
        return
    for tp in consumer.committed(assigned, timeout=60):
        offset = tp.offset if tp.offset is not None and tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, offset))


def main(argv: list[str]) -> int:
    bootstrap, input_topic, output_topic, group, txn_id = argv[1:6]
    per_txn = int(argv[6])
    pause = int(argv[7]) / 1000 if len(argv) > 7 else 0.0
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)

    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 2})
    producer.init_transactions(timeout=60)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([input_topic])
    print("ready", flush=True)
    total = 0
    try:
        while not stop:
            records = [m for m in consumer.consume(per_txn, timeout=0.2) if m.error() is None]
            if not records:
                continue
            metadata = consumer.consumer_group_metadata()
            producer.begin_transaction()
            try:
                for m in records:
                    producer.produce(output_topic, transform(m), key=m.key())
                if pause:
                    time.sleep(pause)  # the application's work, inside the transaction
                # A rebalance or a lost group session meanwhile: the records may be another
                # member's now (the SDK resets the metadata when the membership goes).
                if consumer.consumer_group_metadata() != metadata:
                    rebalanced = KafkaError(
                        KafkaError._STATE, "the group rebalanced", txn_requires_abort=True
                    )
                    raise KafkaException(rebalanced)
                # The offsets of exactly these records, not the positions now (which a
                # rebalance may have moved).
                producer.send_offsets_to_transaction(next_offsets(records), metadata)
                producer.commit_transaction()
            except KafkaException as e:
                err = kafka_error(e)
                if err.fatal():
                    print(f"fatal {err}", flush=True)
                    return 3
                if not (err.txn_requires_abort() or err.retriable()):
                    raise
                print(f"aborting {err}", flush=True)
                producer.abort_transaction()
                rewind(consumer)
                continue
            total += len(records)
            print(f"committed {len(records)} {total}", flush=True)
    finally:
        consumer.close()
        producer.close(5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
