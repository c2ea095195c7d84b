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
