# Sourced by the smoke scripts: starts a throwaway broker on a free loopback port.
# After `start_broker BIN`: $addr is host:port, $work a temp dir removed (with the broker) on exit.
work=$(mktemp -d)
broker_pid=
cleanup() {
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null; wait "$broker_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

start_broker() {
  "$1" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>"$work/err" &
  broker_pid=$!
  for _ in $(seq 1 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
  addr=$(grep -o '127\.0\.0\.1:[0-9]*' "$work/out" | head -1)
  [ -n "$addr" ] || { echo "broker did not start"; cat "$work/err"; exit 1; }
}
