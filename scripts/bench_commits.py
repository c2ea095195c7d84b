"""Commits group offsets as fast as a cluster takes them: bench_commits.py ADDR TOPIC COUNT STREAMS.

Each of STREAMS threads keeps one Commit stream open and commits positions of its own group
(`bench-<thread>`) on the topic's partitions 0..11 in turn, at most WINDOW unanswered at a time
(as a client that waits for its commits; an unbounded pipeline only fills buffers). Prints one JSON line: commits, seconds, commits_per_s, and each group's last offsets.
Used by scripts/bench-metadata.sh.
"""

import json
import sys
import threading
import time

import grpc

sys.path.insert(0, "sdk-python/src")
from tidelog.v1 import offsets_service_pb2 as pb
from tidelog.v1 import offsets_service_pb2_grpc as pb_grpc

PARTITIONS = 12
WINDOW = 32
addr, topic, count, streams = (
    sys.argv[1],
    sys.argv[2],
    int(sys.argv[3]),
    int(sys.argv[4]),
)
last: dict[str, list[int]] = {}
errors: list[str] = []


def run(thread: int) -> None:
    group = f"bench-{thread}"
    n = count // streams
    stub = pb_grpc.OffsetServiceStub(grpc.insecure_channel(addr))
    window = threading.Semaphore(WINDOW)

    def requests():  # type: ignore[no-untyped-def]
        for i in range(n):
            window.acquire()
            yield pb.CommitRequest(
                request_id=i,
                group=group,
                topic=topic,
                offsets=[pb.PartitionOffset(partition=i % PARTITIONS, offset=i)],
            )

    answered = 0
    try:
        for answer in stub.Commit(requests()):
            window.release()
            answered += 1
            if answer.error_code:
                errors.append(f"{group}: {answer.error_message}")
                return
    except grpc.RpcError as e:
        errors.append(f"{group}: {e}")
        return
    if answered != n:
        errors.append(f"{group}: {answered} of {n} commits answered")
        return
    last[group] = [
        max(i for i in range(n) if i % PARTITIONS == p) for p in range(PARTITIONS)
    ]


start = time.time()
threads = [threading.Thread(target=run, args=(t,)) for t in range(streams)]
for t in threads:
    t.start()
for t in threads:
    t.join()
secs = time.time() - start
if errors:
    sys.exit("commit refused: " + errors[0])
done = (count // streams) * streams
print(
    json.dumps(
        {
            "commits": done,
            "seconds": round(secs, 1),
            "commits_per_s": round(done / secs),
            "last": last,
        }
    )
)
