#!/usr/bin/env bash
# Replication cost and partition scale in one command: 1 KiB records produced to
#   - a single-node broker, and
#   - a 3-broker cluster on this machine, RF=3,
# first with pre-encoded batches straight to one partition's leader (`tidelog bench produce`,
# acks=leader and acks=all: the brokers' figures, full speed and paced at RATE), then through
# the SDK producer as an application sends (`--sdk`, acks=all, idempotent; 1 and 8
# partitions, full speed, and paced at half of the cluster's 1-partition figure). Then the
# scale phase (scripts/bench-scale.sh): SCALE_PARTITIONS (10,000; QUICK: 1,000) partitions
# created on a fresh 3-broker cluster, its idle CPU, and a broker SIGKILLed and restarted; and
# the memory phase (scripts/bench-group-memory.sh): each broker's memory per partition replica,
# idle and once written to.
# The table at the end prints every replication and scale target of docs/PERFORMANCE.md with
# its figure, fraction and met / MISSED. Every broker is a release build on loopback with its own temporary data
# directory; all of them and the load tool share this machine's cores, so the cluster figures
# include three brokers' CPU on the same two cores a single node has to itself.
#
# It reports; it never fails on a slow machine (only on a broken tool or broker). About 8-12
# minutes (the scale phase is bounded by SCALE_WAIT seconds per step). Results (every run's JSON) go to target/bench/cluster.json.
#
#   scripts/bench-cluster.sh                 # everything
#   QUICK=1 scripts/bench-cluster.sh         # shorter runs (a smoke test of the script)
#   FSYNC=always scripts/bench-cluster.sh    # topics fsync every batch (default: interval)
#   SCALE_PARTITIONS=0 scripts/bench-cluster.sh   # without the scale phase
#   MEMORY_PARTITIONS=0 scripts/bench-cluster.sh  # without the memory phase
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

# broker_ticks: the running brokers' CPU so far, in clock ticks (/proc/PID/stat; the kernel
# keeps a process's time exactly, unlike the machine's tick-sampled /proc/stat, which on this
# VM missed most of a paced run's short bursts).
broker_ticks() {
  local ticks=0 p
  for p in "${pids[@]}"; do
    [ -r "/proc/$p/stat" ] && ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$ticks"
}

# run NAME ARGS...: one bench run (JSON), recorded under NAME with the brokers' CPU seconds
# during it (the load tool's start-up included).
run() {
  local name=$1
  shift
  say "$name: tidelog bench $*"
  local json ticks
  ticks=$(broker_ticks)
  json=$("$bin" bench "$@" --record-size 1024 --json --quiet)
  ticks=$(($(broker_ticks) - ticks))
  python3 scripts/bench_record.py "$results" "$name" "$json" \
    "{\"brokers_cpu_s\": $(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }')}"
}

# sdk NAME BROKER TOPIC PARTITIONS [ARGS...]: the SDK producer, acks=all (the topic is created
# by the bench with RF=3 on a cluster, as `topic create` does by default there).
sdk() {
  local name=$1 broker=$2 topic=$3 partitions=$4
  shift 4
  run "$name" produce --sdk -b "$broker" --topic "$topic" --partitions "$partitions" --acks all --fsync "$FSYNC" \
    --batch-records 1000 --duration 40 "$@"
}

# drop BROKER TOPIC...: deletes topics no later run reads and waits until they are gone, so
# the next run writes into page-cache pages freed just before it. On this VM the first touch
# of pages the guest has not used lately runs at the host's page-fault speed: without this,
# the cluster's SDK runs (after 3 GB of earlier writes) gave half of what they give on their
# own (docs/PERFORMANCE.md, "Runs in one script").
drop() {
  local broker=$1
  shift
  "$bin" topic delete -b "$broker" "$@" >/dev/null
  local listed
  for _ in $(seq 1 50); do # until no name is listed any more (at most 10 s)
    listed=$("$bin" topic list -b "$broker" 2>/dev/null | awk '{print $1}') || listed=
    grep -qxF -f <(printf '%s\n' "$@") <<<"$listed" || break
    sleep 0.2
  done
  sleep 1 # each broker removes the files once it applies the deletion
}

# Both shapes of run against one broker address: full speed, then paced.
measure() {
  local label=$1 broker=$2 topic=$3 acks=$4
  run "$label max" produce -b "$broker" --topic "$topic" --acks "$acks" --records "$records" \
    --batch-records 64 --in-flight 16 --duration 40
  run "$label paced" produce -b "$broker" --topic "$topic" --acks "$acks" --records "$paced" \
    --batch-records 16 --rate "$rate" --duration 40
}

# --- the machine: what a MB written into the page cache costs ---------------------------------
# Every replica copies every byte into the page cache; on this VM the first touch of a page the
# host took back costs many times a copy (scripts/page_fill.py, docs/PERFORMANCE.md).
say "page-cache fill: CPU per MB into fresh pages and into pages freed just before"
python3 scripts/bench_record.py "$results" page_fill "$(python3 scripts/page_fill.py "$work")"

# --- single node ---------------------------------------------------------------------------
port=$(free_port)
serve single --listen "127.0.0.1:$port"
"$bin" topic create bench -p 1 --fsync "$FSYNC" -b "127.0.0.1:$port" >/dev/null
measure "single node, acks=leader" "http://127.0.0.1:$port" bench leader
drop "127.0.0.1:$port" bench
sdk "single node sdk 1p" "http://127.0.0.1:$port" sdk1 1 --records "$records"
drop "127.0.0.1:$port" sdk1
sdk "single node sdk 8p" "http://127.0.0.1:$port" sdk8 8 --records "$records"
drop "127.0.0.1:$port" sdk8
kill "${pids[0]}" && wait "${pids[0]}" 2>/dev/null || true
pids=()
rm -rf "$work/single"

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
drop "$first" bench
sdk "cluster sdk 1p" "http://$first" sdk1 1 --records "$records"
drop "$first" sdk1
sdk "cluster sdk 8p" "http://$first" sdk8 8 --records "$records"
drop "$first" sdk8
half=$(python3 -c 'import json,sys; print(max(1000, int(json.load(open(sys.argv[1]))["cluster sdk 1p"]["records_per_s"] / 2)))' "$results")
sdk "cluster sdk 1p paced" "http://$first" sdk1 1 --records "$((half * 10))" --rate "$half" --linger-ms 1
for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
pids=()

# --- scale: many partitions on a fresh cluster -----------------------------------------------
scale=${SCALE_PARTITIONS:-$([ "$QUICK" = 1 ] && echo 1000 || echo 10000)}
if [ "$scale" -gt 0 ]; then
  say "scale: $scale partitions, RF=3 (scripts/bench-scale.sh)"
  if json=$(PARTITIONS=$scale scripts/bench-scale.sh); then
    python3 scripts/bench_record.py "$results" scale "$json"
  else
    echo "the scale phase did not finish" >&2
  fi
fi

# --- memory per replica: idle, and once written to -----------------------------------------
memory=${MEMORY_PARTITIONS:-$([ "$QUICK" = 1 ] && echo 10 || echo 100)}
if [ "$memory" -gt 0 ]; then
  say "memory: $memory partitions, RF=3 (scripts/bench-group-memory.sh)"
  writes=$([ "$QUICK" = 1 ] && echo 500 || echo 10000)
  if json=$(PARTITIONS=$memory WRITES=$writes scripts/bench-group-memory.sh); then
    python3 scripts/bench_record.py "$results" memory "$json"
  else
    echo "the memory phase did not finish" >&2
  fi
fi

# --- report ----------------------------------------------------------------------------------
python3 scripts/bench_cluster_summary.py "$results" "$FSYNC" "$rate"
