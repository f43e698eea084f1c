//! The guest's memory system over the virtio block disk: page cache with
//! reclaim, demand paging of file and anonymous memory, copy-on-write, and
//! mprotect transactions, each checked by workloads that verify every byte.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{boot, vmm};

/// A generated disk image in a fresh temporary directory, removed on drop.
struct Image {
    dir: PathBuf,
    pub path: PathBuf,
}

impl Image {
    fn new(tag: &str, count: u32, size: &str) -> Image {
        let dir = std::env::temp_dir().join(format!("vmm-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = dir.join("files");
        let path = dir.join("disk.img");
        let count = count.to_string();
        let args = [
            "gen-files",
            "--dir",
            files.to_str().unwrap(),
            "--count",
            &count,
            "--size",
            size,
        ];
        vmm(&args, Duration::from_secs(60)).expect_status(0);
        let args = [
            "mkdisk",
            "--from",
            files.to_str().unwrap(),
            "--out",
            path.to_str().unwrap(),
        ];
        vmm(&args, Duration::from_secs(60)).expect_status(0);
        Image { dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of `key=` in the `result:` line of `program`, for each line.
fn results(stdout: &str, program: &str, key: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter(|l| l.starts_with("result:") && l.contains(&format!("program={program} ")))
        .map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in {l}"))
                .parse()
                .unwrap()
        })
        .collect()
}

fn exists(p: &Path) -> bool {
    p.exists()
}

#[test]
fn read_scan_larger_than_memory_reclaims_and_stays_correct() {
    // 16 MiB of files, 16 MiB of guest RAM: the cache must be reclaimed.
    let img = Image::new("read", 4, "4M");
    assert!(exists(&img.path));
    let r = boot(
        &["--mem", "16M", "--vcpus", "1", "--disk", img.arg()],
        &["copies=1", "scan-read", "2"],
    );
    r.expect_status(0).expect_stdout("4 files");
    assert_eq!(
        results(&r.stdout, "scan-read", "errors"),
        vec![0],
        "{}",
        r.stdout
    );
    assert_eq!(
        results(&r.stdout, "scan-read", "bytes"),
        vec![2 * (16 << 20)]
    );
    assert!(
        results(&r.stdout, "scan-read", "reclaimed")[0] > 0,
        "{}",
        r.stdout
    );
    // Read-ahead: far fewer requests than pages.
    let req = results(&r.stdout, "scan-read", "disk_requests")[0];
    let pages = results(&r.stdout, "scan-read", "disk_pages")[0];
    assert!(
        pages >= 8192 && req * 8 <= pages,
        "requests {req} pages {pages}"
    );
}

#[test]
fn mmap_scan_on_every_cpu_reclaims_mapped_pages() {
    let img = Image::new("mmap", 4, "4M");
    let r = boot(
        &["--mem", "16M", "--vcpus", "2", "--disk", img.arg()],
        &["scan-mmap", "1"],
    );
    r.expect_status(0);
    let errors = results(&r.stdout, "scan-mmap", "errors");
    assert_eq!(errors, vec![0, 0], "{}", r.stdout);
    assert!(results(&r.stdout, "scan-mmap", "file_faults")
        .iter()
        .all(|&f| f > 0));
    let reclaimed: u64 = results(&r.stdout, "scan-mmap", "reclaimed").iter().sum();
    assert!(reclaimed > 0, "{}", r.stdout);
}

#[test]
fn private_file_mapping_copies_on_write() {
    let img = Image::new("cow", 2, "256K");
    let r = boot(&["--vcpus", "1", "--disk", img.arg()], &["copies=1", "cow"]);
    r.expect_status(0);
    assert_eq!(results(&r.stdout, "cow", "errors"), vec![0], "{}", r.stdout);
    assert_eq!(
        results(&r.stdout, "cow", "cow_copies"),
        vec![32],
        "{}",
        r.stdout
    );
    r.expect_stdout("shared_writable_refused=true");
}

#[test]
fn anonymous_churn_and_mprotect_toggling_keep_data() {
    let r = boot(&["--mem", "32M"], &["churn", "3", "4"]);
    r.expect_status(0);
    assert_eq!(
        results(&r.stdout, "churn", "errors"),
        vec![0, 0],
        "{}",
        r.stdout
    );
    let r = boot(&[], &["mprotect", "128", "6"]);
    r.expect_status(0);
    assert_eq!(
        results(&r.stdout, "mprotect", "errors"),
        vec![0, 0],
        "{}",
        r.stdout
    );
}

#[test]
fn disk_flag_errors() {
    let r = vmm(
        &["run", "--disk", "/nonexistent/disk.img"],
        Duration::from_secs(30),
    );
    r.expect_status(pagehint_abi::exit::vmm::NO_INPUT);
    let empty = std::env::temp_dir().join(format!("vmm-empty-disk-{}", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let r = vmm(
        &["run", "--disk", empty.to_str().unwrap()],
        Duration::from_secs(30),
    );
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
