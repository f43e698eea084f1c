//! The application-like workloads under real KVM: `kv` (Zipf-distributed
//! block lookups through shared file mappings) and `build` (phases of
//! whole-file reads and anonymous memory) verify every byte they read, and
//! print the `bytes=` and `ms=` the experiment computes throughput from;
//! under a host budget, `kv`'s values are taken away and read again without
//! an integrity error.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{json_u64 as get, results, Disk};

/// Errors 0, and some bytes in some time, for every result line of
/// `program`.
fn check_result(stdout: &str, program: &str) {
    for key in ["bytes", "ms"] {
        let v = results(stdout, program, key);
        assert!(!v.is_empty() && v.iter().all(|&x| x > 0), "{key}: {stdout}");
    }
    assert_eq!(results(stdout, program, "errors"), vec![0], "{stdout}");
}

#[test]
fn kv_and_build_verify_every_byte() {
    let disk = Disk::new("workloads", 40, "48K");
    let r = disk.boot("--mem 32M --vcpus 1", "copies=1 kv 20000");
    r.expect_status(0);
    check_result(&r.stdout, "kv");
    r.expect_results("kv", "keys", &[40 * 12]);
    assert_eq!(results(&r.stdout, "kv", "bytes"), vec![20000 * 4096]);

    let r = disk.boot("--mem 32M --vcpus 1", "copies=1 build 3 10 1");
    r.expect_status(0);
    check_result(&r.stdout, "build");
    r.expect_results("build", "files", &[30]);
    assert!(results(&r.stdout, "build", "freed_at_ms")[0] > 0);
}

#[test]
fn kv_under_a_host_budget_reads_discarded_values_again() {
    let disk = Disk::new("kv-budget", 2, "4M");
    let r = disk.boot_stats("--mem 16M --vcpus 1 --host-budget 6M", "copies=1 kv 10000");
    r.expect_status(0);
    check_result(&r.stdout, "kv");
    let doc = r.stats();
    assert!(get(&doc, "reclaim.pages_discarded") > 0, "{doc}");
    let learnt = results(&r.stdout, "kv", "volatile_discarded")[0]
        + results(&r.stdout, "kv", "discard_faults")[0];
    assert!(learnt > 0, "{}", r.stdout);
    assert_eq!(get(&doc, "discard_faults.protocol_violations"), 0, "{doc}");
}
