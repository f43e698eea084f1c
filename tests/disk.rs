//! The guest's memory system over the virtio block disk: page cache with
//! reclaim, demand paging of file and anonymous memory, copy-on-write, and
//! mprotect transactions, each checked by workloads that verify every byte.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{boot, results, vmm_quick, Disk};

#[test]
fn read_scan_larger_than_memory_reclaims_and_stays_correct() {
    // 16 MiB of files, 16 MiB of guest RAM: the cache must be reclaimed.
    let img = Disk::new("read", 4, "4M");
    let r = img.boot("--mem 16M --vcpus 1", "copies=1 scan-read 2");
    r.expect_status(0)
        .expect_stdout("4 files")
        .expect_results("scan-read", "errors", &[0])
        .expect_results("scan-read", "bytes", &[2 * (16 << 20)]);
    assert!(r.results("scan-read", "reclaimed")[0] > 0, "{}", r.stdout);
    // Read-ahead: far fewer requests than pages. Every page is read at
    // least once; the second pass may find part of the first still
    // cached (pages read start on the inactive list, so a scan larger
    // than memory does not push out everything it read: 6,150 pages of
    // 8,192 in one run).
    let req = r.results("scan-read", "disk_requests")[0];
    let pages = r.results("scan-read", "disk_pages")[0];
    assert!(
        pages >= 4096 && req * 8 <= pages,
        "requests {req} pages {pages}"
    );
}

#[test]
fn mmap_scan_on_every_cpu_reclaims_mapped_pages() {
    let img = Disk::new("mmap", 4, "4M");
    let r = img.boot("--mem 16M --vcpus 2", "scan-mmap 1");
    r.expect_status(0)
        .expect_results("scan-mmap", "errors", &[0, 0]);
    let faults = r.results("scan-mmap", "file_faults");
    assert!(faults.iter().all(|&f| f > 0));
    let reclaimed = r.sum("scan-mmap", "reclaimed");
    assert!(reclaimed > 0, "{}", r.stdout);
}

#[test]
fn private_file_mapping_copies_on_write() {
    let img = Disk::new("cow", 2, "256K");
    let r = img.boot("--vcpus 1", "copies=1 cow");
    r.expect_status(0)
        .expect_results("cow", "errors", &[0])
        .expect_results("cow", "cow_copies", &[32])
        .expect_stdout("shared_writable_refused=true");
}

#[test]
fn anonymous_churn_and_mprotect_toggling_keep_data() {
    let r = boot(&["--mem", "32M"], &["churn", "3", "4"]);
    r.expect_status(0)
        .expect_results("churn", "errors", &[0, 0]);
    let r = boot(&[], &["mprotect", "128", "6"]);
    r.expect_status(0)
        .expect_results("mprotect", "errors", &[0, 0]);
}

#[test]
fn disk_flag_errors() {
    let r = vmm_quick(&["run", "--disk", "/nonexistent/disk.img"]);
    r.expect_status(pagehint_abi::exit::vmm::NO_INPUT);
    let empty = std::env::temp_dir().join(format!("vmm-empty-disk-{}", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let r = vmm_quick(&["run", "--disk", empty.to_str().unwrap()]);
    std::fs::remove_file(&empty).ok();
    r.expect_status(pagehint_abi::exit::vmm::BAD_DISK);
}

#[test]
fn a_disk_that_is_not_phfs_is_reported_not_fatal() {
    let junk = std::env::temp_dir().join(format!("vmm-junk-disk-{}", std::process::id()));
    std::fs::write(&junk, vec![0x5a; 64 * 1024]).unwrap();
    let r = boot(
        &["--vcpus", "1", "--disk", junk.to_str().unwrap()],
        &["copies=1", "files"],
    );
    std::fs::remove_file(&junk).ok();
    r.expect_status(0)
        .expect_stdout("not mountable: Format(BadMagic)");
    assert_eq!(results(&r.stdout, "files", "files"), vec![0]);
}
