#!/usr/bin/env bash
# Host reclaim throughput: the reclaimer's discard path against raw
# madvise(MADV_DONTNEED) over the same pages, contiguous and scattered, in
# one run, with the ratio. Needs no KVM.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench reclaim "$@"
