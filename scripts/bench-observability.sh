#!/usr/bin/env bash
# What observability costs: the same load against a release broker with tracing off, with
# /metrics scraped every second, with the broker's spans exported to an OTLP receiver at 1%
# and at 100% sampling, and with the load tool's own spans (the SDK's `send` span per record)
# exported at 100%. Per configuration: raw produce throughput (pre-encoded batches), SDK
# produce throughput and paced end-to-end latency through the SDK.
#
#   scripts/bench-observability.sh            # about 4 minutes
#   QUICK=1 scripts/bench-observability.sh    # shorter runs (noisier)
#
# The OTLP receiver is sdk-python/tests/otlp_receiver.py (it keeps spans in memory and counts
# them); the table goes to stdout, every run's JSON to target/bench/observability.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh >/dev/null
QUICK=${QUICK:-0}
n=$([ "$QUICK" = 1 ] && echo 300000 || echo 3000000)
sdk_n=$([ "$QUICK" = 1 ] && echo 100000 || echo 1000000)
e2e_n=$([ "$QUICK" = 1 ] && echo 20000 || echo 60000)
out=target/bench/observability.json
mkdir -p target/bench
: >"$out"
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" tidelog-obs.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --bin tidelog >&2
bin=target/release/tidelog

# receiver: an OTLP receiver in the background (a fresh one per traced configuration, stopped
# after it, so parsing spans never overlaps another configuration's run); sets $endpoint.
receiver() {
  rm -f "$work/otlp"
  .venv/bin/python - "$work/otlp" <<'PY' &
import signal, sys, time
sys.path.insert(0, "sdk-python/tests")
from otlp_receiver import OtlpReceiver
r = OtlpReceiver()
open(sys.argv[1], "w").write(r.endpoint)
signal.signal(signal.SIGTERM, lambda *_: (print(f"otlp receiver: {len(r.spans())} spans", file=sys.stderr), r.stop(), sys.exit(0)))
while True:
    time.sleep(1)
PY
  receiver_pid=$!
  pids+=("$receiver_pid")
  for _ in $(seq 1 100); do [ -s "$work/otlp" ] && break; sleep 0.1; done
  endpoint=$(cat "$work/otlp")
}

# run NAME BROKER_ENV CLIENT_ENV: a fresh broker with BROKER_ENV (space-separated VAR=value,
# or -), the three loads with CLIENT_ENV, one JSON line each.
run() {
  local name=$1 broker_env=$2 client_env=$3
  [ "$broker_env" = - ] && broker_env=
  [ "$client_env" = - ] && client_env=
  rm -rf "$work/data"
  # shellcheck disable=SC2086
  env $broker_env "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>"$work/err" &
  local broker=$!
  for _ in $(seq 1 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
  local addr metrics scraper=
  addr=http://$(awk '{print $4}' "$work/out")
  metrics=$(awk '{print $NF}' "$work/out")
  if [ "$name" = scraped_1s ]; then
    (while true; do curl -s "$metrics" >/dev/null; sleep 1; done) &
    scraper=$!
  fi
  local common=(--broker "$addr" --quiet --json --duration 60)
  for load in "produce --topic raw --records $n --batch-records 256" \
              "produce --topic sdk --records $sdk_n --sdk --batch-records 256" \
              "e2e --topic e2e --rate 5000 --records $e2e_n --sdk --linger-ms 0 --warmup 2"; do
    local label=${load%% *}
    [[ $load == *--sdk* ]] && label=${label}_sdk
    # shellcheck disable=SC2086
    env $client_env "$bin" bench $load "${common[@]}" | sed "s/^{/{\"config\":\"$name\",\"load\":\"$label\",/" >>"$out"
  done
  [ -n "$scraper" ] && kill "$scraper"
  kill "$broker"
  wait "$broker" 2>/dev/null || true
}

traced() { # traced NAME SAMPLER ARG WHERE(broker|client)
  receiver
  local vars="OTEL_EXPORTER_OTLP_ENDPOINT=$endpoint OTEL_TRACES_SAMPLER=$2 OTEL_TRACES_SAMPLER_ARG=$3"
  if [ "$4" = broker ]; then run "$1" "$vars" -; else run "$1" - "$vars"; fi
  kill "$receiver_pid"
  wait "$receiver_pid" 2>/dev/null || true
}

# A warm-up run (discarded), then every configuration twice, interleaved: this machine's
# noise is larger than some of the effects, and the table keeps each configuration's best.
run warmup - -
: >"$out"
for _ in 1 2; do
  run off - -
  run scraped_1s - -
  traced broker_1pct traceidratio 0.01 broker
  traced broker_100pct always_on 1 broker
  traced client_100pct always_on 1 client
done

python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = {}
for r in rows:
    key = (r["config"], r["load"])
    p99 = (r.get("latency") or {}).get("p99_us")
    b = best.setdefault(key, {"rps": 0.0, "p50": None, "p99": None})
    b["rps"] = max(b["rps"], r["records_per_s"])
    if p99 is not None and (b["p99"] is None or p99 < b["p99"]):
        b["p99"], b["p50"] = p99, r["latency"]["p50_us"]
print("best of 2 runs each (records/s: highest; p50/p99 µs: from the run with the lowest p99)")
print(f"{'config':<14} {'load':<12} {'records/s':>12} {'vs off':>8} {'p50 µs':>8} {'p99 µs':>8} {'p99 vs off':>10}")
for (config, load), b in best.items():
    o = best[("off", load)]
    d = f"{(b['rps'] / o['rps'] - 1) * 100:+.1f}%"
    dp = f"{(b['p99'] / o['p99'] - 1) * 100:+.1f}%" if b["p99"] and o["p99"] else "-"
    p50 = b["p50"] if b["p50"] is not None else "-"
    p99 = b["p99"] if b["p99"] is not None else "-"
    print(f"{config:<14} {load:<12} {b['rps']:>12,.0f} {d:>8} {p50:>8} {p99:>8} {dp:>10}")
PY
