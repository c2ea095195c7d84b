#!/usr/bin/env bash
# What transactions cost (docs/PERFORMANCE.md, "Transactions"), against a release broker on
# loopback (fsync=interval), 1 KiB records through the Rust SDK, acks=all, two rounds:
#   - produce throughput: idempotent, then transactional with 100, 1,000 and 10,000 records per
#     transaction (one producer, one partition; each commit flushes and waits for its markers);
#   - end-to-end latency at a paced 10,000 records/s: idempotent with a read_uncommitted
#     reader, transactions of 100 with read_uncommitted, and with read_committed (the records
#     wait for their commit marker: what read_committed adds).
# With OLD_BIN=path/to/an/older/tidelog (built before transactions existed), also what the
# feature costs when no one uses it: raw produce, consume and paced e2e on both binaries.
#
#   scripts/bench-transactions.sh                     # about 4 minutes after the build
#   OLD_BIN=/path/to/tidelog scripts/bench-transactions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin tidelog >&2
bin=$PWD/target/release/tidelog
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-txn.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
records=${RECORDS:-200000}
json() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }

# serve EXE: a fresh broker on a free port; sets $addr and $pid.
serve() {
  [ -n "$pid" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  rm -rf data out
  "$1" serve --listen 127.0.0.1:0 --data-dir data --metrics-listen off >out 2>err &
  pid=$!
  for _ in $(seq 1 100); do grep -q listening out 2>/dev/null && break; sleep 0.1; done
  addr=http://$(awk '{print $4}' out)
}
run=0
bench() {
  run=$((run + 1))
  "$bin" bench "$@" --broker "$addr" --topic "tx$run" --delete-topic --quiet --json
}

printf '%-5s %-26s %12s %9s %9s %9s\n' round produce records/s MB/s p50_us p99_us
for round in 1 2; do
  serve "$bin"
  for txn in 0 100 1000 10000; do
    label=idempotent
    [ "$txn" -gt 0 ] && label="transactions of $txn"
    bench produce --sdk --acks all --records "$records" --duration 60 --transaction-records "$txn" |
      json "'%-5s %-26s %12.0f %9.1f %9d %9d' % ('$round', '$label', r['records_per_s'], r['mb_per_s'], r['latency']['p50_us'], r['latency']['p99_us'])"
  done
done
echo
printf '%-5s %-34s %9s %9s %9s %9s\n' round "e2e at 10,000 records/s" p50_us p99_us p99.9_us max_us
e2e() {
  bench e2e --sdk --acks all --rate 10000 --records 150000 --duration 20 --warmup 3 "$@" |
    json "'%-5s %-34s %9d %9d %9d %9d' % ('$round', '$label', r['latency']['p50_us'], r['latency']['p99_us'], r['latency']['p999_us'], r['latency']['max_us'])"
}
for round in 1 2; do
  serve "$bin"
  label="idempotent, read_uncommitted" e2e
  label="txn of 100, read_uncommitted" e2e --transaction-records 100
  label="txn of 100, read_committed" e2e --transaction-records 100 --isolation-level read-committed
done

[ -n "${OLD_BIN:-}" ] || exit 0
echo
echo "unused: raw produce (batches of 256), consume of 2 M records, SDK e2e at 5,000/s"
printf '%-5s %-5s %12s %12s %8s %8s\n' exe round produce/s consume/s p50_us p99_us
for round in 1 2; do
  for exe in old new; do
    if [ "$exe" = old ]; then serve "$OLD_BIN"; else serve "$bin"; fi
    common=(--broker "$addr" --quiet --json)
    p=$("$bin" bench produce "${common[@]}" --topic p --records 2000000 --batch-records 256 | json 'int(r["records_per_s"])')
    c=$("$bin" bench consume "${common[@]}" --topic p --records 2000000 | json 'int(r["records_per_s"])')
    e=$("$bin" bench e2e "${common[@]}" --topic e --rate 5000 --records 40000 --sdk --linger-ms 0 --warmup 2 \
      | json "r['latency']['p50_us'], r['latency']['p99_us']" | tr -d '(),')
    printf '%-5s %-5s %12s %12s %8s %8s\n' "$exe" "$round" "$p" "$c" $e
  done
done
