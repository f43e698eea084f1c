//! The short soak CI runs (`scripts/soak.sh` runs the long one): the
//! `cycle` workload turns pages over on both vCPUs under a tight host
//! budget, every block verified, while every CPU sends garbage hypercalls
//! and scribbles garbage into shared-table entries no workload uses. The
//! guest must lose no byte, the VMM must answer every garbage call with
//! an error and go on, and the cycles must really happen (the host took
//! pages the guest then found gone and read again).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{hypercall_errors, json_u64 as get, results, Disk, Run};

/// One boot of `cycle` on both vCPUs of a 32 MiB guest over a fresh
/// 6 MiB disk (`tag` names it) under `budget`, the reclaimer every
/// `interval` ms, with `guest` as the guest's command line: the disk
/// (which holds the stats file), the run and the console for messages.
fn cycle_boot(tag: &str, budget: &str, interval: &str, guest: &str) -> (Disk, Run, String) {
    let disk = Disk::new(tag, 3, "2M");
    let flags = format!("--mem 32M --vcpus 2 --host-budget {budget} --reclaim-interval {interval}");
    let r = disk.boot_stats(&flags, guest);
    let console = format!("{}\n{}", r.stdout, r.stderr);
    (disk, r, console)
}

#[test]
fn discard_and_refault_cycles_beside_garbage_hypercalls_lose_nothing() {
    let guest = "hcnoise=1 scribble=2 copies=2 cycle 30 10";
    let (_disk, r, console) = cycle_boot("soak", "6M", "10", guest);
    r.expect_status(0);
    let errors = results(&r.stdout, "cycle", "errors");
    assert_eq!(errors, vec![0, 0], "{console}");
    let cycles = *r.results("cycle", "cycles").iter().max().unwrap();
    let doc = r.stats();
    // Every cycle is a page the host took: the guest cannot find more
    // pages gone than the host dropped.
    let discarded = get(&doc, "reclaim.pages_discarded");
    assert!(cycles > 0, "no page was taken and read again: {console}");
    assert!(cycles <= discarded, "{cycles} > {discarded}: {doc}");
    assert!(get(&doc, "discard_faults.injected") > 0, "{doc}");
    // The noise was sent and refused.
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("guest: hcnoise:"))
        .unwrap_or_else(|| panic!("no noise count: {console}"));
    let sent: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let refused: u64 = line.split_whitespace().nth(6).unwrap().parse().unwrap();
    assert!(sent > 0 && refused > 0, "{line}");
    let answered = hypercall_errors(&doc);
    assert!(answered >= refused, "{answered} < {refused}: {doc}");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// The noise at its heaviest beside the same workload, under a tighter
/// budget: 200 garbage hypercalls every 10 ticks on each CPU, so that the
/// bursts of the two CPUs overlap and the VMM serves one CPU's hint batch
/// while the other CPU fills its own. Each CPU must fill a batch page of
/// its own (`guest_logic::noise_plan`): with one page for all, the VMM read
/// entries half rewritten by the other CPU (the frame of one entry with
/// the count of another: "names pfn 0x408+888"), and such a `SET_UNUSED`
/// had the host drop frames in use, a page-table root among them, under
/// a running CPU: a triple fault (`KVM_EXIT_SHUTDOWN`, status 80). That
/// needs a torn read and then an unlucky operation, so this catches the
/// old noise only some of the time; `guest_logic::noise_plan`'s unit tests
/// pin the rule itself.
#[test]
fn heavy_noise_from_every_cpu_never_names_a_frame_in_use() {
    let guest = "hcnoise=200 scribble=8 copies=2 cycle 60 20";
    let (_disk, r, console) = cycle_boot("soak-heavy-noise", "4M", "5", guest);
    assert!(
        !r.stderr.contains("triple fault"),
        "the guest lost a frame in use: {console}"
    );
    r.expect_status(0);
    assert_eq!(
        results(&r.stdout, "cycle", "errors"),
        vec![0, 0],
        "{console}"
    );
    assert!(!r.stdout.contains("killed"), "{console}");
    let doc = r.stats();
    assert!(get(&doc, "hypercalls.hint_batch") > 0, "{doc}");
    assert!(get(&doc, "discard_faults.injected") > 0, "{doc}");
}
