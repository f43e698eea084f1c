//! One run of the matrix on this host: what the matrix needs from the
//! host, found before the first run (where to make memory cgroups, the
//! swap it has or a temporary swap file), the workload's disk, and the run
//! itself: its disk image's host cache dropped, its own memory cgroup made
//! with its limit, the child started in it and sampled, the host's swap
//! traffic over the run, the cgroup removed, the figures computed.
//!
//! This module must never leave a cgroup or a swap file behind on any
//! path it returns by (guards remove them), nor run a child outside its
//! cgroup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::cgroup::{self, Hierarchy, RunCgroup};
use super::child::{self, Job, Outcome};
use super::error::ExperimentError;
use super::figures::{self, Figures, SwapPages};
use super::output::Machine;
use super::plan::{self, Plan, Pressure, RunSpec, Workload};
use super::swap::{self, SwapCounters, SwapFile};
use crate::args::{ExperimentArgs, GenFilesArgs, MkdiskArgs, Mode};
use crate::tools;

/// Where a run was, and where its swap figures come from.
#[derive(Debug, Serialize)]
pub struct Placement {
    cgroup: String,
    cgroup_version: cgroup::Version,
    /// `cgroup` (its memory.stat) or `host` (/proc/vmstat deltas: the
    /// whole host, with nothing else running).
    swap_source: &'static str,
    host_swap_bytes: u64,
}

/// Makes the workload's disk under `dir`; returns the image.
pub fn make_disk(dir: &Path, w: Workload, files: (u32, u64)) -> Result<PathBuf, ExperimentError> {
    build_disk(dir, w.name(), w.name(), files, 1)
}

/// Makes `dir/STEM.img` of `files` (count, size) of generated blocks,
/// file ids from `first_id`; errors name `workload`.
pub fn build_disk(
    dir: &Path,
    stem: &str,
    workload: &'static str,
    files: (u32, u64),
    first_id: u32,
) -> Result<PathBuf, ExperimentError> {
    let err = |source| ExperimentError::Disk { workload, source };
    let from = dir.join(format!("{stem}-files"));
    let image = dir.join(format!("{stem}.img"));
    tools::gen_files(&GenFilesArgs {
        dir: from.clone(),
        count: files.0,
        size: files.1,
        first_id,
    })
    .map_err(err)?;
    tools::mkdisk(&MkdiskArgs {
        from: from.clone(),
        out: image.clone(),
    })
    .map_err(err)?;
    let _ = std::fs::remove_dir_all(&from);
    Ok(image)
}

/// The results folder made, this executable, the machine and the host
/// prepared: what both experiments need before their first run.
pub fn prepare(
    args: &ExperimentArgs,
) -> Result<(PathBuf, PathBuf, Machine, Host), ExperimentError> {
    let dir = args.out.clone().unwrap_or_else(super::output::default_dir);
    std::fs::create_dir_all(&dir).map_err(|source| ExperimentError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(ExperimentError::Exe)?;
    let machine = Machine::detect();
    let host = Host::prepare(args, &dir)?;
    Ok((dir, exe, machine, host))
}

/// Drops the host's cached pages of `image`, so that what a run reads of
/// its disk is charged to the run's own cgroup, not found in a cache the
/// experiment filled (or an earlier run did).
pub(super) fn drop_host_cache(image: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open(image) {
        // SAFETY: a valid open descriptor; fadvise only advises the kernel
        // about the file's cached pages and touches no memory of ours.
        let _ = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// What the matrix needs from the host, found before the first run.
pub struct Host {
    pub hierarchy: Hierarchy,
    /// Kept until the experiment ends (then disabled and removed).
    _swap_file: Option<SwapFile>,
    pub swap_bytes: u64,
}

impl Host {
    pub fn prepare(args: &ExperimentArgs, dir: &Path) -> Result<Self, ExperimentError> {
        let hierarchy =
            Hierarchy::find(args.cgroup_root.as_deref()).map_err(ExperimentError::Cgroup)?;
        for gone in hierarchy.remove_stale() {
            eprintln!("experiment: removed {gone}, left by an experiment that is gone");
        }
        // Fail now, not after the first runs, where no cgroup can be made.
        let probe = hierarchy
            .create(
                &format!("pagehint-exp-{}-probe", std::process::id()),
                Some(64 << 20),
            )
            .map_err(ExperimentError::Cgroup)?;
        probe.remove().map_err(ExperimentError::Cgroup)?;
        let swap_file = match args.swap_file {
            Some(bytes) => {
                let path = dir.join("experiment.swap");
                if swap::remove_stale(&path) {
                    eprintln!(
                        "experiment: removed {}, left by an earlier experiment",
                        path.display()
                    );
                }
                Some(SwapFile::create(&path, bytes)?)
            }
            None => None,
        };
        Ok(Self {
            hierarchy,
            _swap_file: swap_file,
            swap_bytes: swap::host_swap_bytes(),
        })
    }

    /// Why `spec` cannot run on this host, if it cannot.
    pub fn cannot_run(&self, spec: &RunSpec) -> Option<String> {
        (spec.mode == Mode::HostSwap && !spec.baseline && self.swap_bytes == 0).then(|| {
            "not run: the host has no swap to hold the limit with (give --swap-file SIZE)".into()
        })
    }
}

/// One run's outcome and figures.
pub struct Done {
    pub out: Outcome,
    pub fig: Result<Figures, String>,
    pub placement: Placement,
    pub args: Vec<String>,
}

/// Runs `spec` in its own cgroup, its progress shown under `label`;
/// `baseline` is its workload's unconstrained throughput, when known.
pub fn run_one(
    spec: &RunSpec,
    ctx: &Context<'_>,
    label: &str,
    disk: Option<&Path>,
    baseline: Option<f64>,
) -> Result<Done, ExperimentError> {
    let stem = spec.stem();
    let stats = ctx.dir.join(format!("{stem}.stats.json"));
    let mut args = vec!["run".to_string()];
    args.extend(plan::run_args(spec, disk, &stats, ctx.pressure));
    if let Some(d) = disk {
        drop_host_cache(d);
    }
    let name = format!("pagehint-exp-{}-{stem}", std::process::id());
    let cg: RunCgroup = ctx
        .host
        .hierarchy
        .create(&name, spec.limit)
        .map_err(ExperimentError::Cgroup)?;
    let before = SwapCounters::now();
    let job = Job {
        exe: ctx.exe,
        args: &args,
        stats: &stats,
        log: &ctx.dir.join(format!("{stem}.log")),
        err_log: &ctx.dir.join(format!("{stem}.err")),
        label,
        timeout: Duration::from_secs(spec.params.timeout_secs),
        cgroup: Some(&cg),
    };
    let out = child::run(&job, &mut std::io::stderr(), ctx.live)?;
    let host_swap = SwapCounters::now().since(before);
    let (swap, swap_source): (SwapPages, _) = match cg.swap_pages() {
        Some(pages) => (pages, "cgroup"),
        None => ((host_swap.out_pages, host_swap.in_pages), "host"),
    };
    let placement = Placement {
        cgroup: cg.dir.display().to_string(),
        cgroup_version: cg.version,
        swap_source,
        host_swap_bytes: ctx.host.swap_bytes,
    };
    cg.remove().map_err(ExperimentError::Cgroup)?;
    let _ = std::fs::remove_file(&stats);
    let fig = figures::figures(&out, swap, baseline).map_err(|e| e.to_string());
    Ok(Done {
        out,
        fig,
        placement,
        args,
    })
}

/// What every run shares.
pub struct Context<'a> {
    pub dir: &'a Path,
    pub exe: &'a Path,
    pub machine: &'a Machine,
    pub pressure: Pressure<'a>,
    pub plan: Plan,
    pub host: &'a Host,
    /// Stderr is a terminal: each run's progress line is rewritten live.
    pub live: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::Choice;

    #[test]
    fn host_swap_without_swap_is_a_row_saying_why() {
        let host = Host {
            hierarchy: Hierarchy {
                version: cgroup::Version::V1,
                parent: PathBuf::from("/sys/fs/cgroup/memory"),
            },
            _swap_file: None,
            swap_bytes: 0,
        };
        let choice = Choice {
            workload: Some("kv".into()),
            modes: Mode::ALL.to_vec(),
            limit: None,
            budget: None,
            plan: Plan::Quick,
        };
        let runs = plan::plan(&choice).unwrap();
        let why: Vec<Option<String>> = runs.iter().map(|r| host.cannot_run(r)).collect();
        assert!(why[0].is_none(), "the baseline needs no swap");
        assert!(why[1].as_deref().is_some_and(|w| w.contains("--swap-file")));
        assert!(why[2..].iter().all(Option::is_none), "{why:?}");
        let with_swap = Host {
            swap_bytes: 1 << 30,
            ..host
        };
        assert!(runs.iter().all(|r| with_swap.cannot_run(r).is_none()));
    }
}
