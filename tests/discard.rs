//! Discard faults and the delayed-free discard list under real KVM with two
//! vCPUs: mapped volatile file pages the host discards are noticed by the
//! guest at the faulting instruction and read again, no byte is lost, and
//! discarded frames are reused only after every CPU passed a quiescent
//! state.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{boot, vmm};

const SLACK: u64 = 6 << 20;

struct Disk {
    dir: PathBuf,
}

impl Disk {
    fn new(tag: &str, count: u32, size: &str) -> Disk {
        let dir = std::env::temp_dir().join(format!("vmm-discard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = dir.join("files");
        let count = count.to_string();
        vmm(
            &[
                "gen-files",
                "--dir",
                files.to_str().unwrap(),
                "--count",
                &count,
                "--size",
                size,
            ],
            Duration::from_secs(60),
        )
        .expect_status(0);
        let img = dir.join("disk.img");
        vmm(
            &[
                "mkdisk",
                "--from",
                files.to_str().unwrap(),
                "--out",
                img.to_str().unwrap(),
            ],
            Duration::from_secs(60),
        )
        .expect_status(0);
        Disk { dir }
    }
    fn image(&self) -> String {
        self.dir.join("disk.img").to_str().unwrap().to_string()
    }
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stats(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

fn get(doc: &serde_json::Value, path: &str) -> u64 {
    let mut v = doc;
    for k in path.split('.') {
        v = &v[k];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {doc}"))
}

/// `key=` of every `result:` line of `program`.
fn results(stdout: &str, program: &str, key: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter(|l| l.starts_with("result:") && l.contains(&format!("program={program} ")))
        .map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in {l}"))
        })
        .collect()
}

#[test]
fn mmap_scan_under_a_budget_takes_discard_faults_and_loses_nothing() {
    let disk = Disk::new("mmap", 5, "4M");
    let s = disk.path("stats.json");
    let r = boot(
        &[
            "--mem",
            "32M",
            "--vcpus",
            "2",
            "--disk",
            &disk.image(),
            "--host-budget",
            "12M",
            "--stats",
            &s,
        ],
        &["scan-mmap", "2"],
    );
    r.expect_status(0);
    assert_eq!(
        results(&r.stdout, "scan-mmap", "errors"),
        vec![0, 0],
        "{}",
        r.stdout
    );
    let doc = stats(&s);
    assert!(get(&doc, "discard_faults.injected") > 0, "{doc}");
    let guest_faults: u64 = results(&r.stdout, "scan-mmap", "discard_faults")
        .iter()
        .sum();
    assert!(guest_faults > 0, "{}", r.stdout);
    assert_eq!(get(&doc, "discard_faults.protocol_violations"), 0, "{doc}");
    let resident = get(&doc, "memory.resident_bytes");
    assert!(
        resident <= (12 << 20) + SLACK,
        "resident {} MiB: {doc}",
        resident >> 20
    );
}

#[test]
fn discard_list_frees_only_after_every_cpu_was_quiescent() {
    let r = boot(&["--vcpus", "2"], &["discard-list-test"]);
    r.expect_status(0)
        .expect_stdout("phase A (cpu 1 busy, interrupts off): 8/8 still listed, 0 reused")
        .expect_stdout("phase B (cpu 1 busy in user mode): released true")
        .expect_stdout("discard-list: ok");
}

#[test]
fn data_written_to_a_private_mapping_of_volatile_pages_survives_reclaim() {
    let disk = Disk::new("cow", 4, "2M");
    let s = disk.path("stats.json");
    let r = boot(
        &[
            "--mem",
            "24M",
            "--vcpus",
            "2",
            "--disk",
            &disk.image(),
            "--host-budget",
            "8M",
            "--stats",
            &s,
        ],
        &["copies=1", "cow", "4"],
    );
    r.expect_status(0);
    assert_eq!(results(&r.stdout, "cow", "errors"), vec![0], "{}", r.stdout);
    let doc = stats(&s);
    assert!(get(&doc, "reclaim.pages_discarded") > 0, "{doc}");
}
