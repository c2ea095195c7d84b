#!/usr/bin/env bash
# What idle partitions cost (issue 4): a 3-broker release cluster on loopback with one topic
# of PARTITIONS partitions (default 1000, RF=3, so every broker holds 1000 Raft groups), left
# idle; reports each broker's CPU over IDLE_SECS (default 10) as a share of one core, from
# /proc/<pid>/stat. Run twice: with quiescing (the default, quiesce_ms 2000: idle groups stop
# ticking) and without (--quiesce-ms 0: every group heartbeats every 250 ms).
#
#   scripts/bench-idle.sh                       # both runs
#   PARTITIONS=200 IDLE_SECS=5 scripts/bench-idle.sh
# It reports; it never fails on a slow machine. Results in target/bench/idle.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

partitions=${PARTITIONS:-1000}
idle_secs=${IDLE_SECS:-10}
out=target/bench/idle.txt
mkdir -p target/bench
cargo build --release -q -p tidelog-cli --bin tidelog
bin=target/release/tidelog
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# cpu_ticks PID: user + system time in clock ticks (USER_HZ, 100 per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() {
  local label=$1
  shift
  local work pids=() ports
  work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-idle.XXXXXX)
  ports=("$(free_port)" "$(free_port)" "$(free_port)")
  local peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
  # openraft's own INFO lines (off by default) for the "becomes leader" count below; an idle
  # group logs nothing.
  for n in 1 2 3; do
    RUST_LOG=info,openraft=info "$bin" serve --node-id "$n" --listen "127.0.0.1:${ports[$((n - 1))]}" --data-dir "$work/node-$n" \
      --peers "$peers" "$@" >"$work/node-$n.out" 2>"$work/node-$n.log" &
    pids+=($!)
  done
  for n in 1 2 3; do
    for _ in $(seq 1 300); do grep -q listening "$work/node-$n.out" 2>/dev/null && break; sleep 0.1; done
  done
  local first="127.0.0.1:${ports[0]}"
  for _ in $(seq 1 100); do
    "$bin" topic create idle -p "$partitions" -r 3 -b "$first" >/dev/null 2>&1 && break
    sleep 0.5
  done
  # Settle: every group elected (and, with quiescing, asleep) before the window.
  local settle=$((partitions / 50 + 15))
  echo "== $label: $partitions partitions x 3 replicas; settling ${settle} s" >&2
  sleep "$settle"
  local before=() after=() marks=()
  for n in 1 2 3; do marks+=("$(wc -l <"$work/node-$n.log")"); done
  for p in "${pids[@]}"; do before+=("$(cpu_ticks "$p")"); done
  sleep "$idle_secs"
  for p in "${pids[@]}"; do after+=("$(cpu_ticks "$p")"); done
  # Elections during the idle window: an idle cluster should hold none.
  local elections=0
  for n in 1 2 3; do
    elections=$((elections + $(tail -n +"$((marks[n - 1] + 1))" "$work/node-$n.log" | grep -c 'becomes leader' || true)))
  done
  local line="$label:"
  for i in 0 1 2; do
    line+=$(awk -v a="${before[$i]}" -v b="${after[$i]}" -v s="$idle_secs" -v n=$((i + 1)) \
      'BEGIN { printf "  broker %d %.1f%% of a core", n, (b - a) / s }')
  done
  local asleep
  asleep=$(sed 's/\x1b\[[0-9;]*m//g' "$work/node-1.log" | grep 'partition groups asleep' | tail -1 | sed 's/.*asleep=\([0-9]*\) groups=\([0-9]*\).*/\1 of \2 groups asleep on broker 1/' || true)
  # Elections since the start beyond one per group (the partitions and the metadata group):
  # split votes at creation, or groups woken by mistake. openraft logs "becomes leader" twice
  # for a group's first leader (once as it initialises, once as it wins); a replica that
  # started a group as a fallback (replica::Start) adds one more.
  local extra
  extra=$(($(cat "$work"/node-*.log | grep -c 'becomes leader' || true) - 2 * (partitions + 1)))
  echo "$line  ($elections elections in the window, $extra beyond one per group since start${asleep:+; $asleep})" | tee -a "$out"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}

: >"$out"
run "quiescing (the default, quiesce_ms 2000)"
run "no quiescing (--quiesce-ms 0)" --quiesce-ms 0
