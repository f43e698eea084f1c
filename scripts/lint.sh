#!/usr/bin/env bash
# Formatting and clippy for every crate, the guest binaries included (they
# only build for x86_64-unknown-none). Warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
# The fuzz crate is its own workspace (scripts/fuzz.sh builds it).
(cd fuzz && cargo fmt -- --check)
cargo clippy --workspace --all-targets -- -D warnings
# The guest binaries: the user programs first, since the kernel embeds them.
guest=target/guest-lint
cargo clippy -p guest-user --features user --target x86_64-unknown-none --target-dir "$guest" -- -D warnings
cargo build -p guest-user --features user --target x86_64-unknown-none --target-dir "$guest"
GUEST_USER_ELF="$PWD/$guest/x86_64-unknown-none/debug/guest-user" \
  cargo clippy -p guest-kernel --features kernel --target x86_64-unknown-none --target-dir "$guest" -- -D warnings
