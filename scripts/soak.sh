#!/usr/bin/env bash
# Soak: many discard/refault cycles on all vCPUs for a few minutes, every
# byte verified. Usage: scripts/soak.sh [ROUNDS] (default 6; each round is a
# fresh boot running the mmap scan and the copy-on-write workload under a
# tight host budget). Prints a summary; exits non-zero on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-6}
cargo build --release -p vmm >/dev/null
vmm=target/release/vmm
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$vmm" gen-files --dir "$dir/files" --count 5 --size 4M >/dev/null
"$vmm" mkdisk --from "$dir/files" --out "$dir/disk.img" >/dev/null
total_faults=0; total_errors=0; total_discarded=0
for i in $(seq 1 "$rounds"); do
  for prog in "scan-mmap 3" "copies=1 cow 6"; do
    if ! out=$("$vmm" run --mem 32M --vcpus 2 --disk "$dir/disk.img" --host-budget 10M \
          --stats "$dir/s.json" -- $prog 2>"$dir/err"); then
      echo "round $i ($prog): vmm failed"; echo "$out" | tail -5; tail -5 "$dir/err"
      exit 1
    fi
    errors=$(echo "$out" | grep '^result:' | sed -E 's/.* errors=([0-9]+).*/\1/' | paste -sd+ | bc)
    faults=$(python3 -c "import json;print(json.load(open('$dir/s.json'))['discard_faults']['injected'])")
    discarded=$(python3 -c "import json;print(json.load(open('$dir/s.json'))['reclaim']['pages_discarded'])")
    total_faults=$((total_faults + faults)); total_errors=$((total_errors + errors))
    total_discarded=$((total_discarded + discarded))
    echo "round $i ($prog): discard faults $faults, pages discarded $discarded, integrity errors $errors"
  done
done
echo "soak: $rounds rounds, $total_faults discard faults, $total_discarded pages discarded, $total_errors integrity errors"
[ "$total_errors" -eq 0 ]
