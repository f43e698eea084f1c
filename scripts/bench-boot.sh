#!/usr/bin/env bash
# Boot-time and exit-cost benchmark: this VMM against QEMU microvm on the
# same guest, one run, medians and ratios. Needs /dev/kvm; QEMU optional.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench boot "$@"
