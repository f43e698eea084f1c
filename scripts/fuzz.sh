#!/usr/bin/env bash
# Fuzzes everything that parses guest or user input (fuzz/fuzz_targets/),
# each target for SECONDS (default 60), one after the other, with
# libFuzzer, and prints per target the executions, coverage and crashes,
# then one summary line. Exits non-zero if a target crashed (its input and
# its panic are shown) or the build failed.
#
# Built with the pinned stable toolchain and plain cargo, not cargo-fuzz
# (which needs nightly for its sanitizer flags): the coverage
# instrumentation cargo-fuzz would ask for is stable rustc's
# (-Cpasses=sancov-module and the -sanitizer-coverage-* LLVM options), with
# debug assertions and overflow checks on. `--target` keeps those flags off
# build scripts and proc-macros; the target directory is fuzz/target.
# `--locked`: fuzz/Cargo.lock is committed, and a dependency added to the
# crates under test must be recorded there (a plain `cargo build` in fuzz/).
#
# Each run starts from a copy of the committed seed corpus
# (fuzz/corpus/TARGET/); what libFuzzer finds goes to the run's own
# directory (FUZZ_OUT, default a fresh one under fuzz/target/runs/), never
# into the repository. FUZZ_TARGETS="a b" runs only those targets. This
# script must never run two targets at once (the machine is shared).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
case "$secs" in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2 ;;
esac
all=(hypercall_block hint_batch state_table elf_loader disk_image virtio_chain mmio_registers api_request)
read -r -a targets <<< "${FUZZ_TARGETS:-${all[*]}}"
triple=x86_64-unknown-linux-gnu
target_dir=$PWD/fuzz/target

echo "== build (stable cargo, libFuzzer with SanitizerCoverage)"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
bin_args=()
for t in "${targets[@]}"; do bin_args+=(--bin "$t"); done
(cd fuzz && cargo build --release --locked --target "$triple" --target-dir "$target_dir" "${bin_args[@]}")

out=${FUZZ_OUT:-$target_dir/runs/$(date -u +%Y%m%dT%H%M%SZ)-$$}
mkdir -p "$out"
echo "== run: ${#targets[@]} targets, ${secs} s each; corpus copies, logs and crashes in $out"

total_execs=0
total_crashes=0
crashed=()
for t in "${targets[@]}"; do
  corpus=$out/corpus/$t
  artifacts=$out/artifacts/$t
  log=$out/$t.log
  mkdir -p "$corpus" "$artifacts"
  if [ -d "fuzz/corpus/$t" ]; then
    cp -r "fuzz/corpus/$t/." "$corpus/"
  fi
  seeds=$(find "$corpus" -type f | wc -l)
  set +e
  "$target_dir/$triple/release/$t" "$corpus" \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1
  status=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  execs=${execs:-0}
  # The last status line libFuzzer printed: coverage (cov) and features (ft).
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")
  found=$(find "$corpus" -type f | wc -l)
  crashes=$(find "$artifacts" -type f | wc -l)
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    # Died without an artifact (out of memory, killed): still a failure.
    crashes=1
  fi
  printf '%-16s executions %9d  cov %5s  ft %6s  corpus %4d -> %4d  crashes %d\n' \
    "$t" "$execs" "${cov:-?}" "${ft:-?}" "$seeds" "$found" "$crashes"
  total_execs=$((total_execs + execs))
  if [ "$crashes" -gt 0 ]; then
    total_crashes=$((total_crashes + crashes))
    crashed+=("$t")
    echo "  libFuzzer exit status $status; log $log"
    find "$artifacts" -type f | sed 's/^/  crash input: /'
    grep -m1 -A4 -E "panicked at|ERROR: libFuzzer|deadly signal" "$log" | sed 's/^/  | /' || true
  fi
done

echo "fuzz summary: ${#targets[@]} targets, ${secs} s each, $total_execs executions, $total_crashes crashes${crashed[*]:+ (${crashed[*]})}"
[ "$total_crashes" -eq 0 ]
