#!/usr/bin/env bash
# Starts a broker on a free loopback port and uses grpcurl, through server reflection only
# (no .proto files), to list and describe services, create a topic, produce a record and read
# it back by subscribing. The commands are the ones README.md shows.
set -euo pipefail
bin=${1:-target/debug/tidelog}
grpcurl=${GRPCURL:-grpcurl}
work=$(mktemp -d)
broker_pid=
cleanup() { [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>"$work/err" &
broker_pid=$!
for _ in $(seq 1 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
addr=$(grep -o '127\.0\.0\.1:[0-9]*' "$work/out" | head -1)
[ -n "$addr" ] || { echo "broker did not start"; cat "$work/err"; exit 1; }

fail() { echo "grpcurl smoke: $*"; exit 1; }
services=$("$grpcurl" -plaintext "$addr" list)
for s in tidelog.v1.RecordService tidelog.v1.AdminService tidelog.v1.OffsetService grpc.health.v1.Health; do
  grep -qx "$s" <<<"$services" || fail "service $s not listed: $services"
done
"$grpcurl" -plaintext "$addr" describe tidelog.v1.RecordService | grep -q "rpc Produce" || fail "describe"
"$grpcurl" -plaintext -d '{"service":""}' "$addr" grpc.health.v1.Health/Check | grep -q SERVING || fail "health"

"$grpcurl" -plaintext -d '{"name":"smoke","partitions":1}' "$addr" tidelog.v1.AdminService/CreateTopic >/dev/null
out=$("$grpcurl" -plaintext -d '{"topic":"smoke","partition":0,"records":{"records":[{"key":"aGk=","value":"aGVsbG8="}]}}' \
  "$addr" tidelog.v1.RecordService/Produce)
grep -q '"appendTimeMs"' <<<"$out" || fail "produce: $out"
grep -q errorCode <<<"$out" && fail "produce returned an error: $out"

# Subscribe is a live stream: let it run briefly, then check what it printed.
out=$(timeout 3 "$grpcurl" -plaintext -d '{"topic":"smoke","start":{"earliest":true}}' \
  "$addr" tidelog.v1.RecordService/Subscribe || true)
grep -q '"value": "aGVsbG8="' <<<"$out" || fail "subscribe did not return the record: $out"

echo "grpcurl smoke: ok ($addr)"
