#!/usr/bin/env bash
# Moving a partition (docs/PERFORMANCE.md, "Partition moves"): a 4-broker release cluster on
# loopback, one partition (RF 3) filled with GIB GiB of 1 KiB records, then moved so that its
# leader's replica goes to the fourth broker, while a paced acks=all producer writes to it.
# Prints the move's time and the producer's throughput and latency during the move, against
# the same producer on the same partition with nothing moving.
#
#   scripts/bench-reassign.sh                      # 1 GiB, the default throttle (64 MiB/s)
#   GIB=0.25 THROTTLE=0 RATE=2000 scripts/bench-reassign.sh   # unthrottled, lighter
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin tidelog >&2
bin=$PWD/target/release/tidelog
gib=${GIB:-1}
throttle=${THROTTLE:-0} # 0: the brokers' default (cluster.reassignment_throttle_bytes_per_sec)
rate=${RATE:-5000}      # records/s of the paced producer
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-move.XXXXXX)
cleanup() {
  pkill -9 -f "data-dir $work/" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

peers="" ports=()
for n in 1 2 3 4; do ports[n]=$(free_port); peers+="${peers:+,}$n=127.0.0.1:${ports[n]}"; done
for n in 1 2 3 4; do
  ("$bin" serve --node-id "$n" --listen "127.0.0.1:${ports[n]}" --data-dir "$work/node-$n" --peers "$peers" \
    --metrics-listen off >>"$work/node-$n.log" 2>&1 &)
done
addr=http://127.0.0.1:${ports[1]}
for _ in $(seq 1 300); do "$bin" topic create big -p 1 -r 3 -b "$addr" >/dev/null 2>&1 && break; sleep 0.1; done
records=$(python3 -c "print(int($gib * (1 << 20)))")
# Partition 0's leader (raw produce goes straight to it), replicas, and the move's target.
placement() {
  "$bin" cluster describe -b "$addr" --format json | python3 -c '
import json, sys
d = json.load(sys.stdin)
p = [p for p in d["partitions"] if p["topic"] == "big"][0]
reps = p["replicas"]
spare = [b for b in (1, 2, 3, 4) if b not in reps][0]
lead = p["leader"]
print(lead, ",".join(map(str, reps)), ",".join(str(spare if b == lead else b) for b in reps), spare)'
}
for _ in $(seq 1 100); do read -r leader replicas target spare < <(placement) && [ "$leader" != 0 ] && break; sleep 0.1; done
lead_addr=http://127.0.0.1:${ports[leader]}
echo "filling topic big (1 partition, RF 3 on [$replicas], leader $leader) with $records records of 1 KiB ($gib GiB)"
"$bin" bench produce -b "$lead_addr" --topic big --records "$records" --record-size 1024 --batch-records 256 \
  --acks all --quiet --json >"$work/fill.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  filled in %.0f s (%.0f MB/s)" % (r["elapsed_s"], r["mb_per_s"]))' "$work/fill.json"
read -r leader replicas target spare < <(placement)
echo "  moving partition 0 from [$replicas] to [$target]: the leader's (broker $leader) replica goes to broker $spare"
paced() { # $1: seconds, $2: output
  "$bin" bench produce -b "$addr" --topic big --records 100000000 --duration "$1" --rate "$rate" \
    --record-size 1024 --sdk --acks all --quiet --json >"$2"
}
show() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r["latency"]; print("  %s: %.0f records/s (%.1f MB/s), ack latency p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (sys.argv[2], r["records_per_s"], r["mb_per_s"], l["p50_us"]/1e3, l["p99_us"]/1e3, l["max_us"]/1e3))' "$1" "$2"; }
paced 10 "$work/quiet.json"
show "$work/quiet.json" "paced producer ($rate/s), nothing moving"
echo "{\"version\":1,\"partitions\":[{\"topic\":\"big\",\"partition\":0,\"replicas\":[$target]}]}" >"$work/plan.json"
paced "${MOVE_WINDOW:-30}" "$work/moving.json" &
producer=$!
sleep 2
t0=$(now_ms)
"$bin" partition reassign --plan "$work/plan.json" --throttle "$throttle" --wait --timeout 1800 -b "$addr" >"$work/move.log"
took=$(($(now_ms) - t0))
echo "  move done in $((took / 1000)).$(((took % 1000) / 100)) s ($(python3 -c "print(round($gib * 1073.741824 / ($took / 1000.0)))") MB/s; throttle ${throttle:-default} B/s, 0 = the 64 MiB/s default)"
wait "$producer"
show "$work/moving.json" "paced producer ($rate/s), during and around the move"
read -r leader replicas target spare < <(placement)
echo "  after: replicas [$replicas], leader $leader"
