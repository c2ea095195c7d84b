#!/usr/bin/env bash
# What authentication, authorization and quotas cost: produce, consume and paced e2e latency
# against a release broker with security off, and with a JWT, authorization on and 200 ACLs
# (the client's own among them), and with a quota on the client that never binds; interleaved,
# two rounds. With OLD_BIN=path/to/an/older/tidelog, that binary runs too (security off), for
# an A/B of what the auth layer costs when it is off.
#
#   scripts/bench-auth.sh                  # about 2 minutes after the build
#   OLD_BIN=/path/to/tidelog scripts/bench-auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v openssl >/dev/null || { echo "needs openssl"; exit 1; }
cargo build --release --bin tidelog >&2
bin=$PWD/target/release/tidelog
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-auth.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out issuer.key 2>/dev/null
openssl pkey -in issuer.key -pubout -out issuer.pem
b64() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
token() {
  local h c s
  h=$(printf '{"alg":"RS256","typ":"JWT"}' | b64)
  c=$(printf '{"sub":"%s","iss":"https://issuer.bench","exp":%d}' "$1" $(( $(date +%s) + 7200 )) | b64)
  s=$(printf '%s.%s' "$h" "$c" | openssl dgst -sha256 -sign issuer.key -binary | b64)
  printf '%s.%s.%s' "$h" "$c" "$s"
}
admin=$(token admin)
app=$(token app)
cat > auth.toml <<TOML
[auth]
authorization = true
superusers = ["User:admin"]
[auth.jwt]
keys = "issuer.pem"
issuer = "https://issuer.bench"
TOML
json() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
modes=(off acl quota)
[ -n "${OLD_BIN:-}" ] && modes=(old "${modes[@]}")
printf '%-6s %-5s %12s %12s %8s %8s\n' mode round produce/s consume/s p50_us p99_us
for round in 1 2; do
  for mode in "${modes[@]}"; do
    rm -rf data
    exe=$bin extra=() cli=()
    [ "$mode" = old ] && exe=$OLD_BIN
    [ "$mode" = acl ] || [ "$mode" = quota ] && extra=(--config auth.toml) && cli=(--token "$app")
    "$exe" serve --listen 127.0.0.1:0 --data-dir data --metrics-listen off "${extra[@]}" >out 2>err &
    pid=$!
    for _ in $(seq 1 100); do grep -q listening out 2>/dev/null && break; sleep 0.1; done
    addr=$(awk '{print $4}' out)
    if [ "$mode" = acl ] || [ "$mode" = quota ]; then
      for t in p e; do
        "$bin" topic create $t --broker "$addr" --token "$admin" >/dev/null
        "$bin" acl add --principal User:app --operation read,write --topic $t --broker "$addr" --token "$admin" >/dev/null
      done
      for i in $(seq 1 198); do
        "$bin" acl add --principal "User:other-$i" --operation read --topic "t$i" --broker "$addr" --token "$admin" >/dev/null
      done
      if [ "$mode" = quota ]; then
        "$bin" quota set --user app --producer-byte-rate 100000000000 --consumer-byte-rate 100000000000 \
          --broker "$addr" --token "$admin" >/dev/null
      fi
    fi
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
