//! Writable file pages end to end under real KVM (issue 14): the guest
//! rewrites checksummed, versioned blocks with `pwrite` and through shared
//! writable mappings, writes them back (`fsync`, `msync`, reclaim, exit),
//! and a fresh boot of the same image finds every write on the disk. With
//! `--potentially-volatile` the host takes clean pages mapped writable,
//! proving each clean with KVM's dirty log first, while the guest keeps
//! writing to them: no written page may ever be lost.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{boot, json_u64, one, read_stats, Disk};

/// `fwrite` on `disk` read-write with the VMM flags `vmm_flags` (split at
/// whitespace), then `fverify` with the same arguments on
/// a fresh boot, read-only; returns the writer's stdout.
fn write_then_verify(disk: &Disk, vmm_flags: &str, args: &str) -> String {
    let image = disk.image();
    let mut a = vec!["--disk", &image, "--disk-rw", "--vcpus", "2"];
    a.extend(vmm_flags.split_whitespace());
    let w = boot(&a, &guest_line("fwrite", args));
    w.expect_status(0);
    for key in ["errors", "read_errors", "sync_errors"] {
        assert_eq!(w.one("fwrite", key), 0, "{key}\n{}", w.stdout);
    }
    assert!(w.one("fwrite", "writeback_pages") > 0, "{}", w.stdout);
    let v = boot(&["--disk", &image], &guest_line("fverify", args));
    v.expect_status(0);
    assert_eq!(v.one("fverify", "errors"), 0, "{}", v.stdout);
    assert!(v.one("fverify", "rewritten") > 0, "{}", v.stdout);
    w.stdout
}

/// `copies=1 <program> <args>` as a guest command line.
fn guest_line<'a>(program: &'a str, args: &'a str) -> Vec<&'a str> {
    let mut g = vec!["copies=1", program];
    g.extend(args.split_whitespace());
    g
}

#[test]
fn writes_reach_the_disk_through_pwrite_and_through_shared_mappings() {
    let a = Disk::new("wr-pwrite", 4, "1M");
    let out = write_then_verify(&a, "", "5 64 pwrite 11");
    assert_eq!(one(&out, "fwrite", "pte_dirty"), 0, "pwrite dirties no PTE");
    let b = Disk::new("wr-mmap", 4, "1M");
    let out = write_then_verify(&b, "", "5 64 mmap 12");
    assert!(
        one(&out, "fwrite", "pte_dirty") > 0,
        "mapped writes are found through the PTE dirty bits\n{out}"
    );
    // The check can fail: another schedule's versions are not these.
    let r = boot(
        &["--disk", &b.image()],
        &guest_line("fverify", "5 64 pwrite 11"),
    );
    r.expect_status(1);
    assert!(r.one("fverify", "errors") > 0, "{}", r.stdout);
}

#[test]
fn unsynced_writes_reach_the_disk_by_the_background_write_back_and_the_stop() {
    // Never an fsync: an idle CPU's background passes write some pages
    // back while the writer runs, the kernel's sync at the stop the rest.
    let disk = Disk::new("wr-nosync", 2, "1M");
    let out = write_then_verify(&disk, "", "4 48 pwrite-nosync 31 2000");
    assert!(one(&out, "fwrite", "background_passes") > 0, "{out}");
}

#[test]
fn dirty_pages_survive_the_guests_own_reclaim() {
    // 16 MiB of files in 16 MiB of RAM: the guest's cache reclaim meets
    // dirty pages and must write them back before it frees them.
    let disk = Disk::new("wr-reclaim", 4, "4M");
    let out = write_then_verify(&disk, "--mem 16M", "3 192 mixed 5");
    assert!(one(&out, "fwrite", "reclaimed") > 0, "{out}");
}

#[test]
fn a_read_only_disk_refuses_writes_with_clear_errors() {
    let disk = Disk::new("wr-ro", 1, "64K");
    let image = disk.image();
    let r = boot(&["--disk", &image], &guest_line("fwrite", "1 1 pwrite"));
    r.expect_status(1)
        .expect_stdout("reason=pwrite-returned--30"); // EROFS
    let r = boot(&["--disk", &image], &guest_line("fwrite", "1 1 mmap"));
    r.expect_status(1)
        .expect_stdout("reason=mmap-shared-writable");
}

#[test]
fn the_host_takes_only_clean_potentially_volatile_pages_while_the_guest_writes_them() {
    // 8 MiB of files mapped shared and writable in a 32 MiB guest held to
    // 6 MiB: every block written and synced once (each page is then clean
    // and mapped writable: potentially volatile), then rewritten again
    // 100 us apart while the host keeps taking potentially volatile pages.
    // Some of those writes land before the host's check: those pages must
    // come back stable (found written), the others may go, and not one
    // write may be lost, in the cache or on the disk.
    let disk = Disk::new("wr-pv", 2, "4M");
    let stats = disk.path("pv.json");
    let flags = format!("--mem 32M --potentially-volatile --host-budget 6M --stats {stats}");
    let out = write_then_verify(&disk, &flags, "2 1024 mmap 5 100");
    let doc = read_stats(&stats);
    let pv = |k: &str| json_u64(&doc, &format!("potentially_volatile.{k}"));
    assert!(one(&out, "fwrite", "potentially_volatile") > 0, "{out}");
    assert!(pv("discarded") > 0, "clean pages taken: {doc}");
    assert!(pv("found_written") > 0, "written pages found: {doc}");
    assert!(
        pv("pauses") >= pv("dirty_log_reads") && pv("dirty_log_reads") > 0,
        "{doc}"
    );
    assert_eq!(pv("pause_timeouts"), 0, "{doc}");
    assert!(
        pv("clears") > 0,
        "write-back and reads clear the log: {doc}"
    );
    assert_eq!(one(&out, "fwrite", "hint_errors"), 0, "{out}");
}

#[test]
fn without_the_option_no_page_is_potentially_volatile() {
    let disk = Disk::new("wr-nopv", 2, "4M");
    let stats = disk.path("nopv.json");
    let flags = format!("--mem 32M --host-budget 6M --stats {stats}");
    let out = write_then_verify(&disk, &flags, "2 256 mmap 5");
    let doc = read_stats(&stats);
    assert_eq!(one(&out, "fwrite", "potentially_volatile"), 0, "{out}");
    for k in [
        "discarded",
        "found_written",
        "pauses",
        "dirty_log_reads",
        "clears",
    ] {
        assert_eq!(
            json_u64(&doc, &format!("potentially_volatile.{k}")),
            0,
            "{k}: {doc}"
        );
    }
    assert_eq!(json_u64(&doc, "frames.potentially_volatile"), 0, "{doc}");
}
