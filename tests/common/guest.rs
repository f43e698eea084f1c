//! Booting the bundled guest: `vmm run` with the VMM's flags and the
//! guest's command line, under a hang bound, and the boots without a disk
//! whose stats go to a temporary file. These helpers only start runs and
//! hand back what they printed; they assert nothing about the guest.

use std::path::PathBuf;
use std::time::Duration;

use super::{require_kvm, vmm, Run};

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

/// Boots with the VMM flags `flags` and the guest command line `guest`,
/// both split at whitespace.
pub fn boot_str(flags: &str, guest: &str) -> Run {
    let flags: Vec<&str> = flags.split_whitespace().collect();
    boot(&flags, &guest.split_whitespace().collect::<Vec<_>>())
}

/// A stats file in a temporary directory of its own, removed on drop, for
/// runs without a disk.
pub struct StatsFile {
    dir: PathBuf,
    path: String,
}

impl StatsFile {
    pub fn new(tag: &str) -> StatsFile {
        let dir = std::env::temp_dir().join(format!("vmm-stats-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.json").to_str().unwrap().to_string();
        StatsFile { dir, path }
    }

    /// The file's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Boots with `flags` and `guest` (split at whitespace) and the stats
    /// written to this file.
    pub fn boot(&self, flags: &str, guest: &str) -> Run {
        let mut r = boot_str(&format!("{flags} --stats {}", self.path()), guest);
        r.stats_path = Some(self.path().to_string());
        r
    }
}

impl Drop for StatsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
