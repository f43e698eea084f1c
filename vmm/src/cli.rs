//! The command line: `vmm run [--kernel PATH] [--mem SIZE] [--vcpus N]
//! [--timeout SECS] [--disk PATH [--disk-rw]] [--no-hinting] [--no-discard-faults]
//! [--host-budget SIZE] [--reclaim-interval MS] [--psi [--psi-threshold PCT]]
//! [--free-page-reporting] [--cgroup-budget auto|off]
//! [--stats FILE [--stats-interval MS]] [-- ARGS...]`, the host tools
//! `vmm gen-files` and `vmm mkdisk`, and `vmm experiment [NAME] [--mode
//! MODE ...] [--host-budget SIZE] [--out DIR] [--quick]`.
//!
//! Parsing only checks syntax (numbers, sizes); whether a value can work
//! (enough RAM, a vCPU count KVM allows) is decided by `run`, which reports
//! it with the configuration exit status. This module must never touch KVM
//! or files.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pagehint_abi::exit::vmm::USAGE;

/// A KVM mini-hypervisor for the page-hinting guest.
#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest kernel and run it until it exits.
    Run(RunArgs),
    /// Write files of verifiable generated blocks.
    GenFiles(GenFilesArgs),
    /// Build a PHFS disk image from the files of a directory.
    Mkdisk(MkdiskArgs),
    /// Run a matrix of workloads by hinting mode and report what each
    /// mode gave back to the host, how fast, and at what cost.
    Experiment(ExperimentArgs),
}

/// Whether a memory cgroup's limit becomes a reclaim budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupBudget {
    /// When the VMM runs in a memory cgroup with a limit: budget =
    /// limit - 16 MiB - what everything but guest RAM uses.
    Auto,
    /// Never.
    Off,
}

/// The modes `vmm experiment` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Mode {
    /// No hints: the host can take nothing back.
    Off,
    /// Linux's free page reporting (whole free 2 MiB blocks, every 2 s).
    FreePageReporting,
    /// Page hinting, batched, with discard faults.
    #[value(alias = "hinting-batched")]
    Hinting,
    /// Page hinting, one exit per hint.
    HintingUnbatched,
}

impl Mode {
    /// Every mode, in table order.
    pub const ALL: [Mode; 4] = [
        Mode::Off,
        Mode::FreePageReporting,
        Mode::Hinting,
        Mode::HintingUnbatched,
    ];

    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::FreePageReporting => "free-page-reporting",
            Mode::Hinting => "hinting",
            Mode::HintingUnbatched => "hinting-unbatched",
        }
    }
}

/// Options of `vmm experiment`.
#[derive(Debug, Clone, Args)]
pub struct ExperimentArgs {
    /// One workload (page-cache, anon-free); default: all of them.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Run only this mode (repeatable); default: every mode.
    #[arg(long = "mode", value_name = "MODE")]
    pub modes: Vec<Mode>,
    /// The host budget of every constrained run (default: the workload's).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub host_budget: Option<u64>,
    /// Also reclaim on host memory pressure (passed to every run).
    #[arg(long)]
    pub psi: bool,
    /// Memory cgroup budget of the runs (see `vmm run --cgroup-budget`).
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = CgroupBudget::Auto)]
    pub cgroup_budget: CgroupBudget,
    /// Where the results go; default: results/<UTC timestamp>/.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Small sizes, for tests (a few seconds per run).
    #[arg(long)]
    pub quick: bool,
}

/// Options of `vmm gen-files`.
#[derive(Debug, Clone, Args)]
pub struct GenFilesArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Number of files (fNNNNN.bin, from f00000.bin).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub count: u32,
    /// Size of each file: bytes, or a number with K, M or G; at least 1.
    #[arg(long, value_name = "SIZE", value_parser = parse_nonzero_size)]
    pub size: u64,
    /// File id of the first file; file n gets FIRST_ID + n.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    pub first_id: u32,
}

/// Options of `vmm mkdisk`.
#[derive(Debug, Clone, Args)]
pub struct MkdiskArgs {
    /// Directory whose regular files go into the image.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The image to write (replaced atomically).
    #[arg(long, value_name = "IMAGE")]
    pub out: PathBuf,
}

/// Options of `vmm run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Guest kernel (a PVH ELF); default: the bundled guest.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest RAM, 16M to 64G: a number with K, M or G (binary units) or B
    /// for bytes; a bare number means MiB, as QEMU's -m. Above 3G, RAM
    /// continues at 4 GiB, past the MMIO hole.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_mem_size)]
    pub mem: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub vcpus: u32,
    /// Stop the guest after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Disk image for the virtio block device (read-only unless --disk-rw).
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// Let the guest write to the disk image.
    #[arg(long, requires = "disk")]
    pub disk_rw: bool,
    /// Turn page hinting off: CPUID does not advertise it and every hint
    /// batch is refused.
    #[arg(long)]
    pub no_hinting: bool,
    /// Turn discard faults off (hinting stays on): CPUID does not
    /// advertise them and dropped volatile frames are not registered with
    /// userfaultfd.
    #[arg(long)]
    pub no_discard_faults: bool,
    /// Target for resident guest memory: the reclaimer drops hinted frames
    /// while more is resident (bytes, or a number with K, M or G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub host_budget: Option<u64>,
    /// Milliseconds between reclaimer rounds (each measures residency).
    #[arg(long, value_name = "MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub reclaim_interval: u64,
    /// Also reclaim when host memory pressure (/proc/pressure/memory,
    /// "some avg10") exceeds --psi-threshold.
    #[arg(long)]
    pub psi: bool,
    /// PSI percentage above which --psi reclaims.
    #[arg(long, value_name = "PCT", default_value_t = 10.0, value_parser = parse_percent)]
    pub psi_threshold: f64,
    /// Write the stats JSON here, every --stats-interval and at exit.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
    /// Free page reporting instead of hinting: passes `hints=fpr` to the
    /// guest, drops each reported free block at once and nothing else.
    #[arg(long, conflicts_with = "no_hinting")]
    pub free_page_reporting: bool,
    /// Use a memory cgroup's headroom as a budget: `auto` when the VMM
    /// runs in a memory cgroup with a limit, or `off`.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = CgroupBudget::Auto)]
    pub cgroup_budget: CgroupBudget,
    /// Milliseconds between writes of the stats file.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub stats_interval: u64,
    /// Guest command line, joined with spaces.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// Parses `256M`, `1G`, `512K` (also `KiB`, `MB`, ... and lower case) or
/// plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a size (e.g. 256M, 1G, 512K, 1048576)"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is too large"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("'{s}' has an unknown unit (use K, M or G)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses a guest RAM size: as [`parse_size`], except that a bare number
/// means MiB (what QEMU users type: `-m 512`); `B` gives bytes.
pub fn parse_mem_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return parse_size(&format!("{t}M"));
    }
    parse_size(t)
}

/// Parses a size like [`parse_size`] that must not be zero.
pub fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("'{s}' must be at least 1 byte")),
        n => Ok(n),
    }
}

/// Parses a non-negative number of seconds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is not a valid timeout"))
}

/// Parses a percentage from 0 to 100.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a percentage from 0 to 100")),
    }
}

/// Parses the process arguments.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::try_parse_from(args)
}

/// The exit status for a parse failure: 0 for `--help`/`--version`, the
/// usage status for everything else.
pub fn parse_error_status(e: &clap::Error) -> i32 {
    if e.use_stderr() {
        USAGE
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut v = vec!["vmm", "run"];
        v.extend_from_slice(args);
        parse_from(v).map(|c| match c.command {
            Command::Run(r) => r,
            other => panic!("not run: {other:?}"),
        })
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("512kib"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12T").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("17179869184G").is_err());
        // --mem: a bare number is MiB (as QEMU's -m), B means bytes.
        assert_eq!(parse_mem_size("512"), Ok(512 << 20));
        assert_eq!(parse_mem_size("16777216B"), Ok(16 << 20));
        assert_eq!(parse_mem_size("2G"), Ok(2 << 30));
        assert!(parse_mem_size("").is_err());
        assert!(parse_mem_size("99999999999999999").is_err());
    }

    #[test]
    fn defaults_and_trailing_args() {
        let r = run_args(&[]).unwrap();
        assert_eq!(
            (r.mem, r.vcpus, r.timeout, r.kernel),
            (256 << 20, 2, None, None)
        );
        let r = run_args(&[
            "--mem",
            "1G",
            "--vcpus",
            "4",
            "--timeout",
            "1.5",
            "--",
            "hello",
            "-x",
        ])
        .unwrap();
        assert_eq!((r.mem, r.vcpus), (1 << 30, 4));
        assert_eq!(r.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(r.args, ["hello", "-x"]);
    }

    #[test]
    fn disk_flags_and_tools() {
        let r = run_args(&["--disk", "/tmp/x.img"]).unwrap();
        assert_eq!(
            (r.disk.as_deref(), r.disk_rw),
            (Some(std::path::Path::new("/tmp/x.img")), false)
        );
        assert!(run_args(&["--disk", "a", "--disk-rw"]).unwrap().disk_rw);
        let e = run_args(&["--disk-rw"]).unwrap_err();
        assert_eq!(parse_error_status(&e), USAGE);

        let c = parse_from([
            "vmm",
            "gen-files",
            "--dir",
            "d",
            "--count",
            "3",
            "--size",
            "6K",
        ]);
        match c.unwrap().command {
            Command::GenFiles(g) => assert_eq!((g.count, g.size, g.first_id), (3, 6144, 1)),
            other => panic!("{other:?}"),
        }
        for bad in [
            &[
                "vmm",
                "gen-files",
                "--dir",
                "d",
                "--count",
                "3",
                "--size",
                "0",
            ][..],
            &[
                "vmm",
                "gen-files",
                "--dir",
                "d",
                "--count",
                "100001",
                "--size",
                "1",
            ],
            &["vmm", "mkdisk", "--from", "d"],
        ] {
            assert_eq!(parse_error_status(&parse_from(bad).unwrap_err()), USAGE);
        }
        let c = parse_from(["vmm", "mkdisk", "--from", "d", "--out", "x.img"]).unwrap();
        assert!(matches!(c.command, Command::Mkdisk(_)));
    }

    #[test]
    fn reclaim_flags() {
        let r = run_args(&[]).unwrap();
        assert!(!r.no_hinting && !r.psi && !r.no_discard_faults);
        assert!(
            run_args(&["--no-discard-faults"])
                .unwrap()
                .no_discard_faults
        );
        assert_eq!((r.host_budget, r.reclaim_interval), (None, 50));
        assert_eq!(
            (r.psi_threshold, r.stats.clone(), r.stats_interval),
            (10.0, None, 1000)
        );
        let r = run_args(&[
            "--no-hinting",
            "--host-budget",
            "64M",
            "--reclaim-interval",
            "20",
            "--psi",
            "--psi-threshold",
            "2.5",
            "--stats",
            "/tmp/s.json",
            "--stats-interval",
            "100",
        ])
        .unwrap();
        assert!(r.no_hinting && r.psi);
        assert_eq!((r.host_budget, r.reclaim_interval), (Some(64 << 20), 20));
        assert_eq!((r.psi_threshold, r.stats_interval), (2.5, 100));
        assert_eq!(
            r.stats.as_deref(),
            Some(std::path::Path::new("/tmp/s.json"))
        );
        for bad in [
            &["--reclaim-interval", "0"][..],
            &["--psi-threshold", "101"],
            &["--psi-threshold", "nan"],
            &["--host-budget", "lots"],
            &["--stats-interval", "0"],
        ] {
            assert_eq!(
                parse_error_status(&run_args(bad).unwrap_err()),
                USAGE,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reporting_cgroup_and_experiment_flags() {
        let r = run_args(&[]).unwrap();
        assert!(!r.free_page_reporting);
        assert_eq!(r.cgroup_budget, CgroupBudget::Auto);
        let r = run_args(&["--free-page-reporting", "--cgroup-budget", "off"]).unwrap();
        assert!(r.free_page_reporting);
        assert_eq!(r.cgroup_budget, CgroupBudget::Off);
        let e = run_args(&["--free-page-reporting", "--no-hinting"]).unwrap_err();
        assert_eq!(parse_error_status(&e), USAGE);
        assert!(run_args(&["--cgroup-budget", "sometimes"]).is_err());

        let exp = |args: &[&str]| {
            let mut v = vec!["vmm", "experiment"];
            v.extend_from_slice(args);
            parse_from(v).map(|c| match c.command {
                Command::Experiment(e) => e,
                other => panic!("not experiment: {other:?}"),
            })
        };
        let e = exp(&[]).unwrap();
        assert_eq!(
            (e.name, e.modes.len(), e.quick, e.out),
            (None, 0, false, None)
        );
        let e = exp(&[
            "page-cache",
            "--mode",
            "off",
            "--mode",
            "hinting-batched",
            "--mode",
            "free-page-reporting",
            "--host-budget",
            "8M",
            "--quick",
            "--out",
            "/tmp/r",
        ])
        .unwrap();
        assert_eq!(e.name.as_deref(), Some("page-cache"));
        assert_eq!(e.modes, [Mode::Off, Mode::Hinting, Mode::FreePageReporting]);
        assert_eq!((e.host_budget, e.quick), (Some(8 << 20), true));
        assert!(exp(&["--mode", "sometimes"]).is_err());
        assert_eq!(Mode::HintingUnbatched.name(), "hinting-unbatched");
        for m in Mode::ALL {
            assert_eq!(Mode::from_str(m.name(), false), Ok(m));
        }
    }

    #[test]
    fn errors_map_to_usage_but_help_does_not() {
        let e = run_args(&["--bogus"]).unwrap_err();
        assert_eq!(parse_error_status(&e), USAGE);
        let e = run_args(&["--vcpus", "x"]).unwrap_err();
        assert_eq!(parse_error_status(&e), USAGE);
        let e = run_args(&["--timeout", "-1"]).unwrap_err();
        assert_eq!(parse_error_status(&e), USAGE);
        let e = parse_from(["vmm"]).unwrap_err();
        assert_eq!(parse_error_status(&e), USAGE);
        let e = parse_from(["vmm", "--help"]).unwrap_err();
        assert_eq!(parse_error_status(&e), 0);
        let e = parse_from(["vmm", "--version"]).unwrap_err();
        assert_eq!(parse_error_status(&e), 0);
    }
}
