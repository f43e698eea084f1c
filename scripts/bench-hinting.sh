#!/usr/bin/env bash
# The four hinting modes side by side (--no-hinting, --hints shared,
# batched, unbatched): workload time, state changes and exits per state
# change with no host budget (file scans, the cache-hit path, anonymous
# churn; 3 interleaved runs each), then memory given back and integrity
# under a host budget. About ten minutes here; keep the machine otherwise
# idle. Needs /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench hinting "$@"
