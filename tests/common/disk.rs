//! The disks the guest reads: a generated PHFS image (`vmm gen-files` +
//! `vmm mkdisk`) in a fresh temporary directory that also holds the run's
//! stats files, and boots of the guest over it. A disk never outlives its
//! test: its directory is removed on drop.

use std::path::PathBuf;
use std::time::Duration;

use super::{guest, vmm, Run};

/// A generated PHFS disk image in a fresh temporary directory, removed on
/// drop; other files of a test may live beside it.
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
        let limit = Duration::from_secs(60);
        let gen = ["gen-files", "--dir", files_s, "--count", &count];
        vmm(&[&gen[..], &["--size", size]].concat(), limit).expect_status(0);
        vmm(&["mkdisk", "--from", files_s, "--out", img_s], limit).expect_status(0);
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

    /// Boots the guest over this disk with the VMM flags `flags` and the
    /// guest command line `guest`, both split at whitespace.
    pub fn boot(&self, flags: &str, guest: &str) -> Run {
        guest::boot_str(&format!("--disk {} {flags}", self.image()), guest)
    }

    /// `boot` with the stats written to `stats.json` beside the image
    /// (`Run::stats` reads it).
    pub fn boot_stats(&self, flags: &str, guest: &str) -> Run {
        self.boot_as("stats.json", flags, guest)
    }

    /// `boot` with the stats written to `stats` beside the image.
    pub fn boot_as(&self, stats: &str, flags: &str, guest: &str) -> Run {
        let stats = self.path(stats);
        let mut r = self.boot(&format!("--stats {stats} {flags}"), guest);
        r.stats_path = Some(stats);
        r
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
