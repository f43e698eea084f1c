//! Page hinting end to end under real KVM: the guest tells the VMM which
//! pages are unused or volatile, the VMM's reclaimer holds a host budget by
//! discarding them, and the guest never loses data. The same run without
//! hinting cannot hold the budget.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{boot, json_u64, read_stats, results, Disk};

/// Slack over the budget allowed for resident memory at the end of a run:
/// one reclaim interval's worth of new pages plus what is stable by design
/// (kernel image, heap, page tables, the active quarter of the cache).
const SLACK: u64 = 6 << 20;

fn result_field(stdout: &str, program: &str, key: &str) -> u64 {
    let v = results(stdout, program, key);
    assert_eq!(v.len(), 1, "one {program} result expected in\n{stdout}");
    v[0]
}

const BUDGET: &str = "12M";
const BUDGET_BYTES: u64 = 12 << 20;

#[test]
fn read_scan_holds_the_budget_with_hinting_and_not_without() {
    // 20 MiB of files in 32 MiB of RAM: without hints the cache grows past
    // the 12 MiB budget and its slack.
    let disk = Disk::new("scan", 5, "4M");
    let with = disk.path("with.json");
    let r = boot(
        &[
            "--mem",
            "32M",
            "--vcpus",
            "1",
            "--disk",
            &disk.image(),
            "--host-budget",
            BUDGET,
            "--stats",
            &with,
        ],
        &["copies=1", "scan-read", "2"],
    );
    r.expect_status(0);
    assert_eq!(
        result_field(&r.stdout, "scan-read", "errors"),
        0,
        "{}",
        r.stdout
    );
    assert_eq!(
        result_field(&r.stdout, "scan-read", "hint_errors"),
        0,
        "{}",
        r.stdout
    );
    let s = read_stats(&with);
    let resident = json_u64(&s, "memory.resident_bytes");
    assert!(json_u64(&s, "reclaim.pages_discarded") > 0, "{s}");
    assert!(
        resident <= BUDGET_BYTES + SLACK,
        "resident {} MiB over budget {BUDGET} + slack {} MiB: {s}",
        resident >> 20,
        SLACK >> 20
    );
    // Batching: far fewer exits than hints.
    let hints = result_field(&r.stdout, "scan-read", "hints");
    let batches = result_field(&r.stdout, "scan-read", "hint_batches");
    assert!(
        hints > 0 && batches * 4 <= hints,
        "hints {hints} batches {batches}"
    );

    let without = disk.path("without.json");
    let r = boot(
        &[
            "--mem",
            "32M",
            "--vcpus",
            "1",
            "--disk",
            &disk.image(),
            "--host-budget",
            BUDGET,
            "--stats",
            &without,
            "--no-hinting",
        ],
        &["copies=1", "scan-read", "2"],
    );
    r.expect_status(0);
    assert_eq!(result_field(&r.stdout, "scan-read", "errors"), 0);
    assert_eq!(result_field(&r.stdout, "scan-read", "hints"), 0);
    let s = read_stats(&without);
    assert!(
        json_u64(&s, "memory.resident_bytes") > BUDGET_BYTES + SLACK,
        "without hinting the budget should not hold: {s}"
    );
    assert_eq!(json_u64(&s, "reclaim.pages_discarded"), 0, "{s}");
}

#[test]
fn freed_anonymous_memory_is_reclaimed() {
    let dir = std::env::temp_dir().join(format!("vmm-hint-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stats = dir.join("churn.json");
    let r = boot(
        &[
            "--mem",
            "64M",
            "--host-budget",
            "8M",
            "--stats",
            stats.to_str().unwrap(),
        ],
        &["churn", "3", "8"],
    );
    r.expect_status(0);
    assert_eq!(
        results(&r.stdout, "churn", "errors"),
        vec![0, 0],
        "{}",
        r.stdout
    );
    let s = read_stats(stats.to_str().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(json_u64(&s, "reclaim.pages_discarded") > 0, "{s}");
    // The frees reach the host through the shared table (the default),
    // not as SET_UNUSED hypercalls.
    assert!(
        results(&r.stdout, "churn", "shared_hints")
            .iter()
            .sum::<u64>()
            > 0,
        "{}",
        r.stdout
    );
    assert_eq!(json_u64(&s, "hypercalls.set_unused"), 0, "{s}");
    assert!(
        json_u64(&s, "memory.resident_bytes") <= (8 << 20) + SLACK,
        "{s}"
    );
}

#[test]
fn garbage_hypercalls_are_counted_and_survived() {
    let dir = std::env::temp_dir().join(format!("vmm-hint-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stats = dir.join("bad.json");
    let r = boot(
        &["--vcpus", "2", "--stats", stats.to_str().unwrap()],
        &["bad-hints"],
    );
    r.expect_status(0)
        .expect_stdout("bad-hints: all refused as expected");
    let s = read_stats(stats.to_str().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    let errors = &s["hypercalls"]["errors"];
    let total: u64 = errors
        .as_object()
        .expect("errors object")
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert!(total >= 6, "errors {errors}");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}
