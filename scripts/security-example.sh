#!/usr/bin/env bash
# Runs README.md's "Securing a cluster" example exactly as written (the block between the
# security-example markers), on a free port in a temporary directory, and checks what it
# printed: certificates and a token made with openssl, a broker with TLS, tokens and ACLs,
# ACLs that let alice write and bob read, bob refused a write, quotas set, grpcurl over mTLS.
#
# Usage: scripts/security-example.sh [DIR_WITH_TIDELOG_BINARY]   (default target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bindir=$(cd "${1:-target/debug}" && pwd)
command -v openssl >/dev/null || { echo "security example: needs openssl"; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
venv="$PWD/.venv/bin"
# The example stops its broker itself (kill %1); if it failed midway, this does.
trap 'pkill -f "tidelog serve --config broker.toml" 2>/dev/null || true; rm -rf "$work"' EXIT
awk '/<!-- security-example:begin -->/{on=1; next} /<!-- security-example:end -->/{on=0} on' README.md \
  | sed '/^```/d' | sed "s/127\.0\.0\.1:9690/127.0.0.1:$port/g" > "$work/example.sh"
grep -q "tidelog serve --config broker.toml" "$work/example.sh" || { echo "security example: block not found in README.md"; exit 1; }
(cd "$work" && PATH="$bindir:$venv:$PATH" timeout 120 bash -euo pipefail example.sh >out.txt 2>err.txt) || {
  echo "security example failed:"; cat "$work/err.txt"; cat "$work/out.txt"; tail -20 "$work/broker.log" 2>/dev/null; exit 1; }
out="$work/out.txt"
expect() { grep -qF -- "$1" "$out" || { echo "security example: expected '$1' in:"; cat "$out"; exit 1; }; }
expect "principal=User:admin authenticated_by=mtls authorization=true superuser=true"
expect "principal=User:alice permission=allow operation=write resource=topic:orders"
expect "order-1"
expect "refused: bob may not write to orders"
expect "user=bob client_id=- consumer_byte_rate=1048576"
expect '"principal": "User:admin"'
grep -q "is not allowed" "$work/err.txt" || { echo "security example: bob's refusal did not say why"; exit 1; }
echo "security example (README.md, Securing a cluster): ok"
