#!/usr/bin/env bash
# Runs the Rust examples as README shows them: a producer, then two group consumers sharing
# one group, against a fresh broker; every record must be consumed exactly once by the group.
set -euo pipefail
bin=${1:-target/debug}
# shellcheck source=scripts/lib-broker.sh
. "$(dirname "$0")/lib-broker.sh"
start_broker "$bin/tidelog"
addr=http://$addr

# check_exactly_once LABEL OUT1 OUT2: the two members' outputs hold 600 records, each once.
check_exactly_once() {
  local label=$1 a=$2 b=$3 total unique
  total=$(cat "$a" "$b" | wc -l)
  unique=$(cat "$a" "$b" | cut -d' ' -f1 | sort -u | wc -l)
  [ "$total" = 600 ] && [ "$unique" = 600 ] || {
    echo "examples smoke ($label): expected 600 records exactly once, got $total lines, $unique unique"
    cat "$a.err" "$b.err"
    exit 1
  }
  echo "examples smoke ($label): ok (600 records over $(grep -c . "$a") + $(grep -c . "$b") in one group)"
}

"$bin/producer" --broker "$addr" --topic orders --count 600
"$bin/group_consumer" --broker "$addr" --topic orders --group billing --idle-ms 3000 >"$work/c1" 2>"$work/c1.err" &
c1=$!
"$bin/group_consumer" --broker "$addr" --topic orders --group billing --idle-ms 3000 >"$work/c2" 2>"$work/c2.err" &
c2=$!
wait "$c1" "$c2"
check_exactly_once "rust + rust" "$work/c1" "$work/c2"

# The Python examples, as examples/README.md shows them: a Python and a Rust group consumer
# sharing one group (both joined before records arrive, so they split the work), then the
# Python producer.
py=${PYTHON:-.venv/bin/python}
"$py" examples/python/producer.py --broker "${addr#http://}" --topic payments --count 0 >/dev/null
"$py" examples/python/group_consumer.py --broker "${addr#http://}" --topic payments --group audit --idle-ms 8000 \
  >"$work/p1" 2>"$work/p1.err" &
p1=$!
"$bin/group_consumer" --broker "$addr" --topic payments --group audit --idle-ms 8000 >"$work/p2" 2>"$work/p2.err" &
p2=$!
for _ in $(seq 1 100); do
  grep -q assigned "$work/p1.err" 2>/dev/null && grep -q assigned "$work/p2.err" 2>/dev/null && break
  sleep 0.1
done
"$py" examples/python/producer.py --broker "${addr#http://}" --topic payments --count 600
wait "$p1" "$p2"
check_exactly_once "python + rust" "$work/p1" "$work/p2"

# Exactly once, as README's Guarantees show it: the Rust and then the Python
# consume-transform-produce example drain a topic into another in transactions; a
# read_committed reader of each output then holds every input record once, transformed.
"$bin/producer" --broker "$addr" --topic eos-in --count 500 >/dev/null
"$bin/tidelog" topic create eos-rust eos-py --partitions 3 --broker "$addr" >/dev/null
check_transformed() {
  local label=$1 out=$2 lines unique
  lines=$("$bin/tidelog" consume "$out" --broker "$addr" --from-beginning --isolation-level read-committed \
    --idle-timeout-ms 1500 -f '%v\n')
  total=$(printf '%s\n' "$lines" | grep -c '|')
  unique=$(printf '%s\n' "$lines" | grep '|' | cut -d'|' -f2 | sort -u | wc -l)
  [ "$total" = 500 ] && [ "$unique" = 500 ] || {
    echo "examples smoke ($label): expected 500 transformed records exactly once, got $total lines, $unique unique"
    exit 1
  }
  echo "examples smoke ($label): ok (500 records transformed exactly once, read_committed)"
}
"$bin/exactly_once" --broker "$addr" --input eos-in --output eos-rust --group eos-rust \
  --transactional-id eos-rust --idle-ms 3000 2>"$work/eos-rust.err" || { cat "$work/eos-rust.err"; exit 1; }
check_transformed "exactly once, rust" eos-rust
"$py" examples/python/exactly_once.py --broker "${addr#http://}" --input eos-in --output eos-py --group eos-py \
  --transactional-id eos-py --idle-ms 3000 2>"$work/eos-py.err" || { cat "$work/eos-py.err"; exit 1; }
check_transformed "exactly once, python" eos-py
