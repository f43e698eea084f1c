//! The host tools through the real `vmm` binary: `gen-files` writes
//! verifiable files, `mkdisk` packs them into a PHFS image that the VMM
//! library's own reader accepts, and bad input ends with one error line and
//! the documented status. A generated image also boots as `--disk`.
//!
//! Everything is written under the system temporary directory and removed
//! again; no test here may depend on files left by another.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::vmm;
use pagehint_abi::disk::{verify_block, BLOCK_SIZE, NAME_MAX};
use pagehint_abi::exit::vmm as code;

/// A fresh scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vmm-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn one_line_error(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("vmm: error: "), "{stderr}");
}

const T: Duration = Duration::from_secs(60);

#[test]
fn gen_files_then_mkdisk_round_trips() {
    let s = Scratch::new("round");
    let files = s.path("files");
    let img = s.path("disk.img");
    let r = vmm(
        &[
            "gen-files",
            "--dir",
            &files,
            "--count",
            "3",
            "--size",
            "9K",
            "--first-id",
            "100",
        ],
        T,
    );
    r.expect_status(0).expect_stdout("3 files, 27648 bytes");
    assert_eq!(r.stdout.lines().count(), 1);
    let r = vmm(&["mkdisk", "--from", &files, "--out", &img], T);
    // Superblock, one directory block, 3 × 3 data blocks.
    r.expect_status(0)
        .expect_stdout("3 files, 27648 bytes, 11 blocks");

    let image = lab::disk_image::read_image(std::path::Path::new(&img)).unwrap();
    assert_eq!(image.superblock.file_count, 3);
    for (n, e) in image.entries.iter().enumerate() {
        assert_eq!(e.name(), Some(format!("f{n:05}.bin").as_str()));
        assert_eq!(e.file_id, 100 + n as u32);
        assert_eq!(e.size, 9216);
        let data = image.data(e);
        for b in 0..2 {
            let block: &[u8; BLOCK_SIZE] = data[b * BLOCK_SIZE..][..BLOCK_SIZE].try_into().unwrap();
            assert_eq!(verify_block(e.file_id, b as u64, block), Ok(()));
        }
    }
}

#[test]
fn tool_errors_have_their_statuses() {
    let s = Scratch::new("errors");
    let r = vmm(
        &[
            "mkdisk",
            "--from",
            "/nonexistent/dir",
            "--out",
            &s.path("x.img"),
        ],
        T,
    );
    r.expect_status(code::NO_INPUT);
    one_line_error(&r.stderr);
    assert!(r.stderr.contains("/nonexistent/dir"), "{}", r.stderr);

    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(s.0.join("src").join("n".repeat(NAME_MAX + 1)), b"x").unwrap();
    let r = vmm(&["mkdisk", "--from", &src, "--out", &s.path("y.img")], T);
    r.expect_status(code::BAD_DISK);
    one_line_error(&r.stderr);
    assert!(!s.0.join("y.img").exists());

    let r = vmm(
        &["gen-files", "--dir", &src, "--count", "1", "--size", "0"],
        T,
    );
    r.expect_status(code::USAGE);
}

#[test]
fn run_checks_the_disk_before_booting() {
    let s = Scratch::new("disk");
    let r = vmm(&["run", "--disk", "/nonexistent/disk.img"], T);
    r.expect_status(code::NO_INPUT);
    one_line_error(&r.stderr);
    assert!(r.stderr.contains("/nonexistent/disk.img"), "{}", r.stderr);
    for (name, len) in [("empty.img", 0usize), ("odd.img", 1000)] {
        std::fs::write(s.0.join(name), vec![0u8; len]).unwrap();
        let r = vmm(&["run", "--disk", &s.path(name)], T);
        r.expect_status(code::BAD_DISK);
        one_line_error(&r.stderr);
        assert!(r.stderr.contains(name), "{}", r.stderr);
    }
    let r = vmm(&["run", "--disk-rw"], T);
    r.expect_status(code::USAGE);
}

#[test]
fn a_built_image_boots_as_the_disk() {
    let s = Scratch::new("boot");
    let files = s.path("files");
    let img = s.path("boot.img");
    vmm(
        &["gen-files", "--dir", &files, "--count", "2", "--size", "8K"],
        T,
    )
    .expect_status(0);
    vmm(&["mkdisk", "--from", &files, "--out", &img], T).expect_status(0);
    for rw in [false, true] {
        let mut args = vec!["--disk", img.as_str(), "--vcpus", "1"];
        if rw {
            args.push("--disk-rw");
        }
        let r = common::boot(&args, &[]);
        r.expect_status(0);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    // The guest never wrote: the image still reads back as built.
    assert!(lab::disk_image::read_image(std::path::Path::new(&img)).is_ok());
}
