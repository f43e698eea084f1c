//! The memory cgroup the VMM runs in, as a second source of host pressure:
//! when the cgroup has a memory limit, the headroom it leaves becomes a
//! budget for resident guest memory (`vmm run --cgroup-budget auto`).
//!
//! Detection reads `/proc/self/cgroup` (v2: the `0::/path` line; v1: the
//! line whose controllers include `memory`) and `/proc/self/mountinfo` (where
//! that hierarchy is mounted, and which part of it the mount shows), then
//! the limit and usage files: `memory.max` / `memory.current` (v2) or
//! `memory.limit_in_bytes` / `memory.usage_in_bytes` (v1). v2 wins when
//! both have a limit.
//!
//! The rule ([`headroom_budget`]): guest memory may use what the limit
//! leaves after everything else charged to the cgroup that the kernel
//! cannot drop at will, less a reserve:
//! `limit - reserve(limit) - (usage - file cache - resident guest memory)`.
//! Guest RAM is anonymous memory of this process, so it is part of
//! `usage`; "everything else" is the VMM's own heap and threads and any
//! other process in the same cgroup. The host page cache (of the disk
//! image, mostly) is left out ([`CgroupMemory::file_cache`]): at the limit
//! the kernel drops clean file pages before it swaps anything, so counting
//! them would make the guest give up its own cache for the host's copy of
//! the same blocks. Mapped file pages (the VMM's own code) are not left
//! out: they are a working set the kernel protects, and where the binary
//! is not in the host's cache each child faults it in, charged here. The
//! reserve is measured by the reclaimer (`super::headroom`), at most a
//! quarter of the limit and [`RESERVE`] ([`fixed_reserve`], the rule
//! before), so a small limit still leaves the guest most of it. This
//! module only reads files; it must never write to a cgroup (the usage
//! event's registration is `super::usage_event`'s), and a file it cannot
//! read turns the budget off (with one warning) rather than failing the
//! run.

use std::path::{Path, PathBuf};

/// Most kept free below the cgroup limit for everything that is not guest
/// RAM and grows between two reclaimer rounds (16 MiB, or a quarter of the
/// limit when that is less).
pub const RESERVE: u64 = 16 << 20;
/// cgroup v1 reports "no limit" as a huge page-rounded number; anything at
/// or above this is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// Why the cgroup could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: '{text}' is not a number of bytes", path.display())]
    Parse { path: PathBuf, text: String },
}

/// Which cgroup interface the files belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The limit and usage files of one memory cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMemory {
    pub version: Version,
    /// The cgroup's directory.
    pub dir: PathBuf,
}

/// The cgroup paths in `/proc/self/cgroup`: (v2 path, v1 memory path).
pub fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// A cgroup mount: the part of the hierarchy it shows, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub root: String,
    pub point: PathBuf,
}

/// The cgroup mounts in `/proc/self/mountinfo`: (v2, v1 with `memory`).
pub fn parse_mountinfo(text: &str) -> (Option<Mount>, Option<Mount>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.lines() {
        // "id parent major:minor root point options [optional...] - fstype source superoptions"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let theirs: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) =
            (fields.get(3), fields.get(4), theirs.first())
        else {
            continue;
        };
        let mount = Mount {
            root: root.to_string(),
            point: PathBuf::from(point),
        };
        match *fstype {
            "cgroup2" if v2.is_none() => v2 = Some(mount),
            "cgroup" if v1.is_none() => {
                let opts = theirs.get(2).copied().unwrap_or("");
                if opts.split(',').any(|o| o == "memory") {
                    v1 = Some(mount);
                }
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// The directory of cgroup `path` under `mount`, or `None` when the mount
/// does not show it (a container's view of another hierarchy).
pub fn resolve(mount: &Mount, path: &str) -> Option<PathBuf> {
    let rest = if mount.root == "/" {
        path
    } else {
        let r = path.strip_prefix(mount.root.as_str())?;
        if !(r.is_empty() || r.starts_with('/')) {
            return None;
        }
        r
    };
    Some(mount.point.join(rest.trim_start_matches('/')))
}

/// A limit file's value: `None` when there is no limit.
pub fn parse_limit(text: &str, version: Version) -> Option<Option<u64>> {
    let t = text.trim();
    if version == Version::V2 && t == "max" {
        return Some(None);
    }
    let v: u64 = t.parse().ok()?;
    Some(if version == Version::V1 && v >= V1_UNLIMITED {
        None
    } else {
        Some(v)
    })
}

/// The budget for resident guest memory a cgroup leaves (see the module
/// doc): `limit - reserve - (usage - resident)`, never below zero;
/// `usage` should leave out the file cache. The reclaimer's `reserve` is
/// measured (`super::headroom`); [`fixed_reserve`] was the rule before.
pub fn headroom_budget(limit: u64, usage: u64, resident: u64, reserve: u64) -> u64 {
    let others = usage.saturating_sub(resident);
    limit.saturating_sub(reserve).saturating_sub(others)
}

/// The fixed reserve of old: a quarter of the limit, at most [`RESERVE`].
pub fn fixed_reserve(limit: u64) -> u64 {
    RESERVE.min(limit / 4)
}

/// The budget for resident guest memory when `sharers` processes share
/// the cgroup (VMMs side by side under one limit, each deciding alone):
/// one VMM alone gets [`headroom_budget`]. Several share the room the
/// limit leaves (`target = limit - reserve`) with no coordinator: a
/// guest may grow by an equal part of the slack while the cgroup is
/// under the target, and gives back the excess in proportion to its own
/// share of `usage` while it is over (a large guest gives more). Guests
/// that keep wanting more converge to equal shares of what the VMMs' own
/// memory leaves (additive increase, multiplicative decrease), so one
/// that came late is not starved. There is no floor: a fair share of
/// `target` each used to be kept whatever the usage, and with every
/// guest at it the VMMs' own memory took the cgroup past the target by
/// its whole size. `usage` leaves out the file cache, as for
/// [`headroom_budget`].
pub fn shared_budget(limit: u64, usage: u64, resident: u64, sharers: u64, reserve: u64) -> u64 {
    if sharers <= 1 {
        return headroom_budget(limit, usage, resident, reserve);
    }
    let target = limit.saturating_sub(reserve);
    if usage > target {
        let excess = u128::from(usage - target);
        let back = excess * u128::from(resident) / u128::from(usage);
        resident.saturating_sub(u64::try_from(back).unwrap_or(u64::MAX))
    } else {
        resident.saturating_add((target - usage) / sharers)
    }
}

/// The number of processes in a `cgroup.procs` text.
pub fn parse_procs(text: &str) -> u64 {
    text.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

/// The file cache no process maps, in a `memory.stat` text:
/// `total_active_file + total_inactive_file - total_mapped_file` (v1, this
/// cgroup and those below it) or `active_file + inactive_file -
/// file_mapped` (v2); 0 when absent. Mapped file pages (the VMM's own
/// code, mostly) are a working set, not a cache: the kernel protects them
/// and dropping them would only fault them back, so they count as
/// everything else does.
pub fn parse_file_cache(stat: &str, version: Version) -> u64 {
    let (cache, mapped): ([&str; 2], &str) = match version {
        Version::V1 => (
            ["total_active_file", "total_inactive_file"],
            "total_mapped_file",
        ),
        Version::V2 => (["active_file", "inactive_file"], "file_mapped"),
    };
    let (mut file, mut in_use) = (0u64, 0u64);
    for (k, v) in stat.lines().filter_map(|l| l.split_once(' ')) {
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        if cache.contains(&k) {
            file = file.saturating_add(v);
        } else if k == mapped {
            in_use = in_use.saturating_add(v);
        }
    }
    file.saturating_sub(in_use)
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl CgroupMemory {
    fn files(&self) -> (&'static str, &'static str) {
        match self.version {
            Version::V2 => ("memory.max", "memory.current"),
            Version::V1 => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        }
    }

    /// The limit now, `None` when there is none.
    pub fn limit(&self) -> Result<Option<u64>, CgroupError> {
        let path = self.dir.join(self.files().0);
        let text = read(&path)?;
        parse_limit(&text, self.version).ok_or(CgroupError::Parse {
            path,
            text: text.trim().to_string(),
        })
    }

    /// File pages charged to the cgroup now (the host page cache).
    pub fn file_cache(&self) -> Result<u64, CgroupError> {
        Ok(parse_file_cache(
            &read(&self.dir.join("memory.stat"))?,
            self.version,
        ))
    }

    /// Bytes charged to the cgroup now that are not file cache: what the
    /// kernel cannot drop without swapping.
    pub fn usage_without_file_cache(&self) -> Result<u64, CgroupError> {
        Ok(self.usage()?.saturating_sub(self.file_cache()?))
    }

    /// How many processes the cgroup holds now (VMMs sharing its limit).
    pub fn sharers(&self) -> Result<u64, CgroupError> {
        Ok(parse_procs(&read(&self.dir.join("cgroup.procs"))?))
    }

    /// Bytes charged to the cgroup now.
    pub fn usage(&self) -> Result<u64, CgroupError> {
        let path = self.dir.join(self.files().1);
        let text = read(&path)?;
        text.trim().parse().map_err(|_| CgroupError::Parse {
            path,
            text: text.trim().to_string(),
        })
    }
}

/// The memory cgroup of this process that has a limit (v2 first), if any.
pub fn detect() -> Option<(CgroupMemory, u64)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (p2, p1) = parse_proc_cgroup(&cgroups);
    let (m2, m1) = parse_mountinfo(&mounts);
    let candidates = [(Version::V2, m2.zip(p2)), (Version::V1, m1.zip(p1))];
    for (version, found) in candidates {
        let Some(dir) = found.and_then(|(m, p)| resolve(&m, &p)) else {
            continue;
        };
        let cg = CgroupMemory { version, dir };
        if let Ok(Some(limit)) = cg.limit() {
            return Some((cg, limit));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n3:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            parse_proc_cgroup(v1),
            (Some("/".into()), Some("/process_api/abc".into()))
        );
        assert_eq!(
            parse_proc_cgroup("0::/user.slice/run-1.scope\n"),
            (Some("/user.slice/run-1.scope".into()), None)
        );
        assert_eq!(parse_proc_cgroup("garbage\n\n"), (None, None));
    }

    #[test]
    fn mounts_and_paths() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n\
                    35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                    36 31 0:33 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    41 31 0:38 /ns /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw\n";
        let (v2, v1) = parse_mountinfo(text);
        let v1 = v1.unwrap();
        assert_eq!(v1.point, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(
            resolve(&v1, "/process_api/abc"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        let v2 = v2.unwrap();
        assert_eq!(v2.root, "/ns");
        assert_eq!(
            resolve(&v2, "/ns/a"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/a"))
        );
        assert_eq!(
            resolve(&v2, "/ns"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(resolve(&v2, "/other"), None);
        assert_eq!(resolve(&v2, "/nsx"), None);
        assert_eq!(parse_mountinfo("short line\n"), (None, None));
    }

    #[test]
    fn limits_and_the_budget_rule() {
        assert_eq!(parse_limit("max\n", Version::V2), Some(None));
        assert_eq!(parse_limit("67108864\n", Version::V2), Some(Some(64 << 20)));
        assert_eq!(parse_limit("9223372036854771712", Version::V1), Some(None));
        assert_eq!(parse_limit("67108864", Version::V1), Some(Some(64 << 20)));
        assert_eq!(parse_limit("max", Version::V1), None);
        assert_eq!(parse_limit("-1", Version::V2), None);
        // 256 MiB limit, 40 MiB charged of which 30 MiB is guest RAM:
        // 10 MiB is everything else, so 256 - 16 - 10 = 230 MiB for the guest.
        let fixed = |l, u, r| headroom_budget(l, u, r, fixed_reserve(l));
        assert_eq!(fixed(256 << 20, 40 << 20, 30 << 20), 230 << 20);
        // 32 MiB keeps a quarter back: 32 - 8 - 10 = 14 MiB.
        assert_eq!(fixed(32 << 20, 40 << 20, 30 << 20), 14 << 20);
        assert_eq!(fixed(8 << 20, 40 << 20, 0), 0);
        assert_eq!(fixed(64 << 20, 10 << 20, 20 << 20), 48 << 20);
        // A 16 MiB limit keeps a quarter back: 16 - 4 - 1 = 11 MiB.
        assert_eq!(fixed(16 << 20, 9 << 20, 8 << 20), 11 << 20);
        // A measured reserve of 1 MiB: 16 - 1 - 1 = 14 MiB.
        assert_eq!(
            headroom_budget(16 << 20, 9 << 20, 8 << 20, 1 << 20),
            14 << 20
        );
        let v1 =
            "cache 100\nrss 7\nactive_file 1\ntotal_active_file 4096\ntotal_inactive_file 8192\n";
        assert_eq!(parse_file_cache(v1, Version::V1), 12288);
        // Mapped file pages (the VMM's code) are not cache.
        let v1 = format!("{v1}mapped_file 4096\ntotal_mapped_file 8192\n");
        assert_eq!(parse_file_cache(&v1, Version::V1), 4096);
        let v2 = "anon 5\nfile 30\nactive_file 10\ninactive_file 20\n";
        assert_eq!(parse_file_cache(v2, Version::V2), 30);
        let v2 = format!("{v2}file_mapped 12\n");
        assert_eq!(parse_file_cache(&v2, Version::V2), 18);
        assert_eq!(parse_file_cache("file_mapped 12\n", Version::V2), 0);
        assert_eq!(parse_file_cache("", Version::V2), 0);
    }

    #[test]
    fn vmms_sharing_a_limit_converge_to_equal_shares() {
        const MIB: u64 = 1 << 20;
        // Alone: the headroom rule.
        assert_eq!(
            shared_budget(32 * MIB, 20 * MIB, 18 * MIB, 1, 8 * MIB),
            headroom_budget(32 * MIB, 20 * MIB, 18 * MIB, 8 * MIB)
        );
        assert_eq!(parse_procs("12\n345\n\n"), 2);
        assert_eq!(parse_procs(""), 0);
        // Two guests, one limit of 64 MiB (48 MiB for both after the
        // reserve), 1 MiB of VMM overhead each. The first came early and
        // holds 40 MiB; the second needs room. Both always want more:
        // between two rounds each faults in 512 KiB, then each decides
        // alone from what it reads and is cut back to its budget. Equal
        // growth and give-back in proportion to size (additive increase,
        // multiplicative decrease) bring them to equal shares.
        let (limit, overhead, step) = (64 * MIB, MIB, MIB / 2);
        let mut r = [40 * MIB, 4 * MIB];
        for _ in 0..2000 {
            r = r.map(|x| x + step);
            let usage = r[0] + r[1] + 2 * overhead;
            let b = [
                shared_budget(limit, usage, r[0], 2, 16 * MIB),
                shared_budget(limit, usage, r[1], 2, 16 * MIB),
            ];
            r = [r[0].min(b[0]), r[1].min(b[1])];
        }
        // Both near 23 MiB, the room after the VMMs' own 2 MiB.
        let usage = r[0] + r[1] + 2 * overhead;
        assert!(usage <= 48 * MIB + MIB / 4, "{usage}");
        assert!(usage >= 47 * MIB, "the room is used: {usage}");
        let diff = r[0].abs_diff(r[1]);
        assert!(
            diff <= MIB,
            "not starved: {} vs {} MiB",
            r[0] / MIB,
            r[1] / MIB
        );
        // A guest that needs little leaves the rest to the other.
        let mut r = [4 * MIB, 4 * MIB];
        for _ in 0..200 {
            let usage = r[0] + r[1] + 2 * overhead;
            r[0] = shared_budget(limit, usage, r[0], 2, 16 * MIB);
        }
        assert!(r[0] >= 41 * MIB, "work-conserving: {} MiB", r[0] / MIB);
    }

    #[test]
    fn files_that_are_missing_are_errors_not_panics() {
        let cg = CgroupMemory {
            version: Version::V2,
            dir: PathBuf::from("/nonexistent/cgroup"),
        };
        assert!(matches!(cg.limit(), Err(CgroupError::Read { .. })));
        assert!(cg.usage().is_err());
        assert!(cg.usage_without_file_cache().is_err());
        assert!(cg.sharers().is_err());
        // Whatever this machine is, detection answers without panicking.
        let _ = detect();
    }
}
