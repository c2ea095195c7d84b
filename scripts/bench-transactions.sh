#!/usr/bin/env bash
# What transactions cost (docs/PERFORMANCE.md, "Transactions"): against one release broker on
# loopback (fsync=interval), 1 KiB records through the Rust SDK, acks=all:
#   - produce throughput: idempotent, then transactional with 100, 1,000 and 10,000 records per
#     transaction (one producer, one partition; each commit flushes and waits for its markers);
#   - end-to-end latency at a paced 10,000 records/s: idempotent with a read_uncommitted
#     reader, transactions of 100 with read_uncommitted, and with read_committed (the records
#     wait for their commit marker: what read_committed adds).
#
#   scripts/bench-transactions.sh            # about 2 minutes after the build
#   RECORDS=100000 scripts/bench-transactions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin tidelog >&2
bin=$PWD/target/release/tidelog
# shellcheck source=scripts/lib-broker.sh
. scripts/lib-broker.sh
start_broker "$bin"
records=${RECORDS:-200000}
json() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
run=0
bench() {
  run=$((run + 1))
  "$bin" bench "$@" --broker "http://$addr" --topic "tx$run" --delete-topic --sdk --acks all --quiet --json
}
printf '%-28s %12s %9s %9s %9s\n' produce records/s MB/s p50_us p99_us
for txn in 0 100 1000 10000; do
  label=idempotent
  [ "$txn" -gt 0 ] && label="transactions of $txn"
  bench produce --records "$records" --duration 60 --transaction-records "$txn" |
    json "'%-28s %12.0f %9.1f %9d %9d' % ('$label', r['records_per_s'], r['mb_per_s'], r['latency']['p50_us'], r['latency']['p99_us'])"
done
echo
printf '%-40s %9s %9s %9s %9s\n' "e2e at 10,000 records/s" p50_us p99_us p99.9_us max_us
e2e() {
  bench e2e --rate 10000 --records 150000 --duration 20 --warmup 3 "$@" |
    json "'%-40s %9d %9d %9d %9d' % ('$label', r['latency']['p50_us'], r['latency']['p99_us'], r['latency']['p999_us'], r['latency']['max_us'])"
}
label="idempotent, read_uncommitted" e2e
label="txn of 100, read_uncommitted" e2e --transaction-records 100
label="txn of 100, read_committed" e2e --transaction-records 100 --isolation-level read-committed
