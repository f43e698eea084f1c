//! The memory cgroup each run of the experiment is placed in: found
//! (cgroup v2 where its memory controller is enabled, else the v1 memory
//! hierarchy), created with the run's host limit (none for the
//! unconstrained baseline), joined by the child before it runs a single
//! instruction of the VMM (`cgroup.procs`, written from the forked child),
//! sampled while the run lasts (usage), read at the end (OOM kills, swap
//! figures where the cgroup has them) and removed afterwards.
//!
//! This module writes only inside the cgroups it created (`mkdir`, the
//! limit, `cgroup.procs`, `rmdir`), and in v2 at most enables the memory
//! controller for the children of the hierarchy it was pointed at; it must
//! never move or limit a process other than the experiment's own children.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `rmdir` is retried while the kernel finishes with the
/// cgroup's last task.
const REMOVE_PATIENCE: Duration = Duration::from_secs(5);

/// Why a memory cgroup could not be found, made or read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no memory cgroup hierarchy is mounted (neither a cgroup2 mount with the memory controller nor a cgroup v1 memory mount)")]
    NoHierarchy,
    #[error("{} is not a memory cgroup directory (no memory.max or memory.limit_in_bytes)", .0.display())]
    NotMemoryCgroup(PathBuf),
    #[error("cannot create the memory cgroup {} (the experiment must run as root): {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which cgroup interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Version {
    V1,
    V2,
}

impl Version {
    fn limit_file(self) -> &'static str {
        match self {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        }
    }

    fn usage_file(self) -> &'static str {
        match self {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        }
    }

    /// The file with the `oom_kill N` line.
    fn oom_file(self) -> &'static str {
        match self {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        }
    }
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The cgroup mount points in `/proc/self/mounts` text: (cgroup2, v1
/// memory).
pub fn mounts(text: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(fstype), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        match *fstype {
            "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(point)),
            "cgroup" if v1.is_none() && opts.split(',').any(|o| o == "memory") => {
                v1 = Some(PathBuf::from(point));
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// This process's v1 memory cgroup path in `/proc/self/cgroup` text.
pub fn own_v1_path(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, ctrl, path) = (p.next()?, p.next()?, p.next()?);
        ctrl.split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    })
}

/// Where the experiment makes its cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// The directory the run cgroups are made in.
    pub parent: PathBuf,
}

impl Hierarchy {
    /// `root` when given (a memory cgroup directory); else the cgroup v2
    /// root when its memory controller can be enabled for children, else
    /// this process's own v1 memory cgroup (or the v1 root).
    pub fn find(root: Option<&Path>) -> Result<Self, CgroupError> {
        if let Some(dir) = root {
            let version =
                if dir.join("memory.max").exists() || dir.join("cgroup.subtree_control").exists() {
                    Version::V2
                } else if dir.join(Version::V1.limit_file()).exists() {
                    Version::V1
                } else {
                    return Err(CgroupError::NotMemoryCgroup(dir.to_path_buf()));
                };
            return Ok(Self {
                version,
                parent: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let (v2, v1) = mounts(&text);
        if let Some(point) = v2 {
            let offered =
                std::fs::read_to_string(point.join("cgroup.controllers")).unwrap_or_default();
            if offered.split_whitespace().any(|c| c == "memory") {
                return Ok(Self {
                    version: Version::V2,
                    parent: point,
                });
            }
        }
        let point = v1.ok_or(CgroupError::NoHierarchy)?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| own_v1_path(&t))
            .map(|p| point.join(p.trim_start_matches('/')))
            .filter(|d| d.is_dir());
        Ok(Self {
            version: Version::V1,
            parent: own.unwrap_or(point),
        })
    }

    /// Removes the empty cgroups an experiment that is gone left here
    /// (`pagehint-exp-<pid>-...` whose process no longer exists: killed
    /// before its guards ran); returns their names. A cgroup that still
    /// holds a process is left alone.
    pub fn remove_stale(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.parent) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                stale_owner(n).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            })
            .filter(|n| std::fs::remove_dir(self.parent.join(n)).is_ok())
            .collect()
    }

    /// Makes cgroup `name` with a memory `limit` (none: unlimited).
    pub fn create(&self, name: &str, limit: Option<u64>) -> Result<RunCgroup, CgroupError> {
        if self.version == Version::V2 {
            // Children get the memory controller only if the parent hands
            // it down; a parent that already does needs no write.
            let control = self.parent.join("cgroup.subtree_control");
            let on = std::fs::read_to_string(&control).unwrap_or_default();
            if !on.split_whitespace().any(|c| c == "memory") {
                write(&control, "+memory")?;
            }
        }
        let dir = self.parent.join(name);
        std::fs::create_dir(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        // From here on the directory is ours: dropping `cg` removes it.
        let procs_path = dir.join("cgroup.procs");
        let procs = OpenOptions::new().write(true).open(&procs_path);
        let procs = match procs {
            Ok(f) => f,
            Err(source) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(CgroupError::Write {
                    path: procs_path,
                    source,
                });
            }
        };
        let cg = RunCgroup {
            version: self.version,
            dir,
            procs,
        };
        if let Some(bytes) = limit {
            write(&cg.dir.join(self.version.limit_file()), &bytes.to_string())?;
        }
        Ok(cg)
    }
}

/// The pid in a run cgroup's name, `pagehint-exp-<pid>-<run>`.
pub fn stale_owner(name: &str) -> Option<u32> {
    name.strip_prefix("pagehint-exp-")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn write(path: &Path, text: &str) -> Result<(), CgroupError> {
    std::fs::write(path, text).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A cgroup made for one run; removed when dropped.
#[derive(Debug)]
pub struct RunCgroup {
    pub version: Version,
    pub dir: PathBuf,
    /// `cgroup.procs`, open for the child to write "0" into after fork.
    procs: File,
}

impl RunCgroup {
    /// The descriptor a forked child writes "0" to, to join.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(file)).ok()
    }

    /// Bytes charged to the cgroup now.
    pub fn usage(&self) -> Option<u64> {
        self.read(self.version.usage_file())?.trim().parse().ok()
    }

    /// Processes the kernel's OOM killer ended in this cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        keyed(&self.read(self.version.oom_file())?, "oom_kill")
    }

    /// The cgroup's own swap traffic (`pswpout`, `pswpin` of v2's
    /// `memory.stat`, on kernels that count it), if it has it.
    pub fn swap_pages(&self) -> Option<(u64, u64)> {
        let stat = self.read("memory.stat")?;
        Some((keyed(&stat, "pswpout")?, keyed(&stat, "pswpin")?))
    }

    /// Removes the cgroup; retried while its last task is being reaped.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let start = Instant::now();
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) if start.elapsed() >= REMOVE_PATIENCE => {
                    return Err(CgroupError::Write {
                        path: self.dir.clone(),
                        source,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("experiment: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_find_cgroup2_and_the_v1_memory_hierarchy() {
        let t = "sysfs /sys sysfs rw 0 0\n\
                 cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                 cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                 cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        let (v2, v1) = mounts(t);
        assert_eq!(v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(v1.as_deref(), Some(Path::new("/sys/fs/cgroup/memory")));
        assert_eq!(mounts("proc /proc proc rw 0 0\n"), (None, None));
    }

    #[test]
    fn the_own_v1_memory_path_and_keyed_files() {
        let t = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(own_v1_path(t).as_deref(), Some("/process_api/abc"));
        assert_eq!(own_v1_path("0::/x\n"), None);
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom, "oom_kill"), Some(3));
        assert_eq!(keyed(oom, "oom"), None);
        assert_eq!(keyed("pswpout x\n", "pswpout"), None);
        assert_eq!(stale_owner("pagehint-exp-4242-kv-hinting"), Some(4242));
        assert_eq!(stale_owner("pagehint-exp-x-kv"), None);
        assert_eq!(stale_owner("other-4242"), None);
    }

    #[test]
    fn a_directory_that_is_no_memory_cgroup_is_refused() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            Hierarchy::find(Some(&dir)),
            Err(CgroupError::NotMemoryCgroup(_))
        ));
    }
}
