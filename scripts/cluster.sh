#!/usr/bin/env bash
# A local 3-node Tidelog cluster on 127.0.0.1, in one command (docs/CLUSTER.md).
#
#   scripts/cluster.sh [start]   build if needed, start brokers 1-3 on ports 9701-9703
#                                (data in ./tidelog-cluster/node-N, logs beside them)
#   scripts/cluster.sh stop      SIGTERM all three and wait
#   scripts/cluster.sh status    which brokers run, and `tidelog cluster describe`
#
# Environment: TIDELOG_BIN (default target/debug/tidelog, built when missing),
# CLUSTER_DIR (default ./tidelog-cluster), BASE_PORT (default 9700: brokers on +1, +2, +3).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${TIDELOG_BIN:-target/debug/tidelog}
dir=${CLUSTER_DIR:-tidelog-cluster}
base=${BASE_PORT:-9700}
peers="1=127.0.0.1:$((base + 1)),2=127.0.0.1:$((base + 2)),3=127.0.0.1:$((base + 3))"

running() { [ -f "$dir/node-$1.pid" ] && kill -0 "$(cat "$dir/node-$1.pid")" 2>/dev/null; }

start() {
  if [ ! -x "$bin" ]; then cargo build -p tidelog-cli --bin tidelog; fi
  mkdir -p "$dir"
  for n in 1 2 3; do
    if running "$n"; then echo "broker $n already runs (pid $(cat "$dir/node-$n.pid"))"; continue; fi
    "$bin" serve --node-id "$n" --listen "127.0.0.1:$((base + n))" --data-dir "$dir/node-$n" \
      --peers "$peers" >"$dir/node-$n.out" 2>"$dir/node-$n.log" &
    echo $! >"$dir/node-$n.pid"
  done
  for n in 1 2 3; do
    for _ in $(seq 1 100); do grep -q listening "$dir/node-$n.out" 2>/dev/null && break; sleep 0.1; done
    grep -q listening "$dir/node-$n.out" || { echo "broker $n did not start:"; tail -20 "$dir/node-$n.log"; exit 1; }
  done
  # The metadata group elects its first controller within an election timeout or two.
  for _ in $(seq 1 100); do
    if "$bin" cluster describe --broker "127.0.0.1:$((base + 1))" 2>/dev/null | grep -q 'controller: [1-3]'; then break; fi
    sleep 0.1
  done
  "$bin" cluster describe --broker "127.0.0.1:$((base + 1))"
  echo "cluster up: brokers at 127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
}

stop() {
  for n in 1 2 3; do
    if running "$n"; then kill "$(cat "$dir/node-$n.pid")"; fi
  done
  for n in 1 2 3; do
    while running "$n"; do sleep 0.1; done
    rm -f "$dir/node-$n.pid"
  done
  echo "cluster stopped"
}

status() {
  for n in 1 2 3; do
    if running "$n"; then echo "broker $n: running (pid $(cat "$dir/node-$n.pid"))"; else echo "broker $n: stopped"; fi
  done
  for n in 1 2 3; do
    if running "$n"; then "$bin" cluster describe --broker "127.0.0.1:$((base + n))"; break; fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
