#!/usr/bin/env bash
# The performance bar in one command: measures this machine's limits (loopback TCP with iperf3,
# sequential disk writes with and without fsync and the fsync rate with fio, in the broker's
# data filesystem), builds the release broker, runs `tidelog bench` produce / consume / e2e /
# fsync=always against it over loopback, and prints each figure as a fraction of its limit
# next to the target from docs/PERFORMANCE.md.
#
# It reports; it never fails on a slow machine (only on a broken tool or broker). About 3-4
# minutes. Results (every run's JSON) go to target/bench/results.json.
#
#   scripts/bench.sh              # everything
#   QUICK=1 scripts/bench.sh      # shorter runs (a smoke test of the script, figures noisier)
#   BENCH_DIR=/mnt/x scripts/bench.sh   # data dir on another filesystem (default: /tmp)
#   BROKER_BIN=/path/to/old/tidelog scripts/bench.sh   # serve with another build (before/after);
#                                 # the load tool is still this tree's target/release/tidelog
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
out_dir=target/bench
mkdir -p "$out_dir"
results="$out_dir/results.json"
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-bench.XXXXXX)
broker_pid=
iperf_pid=
cleanup() {
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  [ -n "$iperf_pid" ] && kill "$iperf_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- tools -------------------------------------------------------------------------------
missing=()
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v fio >/dev/null || missing+=(fio)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} (apt-get)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >&2 ||
      echo "could not install ${missing[*]}: those limits are skipped" >&2
  else
    echo "missing ${missing[*]} and not root: those limits are skipped" >&2
  fi
fi

echo "{}" >"$results"
# record NAME JSON: adds one result to $results.
record() { python3 scripts/bench_record.py "$results" "$1" "$2"; }

record machine "$(python3 -c '
import json, os
print(json.dumps({"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
                  "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}))')"

# --- machine limits ----------------------------------------------------------------------
secs=$([ "$QUICK" = 1 ] && echo 2 || echo 5)
if command -v iperf3 >/dev/null; then
  say "loopback TCP bandwidth (iperf3, ${secs} s)"
  port=$(free_port)
  iperf3 -s -p "$port" >/dev/null 2>&1 &
  iperf_pid=$!
  ok=
  for _ in $(seq 1 20); do
    sleep 0.25
    iperf3 -c 127.0.0.1 -p "$port" -t "$secs" -J >"$work/iperf.json" 2>/dev/null && ok=1 && break
  done
  kill "$iperf_pid" 2>/dev/null || true
  iperf_pid=
  [ -n "$ok" ] || { echo "iperf3 did not run" >&2; exit 1; }
  record loopback "$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(json.dumps({"mb_per_s": d["end"]["sum_received"]["bits_per_second"] / 8 / 1e6}))' "$work/iperf.json")"
fi

if command -v fio >/dev/null; then
  mkdir -p "$work/fio"
  size=$([ "$QUICK" = 1 ] && echo 256M || echo 1G)
  fio_bw() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]["write"]; print(json.dumps({"mb_per_s": j["bw_bytes"]/1e6, "iops": j["iops"]}))' "$1"; }
  say "disk: sequential write, 1 MiB blocks, $size, fsync at the end (fio)"
  fio --name=seq --directory="$work/fio" --rw=write --bs=1M --size="$size" --ioengine=psync --end_fsync=1 \
    --output-format=json >"$work/fio1.json"
  record disk_write "$(fio_bw "$work/fio1.json")"
  rm -f "$work"/fio/*
  say "disk: sequential write, 256 KiB blocks, fdatasync after each (fio, ${secs} s)"
  fio --name=seqsync --directory="$work/fio" --rw=write --bs=256k --size=1G --ioengine=psync --fdatasync=1 \
    --runtime="$secs" --output-format=json >"$work/fio2.json"
  record disk_write_fsync "$(fio_bw "$work/fio2.json")"
  rm -f "$work"/fio/*
  say "disk: fsync rate, 4 KiB writes, fdatasync after each (fio, ${secs} s)"
  fio --name=fsyncrate --directory="$work/fio" --rw=write --bs=4k --size=256M --ioengine=psync --fdatasync=1 \
    --runtime="$secs" --time_based --output-format=json >"$work/fio3.json"
  record fsync_rate "$(fio_bw "$work/fio3.json")"
  rm -rf "$work/fio"
fi

# --- the broker ----------------------------------------------------------------------------
say "building the release broker"
cargo build --release --bin tidelog >&2
bin=target/release/tidelog
"${BROKER_BIN:-$bin}" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/broker.out" 2>"$work/broker.err" &
broker_pid=$!
for _ in $(seq 1 100); do grep -q listening "$work/broker.out" 2>/dev/null && break; sleep 0.1; done
addr=$(grep -o '127\.0\.0\.1:[0-9]*' "$work/broker.out" | head -1)
[ -n "$addr" ] || { echo "broker did not start"; cat "$work/broker.err"; exit 1; }

# bench NAME ARGS...: one `tidelog bench` run, progress on stderr, result recorded.
bench() {
  local name=$1
  shift
  say "$name: tidelog bench $*"
  local json
  json=$("$bin" bench "$@" --broker "http://$addr" --json)
  record "$name" "$json"
}

if [ "$QUICK" = 1 ]; then n=200000 e2e_n=30000 fs_n=20000; else n=2000000 e2e_n=150000 fs_n=150000; fi
common=(--record-size 1024 --acks leader --fsync interval --duration 30)
bench produce produce --topic p1 --records "$n" --batch-records 256 "${common[@]}"
bench produce_2x2 produce --topic p2 --partitions 2 --producers 2 --records "$n" --batch-records 256 "${common[@]}"
# Reads what `produce` wrote (no pre-fill needed; it is in the page cache). 1 MiB responses
# (the broker's default): 8 MiB ones are slower here (fresh pages per buffer; PERFORMANCE.md).
bench consume consume --topic p1 --records "$n" --max-bytes 1048576 "${common[@]}"
bench consume_decode consume --topic p1 --records "$n" --max-bytes 1048576 --decode "${common[@]}"
bench e2e e2e --topic e1 --rate 10000 --records "$e2e_n" --batch-records 1 --warmup 2 "${common[@]}"
bench e2e_sdk e2e --topic e2 --rate 10000 --records "$e2e_n" --sdk --linger-ms 0 --warmup 2 "${common[@]}"
# fsync=always: small batches from 4 concurrent producers on one partition share fsyncs.
bench fsync_always_16 produce --topic f1 --producers 4 --records "$fs_n" --batch-records 16 --in-flight 32 \
  --record-size 1024 --acks all --fsync always --duration 30
bench fsync_always_256 produce --topic f2 --producers 4 --records "$((fs_n * 4))" --batch-records 256 \
  --in-flight 8 --record-size 1024 --acks all --fsync always --duration 30

# --- summary -------------------------------------------------------------------------------
python3 - "$results" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
def get(*keys):
    d = r
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d
loop = get("loopback", "mb_per_s")
disk = get("disk_write", "mb_per_s")
dsync = get("disk_write_fsync", "mb_per_s")
fsyncs = get("fsync_rate", "iops")
m = r["machine"]
print(f"\nmachine: {m['cpus']} CPUs, {m['mem_gib']} GiB, load average at start {m['loadavg_at_start'][0]:.2f}")
def f(x, unit=""): return "-" if x is None else f"{x:,.0f}{unit}"
print(f"limits: loopback {f(loop,' MB/s')} | disk write {f(disk,' MB/s')} | disk write, fdatasync per 256 KiB {f(dsync,' MB/s')} | fsyncs/s (4 KiB) {f(fsyncs)}")
rows = []
def row(name, figure, unit, limit_name, limit, target=None, ok=None):
    ratio = None if figure is None or not limit else figure / limit
    verdict = "" if ok is None else ("met" if ok else "MISSED")
    if target is not None and ratio is not None and ok is None:
        verdict = "met" if ratio >= target else "MISSED"
    rows.append((name, figure, unit, limit_name, ratio, "" if target is None else f">= {target:.0%}", verdict))
prod_limit = min(x for x in (loop, disk) if x) if (loop or disk) else None
for k, label in (("produce", "produce 1 KiB, 1x1, acks=leader"), ("produce_2x2", "produce 1 KiB, 2 producers x 2 partitions")):
    row(label, get(k, "mb_per_s"), "MB/s", "min(loopback, disk)", prod_limit, 0.5 if k == "produce" else None)
row("consume (count from headers)", get("consume", "mb_per_s"), "MB/s", "loopback", loop, 0.6)
row("consume (decode every record)", get("consume_decode", "mb_per_s"), "MB/s", "loopback", loop)
for k in ("fsync_always_16", "fsync_always_256"):
    rec = get(k, "records_per_s")
    bpb = get(k, "batch_records")
    row(f"fsync=always, {bpb}/batch, 4 producers", get(k, "mb_per_s"), "MB/s", "disk write w/ fdatasync", dsync)
    if rec and fsyncs:
        rows.append((f"  = batches/s vs fsyncs/s (>1: group commit)", rec / bpb, "batches/s", "fsyncs/s", rec / bpb / fsyncs, "", ""))
print(f"\n{'run':<44} {'figure':>14} {'limit':<24} {'fraction':>9} {'target':>8} {'':>6}")
for name, fig, unit, lname, ratio, target, verdict in rows:
    fig_s = "-" if fig is None else f"{fig:,.0f} {unit}"
    print(f"{name:<44} {fig_s:>14} {lname:<24} {'-' if ratio is None else f'{ratio:.1%}':>9} {target:>8} {verdict:>6}")
print(f"\n{'e2e at 10,000 records/s (µs)':<44} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}  target p99 <= 2000, p99.9 <= 5000")
for k, label in (("e2e", "raw, 1 record/batch"), ("e2e_sdk", "SDK producer, linger 0")):
    l = get(k, "latency")
    if l:
        ok = l["p99_us"] <= 2000 and l["p999_us"] <= 5000
        print(f"{label:<44} {l['p50_us']:>7} {l['p90_us']:>7} {l['p99_us']:>7} {l['p999_us']:>7} {l['max_us']:>7}  {'met' if ok else 'MISSED'}")
for k in ("produce", "fsync_always_16", "fsync_always_256"):
    l = get(k, "latency")
    if l:
        print(f"{k + ' batch ack (µs)':<44} {l['p50_us']:>7} {l['p90_us']:>7} {l['p99_us']:>7} {l['p999_us']:>7} {l['max_us']:>7}")
print(f"\nall results: {sys.argv[1]}")
EOF
