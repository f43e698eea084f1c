//! Page hinting end to end under real KVM: the guest tells the VMM which
//! pages are unused or volatile, the VMM's reclaimer holds a host budget by
//! discarding them, and the guest never loses data. The same run without
//! hinting cannot hold the budget.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::guest::StatsFile;
use common::{hypercall_errors, json_u64, Disk};

/// Slack over the budget allowed for resident memory at the end of a run:
/// one reclaim interval's worth of new pages plus what is stable by design
/// (kernel image, heap, page tables, the active quarter of the cache).
const SLACK: u64 = 6 << 20;

const BUDGET: &str = "12M";
const BUDGET_BYTES: u64 = 12 << 20;

#[test]
fn read_scan_holds_the_budget_with_hinting_and_not_without() {
    // 20 MiB of files in 32 MiB of RAM: without hints the cache grows past
    // the 12 MiB budget and its slack.
    let disk = Disk::new("scan", 5, "4M");
    let flags = format!("--mem 32M --vcpus 1 --host-budget {BUDGET}");
    let r = disk.boot_as("with.json", &flags, "copies=1 scan-read 2");
    r.expect_status(0);
    assert_eq!(r.one("scan-read", "errors"), 0, "{}", r.stdout);
    assert_eq!(r.one("scan-read", "hint_errors"), 0, "{}", r.stdout);
    let s = r.stats();
    let resident = json_u64(&s, "memory.resident_bytes");
    assert!(json_u64(&s, "reclaim.pages_discarded") > 0, "{s}");
    assert!(
        resident <= BUDGET_BYTES + SLACK,
        "resident {} MiB over budget {BUDGET} + slack {} MiB: {s}",
        resident >> 20,
        SLACK >> 20
    );
    // Batching: far fewer exits than hints.
    let hints = r.one("scan-read", "hints");
    let batches = r.one("scan-read", "hint_batches");
    assert!(
        hints > 0 && batches * 4 <= hints,
        "hints {hints} batches {batches}"
    );

    let flags = format!("{flags} --no-hinting");
    let r = disk.boot_as("without.json", &flags, "copies=1 scan-read 2");
    r.expect_status(0);
    assert_eq!(r.one("scan-read", "errors"), 0);
    assert_eq!(r.one("scan-read", "hints"), 0);
    let s = r.stats();
    assert!(
        json_u64(&s, "memory.resident_bytes") > BUDGET_BYTES + SLACK,
        "without hinting the budget should not hold: {s}"
    );
    assert_eq!(json_u64(&s, "reclaim.pages_discarded"), 0, "{s}");
}

#[test]
fn freed_anonymous_memory_is_reclaimed() {
    let stats = StatsFile::new("hint-churn");
    let r = stats.boot("--mem 64M --host-budget 8M", "churn 3 8");
    r.expect_status(0)
        .expect_results("churn", "errors", &[0, 0]);
    let s = r.stats();
    assert!(json_u64(&s, "reclaim.pages_discarded") > 0, "{s}");
    // The frees reach the host through the shared table (the default),
    // not as SET_UNUSED hypercalls.
    assert!(r.sum("churn", "shared_hints") > 0, "{}", r.stdout);
    assert_eq!(json_u64(&s, "hypercalls.set_unused"), 0, "{s}");
    assert!(
        json_u64(&s, "memory.resident_bytes") <= (8 << 20) + SLACK,
        "{s}"
    );
}

#[test]
fn garbage_hypercalls_are_counted_and_survived() {
    let stats = StatsFile::new("hint-bad");
    let r = stats.boot("--vcpus 2", "bad-hints");
    r.expect_status(0)
        .expect_stdout("bad-hints: all refused as expected");
    let s = r.stats();
    let errors = &s["hypercalls"]["errors"];
    let total = hypercall_errors(&s);
    assert!(total >= 6, "errors {errors}");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}
