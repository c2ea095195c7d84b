"""Adds one named result (a JSON value) to a bench results file:

    bench_record.py FILE NAME JSON [EXTRA]

EXTRA, a JSON object, is merged into the value (e.g. the CPU a run used). Shared by
scripts/bench.sh and scripts/bench-cluster.sh.
"""

import json
import sys

path, name, value = sys.argv[1], sys.argv[2], sys.argv[3]
with open(path) as f:
    data = json.load(f)
record = json.loads(value)
if len(sys.argv) > 4:
    record.update(json.loads(sys.argv[4]))
data[name] = record
with open(path, "w") as f:
    json.dump(data, f, indent=1)
