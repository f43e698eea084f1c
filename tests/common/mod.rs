//! Shared helpers of the integration tests: run the real `vmm` binary on
//! the real guest under KVM and collect what it printed.
//!
//! The tests need `/dev/kvm`; where it is missing they fail with a clear
//! message rather than skip, so CI can never pass without running them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one run of the VMM produced.
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
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

    /// Panics with the whole output unless stdout contains `text`.
    pub fn expect_stdout(&self, text: &str) -> &Self {
        assert!(
            self.stdout.contains(text),
            "stdout lacks {text:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless stderr contains `text`.
    pub fn expect_stderr(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "stderr lacks {text:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
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
    }
}

/// Boots the bundled guest with `vmm_args` and the guest command line
/// `guest_args`.
pub fn boot(vmm_args: &[&str], guest_args: &[&str]) -> Run {
    require_kvm();
    let mut args = vec!["run"];
    args.extend_from_slice(vmm_args);
    if !guest_args.is_empty() {
        args.push("--");
        args.extend_from_slice(guest_args);
    }
    // A hang bound, not a speed goal: the heaviest boot (the discard test's
    // mmap scan) takes ~45-80 s alone on the nested software KVM and has
    // passed 120 s with other guests running on the same two cores.
    vmm(&args, Duration::from_secs(300))
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

/// A generated PHFS disk image in a fresh temporary directory (`vmm
/// gen-files` + `vmm mkdisk`), removed on drop; other files of a test may
/// live beside it.
pub struct Disk {
    dir: PathBuf,
}

impl Disk {
    /// `count` files of `size` (a `vmm` size like "4M").
    pub fn new(tag: &str, count: u32, size: &str) -> Disk {
        let dir = std::env::temp_dir().join(format!("vmm-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = dir.join("files");
        let img = dir.join("disk.img");
        let count = count.to_string();
        let (files_s, img_s) = (files.to_str().unwrap(), img.to_str().unwrap());
        vmm(
            &[
                "gen-files",
                "--dir",
                files_s,
                "--count",
                &count,
                "--size",
                size,
            ],
            Duration::from_secs(60),
        )
        .expect_status(0);
        vmm(
            &["mkdisk", "--from", files_s, "--out", img_s],
            Duration::from_secs(60),
        )
        .expect_status(0);
        Disk { dir }
    }

    /// The image's path.
    pub fn image(&self) -> String {
        self.path("disk.img")
    }

    /// A path in the disk's directory (for stats files).
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of `key=` in every `result:` line of `program`.
pub fn results(stdout: &str, program: &str, key: &str) -> Vec<u64> {
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

/// The stats JSON the VMM wrote to `path`.
pub fn read_stats(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// The number at dot-separated `path` in a JSON document.
pub fn json_u64(doc: &serde_json::Value, path: &str) -> u64 {
    let mut v = doc;
    for k in path.split('.') {
        v = &v[k];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {doc}"))
}
