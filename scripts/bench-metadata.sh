#!/usr/bin/env bash
# Metadata snapshots (docs/PERFORMANCE.md, "Metadata log"): COMMITS group commits into a
# 3-broker release cluster on loopback, then one broker is SIGKILLed and restarted: the time
# until it has applied the metadata log, that log's size on disk, and the broker's memory.
# Run once with snapshots (the default metadata_snapshot_bytes) and once without (a threshold
# never reached), so the second shows what a log that keeps every commit costs.
#
#   scripts/bench-metadata.sh                    # 1,000,000 commits per mode
#   COMMITS=100000 STREAMS=8 scripts/bench-metadata.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin tidelog >&2
bin=$PWD/target/release/tidelog
py=${PYTHON:-.venv/bin/python}
commits=${COMMITS:-1000000}
streams=${STREAMS:-64}
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-meta.XXXXXX)
cleanup() {
  pkill -9 -f "data-dir $work/" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

run_mode() {
  local mode=$1 snapshot_bytes=$2 dir=$work/$1 peers="" ports=()
  for n in 1 2 3; do ports[n]=$(free_port); peers+="${peers:+,}$n=127.0.0.1:${ports[n]}"; done
  start() {
    local n=$1
    # In a subshell, so this shell does not report the kills.
    ("$bin" serve --node-id "$n" --listen "127.0.0.1:${ports[n]}" --data-dir "$dir/node-$n" --peers "$peers" \
      --metrics-listen off --metadata-snapshot-bytes "$snapshot_bytes" >>"$dir/node-$n.log" 2>&1 &
      echo $! >"$dir/node-$n.pid")
  }
  mkdir -p "$dir"
  for n in 1 2 3; do start "$n"; done
  local addr=127.0.0.1:${ports[1]}
  for _ in $(seq 1 200); do "$bin" topic create bench -p 12 -b "http://$addr" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$mode: $commits commits over $streams streams"
  "$py" scripts/bench_commits.py "$addr" bench "$commits" "$streams" >"$dir/commits.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  %d commits in %.0f s: %d commits/s" % (r["commits"], r["seconds"], r["commits_per_s"]))' "$dir/commits.json"
  sleep 3 # a last snapshot, if one is due
  du -sb "$dir/node-3/cluster-meta" | awk '{printf "  metadata log on broker 3: %.1f MB\n", $1/1e6}'
  kill -9 "$(cat "$dir/node-3.pid")"
  sleep 0.5
  : >"$dir/node-3.log"
  local t0
  t0=$(now_ms)
  start 3
  for _ in $(seq 1 6000); do grep -q "cluster metadata applied from the log" "$dir/node-3.log" && break; sleep 0.01; done
  local took=$(($(now_ms) - t0))
  local rss
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$dir/node-3.pid")/status")
  local line
  line=$(grep -m1 "cluster metadata applied from the log" "$dir/node-3.log" | sed 's/.*elapsed_ms=\([0-9]*\).*/\1/')
  echo "  restart of broker 3: metadata applied ${took} ms after exec (rebuild ${line} ms), RSS $((rss / 1024)) MiB"
  # Every group's last commit is there (asked through the restarted broker).
  "$py" - "$addr" "$dir/commits.json" <<'PY'
import json, sys
import grpc
sys.path.insert(0, "sdk-python/src")
from tidelog.v1 import offsets_service_pb2 as pb, offsets_service_pb2_grpc as pb_grpc
stub = pb_grpc.OffsetServiceStub(grpc.insecure_channel(sys.argv[1]))
for group, offsets in json.load(open(sys.argv[2]))["last"].items():
    got = [o.offset for o in stub.FetchCommitted(pb.FetchCommittedRequest(group=group, topic="bench", partitions=list(range(12)))).offsets]
    assert got == offsets, (group, got, offsets)
print("  every group's last commit is there")
PY
  pkill -9 -f "data-dir $dir/" 2>/dev/null || true
  rm -rf "$dir"
}

run_mode snapshots $((16 << 20))
run_mode no-snapshots $((1 << 40))
