"""A confluent-kafka program, written as its README and examples write one: create a topic
with the AdminClient's futures, produce with delivery callbacks and poll/flush, consume in a
poll loop that checks msg.error() (partition EOF included), commit, close.

It runs against Tidelog with only its import lines changed (test_confluent_script.py does
that); every loop is bounded, so a broken client fails it instead of hanging it.

    python confluent_script.py BOOTSTRAP TOPIC GROUP COUNT
"""

import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

# ---- admin: create the topic, wait for the result --------------------------------------------
admin = AdminClient({"bootstrap.servers": bootstrap})
fs = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
for t, f in fs.items():
    try:
        f.result()  # The result itself is None
        print(f"Topic {t} created")
    except KafkaException as e:
        if e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            print(f"Topic {t} already exists")
        else:
            print(f"Failed to create topic {t}: {e}")
            sys.exit(1)

md = admin.list_topics(timeout=10)
print(f"Topic {topic} has {len(md.topics[topic].partitions)} partitions")

# ---- producer ---------------------------------------------------------------------------------
p = Producer({"bootstrap.servers": bootstrap, "client.id": "confluent-script"})


def delivery_report(err, msg):
    """Called once for each message produced to indicate delivery result.
    Triggered by poll() or flush()."""
    if err is not None:
        print(f"Message delivery failed: {err}")
    else:
        print(f"Message delivered to {msg.topic()} [{msg.partition()}]")


for i in range(count):
    # Trigger any available delivery report callbacks from previous produce() calls
    p.poll(0)
    data = f"message {i}"
    try:
        p.produce(topic, data.encode("utf-8"), key=str(i % 5), callback=delivery_report)
    except BufferError:
        print(f"Local producer queue is full ({len(p)} messages awaiting delivery): try again")
        p.poll(1)
p.produce(topic, value=None, key="deleted", on_delivery=delivery_report)  # a tombstone

# Wait for any outstanding messages to be delivered and delivery report callbacks to be triggered.
remaining = p.flush(30)
print(f"{remaining} messages were not delivered")

# ---- consumer ---------------------------------------------------------------------------------
c = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "enable.auto.commit": False,
    }
)


def print_assignment(consumer, partitions):
    print(f"Assignment: {sorted(p.partition for p in partitions)}")


c.subscribe([topic], on_assign=print_assignment)

received = 0
at_end = set()
deadline = time.time() + 60
try:
    while time.time() < deadline:
        msg = c.poll(timeout=1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                # End of partition event
                at_end.add(msg.partition())
                if received == count + 1 and len(at_end) == 3:
                    break
                continue
            raise KafkaException(msg.error())
        at_end.discard(msg.partition())
        received += 1
        if msg.value() is None:
            print("Received tombstone for key {}".format(msg.key().decode("utf-8")))
        else:
            print("Received message: {}".format(msg.value().decode("utf-8")))
    committed = c.commit(asynchronous=False)
    print(f"Committed {sum(tp.offset for tp in committed)} records")
finally:
    # Close down consumer to commit final offsets.
    c.close()

print(f"Done: received {received} of {count + 1}")
