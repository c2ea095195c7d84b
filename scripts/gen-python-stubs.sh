#!/usr/bin/env bash
# Generates the Python SDK's protobuf and gRPC stubs from proto/tidelog/v1 into
# sdk-python/src/tidelog/v1 (committed, so `pip install` needs no code generator).
#
#   scripts/gen-python-stubs.sh           regenerate
#   scripts/gen-python-stubs.sh --check   fail if the committed stubs are stale (the test suite)
#
# Needs grpcio-tools (pinned in sdk-python/requirements-dev.txt; scripts/tools.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$PY" -m grpc_tools.protoc -I proto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/tidelog/v1/*.proto
dest=sdk-python/src/tidelog/v1
if [ "${1:-}" = "--check" ]; then
  for f in "$out"/tidelog/v1/*; do
    if ! cmp -s "$f" "$dest/$(basename "$f")"; then
      echo "stale Python stubs: $dest/$(basename "$f") differs from proto/ (run scripts/gen-python-stubs.sh)" >&2
      exit 1
    fi
  done
  echo "Python stubs are up to date with proto/"
  exit 0
fi
mkdir -p "$dest"
rm -f "$dest"/*_pb2*.py "$dest"/*_pb2*.pyi
cp "$out"/tidelog/v1/* "$dest/"
echo "generated $(ls "$out"/tidelog/v1 | wc -l) files into $dest"
