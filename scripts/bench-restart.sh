#!/usr/bin/env bash
# Restart time after a crash (docs/PERFORMANCE.md, "Restart after kill -9"): a release broker
# holding GB gigabytes over PARTITIONS partitions (1 KiB records, fsync=interval), SIGKILLed
# while a producer writes to every partition, then restarted: the time until it listens, and
# until a produce to a partition is answered. Recovery reads each partition's producer snapshot
# and the batches after the active segment's last index entry (one index interval, 4 KiB) plus
# its torn tail: the work grows with the partition count, not the data.
#
#   scripts/bench-restart.sh                      # 10 GB over 100 partitions: ~2 minutes
#   GB=2 PARTITIONS=20 scripts/bench-restart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin tidelog >&2
bin=$PWD/target/release/tidelog
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-restart.XXXXXX)
pid=
load=
cleanup() {
  [ -n "$load" ] && kill "$load" 2>/dev/null
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
gb=${GB:-10}
partitions=${PARTITIONS:-100}
records=$((gb * 1024 * 1024))
now_ms() { date +%s%3N; }

# serve: a broker on a fixed port over ./data; sets $pid and $listen_ms (until it listens).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=http://127.0.0.1:$port
serve() {
  rm -f out
  local t0
  t0=$(now_ms)
  "$bin" serve --listen "127.0.0.1:$port" --data-dir data --metrics-listen off >out 2>>err &
  pid=$!
  for _ in $(seq 1 3000); do grep -q listening out 2>/dev/null && break; sleep 0.01; done
  listen_ms=$(($(now_ms) - t0))
}

serve
"$bin" topic create fill --broker "$addr" --partitions "$partitions" >/dev/null
echo "filling: $gb GiB of 1 KiB records over $partitions partitions"
"$bin" bench produce --broker "$addr" --topic fill --partitions "$partitions" --records "$records" \
  --batch-records 256 --duration 600 --quiet --json |
  python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %.0f records/s, %.0f MB/s" % (r["records_per_s"], r["mb_per_s"]))'
du -sh data | awk '{print "  data directory: " $1}'

for round in 1 2 3; do
  # A producer writing to every partition when the broker dies.
  "$bin" bench produce --broker "$addr" --topic fill --partitions "$partitions" --records 100000000 \
    --batch-records 64 --duration 30 --quiet --json >/dev/null 2>&1 &
  load=$!
  sleep 2
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  kill "$load" 2>/dev/null || true
  wait "$load" 2>/dev/null || true
  load=
  t0=$(now_ms)
  serve
  # The first produce to the last partition that is answered.
  for _ in $(seq 1 1000); do
    printf 'after-restart\n' | "$bin" produce --broker "$addr" fill --partition $((partitions - 1)) >/dev/null 2>&1 && break
    sleep 0.01
  done
  produce_ms=$(($(now_ms) - t0))
  echo "round $round: listening after ${listen_ms} ms, a produce answered after ${produce_ms} ms (CLI start included)"
done
grep -iE "truncated|recovered|rebuilt" err | tail -3 || true
