//! Hinting benchmark: what batching buys and what hinting costs the guest,
//! measured in one run on the file-scan workload.
//!
//! Prints, for the same `scan-read` over a file set larger than the host
//! budget, with hinting and with `--no-hinting`: hints sent, the exits
//! that carried them (goal: at most 1 exit per 32 hints), hint exits and
//! guest time per page scanned, and resident guest memory at the end and
//! at its peak. Counts carry over to hardware KVM; times here are
//! dominated by emulated guest kernel code. Run with
//! `cargo bench --bench hinting` or `scripts/bench-hinting.sh`.

// A benchmark is a test program: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

mod support;
use support::{field, json, make_disk, vmm};

const FILES: u32 = 5;
const SIZE: &str = "4M";
const PAGES_PER_PASS: u64 = 5 * 1024;
const PASSES: u64 = 2;

struct Run {
    ms: u64,
    hints: u64,
    hint_exits: u64,
    exits: u64,
    resident: u64,
    peak: u64,
    discarded: u64,
}

fn run(img: &Path, stats: &Path, extra: &[&str]) -> Run {
    let mut c = vmm();
    c.args([
        "run",
        "--mem",
        "32M",
        "--vcpus",
        "1",
        "--host-budget",
        "12M",
    ])
    .arg("--disk")
    .arg(img)
    .arg("--stats")
    .arg(stats)
    .args(extra)
    .args(["--", "copies=1", "scan-read", &PASSES.to_string()]);
    let out = c.output().expect("run vmm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("result:"))
        .expect("result line");
    assert_eq!(field(line, "errors"), 0, "{line}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stats).unwrap()).unwrap();
    let exits = ["io_in", "io_out", "mmio_read", "mmio_write"]
        .iter()
        .map(|k| doc["exits"][k].as_u64().unwrap_or(0))
        .sum();
    Run {
        ms: field(line, "ms"),
        hints: field(line, "hints"),
        hint_exits: json(&doc, "hypercalls.hint_batch"),
        exits,
        resident: json(&doc, "memory.resident_bytes"),
        peak: json(&doc, "memory.resident_peak_bytes"),
        discarded: json(&doc, "reclaim.pages_discarded"),
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vmm-bench-hinting-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let img = make_disk(&dir, FILES, SIZE);
    let on = run(&img, &dir.join("on.json"), &[]);
    let off = run(&img, &dir.join("off.json"), &["--no-hinting"]);
    let pages = PAGES_PER_PASS * PASSES;
    println!(
        "hinting benchmark: scan-read x{PASSES} over {FILES} x {SIZE} ({pages} pages), 32 MiB guest, 12 MiB host budget, 1 vCPU"
    );
    println!("{:<34} {:>14} {:>14}", "", "hinting", "no hinting");
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    println!("{:<34} {:>14} {:>14}", "hints sent", on.hints, off.hints);
    println!(
        "{:<34} {:>14} {:>14}",
        "exits carrying hints", on.hint_exits, off.hint_exits
    );
    println!(
        "{:<34} {:>14.1} {:>14}",
        "hints per exit (goal >= 32)",
        on.hints as f64 / on.hint_exits.max(1) as f64,
        "-"
    );
    println!(
        "{:<34} {:>14.4} {:>14.4}",
        "hint exits per page scanned",
        on.hint_exits as f64 / pages as f64,
        off.hint_exits as f64 / pages as f64
    );
    println!(
        "{:<34} {:>14.4} {:>14.4}",
        "all exits per page scanned",
        on.exits as f64 / pages as f64,
        off.exits as f64 / pages as f64
    );
    println!(
        "{:<34} {:>14.1} {:>14.1}",
        "guest time per page (us)",
        on.ms as f64 * 1000.0 / pages as f64,
        off.ms as f64 * 1000.0 / pages as f64
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "pages discarded by the host", on.discarded, off.discarded
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "resident at exit",
        mib(on.resident),
        mib(off.resident)
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "resident peak",
        mib(on.peak),
        mib(off.peak)
    );
    println!(
        "ratios: hints/exit {:.1}; guest time with/without hinting {:.2}; resident at exit with/without {:.2}",
        on.hints as f64 / on.hint_exits.max(1) as f64,
        on.ms as f64 / off.ms.max(1) as f64,
        on.resident as f64 / off.resident.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
