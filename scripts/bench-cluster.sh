#!/usr/bin/env bash
# Replication cost in one command (issue 4's benchmark): 1 KiB records produced to one
# partition of
#   - a single-node broker (acks=leader),
#   - a 3-broker cluster on this machine, RF=3, with acks=leader and with acks=all,
# each at full speed (throughput) and paced at a fixed rate (produce latency p50/p99 from the
# intended send time, so queueing counts). The load tool sends pre-encoded batches straight
# to the partition's leader (`tidelog bench produce`), so the figures are the brokers', not
# the SDK's routing. Every broker is a release build on loopback with its own temporary data
# directory; all of them and the load tool share this machine's cores, so the cluster figures
# include three brokers' CPU on the same two cores a single node has to itself.
#
# It reports; it never fails on a slow machine (only on a broken tool or broker). About 2-3
# minutes. Results (every run's JSON) go to target/bench/cluster.json.
#
#   scripts/bench-cluster.sh                 # everything
#   QUICK=1 scripts/bench-cluster.sh         # shorter runs (a smoke test of the script)
#   FSYNC=always scripts/bench-cluster.sh    # topics fsync every batch (default: interval)
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
FSYNC=${FSYNC:-interval}
records=$([ "$QUICK" = 1 ] && echo 20000 || echo 300000)
paced=$([ "$QUICK" = 1 ] && echo 10000 || echo 60000)
rate=${RATE:-10000}
out_dir=target/bench
mkdir -p "$out_dir"
results="$out_dir/cluster.json"
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-cluster-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

say "building the release binary"
cargo build --release -q -p tidelog-cli --bin tidelog
bin=target/release/tidelog

# wait_listening LOGFILE: the broker prints one line once it listens.
wait_listening() {
  for _ in $(seq 1 300); do grep -q listening "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "a broker did not start: $1" >&2
  exit 1
}

# serve NAME ARGS...: starts a broker in the background, stdout to $work/NAME.out.
serve() {
  local name=$1
  shift
  "$bin" serve --data-dir "$work/$name" "$@" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  wait_listening "$work/$name.out"
}

echo "{}" >"$results"
# run NAME ARGS...: one bench run (JSON), recorded under NAME.
run() {
  local name=$1
  shift
  say "$name: tidelog bench $*"
  local json
  json=$("$bin" bench "$@" --record-size 1024 --json --quiet)
  python3 scripts/bench_record.py "$results" "$name" "$json"
}

# Both shapes of run against one broker address: full speed, then paced.
measure() {
  local label=$1 broker=$2 topic=$3 acks=$4
  run "$label max" produce -b "$broker" --topic "$topic" --acks "$acks" --records "$records" \
    --batch-records 64 --in-flight 16 --duration 40
  run "$label paced" produce -b "$broker" --topic "$topic" --acks "$acks" --records "$paced" \
    --batch-records 16 --rate "$rate" --duration 40
}

# --- single node ---------------------------------------------------------------------------
port=$(free_port)
serve single --listen "127.0.0.1:$port"
"$bin" topic create bench -p 1 --fsync "$FSYNC" -b "127.0.0.1:$port" >/dev/null
measure "single node, acks=leader" "http://127.0.0.1:$port" bench leader
kill "${pids[0]}" && wait "${pids[0]}" 2>/dev/null || true
pids=()

# --- 3-broker cluster, RF=3 ----------------------------------------------------------------
ports=("$(free_port)" "$(free_port)" "$(free_port)")
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
for n in 1 2 3; do
  serve "node-$n" --node-id "$n" --listen "127.0.0.1:${ports[$((n - 1))]}" --peers "$peers"
done
first="127.0.0.1:${ports[0]}"
for _ in $(seq 1 100); do
  "$bin" topic create bench -p 1 -r 3 --fsync "$FSYNC" -b "$first" >/dev/null 2>&1 && break
  sleep 0.2
done
# The partition's leader: the broker that reports itself as leader.
leader=
for _ in $(seq 1 100); do
  leader=$("$bin" cluster describe -b "$first" 2>/dev/null | sed -n 's/^  bench\/0 leader=\([1-3]\) .*/\1/p')
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || { echo "the partition has no leader" >&2; exit 1; }
leader_addr="http://127.0.0.1:${ports[$((leader - 1))]}"
say "cluster up; partition bench/0 led by broker $leader ($leader_addr)"
measure "3 brokers RF=3, acks=leader" "$leader_addr" bench leader
measure "3 brokers RF=3, acks=all" "$leader_addr" bench all

# --- report ----------------------------------------------------------------------------------
python3 - "$results" "$FSYNC" "$rate" <<'EOF'
import json, sys
data, fsync, rate = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
base = data["single node, acks=leader max"]["mb_per_s"]
print(f"\n1 KiB records, one partition, fsync={fsync}; paced runs at {rate} records/s (16 records/batch)")
print(f"{'setup':<32} {'MB/s':>8} {'vs single':>9} {'records/s':>10} {'paced p50 ms':>12} {'p99 ms':>8} {'p99.9 ms':>8}")
for setup in ["single node, acks=leader", "3 brokers RF=3, acks=leader", "3 brokers RF=3, acks=all"]:
    m, p = data[f"{setup} max"], data[f"{setup} paced"]
    lat = p["latency"]
    print(f"{setup:<32} {m['mb_per_s']:>8.1f} {m['mb_per_s'] / base:>8.0%} {m['records_per_s']:>10.0f} "
          f"{lat['p50_us'] / 1000:>12.2f} {lat['p99_us'] / 1000:>8.2f} {lat['p999_us'] / 1000:>8.2f}")
EOF
