//! Page-cache and page-fault benchmark of the guest memory system: hit and
//! miss throughput of file reads through `read()` and through `mmap`, and
//! the cost of an anonymous page fault, each as time and as counts (guest
//! page faults, disk requests, VM exits), measured in one run.
//!
//! Times on the development machines are dominated by emulated guest
//! kernel code (about 1 us per instruction); the counts carry over to
//! hardware KVM. Run with `cargo bench --bench memory` or
//! `scripts/bench-memory.sh`.

// A benchmark is a test program: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::{field, make_disk, vmm};

const FILES: u32 = 4;
const FILE_SIZE: &str = "2M";
const PAGES: u64 = 4 * 512;

struct Run {
    ms: u64,
    faults: u64,
    disk_requests: u64,
    exits: u64,
}

/// Sums the VM exits in the metrics JSON the VMM logs at info level.
fn exits(stderr: &str) -> u64 {
    let json = stderr
        .lines()
        .find_map(|l| l.split_once("metrics: "))
        .map(|(_, j)| j)
        .unwrap_or("");
    ["io_in", "io_out", "mmio_read", "mmio_write"]
        .iter()
        .map(|k| {
            json.split(&format!("\"{k}\":"))
                .nth(1)
                .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn run(disk: Option<&str>, program: &str) -> Run {
    let mut c = vmm();
    c.env("VMM_LOG", "info")
        .args(["run", "--mem", "64M", "--vcpus", "1"]);
    if let Some(d) = disk {
        c.args(["--disk", d]);
    }
    c.args(["--", "copies=1"]).args(program.split_whitespace());
    let out = c.output().expect("run vmm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{program}: {stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("result:"))
        .expect("result line");
    assert_eq!(field(line, "errors"), 0, "{line}");
    let has = |k: &str| line.contains(&format!(" {k}="));
    Run {
        ms: field(line, "ms"),
        faults: field(line, "faults"),
        disk_requests: if has("disk_requests") {
            field(line, "disk_requests")
        } else {
            0
        },
        exits: exits(&String::from_utf8_lossy(&out.stderr)),
    }
}

fn row(name: &str, pages: u64, ms: u64, faults: u64, reqs: u64, exits: u64) -> f64 {
    let mib_s = (pages * 4096) as f64 / (1 << 20) as f64 / (ms.max(1) as f64 / 1000.0);
    println!(
        "{name:<26} {pages:>7} {ms:>8} {mib_s:>9.2} {:>9.1} {faults:>8} {reqs:>8} {exits:>8}",
        ms as f64 * 1000.0 / pages as f64
    );
    mib_s
}

/// Runs `{program} 1` then `{program} 2` (one pass, then two) on disk
/// `d` and prints the cold pass and what the second pass added; returns
/// both throughputs and the cold run.
fn cold_then_warm(d: Option<&str>, program: &str, path: &str) -> (f64, f64, Run) {
    let one = run(d, &format!("{program} 1"));
    let two = run(d, &format!("{program} 2"));
    let miss = row(
        &format!("{path} miss (cold)"),
        PAGES,
        one.ms,
        one.faults,
        one.disk_requests,
        one.exits,
    );
    let hit = row(
        &format!("{path} hit (2nd pass)"),
        PAGES,
        two.ms.saturating_sub(one.ms),
        two.faults - one.faults,
        two.disk_requests - one.disk_requests,
        two.exits.saturating_sub(one.exits),
    );
    (miss, hit, one)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vmm-bench-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let img = make_disk(&dir, FILES, FILE_SIZE);
    let d = Some(img.to_str().unwrap());
    println!("memory benchmark: {FILES} files x {FILE_SIZE}, 1 vCPU, 64 MiB guest RAM (file set fits: second pass hits)");
    println!(
        "{:<26} {:>7} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "path", "pages", "ms", "MiB/s", "us/page", "faults", "disk_req", "exits"
    );
    let (read_miss, read_hit, _) = cold_then_warm(d, "scan-read", "read()");
    let (mmap_miss, mmap_hit, m1) = cold_then_warm(d, "scan-mmap", "mmap");
    let c = run(None, "churn 2 4");
    let anon_pages = 2 * 4 * 256;
    row(
        "anonymous fault (churn)",
        anon_pages,
        c.ms,
        c.faults,
        0,
        c.exits,
    );
    println!(
        "ratios: read hit/miss throughput {:.2}, mmap hit/miss {:.2}, mmap/read hit {:.2}",
        read_hit / read_miss,
        mmap_hit / mmap_miss,
        mmap_hit / read_hit
    );
    println!(
        "per fault: mmap miss {:.1} pages mapped per fault (read-ahead 16 + fault-around 16), anon {:.2} ms",
        PAGES as f64 / m1.faults.max(1) as f64,
        c.ms as f64 / c.faults.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
