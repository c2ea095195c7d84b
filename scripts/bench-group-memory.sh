#!/usr/bin/env bash
# Memory per partition replica (docs/PERFORMANCE.md, "Memory per partition"): a fresh 3-broker
# release cluster on loopback, one topic of PARTITIONS partitions (default 100) with RF=3, and
# each broker's resident memory (VmRSS)
#   - once it listens (the broker's base),
#   - once every partition has a leader and the groups went to sleep (idle replicas),
#   - after WRITES (default 10,000) single-record batches per partition through the SDK
#     producer (acks=all), and again after the groups went to sleep (written replicas).
# Reported per replica: (RSS - base) / PARTITIONS, every broker holding one replica of each
# partition. A written replica costs more than an idle one: openraft's per-group queues are
# ring buffers sized up front (docs/PERFORMANCE.md), whose pages are touched as the ring turns.
# Every wait is bounded (WAIT seconds, default 120). Prints one JSON object on stdout
# (progress on stderr); used by scripts/bench-cluster.sh.
#
#   scripts/bench-group-memory.sh
#   PARTITIONS=20 WRITES=2000 scripts/bench-group-memory.sh
#   BROKER_BIN=/tmp/tidelog-before scripts/bench-group-memory.sh   # another build, not rebuilt
set -euo pipefail
cd "$(dirname "$0")/.."

partitions=${PARTITIONS:-100}
writes=${WRITES:-10000}
wait_s=${WAIT:-120}
if [ -n "${BROKER_BIN:-}" ]; then
  bin=$BROKER_BIN
else
  cargo build --release -q -p tidelog-cli --bin tidelog
  bin=$PWD/target/release/tidelog
fi
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-memory.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '== %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# rss_kb: every broker's VmRSS in KiB, space-separated.
rss_kb() { for p in "${pids[@]}"; do awk '/VmRSS/ {printf "%d ", $2}' "/proc/$p/status"; done; }
# asleep: whether no partition group is awake on any broker (tidelog_raft_groups).
asleep() {
  local port
  for port in "${metrics[@]}"; do
    curl -s -m 5 "http://127.0.0.1:$port/metrics" |
      awk '/^tidelog_raft_groups\{state="awake"\}/ { awake = $2; found = 1 } END { exit !(found && awake == 0) }' || return 1
  done
}
wait_for() {
  local what=$1
  shift
  local deadline=$((SECONDS + wait_s))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $what" >&2; exit 1; }
    sleep 0.5
  done
}
led() {
  local n
  n=$(timeout 20 "$bin" cluster describe -b "127.0.0.1:${ports[0]}" 2>/dev/null | grep -c '^  mem/[0-9]* leader=[1-3]' || true)
  [ "$n" -ge "$partitions" ]
}

ports=("$(free_port)" "$(free_port)" "$(free_port)")
metrics=("$(free_port)" "$(free_port)" "$(free_port)")
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
for n in 1 2 3; do
  "$bin" serve --node-id "$n" --listen "127.0.0.1:${ports[$((n - 1))]}" --data-dir "$work/node-$n" \
    --peers "$peers" --metrics-listen "127.0.0.1:${metrics[$((n - 1))]}" \
    >"$work/node-$n.out" 2>"$work/node-$n.log" &
  pids+=($!)
done
for n in 1 2 3; do wait_for "broker $n to listen" grep -q listening "$work/node-$n.out"; done
base=$(rss_kb)

say "creating $partitions partitions, RF=3"
"$bin" topic create mem -p "$partitions" -r 3 -b "127.0.0.1:${ports[0]}" >/dev/null
wait_for "every partition to have a leader" led
wait_for "the groups to sleep" asleep
idle=$(rss_kb)

say "$writes single-record batches per partition (SDK, acks=all)"
"$bin" bench produce -b "127.0.0.1:${ports[0]}" --topic mem --sdk --partitions "$partitions" --acks all \
  --linger-ms 0 --batch-records 1 --record-size 100 --records $((partitions * writes)) >/dev/null
written=$(rss_kb)
wait_for "the groups to sleep" asleep
written_asleep=$(rss_kb)

python3 - "$partitions" "$writes" "$base" "$idle" "$written" "$written_asleep" <<'EOF'
import json, sys
partitions, writes = int(sys.argv[1]), int(sys.argv[2])
base, idle, written, asleep = ([int(x) for x in a.split()] for a in sys.argv[3:7])
per = lambda after: [round((a - b) / partitions, 1) for a, b in zip(after, base)]
print(json.dumps({
    "partitions": partitions,
    "writes_per_partition": writes,
    "base_rss_mb": [round(b / 1024, 1) for b in base],
    "idle_kb_per_replica": per(idle),
    "written_kb_per_replica": per(written),
    "written_asleep_kb_per_replica": per(asleep),
}))
EOF
