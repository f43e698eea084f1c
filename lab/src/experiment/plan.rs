//! What `vmm experiment` runs: the three plans (the default short one,
//! `--full` and the tests' `--quick`), the workloads with each plan's
//! sizes and host memory limits, the matrix of workload by mode with one
//! unconstrained baseline per workload, and the exact `vmm run` command
//! line of each run.
//!
//! Everything here is a pure function of the experiment's arguments, so
//! the matrix can be unit-tested without booting anything. This module
//! must never start a process or touch a file.

use std::path::Path;

use crate::args::{CgroupBudget, Mode};

/// Why the arguments do not make a plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("unknown workload '{0}' (known: page-cache, kv, build, anon-free, write)")]
    UnknownWorkload(String),
}

/// How much the experiment runs: which modes by default, at what sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    /// The default: every workload against the baseline, host swap, free
    /// page reporting and hinting, at sizes that give every run a figure
    /// within a few minutes in all. Its figures are not the full
    /// matrix's, and say so.
    Short,
    /// `--full`: every default mode at the full sizes (the figures of
    /// `docs/results.md`).
    Full,
    /// `--quick`: the full matrix's modes at the tests' tiny sizes.
    Quick,
}

impl Plan {
    /// The plan of the `--full` and `--quick` flags (clap keeps them
    /// apart; were both set, the smaller plan wins).
    pub fn from_flags(full: bool, quick: bool) -> Self {
        match (full, quick) {
            (_, true) => Plan::Quick,
            (true, false) => Plan::Full,
            (false, false) => Plan::Short,
        }
    }

    /// The name in the results (`"plan"`) and on the table's first line.
    pub fn name(self) -> &'static str {
        match self {
            Plan::Short => "short",
            Plan::Full => "full",
            Plan::Quick => "quick",
        }
    }

    /// The modes run when none is asked for (each workload also gets its
    /// baseline).
    pub fn default_modes(self) -> &'static [Mode] {
        match self {
            Plan::Short => &[Mode::HostSwap, Mode::FreePageReporting, Mode::Hinting],
            Plan::Full | Plan::Quick => &Mode::DEFAULT,
        }
    }

    /// The line above the table: which plan made these figures.
    pub fn header(self, runs: usize) -> String {
        match self {
            Plan::Short => format!(
                "plan: short ({runs} runs: fewer modes, smaller data sets and limits than the \
full matrix; figures for a first look, not to compare with the full matrix's: \
`vmm experiment --full` runs that)"
            ),
            Plan::Full => format!("plan: full ({runs} runs at the full sizes)"),
            Plan::Quick => format!(
                "plan: quick ({runs} runs at the tests' tiny sizes; figures for the tests, \
not to quote)"
            ),
        }
    }
}

/// A workload of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// A file scan through a shared `mmap` (page cache: volatile pages).
    PageCache,
    /// Key-value lookups, Zipf-distributed keys, over a file-backed data
    /// set larger than the limit (a cache server's read path).
    KeyValue,
    /// A build in phases: many small files read, anonymous memory used
    /// and freed per phase (a compiler's pattern).
    Build,
    /// Anonymous memory churned in waves, freed, then an idle guest.
    AnonFree,
    /// File blocks rewritten in place through shared writable mappings,
    /// synced every round and read back (a database's buffer pool over
    /// a memory-mapped file): dirty and clean writable-mapped pages.
    Write,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::PageCache,
        Workload::KeyValue,
        Workload::Build,
        Workload::AnonFree,
        Workload::Write,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::PageCache => "page-cache",
            Workload::KeyValue => "kv",
            Workload::Build => "build",
            Workload::AnonFree => "anon-free",
            Workload::Write => "write",
        }
    }

    /// Whether it writes its disk (each run then gets a fresh copy, opened
    /// read-write).
    pub fn writes_disk(self) -> bool {
        self == Workload::Write
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
    /// The host memory limit of the constrained runs (their cgroup's).
    pub limit: u64,
    /// The disk's files (count, bytes each); none for anon-free.
    pub files: Option<(u32, u64)>,
    /// The guest program and its arguments.
    pub guest: Vec<String>,
    /// Kill the run after this many seconds (`--timeout`).
    pub timeout_secs: u64,
    /// What a run takes on the development machine, in seconds: without
    /// hints, and with them (the progress line's ETA, [`typical_secs`]).
    pub typical_secs: (u64, u64),
}

/// What a run of `w` in `plan` takes on the development machine, in
/// seconds, (without hints, with hints): hinting runs of the workloads
/// that read files again from the guest's disk take two to four times as
/// long here (emulated guest kernel), those of build and anon-free as long
/// as the others. Short and quick: timed run by run here; full: from the
/// throughputs of the full run in `docs/results.md` (about 20 minutes in
/// all), not timed run by run. Only the ETA uses them, scaled by how fast
/// the finished runs went against their estimates.
pub fn typical_secs(w: Workload, plan: Plan) -> (u64, u64) {
    match (plan, w) {
        (Plan::Short, Workload::PageCache) => (6, 14),
        (Plan::Short, Workload::KeyValue) => (5, 16),
        (Plan::Short, Workload::Build) => (9, 9),
        (Plan::Short, Workload::AnonFree) => (6, 6),
        (Plan::Short, Workload::Write) => (11, 28),
        (Plan::Quick, Workload::PageCache) => (9, 20),
        (Plan::Quick, Workload::KeyValue) => (7, 22),
        (Plan::Quick, Workload::Build) => (16, 17),
        (Plan::Quick, Workload::AnonFree) => (6, 6),
        (Plan::Quick, Workload::Write) => (20, 75),
        (Plan::Full, Workload::PageCache) => (20, 38),
        (Plan::Full, Workload::KeyValue) => (10, 80),
        (Plan::Full, Workload::Build) => (38, 38),
        (Plan::Full, Workload::AnonFree) => (14, 14),
        (Plan::Full, Workload::Write) => (40, 110),
    }
}

/// The sizes of `w` in `plan`.
pub fn params(w: Workload, plan: Plan) -> Params {
    let words = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let (limit, files, guest, timeout_secs): (u64, _, Vec<String>, u64) = match (w, plan) {
        // 20 MiB of files through a 32 MiB guest: the cache holds them all
        // unless the host takes them back.
        (Workload::PageCache, Plan::Full) => (
            16 << 20,
            Some((5, 4 << 20)),
            words(&["copies=1", "scan-mmap", "2"]),
            300,
        ),
        // 8 MiB of files (10.6 MiB at peak unconstrained). Below 10 MiB
        // the scan's second pass swaps in so fast that the host's swap-in
        // readahead fails its cgroup charge and the kernel OOM-kills host
        // swap or free page reporting: here both runs at 8 MiB, 2 of 10 at
        // 9 MiB and 2 of 8 at 9.5 MiB, none of 16 at 10 MiB. So 10 MiB,
        // where host swap moves a few hundred pages and hinting, which
        // keeps a reserve under the limit, still re-reads the second pass:
        // of the short plan's rows, the least like the full matrix's.
        (Workload::PageCache, Plan::Short) => (
            10 << 20,
            Some((2, 4 << 20)),
            words(&["copies=1", "scan-mmap", "2"]),
            120,
        ),
        (Workload::PageCache, Plan::Quick) => (
            10 << 20,
            Some((3, 4 << 20)),
            words(&["copies=1", "scan-mmap", "2"]),
            120,
        ),
        // 20 MiB of values, Zipf (0.99) keys: a hot set fits the limit,
        // the whole set does not.
        (Workload::KeyValue, Plan::Full) => (
            16 << 20,
            Some((5, 4 << 20)),
            words(&["copies=1", "kv", "200000", "99"]),
            300,
        ),
        // 8 MiB of values, 20,000 lookups: the hot set fits the limit.
        (Workload::KeyValue, Plan::Short) => (
            8 << 20,
            Some((2, 4 << 20)),
            words(&["copies=1", "kv", "20000", "99"]),
            120,
        ),
        (Workload::KeyValue, Plan::Quick) => (
            10 << 20,
            Some((3, 4 << 20)),
            words(&["copies=1", "kv", "20000", "99"]),
            120,
        ),
        // 400 files of 48 KiB (19 MiB), 8 phases of 50 files and 6 MiB of
        // anonymous memory, then 2 s idle.
        (Workload::Build, Plan::Full) => (
            16 << 20,
            Some((400, 48 << 10)),
            words(&["copies=1", "build", "8", "50", "6", "2000"]),
            300,
        ),
        // 90 files of 48 KiB (4.2 MiB), 3 phases of 30 files and 4 MiB of
        // anonymous memory, then 1 s idle.
        (Workload::Build, Plan::Short) => (
            8 << 20,
            Some((90, 48 << 10)),
            words(&["copies=1", "build", "3", "30", "4", "1000"]),
            120,
        ),
        (Workload::Build, Plan::Quick) => (
            10 << 20,
            Some((200, 48 << 10)),
            words(&["copies=1", "build", "4", "50", "4", "1000"]),
            120,
        ),
        // Three waves of 8 MiB, then 6 s idle: three passes of free page
        // reporting's 2 s cadence.
        (Workload::AnonFree, Plan::Full) => (
            12 << 20,
            None,
            words(&["copies=1", "churn-idle", "3", "8", "6000"]),
            300,
        ),
        // One wave of 6 MiB, then 4.5 s idle: two passes of free page
        // reporting's cadence.
        (Workload::AnonFree, Plan::Short | Plan::Quick) => (
            10 << 20,
            None,
            words(&["copies=1", "churn-idle", "1", "6", "4500"]),
            120,
        ),
        // 16 MiB of files mapped shared and writable; 3 rounds each
        // rewrite 2048 random blocks (most pages end up mapped writable),
        // msync, and read 2048 back: a buffer pool over a mapped file.
        (Workload::Write, Plan::Full) => (
            16 << 20,
            Some((4, 4 << 20)),
            words(&["copies=1", "fwrite", "3", "2048", "mmap", "1"]),
            300,
        ),
        // 6 MiB of files, 2 rounds of 768 blocks: 12.7 MiB at peak
        // unconstrained, some MiB of it the host's cache of what the VMM
        // wrote to the image, which the host drops without swapping (a
        // limit above guest RAM's peak would swap nothing).
        (Workload::Write, Plan::Short) => (
            8 << 20,
            Some((2, 3 << 20)),
            words(&["copies=1", "fwrite", "2", "768", "mmap", "1"]),
            240,
        ),
        (Workload::Write, Plan::Quick) => (
            10 << 20,
            Some((3, 4 << 20)),
            words(&["copies=1", "fwrite", "2", "1536", "mmap", "1"]),
            // A hang bound, not a speed goal: the potentially volatile run
            // took about 120 s here in the debug build (its vCPU pauses
            // for the dirty log are emulated-kernel time), and one CI run
            // timed out at 120 s while still making progress.
            240,
        ),
    };
    Params {
        mem: 32 << 20,
        vcpus: 1,
        limit,
        files,
        guest,
        timeout_secs,
        typical_secs: typical_secs(w, plan),
    }
}

/// One run of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub workload: Workload,
    /// The mode; the baseline is `HostSwap` without any limit.
    pub mode: Mode,
    pub baseline: bool,
    pub params: Params,
    /// The host memory limit (`None` for the baseline).
    pub limit: Option<u64>,
    /// An extra budget for the hinting modes (`--host-budget`).
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

    /// What the run takes on the development machine ([`typical_secs`]).
    pub fn typical(&self) -> std::time::Duration {
        let (plain, hinting) = self.params.typical_secs;
        std::time::Duration::from_secs(if self.hints() { hinting } else { plain })
    }

    /// Whether the run hints (and so reclaims to a budget).
    pub fn hints(&self) -> bool {
        !self.baseline
            && matches!(
                self.mode,
                Mode::Hinting | Mode::HintingBatched | Mode::HintingUnbatched | Mode::HintingPv
            )
    }
}

/// The experiment's choices that shape the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub workload: Option<String>,
    pub modes: Vec<Mode>,
    pub limit: Option<u64>,
    pub budget: Option<u64>,
    pub plan: Plan,
}

/// The runs, in order: per workload, its baseline, then every mode.
pub fn plan(choice: &Choice) -> Result<Vec<RunSpec>, PlanError> {
    let workloads = match &choice.workload {
        Some(name) => vec![Workload::from_name(name)?],
        None => Workload::ALL.to_vec(),
    };
    let mut modes: Vec<Mode> = if choice.modes.is_empty() {
        choice.plan.default_modes().to_vec()
    } else {
        choice.modes.clone()
    };
    modes.sort();
    modes.dedup();
    let mut runs = Vec::new();
    for w in workloads {
        let p = params(w, choice.plan);
        let limit = choice.limit.unwrap_or(p.limit);
        runs.push(RunSpec {
            workload: w,
            mode: Mode::HostSwap,
            baseline: true,
            params: p.clone(),
            limit: None,
            budget: None,
        });
        for &mode in &modes {
            // Potentially volatile pages change nothing for a guest that
            // maps no file page writable: by default that mode runs for
            // the writing workload only.
            if mode == Mode::HintingPv && choice.modes.is_empty() && !w.writes_disk() {
                continue;
            }
            runs.push(RunSpec {
                workload: w,
                mode,
                baseline: false,
                params: p.clone(),
                limit: Some(limit),
                budget: choice.budget,
            });
        }
    }
    Ok(runs)
}

/// How the hinting runs learn of host pressure: passed through to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure<'a> {
    pub psi: bool,
    pub cgroup: CgroupBudget,
    /// `--victim-order` of the hinting runs, if not the default.
    pub victim_order: Option<&'a str>,
}

/// Interval of the stats file the experiment samples (ms).
pub const STATS_INTERVAL_MS: u64 = 200;

/// The arguments of `vmm run` for `spec` (after the subcommand).
pub fn run_args(spec: &RunSpec, disk: Option<&Path>, stats: &Path, p: Pressure<'_>) -> Vec<String> {
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
        if spec.workload.writes_disk() {
            a.push("--disk-rw".into());
        }
    }
    // Only the hinting runs reclaim; the others hold the limit through the
    // host kernel (swap) or free page reporting alone.
    let hints = spec.hints();
    if let Some(b) = spec.budget.filter(|_| hints) {
        a.extend(["--host-budget".into(), b.to_string()]);
    }
    if hints && p.psi {
        a.push("--psi".into());
    }
    if let Some(o) = p.victim_order.filter(|_| hints) {
        a.extend(["--victim-order".into(), o.into()]);
    }
    let cgroup = if hints { p.cgroup } else { CgroupBudget::Off };
    a.extend([
        "--cgroup-budget".into(),
        match cgroup {
            CgroupBudget::Auto => "auto".into(),
            CgroupBudget::Off => "off".into(),
        },
    ]);
    match spec.mode {
        _ if spec.baseline => a.push("--no-hinting".into()),
        Mode::HostSwap => a.push("--no-hinting".into()),
        Mode::FreePageReporting => a.push("--free-page-reporting".into()),
        Mode::Hinting => {}
        Mode::HintingBatched => a.extend(["--hints".into(), "batched".into()]),
        Mode::HintingUnbatched => a.extend(["--hints".into(), "unbatched".into()]),
        Mode::HintingPv => a.push("--potentially-volatile".into()),
    }
    a.push("--".into());
    a.extend(p_.guest.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn choice(workload: Option<&str>, modes: &[Mode]) -> Choice {
        Choice {
            workload: workload.map(String::from),
            modes: modes.to_vec(),
            limit: None,
            budget: None,
            plan: Plan::Full,
        }
    }

    #[test]
    fn the_flags_choose_the_plan_short_by_default() {
        assert_eq!(Plan::from_flags(false, false), Plan::Short);
        assert_eq!(Plan::from_flags(true, false), Plan::Full);
        assert_eq!(Plan::from_flags(false, true), Plan::Quick);
        assert_eq!(Plan::from_flags(true, true), Plan::Quick);
        for (p, name) in [
            (Plan::Short, "short"),
            (Plan::Full, "full"),
            (Plan::Quick, "quick"),
        ] {
            assert_eq!(p.name(), name);
            assert!(
                p.header(7).starts_with(&format!("plan: {name} (7 runs")),
                "{name}"
            );
        }
        assert!(
            Plan::Short.header(20).contains("--full"),
            "it says how to get the full matrix"
        );
    }

    #[test]
    fn the_short_plan_runs_every_workload_against_swap_reporting_and_hinting() {
        let mut c = choice(None, &[]);
        c.plan = Plan::Short;
        let runs = plan(&c).unwrap();
        assert_eq!(runs.len(), 5 * (1 + 3));
        for (i, w) in Workload::ALL.into_iter().enumerate() {
            let labels: Vec<&str> = runs[4 * i..4 * i + 4]
                .iter()
                .inspect(|r| assert_eq!(r.workload, w))
                .map(RunSpec::label)
                .collect();
            assert_eq!(
                labels,
                ["baseline", "host-swap", "free-page-reporting", "hinting"],
                "{w:?}"
            );
            assert!(runs[4 * i].limit.is_none());
            let p = params(w, Plan::Short);
            assert!(runs[4 * i + 1..4 * i + 4]
                .iter()
                .all(|r| r.limit == Some(p.limit)));
            assert_eq!(runs[4 * i].params, p);
        }
        // Modes asked for replace the plan's, at the plan's sizes.
        c.modes = vec![Mode::HintingBatched];
        c.workload = Some("kv".into());
        let runs = plan(&c).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].params, params(Workload::KeyValue, Plan::Short));
        // The full and quick plans keep the whole matrix.
        for p in [Plan::Full, Plan::Quick] {
            let mut c = choice(None, &[]);
            c.plan = p;
            assert_eq!(plan(&c).unwrap().len(), 5 * (1 + 4) + 1, "{p:?}");
        }
    }

    #[test]
    fn the_short_plan_is_smaller_than_the_full_one_and_still_limits() {
        for w in Workload::ALL {
            let (s, f) = (params(w, Plan::Short), params(w, Plan::Full));
            let data = |p: &Params| p.files.map_or(0, |(n, size)| u64::from(n) * size);
            assert!(data(&s) <= data(&f) && s.limit <= f.limit, "{w:?}");
            assert!(s.limit < s.mem && s.timeout_secs <= f.timeout_secs, "{w:?}");
            assert_eq!((s.mem, s.vcpus), (f.mem, f.vcpus), "{w:?}: the same guest");
        }
        let short: Vec<_> = Workload::ALL
            .iter()
            .map(|&w| params(w, Plan::Short))
            .collect();
        let full: Vec<_> = Workload::ALL
            .iter()
            .map(|&w| params(w, Plan::Full))
            .collect();
        assert_ne!(short, full);
        // The ETA's estimates: every run has one, hinting's no shorter.
        for p in [Plan::Short, Plan::Full, Plan::Quick] {
            let mut c = choice(None, &[]);
            c.plan = p;
            let runs = plan(&c).unwrap();
            assert!(runs.iter().all(|r| r.typical() > Duration::ZERO), "{p:?}");
            let (plain, hinting) = typical_secs(Workload::KeyValue, p);
            assert!(hinting > plain, "{p:?}");
        }
        let total = |p| {
            let mut c = choice(None, &[]);
            c.plan = p;
            plan(&c)
                .unwrap()
                .iter()
                .map(RunSpec::typical)
                .sum::<Duration>()
        };
        // Within the five minutes with room to spare; the full
        // matrix about 20.
        assert!(
            total(Plan::Short) < Duration::from_secs(200),
            "{:?}",
            total(Plan::Short)
        );
        assert!(total(Plan::Full) > Duration::from_secs(15 * 60));
    }

    #[test]
    fn the_full_matrix_is_every_workload_by_the_default_modes_plus_baselines() {
        let runs = plan(&choice(None, &[])).unwrap();
        // Four modes and a baseline per workload; the writing one also
        // runs hinting with potentially volatile pages.
        assert_eq!(runs.len(), 5 * (1 + 4) + 1);
        let stems: Vec<String> = runs.iter().map(RunSpec::stem).collect();
        assert_eq!(stems[0], "page-cache-baseline");
        assert_eq!(stems[1], "page-cache-host-swap");
        assert_eq!(stems[3], "page-cache-hinting");
        assert_eq!(stems[4], "page-cache-hinting-batched");
        assert_eq!(stems[5], "kv-baseline");
        assert_eq!(stems[15], "anon-free-baseline");
        assert!(runs[0].limit.is_none() && runs[1].limit == Some(16 << 20));
        assert_eq!(runs[16].limit, Some(12 << 20));
        assert!(runs.iter().all(|r| r.budget.is_none()));
        assert_eq!(stems[20], "write-baseline");
        assert_eq!(stems[25], "write-hinting-pv");
        assert!(!stems[..20].iter().any(|s| s.ends_with("hinting-pv")));
    }

    #[test]
    fn names_and_modes_restrict_the_matrix() {
        let runs = plan(&choice(
            Some("anon-free"),
            &[Mode::Hinting, Mode::HostSwap, Mode::Hinting],
        ))
        .unwrap();
        let labels: Vec<&str> = runs.iter().map(RunSpec::label).collect();
        assert_eq!(labels, ["baseline", "host-swap", "hinting"]);
        assert_eq!(
            plan(&choice(Some("nope"), &[])),
            Err(PlanError::UnknownWorkload("nope".into()))
        );
        let mut c = choice(Some("page-cache"), &[Mode::HostSwap]);
        c.limit = Some(7 << 20);
        c.plan = Plan::Quick;
        let runs = plan(&c).unwrap();
        assert_eq!(runs[1].limit, Some(7 << 20));
        assert_eq!(runs[1].params, params(Workload::PageCache, Plan::Quick));
    }

    #[test]
    fn each_mode_becomes_its_flags() {
        let mut c = choice(Some("page-cache"), &Mode::ALL);
        c.budget = Some(5 << 20);
        let runs = plan(&c).unwrap();
        let p = Pressure {
            psi: true,
            cgroup: CgroupBudget::Auto,
            victim_order: Some("host-age"),
        };
        let args = |i: usize| {
            run_args(&runs[i], Some(Path::new("/d.img")), Path::new("/s.json"), p).join(" ")
        };
        let base = args(0);
        assert!(base.contains("--no-hinting") && !base.contains("--host-budget"));
        assert!(base.contains("--cgroup-budget off") && !base.contains("--psi"));
        assert!(base.ends_with("-- copies=1 scan-mmap 2"), "{base}");
        let swap = args(1);
        assert!(
            swap.contains("--cgroup-budget off --no-hinting --"),
            "{swap}"
        );
        assert!(!swap.contains("--host-budget") && !swap.contains("--psi"));
        assert!(!swap.contains("--victim-order"), "{swap}");
        assert!(swap.contains("--disk /d.img") && swap.contains("--stats /s.json"));
        assert!(swap.contains("--stats-interval 200") && swap.contains("--vcpus 1"));
        assert!(args(2).contains("--cgroup-budget off --free-page-reporting --"));
        let h = args(3);
        assert!(
            h.contains(
                "--host-budget 5242880 --psi --victim-order host-age --cgroup-budget auto --"
            ),
            "{h}"
        );
        assert!(!h.contains("--no-hinting") && !h.contains("hints="), "{h}");
        assert!(args(4).ends_with("auto --hints batched -- copies=1 scan-mmap 2"));
        assert!(args(5).ends_with("auto --hints unbatched -- copies=1 scan-mmap 2"));
        assert!(args(6).ends_with("auto --potentially-volatile -- copies=1 scan-mmap 2"));
        assert!(!args(6).contains("--disk-rw"), "the scan only reads");
        let w = plan(&choice(Some("write"), &[Mode::HintingPv])).unwrap();
        let a = run_args(&w[1], Some(Path::new("/w.img")), Path::new("/s.json"), p).join(" ");
        assert!(
            a.contains("--disk /w.img --disk-rw") && a.contains("fwrite"),
            "{a}"
        );
    }

    #[test]
    fn quick_sizes_are_smaller_and_limits_below_guest_ram() {
        for w in Workload::ALL {
            let (d, q) = (params(w, Plan::Full), params(w, Plan::Quick));
            assert!(q.timeout_secs < d.timeout_secs, "{w:?}");
            assert!(q.limit <= d.limit && d.limit < d.mem, "{w:?}");
            assert_eq!(Workload::from_name(w.name()), Ok(w));
        }
    }
}
