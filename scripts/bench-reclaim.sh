#!/usr/bin/env bash
# Host reclaim: what one reclaimer round costs at 256 MiB, 3 GiB and 16 GiB
# (the full residency reading both ways side by side, PAGEMAP_SCAN and
# pread on the same pages with the ratio, a round with nothing changed, the
# state scan), then throughput: the reclaimer's discard path against raw
# madvise(MADV_DONTNEED) over the same pages, contiguous and scattered, in
# one run, with the ratio. Needs no KVM.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench reclaim "$@"
