#!/usr/bin/env bash
# What the log cleaner does and costs (docs/PERFORMANCE.md, "Compaction"), against a release
# broker on loopback (fsync=interval), 1 KiB keyed records:
#   1. cleaner throughput: RECORDS records over KEYS keys written to a compacted topic with 64 MiB
#      segments while the cleaner waits, then one pass on a restarted broker: MB/s of log read
#      (and written), next to this disk's sequential write rate (dd, fdatasync);
#   2. the effect of a running cleaner on produce: a raw producer on another topic, unpaced
#      (throughput) and paced at 20,000 records/s (ack latency), while a background producer
#      rewrites a compacted topic at 20 MB/s; with the cleaner idle, running, and throttled to
#      20 MB/s.
#
#   scripts/bench-compaction.sh            # about 4 minutes after the build
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin tidelog >&2
bin=$PWD/target/release/tidelog
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-compact.XXXXXX)
pid=
bg=
cleanup() {
  [ -n "$bg" ] && kill "$bg" 2>/dev/null
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
records=${RECORDS:-500000}
keys=${KEYS:-50000}
json() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }

stop() { [ -n "$pid" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }; pid=; }
# serve ARGS...: a broker on a free port over ./data (kept between calls); sets $addr, $pid.
serve() {
  stop
  rm -f out
  "$bin" serve --listen 127.0.0.1:0 --data-dir data --metrics-listen off "$@" >out 2>>err &
  pid=$!
  for _ in $(seq 1 100); do grep -q listening out 2>/dev/null && break; sleep 0.1; done
  addr=http://$(awk '{print $4}' out)
}
compacted() {
  "$bin" topic create "$1" --broker "$addr" --cleanup-policy compact --segment-bytes $((64 << 20)) \
    --min-cleanable-dirty-ratio 0.01 >/dev/null
}
bench() { "$bin" bench "$@" --broker "$addr" --quiet --json; }

echo "== 1. cleaner throughput: $records records of 1 KiB over $keys keys, one pass"
rm -rf data err
serve --cleaner-interval-ms 3600000
compacted table
bench produce --topic table --records "$records" --keys "$keys" --batch-records 256 --duration 120 >/dev/null
serve --cleaner-interval-ms 100
for _ in $(seq 1 600); do grep -q ' compacted ' err && break; sleep 0.1; done
grep ' compacted ' err | head -1 | python3 -c '
import re, sys
f = {k: int(v) for k, v in re.findall(r"(bytes_read|bytes_written|records_removed|ms)=(\d+)", sys.stdin.read())}
read, wrote, secs = f["bytes_read"] / 1e6, f["bytes_written"] / 1e6, f["ms"] / 1000
print("read %.0f MB, wrote %.0f MB, removed %d records in %d ms: %.0f MB/s read, %.0f MB/s written"
      % (read, wrote, f["records_removed"], f["ms"], read / secs, wrote / secs))'
disk=$(dd if=/dev/zero of=ddtest bs=1M count=512 conv=fdatasync 2>&1 | awk '/copied/ {print $(NF-1), $NF}')
rm -f ddtest
echo "this disk: sequential write $disk (dd, 512 MiB, fdatasync)"

echo
echo "== 2. produce next to a working cleaner (background: keyed rewrites at 20 MB/s)"
printf '%-6s %-12s %12s %9s %12s %12s %16s\n' round cleaner records/s MB/s p50_us p99_us "cleaned MB/s"
for run in "1 idle" "1 running" "1 throttled" "2 throttled" "2 running" "2 idle"; do
  read -r round mode <<<"$run"
  stop
  rm -rf data err
  case $mode in
    idle) serve --cleaner-interval-ms 3600000 ;;
    running) serve --cleaner-interval-ms 100 ;;
    throttled) serve --cleaner-interval-ms 100 --cleaner-io-bytes-per-sec 20000000 ;;
  esac
  compacted table
  # The compacted topic is rewritten in the background for the whole measurement.
  "$bin" bench produce --broker "$addr" --quiet --json --topic table --keys "$keys" --records 10000000 \
    --rate 20000 --duration 60 >/dev/null &
  bg=$!
  sleep 8 # dirty data for the cleaner
  t=$(bench produce --topic load --records 3000000 --duration 10 --batch-records 256 |
    json "'%.0f %.1f' % (r['records_per_s'], r['mb_per_s'])")
  l=$(bench produce --topic paced --records 200000 --duration 10 --rate 20000 --batch-records 64 |
    json "'%d %d' % (r['latency']['p50_us'], r['latency']['p99_us'])")
  kill "$bg" 2>/dev/null; wait "$bg" 2>/dev/null || true; bg=
  cleaned=$({ grep ' compacted ' err || true; } | python3 -c '
import re, sys
r = [(int(a), int(b)) for a, b in re.findall(r"bytes_read=(\d+).*? ms=(\d+)", sys.stdin.read())]
print("%.0f (%d passes)" % (sum(a for a, _ in r) / 1e6 / max(sum(b for _, b in r) / 1000, 1e-9), len(r)) if r else "-")')
  read -r rps mbps <<<"$t"
  read -r p50 p99 <<<"$l"
  printf '%-6s %-12s %12s %9s %12s %12s %16s\n' "$round" "$mode" "$rps" "$mbps" "$p50" "$p99" "$cleaned"
done
