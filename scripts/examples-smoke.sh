#!/usr/bin/env bash
# Runs the Rust examples as README shows them: a producer, then two group consumers sharing
# one group, against a fresh broker; every record must be consumed exactly once by the group.
set -euo pipefail
bin=${1:-target/debug}
# shellcheck source=scripts/lib-broker.sh
. "$(dirname "$0")/lib-broker.sh"
start_broker "$bin/tidelog"
addr=http://$addr

"$bin/producer" --broker "$addr" --topic orders --count 600
"$bin/group_consumer" --broker "$addr" --topic orders --group billing --idle-ms 3000 >"$work/c1" 2>"$work/c1.err" &
c1=$!
"$bin/group_consumer" --broker "$addr" --topic orders --group billing --idle-ms 3000 >"$work/c2" 2>"$work/c2.err" &
c2=$!
wait "$c1" "$c2"
total=$(cat "$work/c1" "$work/c2" | wc -l)
unique=$(cat "$work/c1" "$work/c2" | cut -d' ' -f1 | sort -u | wc -l)
[ "$total" = 600 ] && [ "$unique" = 600 ] || {
  echo "examples smoke: expected 600 records exactly once, got $total lines, $unique unique"
  cat "$work/c1.err" "$work/c2.err"
  exit 1
}
echo "examples smoke: ok (600 records over $(grep -c . "$work/c1") + $(grep -c . "$work/c2") in one group)"

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
total=$(cat "$work/p1" "$work/p2" | wc -l)
unique=$(cat "$work/p1" "$work/p2" | cut -d' ' -f1 | sort -u | wc -l)
[ "$total" = 600 ] && [ "$unique" = 600 ] || {
  echo "examples smoke (python): expected 600 records exactly once, got $total lines, $unique unique"
  cat "$work/p1.err" "$work/p2.err"
  exit 1
}
echo "examples smoke (python + rust): ok (600 records over $(grep -c . "$work/p1") python + $(grep -c . "$work/p2") rust in one group)"
