#!/usr/bin/env bash
# Exits per hint (batching), the hint path's guest cost and resident memory,
# with and without hinting, on the file-scan workload. Needs /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench hinting "$@"
