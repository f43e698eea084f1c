#!/usr/bin/env bash
# Soak: discard-and-refault cycles on every vCPU for a long time, every
# byte verified, the VMM's own memory watched for a leak.
#
# Usage: scripts/soak.sh [--minutes M] [--noise] [--vcpus N]
#   --minutes M  how long the guest turns pages over (default 10)
#   --noise      beside the workload, every CPU sends garbage hypercalls
#                (hcnoise=1) and scribbles garbage into shared-table entries
#                no workload uses (scribble=2) every timer tick
#   --vcpus N    vCPUs (default 2); one `cycle` program runs on each
#
# One boot runs the `cycle` program (guest-user/src/cycle.rs): every file
# of a 6 MiB disk mapped read-only, pass after pass, each 4 KiB block
# verified, under a 6 MiB host budget, so the host takes pages the guest
# made volatile and the guest takes a discard fault and reads them back.
# One cycle is one page the host took that the guest found gone and read
# again (the kernel's `volatile_discarded`).
#
# Every 10 s the script samples the VMM's resident set (VmRSS) and its own
# part: VmRSS less the guest RAM the VMM finds resident
# (`memory.resident_bytes` of the stats file, written every second; the
# host budget bounds it). Prints cycles, cycles per minute, integrity
# errors, exits and madvise calls per cycle, both RSS figures after the
# first minute and at the end; exits non-zero on an integrity error, a
# failed run, or the VMM's own part grown by more than 1 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10; noise=""; vcpus=2
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --noise) noise="hcnoise=1 scribble=2"; shift ;;
    --vcpus) vcpus=$2; shift 2 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
# SOAK_VMM=PATH runs that binary instead of building this checkout's (an
# A/B of two builds, one after the other).
if [ -n "${SOAK_VMM:-}" ]; then
  vmm=$SOAK_VMM
else
  cargo build --release -p vmm >/dev/null
  vmm=target/release/vmm
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$vmm" gen-files --dir "$dir/files" --count 3 --size 2M >/dev/null
"$vmm" mkdisk --from "$dir/files" --out "$dir/disk.img" >/dev/null
seconds=$((minutes * 60))

# "VmRSS own" in KiB: the process's resident set, and that less the guest
# RAM resident at the last stats write.
rss_of() {
  local total guest
  total=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true)
  guest=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['memory']['resident_bytes'] // 1024)" \
    "$dir/s.json" 2>/dev/null || echo 0)
  [ -n "$total" ] || total=0
  echo "$total $((total - guest))"
}

"$vmm" run --mem 32M --vcpus "$vcpus" --disk "$dir/disk.img" --host-budget 6M \
  --reclaim-interval 10 --timeout $((seconds + 300)) --stats "$dir/s.json" --stats-interval 1000 \
  -- $noise copies="$vcpus" cycle "$seconds" 60 >"$dir/out" 2>"$dir/err" &
pid=$!
first=""; last=""; peak=0; t=0
while kill -0 "$pid" 2>/dev/null; do
  sleep 10; t=$((t + 10))
  read -r total own < <(rss_of "$pid")
  [ "$total" -gt 0 ] || continue
  last="$total $own"; [ "$own" -gt "$peak" ] && peak=$own
  # The first sample after a minute: boot and the first pass are over.
  if [ -z "$first" ] && [ "$t" -ge 60 ]; then first="$total $own"; fi
  line=$(grep '^cycle:' "$dir/out" | tail -1 || true)
  [ -n "$line" ] && [ $((t % 60)) -eq 0 ] && echo "t=${t}s rss=${total}KiB own=${own}KiB $line"
done
status=0; wait "$pid" || status=$?
if [ "$status" -ne 0 ]; then
  echo "soak: the VMM exited with status $status"; tail -5 "$dir/out"; tail -5 "$dir/err"
  exit 1
fi
python3 - "$dir/out" "$dir/s.json" "$minutes" "${first:-$last}" "$last" "$peak" "$noise" <<'EOF'
import json, re, sys
out, stats, minutes, first, last, peak, noise = sys.argv[1:]
(first_total, first), (last_total, last) = (map(int, v.split()) for v in (first, last))
results = [l for l in open(out) if l.startswith("result: program=cycle")]
field = lambda l, k: int(re.search(rf" {k}=(\d+)", l).group(1))
errors = sum(field(l, "errors") for l in results)
# The kernel's counters are global: every copy reports the same cycles.
cycles = max(field(l, "cycles") for l in results)
ms = max(field(l, "ms") for l in results)
s = json.load(open(stats))
rate = cycles / (ms / 60000)
peak = int(peak)
exits = sum(s["exits"].values())
print(f"soak: {len(results)} programs, {ms / 60000:.1f} min, {cycles} discard/refault cycles "
      f"({rate:.0f} a minute; 1,000,000 would take {1e6 / rate / 60:.1f} h), "
      f"{errors} integrity errors")
print(f"soak: host discarded {s['reclaim']['pages_discarded']} pages, "
      f"injected {s['discard_faults']['injected']} discard faults")
print(f"soak: per cycle {exits / max(cycles, 1):.2f} exits, "
      f"{s['reclaim']['madvise_calls'] / max(cycles, 1):.2f} madvise calls, "
      f"{s['discard_faults']['injected'] / max(cycles, 1):.2f} discard faults")
print(f"soak: VMM resident set {first_total} KiB after the first minute, {last_total} KiB at the end; "
      f"without guest RAM {first} KiB and {last} KiB (peak {peak} KiB)")
if noise:
    grep = [l for l in open(out) if "hcnoise:" in l]
    print("soak: " + (grep[-1].strip() if grep else "hcnoise: no count printed"))
    print(f"soak: VMM hypercall errors answered: {sum(s['hypercalls']['errors'].values())}")
bad = errors > 0 or not results or last - first > 1024
sys.exit(1 if bad else 0)
EOF
