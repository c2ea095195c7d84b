#!/usr/bin/env bash
# What TLS costs: produce, consume and paced e2e latency against a release broker in
# plaintext and with TLS (certificates made here with openssl), interleaved, two rounds.
#
#   scripts/bench-tls.sh        # about 1 minute after the build
set -euo pipefail
cd "$(dirname "$0")/.."
command -v openssl >/dev/null || { echo "needs openssl"; exit 1; }
cargo build --release --bin tidelog >&2
bin=$PWD/target/release/tidelog
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-tls.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca-key.pem -out ca.pem \
  -days 2 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout b-key.pem -out b.csr -subj "/CN=broker" 2>/dev/null
printf "subjectAltName=IP:127.0.0.1,DNS:localhost\n" >ext
openssl x509 -req -in b.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out b.pem -days 2 -extfile ext 2>/dev/null
json() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
printf '%-6s %-5s %12s %12s %8s %8s\n' mode round produce/s consume/s p50_us p99_us
for round in 1 2; do
  for mode in plain tls; do
    rm -rf data
    extra=() cli=()
    if [ "$mode" = tls ]; then extra=(--tls-cert b.pem --tls-key b-key.pem); cli=(--tls-ca ca.pem); fi
    "$bin" serve --listen 127.0.0.1:0 --data-dir data --metrics-listen off "${extra[@]}" >out 2>err &
    pid=$!
    for _ in $(seq 1 100); do grep -q listening out 2>/dev/null && break; sleep 0.1; done
    addr=$(awk '{print $4}' out)
    common=(--broker "$addr" "${cli[@]}" --quiet --json)
    p=$("$bin" bench produce "${common[@]}" --topic p --records 2000000 --batch-records 256 | json 'int(r["records_per_s"])')
    c=$("$bin" bench consume "${common[@]}" --topic p --records 2000000 | json 'int(r["records_per_s"])')
    e=$("$bin" bench e2e "${common[@]}" --topic e --rate 5000 --records 40000 --sdk --linger-ms 0 --warmup 2 \
      | json "r['latency']['p50_us'], r['latency']['p99_us']" | tr -d '(),')
    printf '%-6s %-5s %12s %12s %8s %8s\n' "$mode" "$round" "$p" "$c" $e
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
  done
done
