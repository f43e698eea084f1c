#!/usr/bin/env bash
# The operators' API: what GET /memory costs at 16 GiB of guest RAM (the
# shared table counted by state, before and after the word-at-a-time
# census; the whole answer; the round trip over the socket, goal < 1 ms)
# and what it costs a vCPU storing page states meanwhile. Needs no KVM.
# BENCH_API_GIB=64 measures another size of guest RAM.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p pagehint-hypervisor --bench api "$@"
