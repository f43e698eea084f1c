//! A guest that uses the shared page-state table as one written from
//! `docs/abi.md` alone would (the kernel diagnostic `abi-outsider`, in
//! `guest-kernel/src/diag/outsider.rs`), under real KVM and a host budget
//! small enough that the host drops every frame it makes volatile.
//!
//! Regression tests for what such a guest found: a kernel-mode touch of a
//! dropped frame left its entry saying "intact" (the VMM's livelock
//! breaker rewrote it to stable) for a page it had zeroed, and tables
//! outside the memory map's RAM were accepted. Both fail on the code
//! before the fix: the first as `A: frame ... told intact, holds Zeroes`,
//! the second as a refused real table after the odd one was taken.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{boot, json_u64 as get, read_stats, results};

#[test]
fn a_dropped_frame_is_never_reported_intact_and_odd_tables_are_refused() {
    let dir = std::env::temp_dir().join(format!("vmm-test-outsider-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stats = dir.join("s.json");
    let stats = stats.to_str().unwrap();
    let r = boot(
        &[
            "--mem",
            "32M",
            "--vcpus",
            "2",
            "--host-budget",
            "256K",
            "--reclaim-interval",
            "10",
            "--stats",
            stats,
        ],
        &["hints=batched", "abi-outsider"],
    );
    let one = |key: &str| {
        let v = results(&r.stdout, "abi-outsider", key);
        assert_eq!(v.len(), 1, "{key}: {}\n{}", r.stdout, r.stderr);
        v[0]
    };
    assert_eq!(one("errors"), 0, "{}\n{}", r.stdout, r.stderr);
    r.expect_status(0);
    let frames = one("frames");
    // The budget is far below what the guest keeps resident: the host
    // takes every volatile frame, so every group meets dropped frames.
    assert!(one("dropped") >= frames / 2, "{}", r.stdout);
    assert_eq!(one("dropped") + one("intact"), frames, "{}", r.stdout);
    let touches = one("kernel_touches");
    assert!(touches >= frames / 4, "{}", r.stdout);
    let doc = read_stats(stats);
    // Each kernel touch of a dropped or armed frame ended with the frame
    // backed with zeroes (after a #VE the kernel returned from, on
    // hardware KVM; at once here, where kernel code is emulated), counted.
    let broken = get(&doc, "discard_faults.livelocks_broken");
    assert_eq!(broken, touches, "{doc}");
    assert_eq!(
        get(&doc, "discard_faults.protocol_violations"),
        broken,
        "{doc}"
    );
    // Three refused placements (0xa0000, 0x9f000, misaligned), one count,
    // one second registration; exactly one table taken.
    assert_eq!(get(&doc, "hypercalls.set_state_table"), 6, "{doc}");
    assert!(get(&doc, "hypercalls.errors.bad_block") >= 3, "{doc}");
    let _ = std::fs::remove_dir_all(&dir);
}
