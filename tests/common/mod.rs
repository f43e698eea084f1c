//! Shared helpers of the integration tests: run the real `vmm` binary on
//! the real guest under KVM and collect what it printed. Each submodule
//! has one job: `guest` boots the bundled guest, `disk` makes the disks it
//! reads, `stats` reads what a run reported, `experiment` runs `vmm
//! experiment` once for a whole test file and stops runs by signal.
//!
//! The helpers only run and read; they never decide what a test checks,
//! and never skip one: where `/dev/kvm` is missing the tests fail with a
//! clear message, so CI can never pass without running them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unused_imports)]

pub mod disk;
pub mod experiment;
pub mod guest;
pub mod process;
pub mod stats;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use disk::Disk;
pub use guest::boot;
pub use stats::{hypercall_errors, json_u64, read_json, read_stats, results};

/// What one run of the VMM produced.
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The stats file the run was told to write, where a helper chose it.
    pub stats_path: Option<String>,
}

impl Run {
    /// Panics with the whole output unless `status` matches.
    pub fn expect_status(&self, status: i32) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected exit status\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics with the whole output unless `stream` (stdout or stderr,
    /// named `which`) contains `text`.
    fn expect_in(&self, which: &str, stream: &str, text: &str) -> &Self {
        assert!(
            stream.contains(text),
            "{which} lacks {text:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics with the whole output unless stdout contains `text`.
    pub fn expect_stdout(&self, text: &str) -> &Self {
        self.expect_in("stdout", &self.stdout, text)
    }

    /// Panics unless stderr contains `text`.
    pub fn expect_stderr(&self, text: &str) -> &Self {
        self.expect_in("stderr", &self.stderr, text)
    }

    /// The value of `key=` in every `result:` line of `program`.
    pub fn results(&self, program: &str, key: &str) -> Vec<u64> {
        results(&self.stdout, program, key)
    }

    /// Panics with stdout unless the `key=` values of `program` are `want`.
    pub fn expect_results(&self, program: &str, key: &str, want: &[u64]) -> &Self {
        assert_eq!(self.results(program, key), want, "{key}\n{}", self.stdout);
        self
    }

    /// The one `key=` value of `program`; panics unless there is exactly one.
    pub fn one(&self, program: &str, key: &str) -> u64 {
        one(&self.stdout, program, key)
    }

    /// The sum of the `key=` values of every `program` result line.
    pub fn sum(&self, program: &str, key: &str) -> u64 {
        self.results(program, key).iter().sum()
    }

    /// The stats document the run wrote where a helper told it to.
    pub fn stats(&self) -> serde_json::Value {
        let path = self.stats_path.as_deref().expect("a run with --stats");
        read_stats(path)
    }

    /// The `vmm: error:` lines on stderr; panics unless there is exactly one.
    pub fn one_error_line(&self) -> &str {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("vmm: error:"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", self.stderr);
        lines[0]
    }
}

/// The one `key=` value of `program` in `stdout`; panics unless there is
/// exactly one result line.
pub fn one(stdout: &str, program: &str, key: &str) -> u64 {
    let v = results(stdout, program, key);
    assert_eq!(v.len(), 1, "one {program} result expected in\n{stdout}");
    v[0]
}

/// Fails the test unless KVM is usable.
pub fn require_kvm() {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    assert!(
        f.is_ok(),
        "/dev/kvm is not usable ({:?}): these tests boot the real guest under KVM and must not be skipped",
        f.err()
    );
}

pub fn vmm_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmm"))
}

/// Runs `vmm` with `args`, killing it after `limit`.
pub fn vmm(args: &[&str], limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(vmm_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vmm {args:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        elapsed: start.elapsed(),
        stats_path: None,
    }
}

/// `vmm` with `args` that must end (usage and configuration errors) well
/// within 30 s.
pub fn vmm_quick(args: &[&str]) -> Run {
    vmm(args, Duration::from_secs(30))
}

/// The bundled guest kernel ELF (built by `vmm/build.rs`).
pub fn guest_kernel_path() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/guest/x86_64-unknown-none/guest/guest-kernel")
}

/// The user-program ELF: a valid x86-64 ELF without a PVH note.
pub fn guest_user_path() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/guest/x86_64-unknown-none/guest/guest-user")
}
