//! What `vmm experiment` runs: the workloads, their sizes (default and
//! `--quick`), the matrix of workload by mode with one unconstrained
//! baseline per workload, and the exact `vmm run` command line of each run.
//!
//! Everything here is a pure function of the experiment's arguments, so
//! the matrix can be unit-tested without booting anything. This module
//! must never start a process or touch a file.

use std::path::Path;

use crate::args::{CgroupBudget, Mode};

/// Why the arguments do not make a plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("unknown workload '{0}' (known: page-cache, anon-free)")]
    UnknownWorkload(String),
}

/// A workload of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// A file scan through a shared `mmap` (page cache: volatile pages).
    PageCache,
    /// Anonymous memory churned in waves, freed, then an idle guest.
    AnonFree,
}

impl Workload {
    pub const ALL: [Workload; 2] = [Workload::PageCache, Workload::AnonFree];

    pub fn name(self) -> &'static str {
        match self {
            Workload::PageCache => "page-cache",
            Workload::AnonFree => "anon-free",
        }
    }

    pub fn from_name(name: &str) -> Result<Self, PlanError> {
        Self::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .ok_or_else(|| PlanError::UnknownWorkload(name.to_string()))
    }
}

/// The sizes of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Guest RAM.
    pub mem: u64,
    pub vcpus: u32,
    /// Host budget of the constrained runs.
    pub budget: u64,
    /// The disk's files (count, bytes each); none for anon-free.
    pub files: Option<(u32, u64)>,
    /// The guest program and its arguments.
    pub guest: Vec<String>,
    /// Kill the run after this many seconds (`--timeout`).
    pub timeout_secs: u64,
}

/// The sizes of `w`, shrunk for tests with `quick`.
pub fn params(w: Workload, quick: bool) -> Params {
    let words = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    match (w, quick) {
        // 20 MiB of files through a 32 MiB guest: the cache holds them all
        // unless the host takes them back.
        (Workload::PageCache, false) => Params {
            mem: 32 << 20,
            vcpus: 1,
            budget: 12 << 20,
            files: Some((5, 4 << 20)),
            guest: words(&["copies=1", "scan-mmap", "2"]),
            timeout_secs: 300,
        },
        (Workload::PageCache, true) => Params {
            mem: 32 << 20,
            vcpus: 1,
            budget: 4 << 20,
            files: Some((3, 2 << 20)),
            guest: words(&["copies=1", "scan-mmap", "1"]),
            timeout_secs: 120,
        },
        // Three waves of 8 MiB, then 6 s idle: three passes of free page
        // reporting's 2 s cadence.
        (Workload::AnonFree, false) => Params {
            mem: 32 << 20,
            vcpus: 1,
            budget: 6 << 20,
            files: None,
            guest: words(&["copies=1", "churn-idle", "3", "8", "6000"]),
            timeout_secs: 300,
        },
        (Workload::AnonFree, true) => Params {
            mem: 32 << 20,
            vcpus: 1,
            budget: 4 << 20,
            files: None,
            guest: words(&["copies=1", "churn-idle", "1", "6", "4500"]),
            timeout_secs: 120,
        },
    }
}

/// One run of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub workload: Workload,
    /// The mode; the baseline is `Off` without any budget.
    pub mode: Mode,
    pub baseline: bool,
    pub params: Params,
    /// The host budget (`None` for the baseline).
    pub budget: Option<u64>,
}

impl RunSpec {
    /// The name in tables, file names and plots.
    pub fn label(&self) -> &'static str {
        if self.baseline {
            "baseline"
        } else {
            self.mode.name()
        }
    }

    /// `workload-label`: the stem of this run's files.
    pub fn stem(&self) -> String {
        format!("{}-{}", self.workload.name(), self.label())
    }
}

/// The experiment's choices that shape the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub workload: Option<String>,
    pub modes: Vec<Mode>,
    pub budget: Option<u64>,
    pub quick: bool,
}

/// The runs, in order: per workload, its baseline, then every mode.
pub fn plan(choice: &Choice) -> Result<Vec<RunSpec>, PlanError> {
    let workloads = match &choice.workload {
        Some(name) => vec![Workload::from_name(name)?],
        None => Workload::ALL.to_vec(),
    };
    let mut modes: Vec<Mode> = if choice.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        choice.modes.clone()
    };
    modes.sort();
    modes.dedup();
    let mut runs = Vec::new();
    for w in workloads {
        let p = params(w, choice.quick);
        let budget = choice.budget.unwrap_or(p.budget);
        runs.push(RunSpec {
            workload: w,
            mode: Mode::Off,
            baseline: true,
            params: p.clone(),
            budget: None,
        });
        for &mode in &modes {
            runs.push(RunSpec {
                workload: w,
                mode,
                baseline: false,
                params: p.clone(),
                budget: Some(budget),
            });
        }
    }
    Ok(runs)
}

/// How the runs reach the host: passed through to every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    pub psi: bool,
    pub cgroup: CgroupBudget,
}

/// Interval of the stats file the experiment samples (ms).
pub const STATS_INTERVAL_MS: u64 = 200;

/// The arguments of `vmm run` for `spec` (after the subcommand).
pub fn run_args(spec: &RunSpec, disk: Option<&Path>, stats: &Path, p: Pressure) -> Vec<String> {
    let p_ = &spec.params;
    let mut a: Vec<String> = vec![
        "--mem".into(),
        // Bytes, with the unit said: a bare number means MiB to --mem.
        format!("{}B", p_.mem),
        "--vcpus".into(),
        p_.vcpus.to_string(),
        "--timeout".into(),
        p_.timeout_secs.to_string(),
        "--stats".into(),
        stats.display().to_string(),
        "--stats-interval".into(),
        STATS_INTERVAL_MS.to_string(),
    ];
    if let Some(d) = disk {
        a.extend(["--disk".into(), d.display().to_string()]);
    }
    if let Some(b) = spec.budget {
        a.extend(["--host-budget".into(), b.to_string()]);
    }
    let constrained = !spec.baseline;
    if constrained && p.psi {
        a.push("--psi".into());
    }
    let cgroup = if constrained {
        p.cgroup
    } else {
        CgroupBudget::Off
    };
    a.extend([
        "--cgroup-budget".into(),
        match cgroup {
            CgroupBudget::Auto => "auto".into(),
            CgroupBudget::Off => "off".into(),
        },
    ]);
    let mut guest: Vec<String> = Vec::new();
    match spec.mode {
        Mode::Off => a.push("--no-hinting".into()),
        Mode::FreePageReporting => a.push("--free-page-reporting".into()),
        Mode::Hinting => {}
        Mode::HintingBatched => a.extend(["--hints".into(), "batched".into()]),
        Mode::HintingUnbatched => a.extend(["--hints".into(), "unbatched".into()]),
    }
    guest.extend(p_.guest.iter().cloned());
    a.push("--".into());
    a.extend(guest);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(workload: Option<&str>, modes: &[Mode]) -> Choice {
        Choice {
            workload: workload.map(String::from),
            modes: modes.to_vec(),
            budget: None,
            quick: false,
        }
    }

    #[test]
    fn the_default_matrix_is_every_workload_by_every_mode_plus_baselines() {
        let runs = plan(&choice(None, &[])).unwrap();
        assert_eq!(runs.len(), 2 * (1 + 5));
        let stems: Vec<String> = runs.iter().map(RunSpec::stem).collect();
        assert_eq!(stems[0], "page-cache-baseline");
        assert_eq!(stems[1], "page-cache-off");
        assert_eq!(stems[4], "page-cache-hinting-batched");
        assert_eq!(stems[5], "page-cache-hinting-unbatched");
        assert_eq!(stems[6], "anon-free-baseline");
        assert!(runs[0].budget.is_none() && runs[1].budget == Some(12 << 20));
        assert_eq!(runs[7].budget, Some(6 << 20));
    }

    #[test]
    fn names_and_modes_restrict_the_matrix() {
        let runs = plan(&choice(
            Some("anon-free"),
            &[Mode::Hinting, Mode::Off, Mode::Hinting],
        ))
        .unwrap();
        let labels: Vec<&str> = runs.iter().map(RunSpec::label).collect();
        assert_eq!(labels, ["baseline", "off", "hinting"]);
        assert_eq!(
            plan(&choice(Some("nope"), &[])),
            Err(PlanError::UnknownWorkload("nope".into()))
        );
        let mut c = choice(Some("page-cache"), &[Mode::Off]);
        c.budget = Some(7 << 20);
        c.quick = true;
        let runs = plan(&c).unwrap();
        assert_eq!(runs[1].budget, Some(7 << 20));
        assert_eq!(runs[1].params, params(Workload::PageCache, true));
    }

    #[test]
    fn each_mode_becomes_its_flags() {
        let runs = plan(&choice(Some("page-cache"), &[])).unwrap();
        let p = Pressure {
            psi: true,
            cgroup: CgroupBudget::Auto,
        };
        let args = |i: usize| {
            run_args(&runs[i], Some(Path::new("/d.img")), Path::new("/s.json"), p).join(" ")
        };
        let base = args(0);
        assert!(base.contains("--no-hinting") && !base.contains("--host-budget"));
        assert!(base.contains("--cgroup-budget off") && !base.contains("--psi"));
        assert!(base.ends_with("-- copies=1 scan-mmap 2"), "{base}");
        let off = args(1);
        assert!(off.contains("--host-budget 12582912 --psi --cgroup-budget auto --no-hinting"));
        assert!(off.contains("--disk /d.img") && off.contains("--stats /s.json"));
        assert!(off.contains("--stats-interval 200") && off.contains("--vcpus 1"));
        assert!(args(2).contains("--free-page-reporting --"));
        let h = args(3);
        assert!(!h.contains("--no-hinting") && !h.contains("hints="), "{h}");
        assert!(args(4).ends_with("--hints batched -- copies=1 scan-mmap 2"));
        assert!(args(5).ends_with("--hints unbatched -- copies=1 scan-mmap 2"));
    }

    #[test]
    fn quick_sizes_are_smaller() {
        for w in Workload::ALL {
            let (d, q) = (params(w, false), params(w, true));
            assert!(q.timeout_secs < d.timeout_secs, "{w:?}");
            assert!(q.budget < q.mem && d.budget < d.mem);
        }
        assert_eq!(Workload::from_name("anon-free"), Ok(Workload::AnonFree));
    }
}
