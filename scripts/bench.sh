#!/usr/bin/env bash
# The performance bar in one command: measures this machine's limits (loopback TCP with iperf3,
# sequential disk writes with and without fsync and the fsync rate with fio, in the broker's
# data filesystem; the CPU a MB written into the page cache costs, scripts/page_fill.py), builds the release broker, runs `tidelog bench` produce / consume / e2e /
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

say "page-cache fill: CPU per MB into fresh pages and into pages freed just before"
record page_fill "$(python3 scripts/page_fill.py "$work")"

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

# drop TOPIC...: deletes topics no later run reads. Every produce run then writes into
# page-cache pages freed just before it (as `produce` does into the ones fio freed) and finds
# no earlier run's data still being written back. On this VM the first touch of pages the
# guest has not used lately runs at the host's page-fault speed: without this, the SDK produce
# run gave half and the fsync=always SDK run a third of what each gives on its own
# (PERFORMANCE.md, "Runs in one script: earlier runs' pages").
drop() { "$bin" topic delete --broker "http://$addr" "$@" >/dev/null; }

if [ "$QUICK" = 1 ]; then n=200000 e2e_n=30000 fs_n=20000 py_n=50000; else n=2000000 e2e_n=150000 fs_n=150000 py_n=200000; fi
common=(--record-size 1024 --acks leader --fsync interval --duration 30)
bench produce produce --topic p1 --records "$n" --batch-records 256 "${common[@]}"
bench produce_2x2 produce --topic p2 --partitions 2 --producers 2 --records "$n" --batch-records 256 "${common[@]}"
drop p2
# Through the SDK producer as an application sends: record by record, idempotent, acks=all.
bench produce_sdk produce --sdk --topic s1 --records "$n" --batch-records 1000 --record-size 1024 --acks all \
  --fsync interval --duration 30
drop s1
# Reads what `produce` wrote (no pre-fill needed; it is in the page cache). 1 MiB responses
# (the broker's default): 8 MiB ones are slower here (fresh pages per buffer; PERFORMANCE.md).
bench consume consume --topic p1 --records "$n" --max-bytes 1048576 "${common[@]}"
bench consume_decode consume --topic p1 --records "$n" --max-bytes 1048576 --decode "${common[@]}"
# As an application reads: record by record from the SDK's Subscription stream.
bench consume_sdk consume --sdk --topic p1 --records "$n" --max-bytes 1048576 "${common[@]}"
bench consume_sdk_4x4 consume --sdk --topic c4 --partitions 4 --consumers 4 --records "$n" --max-bytes 1048576 \
  "${common[@]}"
drop p1 c4
bench e2e e2e --topic e1 --rate 10000 --records "$e2e_n" --batch-records 1 --warmup 2 "${common[@]}"
bench e2e_sdk e2e --topic e2 --rate 10000 --records "$e2e_n" --sdk --linger-ms 0 --warmup 2 "${common[@]}"
drop e1 e2
# fsync=always: small batches from 4 concurrent producers on one partition share fsyncs.
bench fsync_always_16 produce --topic f1 --producers 4 --records "$fs_n" --batch-records 16 --in-flight 32 \
  --record-size 1024 --acks all --fsync always --duration 30
drop f1
bench fsync_always_256 produce --topic f2 --producers 4 --records "$((fs_n * 4))" --batch-records 256 \
  --in-flight 8 --record-size 1024 --acks all --fsync always --duration 30
drop f2
bench fsync_always_sdk produce --sdk --topic f3 --producers 4 --records "$((fs_n * 4))" --batch-records 1000 \
  --record-size 1024 --acks all --fsync always --duration 30
drop f3

# The Python SDK's client CPU per record (its process's user + system time), 1 KiB and 100 B.
py=.venv/bin/python
[ -x "$py" ] || py=python3
for size in 1024 100; do
  say "python SDK, $size B records: sdk-python/bench/bench.py"
  if json=$(PYTHONPATH=sdk-python/src "$py" sdk-python/bench/bench.py --broker "$addr" --records "$py_n" \
    --record-size "$size" --json); then
    record "python_$size" "$json"
  else
    echo "the Python bench did not run (scripts/tools.sh sets up .venv)" >&2
  fi
done
kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
broker_pid=

# Restart after kill -9 under load: GB over 100 partitions (10 by default; QUICK: 1).
restart_gb=${RESTART_GB:-$([ "$QUICK" = 1 ] && echo 1 || echo 10)}
say "restart: $restart_gb GB over 100 partitions, kill -9 under load (scripts/bench-restart.sh)"
GB=$restart_gb PARTITIONS=100 scripts/bench-restart.sh | tee "$work/restart.txt" >&2
record restart "$(python3 -c '
import json, re, sys
t = open(sys.argv[1]).read()
listen = [int(x) for x in re.findall(r"listening after (\d+) ms", t)]
answer = [int(x) for x in re.findall(r"a produce answered after (\d+) ms", t)]
print(json.dumps({"gb": float(sys.argv[2]), "listen_ms": listen, "produce_ms": answer}))' "$work/restart.txt" "$restart_gb")"

# --- summary -------------------------------------------------------------------------------
python3 scripts/bench_summary.py "$results"
