//! The shared page-state table end to end under real KVM: the guest changes
//! frame states in guest memory with no exit while the host takes nothing;
//! under a budget the host takes unused and volatile frames from the same
//! table, and a guest that scribbles garbage into entries no workload uses
//! neither crashes the VMM nor costs a workload a byte. Guests that keep to
//! the hypercalls (ABI version 1 as it was) work unchanged beside it.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::guest::boot_str;
use common::{json_u64 as get, Disk};

/// One scan's figures.
struct Scan {
    hints: u64,
    batches: u64,
    shared: u64,
    doc: serde_json::Value,
}

/// `scan-mmap 1` on one vCPU over `disk` with `vmm_extra` and `guest_extra`.
fn scan(disk: &Disk, name: &str, vmm_extra: &[&str], guest_extra: &[&str]) -> Scan {
    let flags = format!("--mem 64M --vcpus 1 {}", vmm_extra.join(" "));
    let guest = format!("copies=1 {} scan-mmap 1", guest_extra.join(" "));
    let r = disk.boot_as(name, &flags, &guest);
    r.expect_status(0);
    let one = |key: &str| r.one("scan-mmap", key);
    assert_eq!(one("errors"), 0, "{}", r.stdout);
    assert_eq!(one("hint_errors"), 0, "{}", r.stdout);
    Scan {
        hints: one("hints"),
        batches: one("hint_batches"),
        shared: one("shared_hints"),
        doc: r.stats(),
    }
}

#[test]
fn with_no_budget_shared_states_cost_no_exit_and_old_guests_still_batch() {
    let disk = Disk::new("shared-nobudget", 6, "1M");
    // The default: the table is offered and taken.
    let s = scan(&disk, "shared.json", &[], &[]);
    assert!(
        s.hints > 0 && s.shared == s.hints,
        "{} {}",
        s.hints,
        s.shared
    );
    assert_eq!(s.batches, 0, "no exit carried a hint");
    assert_eq!(get(&s.doc, "hypercalls.hint_batch"), 0, "{}", s.doc);
    assert_eq!(get(&s.doc, "hypercalls.set_state_table"), 1, "{}", s.doc);
    // A guest that does not take the table (as an ABI-1 guest) batches.
    let old = scan(&disk, "old.json", &[], &["hints=batched"]);
    assert!(
        old.batches > 0 && old.shared == 0,
        "{} {}",
        old.batches,
        old.shared
    );
    assert_eq!(get(&old.doc, "hypercalls.set_state_table"), 0);
    assert!(get(&old.doc, "hypercalls.make_volatile") > 0, "{}", old.doc);
    // And the VMM can withhold the table: CPUID then lacks SHARED_STATES.
    let b = scan(&disk, "batched.json", &["--hints", "batched"], &[]);
    assert!(b.batches > 0 && b.shared == 0);
    assert_eq!(get(&b.doc, "hypercalls.set_state_table"), 0);
    let u = scan(&disk, "unbatched.json", &["--hints", "unbatched"], &[]);
    assert!(u.batches > 4 * b.batches, "{} vs {}", u.batches, b.batches);
}

#[test]
fn under_a_budget_the_host_takes_from_the_table_despite_a_scribbling_guest() {
    let disk = Disk::new("shared-budget", 5, "4M");
    let flags = "--mem 32M --vcpus 2 --host-budget 10M --reclaim-interval 5";
    let r = disk.boot_stats(flags, "scribble=32 scan-mmap 2");
    r.expect_status(0)
        .expect_stdout("guest: scribbling 32 shared-table entries a tick")
        .expect_results("scan-mmap", "errors", &[0, 0]);
    let doc = r.stats();
    assert!(get(&doc, "reclaim.pages_discarded") > 0, "{doc}");
    // The guest learnt of the drops through its table (a make-stable that
    // found DISCARDED, or a discard fault). Whether any drop comes back as
    // a discard fault depends on timing here (the shared hit path takes
    // back the pages ahead of a scan); tests/discard.rs requires them.
    let learnt = r.sum("scan-mmap", "volatile_discarded");
    assert!(learnt > 0, "{}", r.stdout);
    assert_eq!(
        get(&doc, "discard_faults.injected"),
        get(&doc, "discard_faults.events"),
        "every discard fault was delivered: {doc}"
    );
    assert_eq!(get(&doc, "discard_faults.protocol_violations"), 0, "{doc}");
    // The only hint exits are SET_STABLE for frames the host armed.
    let hints = r.sum("scan-mmap", "shared_hints");
    let exits = get(&doc, "hypercalls.hint_batch");
    assert!(
        hints > 0 && exits * 20 < hints,
        "{exits} exits for {hints} changes"
    );
    assert!(!r.stderr.contains("internal error"), "{}", r.stderr);
}

#[test]
fn the_instruction_counter_measures_the_hint_path() {
    let disk = Disk::new("shared-cost", 1, "64K");
    let r = disk.boot("--mem 32M --vcpus 1 --count-instructions", "hint-cost");
    r.expect_status(0);
    let one = |key: &str| r.results("hint-cost", key)[0];
    assert!(one("hit_stable") > 0, "{}", r.stdout);
    assert!(one("hit_aged") > one("hit_stable"), "{}", r.stdout);
    // Without the flag the port is not served and the program says so.
    let r = boot_str("--mem 32M --vcpus 1", "hint-cost");
    r.expect_status(1)
        .expect_stdout("no instruction counter (run the VMM with --count-instructions)");
}
