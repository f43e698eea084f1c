#!/usr/bin/env bash
# Page-cache hit/miss throughput and page-fault cost of the guest memory
# system, as times and counts, in one run. Needs /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench memory "$@"
