//! What the benchmarks share: running the `vmm` binary, building a
//! generated disk image, and reading `result:` lines and stats JSON.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `vmm` binary of this build.
pub fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
}

/// Builds `dir/disk.img` from `count` generated files of `size` (made in
/// `dir/files`); returns the image's path.
pub fn make_disk(dir: &Path, count: u32, size: &str) -> PathBuf {
    let files = dir.join("files");
    let img = dir.join("disk.img");
    let (f, i) = (files.to_str().unwrap(), img.to_str().unwrap());
    let ok = vmm()
        .args([
            "gen-files",
            "--dir",
            f,
            "--count",
            &count.to_string(),
            "--size",
            size,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        && vmm()
            .args(["mkdisk", "--from", f, "--out", i])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    assert!(ok, "could not build the disk image in {}", dir.display());
    img
}

/// The number after `key=` in a `result:` line.
pub fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// The number at dot-separated `path` in a JSON document.
pub fn json(doc: &serde_json::Value, path: &str) -> u64 {
    let mut v = doc;
    for k in path.split('.') {
        v = &v[k];
    }
    v.as_u64().unwrap_or_else(|| panic!("{path} missing"))
}

/// The first `result:` line of a guest's output.
pub fn result_line(stdout: &str) -> Option<&str> {
    stdout.lines().find(|l| l.starts_with("result:"))
}

/// The stats document a `vmm run --stats FILE` wrote.
pub fn read_stats(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every VM exit of the run: the sum of the stats' `exits.*` counters.
pub fn all_exits(doc: &serde_json::Value) -> u64 {
    doc["exits"]
        .as_object()
        .map(|o| o.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or_else(|| panic!("exits missing"))
}
