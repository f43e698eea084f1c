//! The fuzz targets in CI: runs `scripts/fuzz.sh` for a short while (15 s
//! per target, `PAGEHINT_FUZZ_SECONDS` to change it), which builds every
//! target with stable cargo and libFuzzer and runs each on a copy of the
//! seed corpus, and fails if the build fails, if any target crashed, or if
//! any target executed nothing or saw no coverage.
//!
//! Everything the run writes goes to a scratch directory under the system
//! temporary directory (removed again when the run passed); the build to
//! `fuzz/target`. This test must never skip: a missing toolchain piece is a
//! failure.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// Every target the script must run and report.
const TARGETS: [&str; 8] = [
    "hypercall_block",
    "hint_batch",
    "state_table",
    "elf_loader",
    "disk_image",
    "virtio_chain",
    "mmio_registers",
    "api_request",
];

/// A number after `word` in `line` ("executions 1234").
fn field(line: &str, word: &str) -> Option<u64> {
    let mut it = line.split_whitespace();
    it.by_ref().find(|w| *w == word)?;
    it.next()?.parse().ok()
}

#[test]
fn every_target_runs_without_a_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let secs = std::env::var("PAGEHINT_FUZZ_SECONDS").unwrap_or_else(|_| "15".into());
    let out = std::env::temp_dir().join(format!("pagehint-fuzz-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new("bash")
        .arg(root.join("scripts/fuzz.sh"))
        .arg(&secs)
        .current_dir(&root)
        .env("FUZZ_OUT", &out)
        // The script sets its own flags; none of the test build's may leak.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("FUZZ_TARGETS")
        .output()
        .expect("run scripts/fuzz.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let tail: String = {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    println!("{stdout}");
    assert!(
        run.status.success(),
        "scripts/fuzz.sh {secs} failed ({}):\n{stdout}\n-- stderr (last lines) --\n{tail}",
        run.status
    );
    for t in TARGETS {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(t))
            .unwrap_or_else(|| panic!("no line for target {t}:\n{stdout}"));
        let execs = field(line, "executions").unwrap_or(0);
        let crashes = field(line, "crashes");
        let cov = field(line, "cov").unwrap_or(0);
        assert!(execs > 0, "{t} executed nothing: {line}");
        assert!(
            cov > 0,
            "{t} saw no coverage (instrumentation missing?): {line}"
        );
        assert_eq!(crashes, Some(0), "{t}: {line}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("fuzz summary:") && l.contains(" 0 crashes")),
        "no clean summary line:\n{stdout}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
