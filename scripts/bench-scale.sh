#!/usr/bin/env bash
# Partition scale (docs/PERFORMANCE.md, "10,000 partitions"): a fresh 3-broker release cluster
# on loopback, one topic of PARTITIONS partitions (default 10,000) with RF=3, then
#   - create: seconds from `topic create` until every partition has a leader;
#   - idle: each broker's CPU over IDLE_SECS (default 10) as a share of one core, from
#     /proc/<pid>/stat, and its resident memory (VmRSS);
#   - restart: broker 2 SIGKILLed and started again: seconds until it listens, until a
#     produce through it to each of three partitions (first, middle, last) is answered, and
#     until it has reopened all its replicas (its second "topic replicas started" line;
#     produces are served before that: cluster/opening.rs).
# Every wait is bounded by SCALE_WAIT seconds (default 180); a step that does not finish is
# reported as null. Prints one JSON object on stdout (progress on stderr); used by
# scripts/bench-cluster.sh, which prints the targets.
#
#   scripts/bench-scale.sh
#   PARTITIONS=1000 IDLE_SECS=5 scripts/bench-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."

partitions=${PARTITIONS:-10000}
idle_secs=${IDLE_SECS:-10}
wait_s=${SCALE_WAIT:-180}
cargo build --release -q -p tidelog-cli --bin tidelog
bin=$PWD/target/release/tidelog
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-scale.XXXXXX)
pids=(0 0 0)
cleanup() {
  for p in "${pids[@]}"; do [ "$p" != 0 ] && kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

say() { printf '== %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
# cpu_ticks PID: user + system time in clock ticks (USER_HZ, 100 per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
secs_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

ports=("$(free_port)" "$(free_port)" "$(free_port)")
metrics_ports=("$(free_port)" "$(free_port)" "$(free_port)")
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
addr() { echo "127.0.0.1:${ports[$(($1 - 1))]}"; }
# serve N: starts broker N (its log appended to, so a restart keeps the first run's lines).
serve() {
  local n=$1
  : >"$work/node-$n.out"
  "$bin" serve --node-id "$n" --listen "$(addr "$n")" --data-dir "$work/node-$n" --peers "$peers" \
    --metrics-listen "127.0.0.1:${metrics_ports[$((n - 1))]}" \
    >"$work/node-$n.out" 2>>"$work/node-$n.log" &
  pids[$((n - 1))]=$!
}
listening() {
  local deadline=$((SECONDS + wait_s))
  while [ $SECONDS -lt $deadline ]; do grep -q listening "$work/node-$1.out" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
# led COUNT: whether `cluster describe` shows at least COUNT partitions of `idle` with a leader.
led() {
  local n
  n=$(timeout 20 "$bin" cluster describe -b "$(addr 1)" 2>/dev/null | grep -c '^  idle/[0-9]* leader=[1-3]' || true)
  [ "$n" -ge "$1" ]
}

for n in 1 2 3; do serve "$n"; done
for n in 1 2 3; do listening "$n" || { echo "broker $n did not start" >&2; exit 1; }; done

say "creating $partitions partitions, RF=3"
t0=$(now_ms)
create_ok=false
timeout "$wait_s" "$bin" topic create idle -p "$partitions" -r 3 -b "$(addr 1)" >/dev/null 2>"$work/create.err" &&
  create_ok=true
create_answer_s=$(secs_since "$t0")
create_s=null
deadline=$((SECONDS + wait_s))
while [ $SECONDS -lt $deadline ]; do
  if led "$partitions"; then create_s=$(secs_since "$t0"); break; fi
  sleep 1
done
say "create answered ok=$create_ok after ${create_answer_s} s; every partition led after ${create_s} s"

# awake_groups N: broker N's partition groups not asleep (tidelog_raft_groups), or null.
awake_groups() {
  curl -s -m 5 "http://127.0.0.1:${metrics_ports[$(($1 - 1))]}/metrics" |
    awk '/^tidelog_raft_groups\{state="awake"\}/ { print $2; found = 1 } END { if (!found) print "null" }'
}

cpu=() rss=() awake=()
if [ "$create_s" != null ]; then
  sleep 10 # the groups go quiet (quiesce after 2 s idle)
  before=()
  for p in "${pids[@]}"; do before+=("$(cpu_ticks "$p")"); done
  sleep "$idle_secs"
  for i in 0 1 2; do
    cpu+=("$(awk -v a="${before[$i]}" -v b="$(cpu_ticks "${pids[$i]}")" -v s="$idle_secs" 'BEGIN { printf "%.2f", (b - a) / s }')")
    rss+=("$(rss_mb "${pids[$i]}")")
    awake+=("$(awake_groups $((i + 1)))")
  done
  say "idle: CPU % of a core per broker ${cpu[*]}; RSS MB ${rss[*]}; awake groups ${awake[*]}"
fi

say "kill -9 broker 2, restart"
kill -9 "${pids[1]}"
wait "${pids[1]}" 2>/dev/null || true
t0=$(now_ms)
serve 2
listen_s=null produce_s=null
if listening 2; then
  listen_s=$(secs_since "$t0")
  answered=0
  deadline=$((SECONDS + wait_s))
  for p in 0 $((partitions / 2)) $((partitions - 1)); do
    while [ $SECONDS -lt $deadline ]; do
      if printf 'after-restart\n' | timeout 5 "$bin" produce -b "$(addr 2)" idle --partition "$p" >/dev/null 2>&1; then
        answered=$((answered + 1))
        break
      fi
      sleep 0.05
    done
  done
  [ "$answered" = 3 ] && produce_s=$(secs_since "$t0")
fi
reopened_s=null
deadline=$((SECONDS + wait_s))
while [ $SECONDS -lt $deadline ]; do
  if [ "$(grep -c 'topic replicas started topic=idle' "$work/node-2.log")" -ge 2 ]; then
    reopened_s=$(secs_since "$t0")
    break
  fi
  sleep 0.05
done
say "restart: listening after ${listen_s} s, produces answered after ${produce_s} s, replicas reopened after ${reopened_s} s"

warns=$(cat "$work"/node-*.log | grep -c ' WARN ' || true)
python3 - "$partitions" "$create_ok" "$create_answer_s" "$create_s" "$listen_s" "$produce_s" "$warns" \
  "${cpu[*]:-}" "${rss[*]:-}" "${awake[*]:-}" "$reopened_s" <<'PY'
import json, sys
a = sys.argv[1:]
num = lambda s: None if s == "null" else float(s)
print(json.dumps({
    "partitions": int(a[0]), "create_ok": a[1] == "true", "create_answered_s": num(a[2]),
    "create_s": num(a[3]), "restart_listen_s": num(a[4]), "restart_produce_s": num(a[5]),
    "warn_lines": int(a[6]),
    "idle_cpu_pct": [float(x) for x in a[7].split()], "rss_mb": [float(x) for x in a[8].split()],
    "awake_groups": [num(x) for x in a[9].split()], "restart_reopened_s": num(a[10]),
}))
PY
