#!/usr/bin/env bash
# Discard-fault round trip against a plain userfaultfd zero-page fault, in
# one run. Needs /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench discard_fault "$@"
