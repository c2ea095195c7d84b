#!/usr/bin/env bash
# Records the current proto contract as the baseline that `buf breaking` checks against.
# Run it when a proto change lands (after checking it is backward compatible).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
.venv/bin/buf build -o proto/baseline/tidelog-v1.json
echo "wrote proto/baseline/tidelog-v1.json"
