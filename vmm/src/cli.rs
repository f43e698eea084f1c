//! The command line: `vmm run [--kernel PATH] [--mem SIZE] [--vcpus N]
//! [--timeout SECS] [--disk PATH [--disk-rw]] [--no-hinting] [--no-discard-faults]
//! [--host-budget SIZE] [--reclaim-interval MS] [--unused-delay MS|off]
//! [--psi [--psi-threshold PCT]]
//! [--free-page-reporting] [--potentially-volatile] [--cgroup-budget auto|off]
//! [--stats FILE [--stats-interval MS]] [-- ARGS...]`, the host tools
//! `vmm gen-files` and `vmm mkdisk`, and `vmm experiment [NAME] [--mode
//! MODE ...] [--host-budget SIZE] [--out DIR] [--full | --quick]` (the short
//! plan unless one of those two is given).
//!
//! Parsing only checks syntax (numbers, sizes); whether a value can work
//! (enough RAM, a vCPU count KVM allows) is decided by `run`, which reports
//! it with the configuration exit status. This module must never touch KVM
//! or files.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hypervisor::reclaim::age::VictimOrder;
use lab::args::{parse_size, CgroupBudget, ExperimentArgs, GenFilesArgs, HintsArg, MkdiskArgs};
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
    /// Talk to a running `vmm run --api-sock PATH`: read its state, set its
    /// memory budget, stop it.
    Ctl(CtlArgs),
}

/// Options of `vmm ctl`.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The API socket of the running VMM (`vmm run --api-sock PATH`).
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    #[command(subcommand)]
    pub action: CtlAction,
}

/// What `vmm ctl` asks.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlAction {
    /// Print a resource's JSON: `memory` (the working set by page state,
    /// the budget, the cgroup), `vm` (state, uptime, configuration) or
    /// `stats` (the live stats document).
    Get {
        #[arg(value_enum, default_value_t = Resource::Memory)]
        resource: Resource,
    },
    /// Set the reclaimer's budget for resident guest memory (bytes, or a
    /// number with K, M or G), or `none` to remove it.
    SetBudget {
        #[arg(value_name = "SIZE|none", value_parser = parse_budget)]
        budget: Budget,
    },
    /// Stop the VM as SIGTERM does (`vmm run` exits 143).
    Stop,
}

/// A resource `vmm ctl get` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    Memory,
    Vm,
    Stats,
}

/// `vmm ctl set-budget`'s value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(pub Option<u64>);

/// Parses `SIZE` or `none`.
pub fn parse_budget(s: &str) -> Result<Budget, String> {
    if s == "none" {
        return Ok(Budget(None));
    }
    parse_size(s).map(|b| Budget(Some(b)))
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
    /// How page states travel: `shared` (a page-state table in guest
    /// memory, no exits unless the host took something; advertised by
    /// CPUID), `batched` (hint hypercalls, ABI version 1) or `unbatched`
    /// (one hypercall per hint). `batched`/`unbatched` also pass
    /// `hints=...` to the guest.
    #[arg(long, value_name = "HOW", value_enum, default_value_t = HintsArg::Shared)]
    pub hints: HintsArg,
    /// Serve the instruction counter port (0x518): the guest brackets code
    /// with an `out` and an `in` there and reads how many instructions ran
    /// in between (the VMM single-steps it). For measurements only.
    #[arg(long)]
    pub count_instructions: bool,
    /// Target for resident guest memory: the reclaimer drops hinted frames
    /// while more is resident (bytes, or a number with K, M or G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub host_budget: Option<u64>,
    /// Milliseconds between reclaimer rounds (each measures residency).
    #[arg(long, value_name = "MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub reclaim_interval: u64,
    /// Drop guest frames that stayed unused this many milliseconds,
    /// whatever the budget (hinting only), or `off` to leave them to
    /// --host-budget and --psi.
    #[arg(long, value_name = "MS|off", default_value = UNUSED_DELAY_DEFAULT,
          value_parser = parse_unused_delay)]
    pub unused_delay: ::std::option::Option<Duration>,
    /// Which volatile frames the reclaimer takes first when it must hold
    /// a budget: `guest-age` (the age the guest publishes, then how long
    /// the entry stayed unchanged), `host-age` (only the latter) or `frame`
    /// (lowest frame first; for comparison).
    #[arg(long, value_name = "ORDER", default_value = "guest-age",
          value_parser = parse_victim_order)]
    pub victim_order: VictimOrder,
    /// Also reclaim when host memory pressure (/proc/pressure/memory,
    /// "some avg10") exceeds --psi-threshold.
    #[arg(long)]
    pub psi: bool,
    /// PSI percentage above which --psi reclaims.
    #[arg(long, value_name = "PCT", default_value_t = 10.0, value_parser = parse_percent)]
    pub psi_threshold: f64,
    /// Serve the operators' API (HTTP/1.1, JSON) on a Unix socket at PATH:
    /// `GET /vm`, `/stats`, `/memory`, `PATCH /memory`, `PUT /actions`
    /// (README "The API"). A stale socket there is replaced; the file is
    /// removed at exit.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Write the stats JSON here, every --stats-interval and at exit.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
    /// Free page reporting instead of hinting: passes `hints=fpr` to the
    /// guest, drops each reported free block at once and nothing else.
    #[arg(long, conflicts_with = "no_hinting")]
    pub free_page_reporting: bool,
    /// Potentially volatile pages: clean page-cache pages the guest maps
    /// writable stay candidates for reclaim, and the host drops one only
    /// when KVM's dirty log proves the guest has not written it since it
    /// was last clean (all vCPUs paused for the check). Needs hinting with
    /// discard faults.
    #[arg(long, conflicts_with_all = ["no_hinting", "free_page_reporting", "no_discard_faults"])]
    pub potentially_volatile: bool,
    /// No seccomp filters on the VMM's threads (for debugging with strace
    /// and the like; on by default).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Test hook: the named thread (main, vcpu, virtio-blk, discard-faults,
    /// reclaim, stats, api) makes a forbidden system call once its filter is on.
    #[arg(long, hide = true, value_name = "THREAD", value_parser = parse_probe)]
    pub seccomp_probe: Option<hypervisor::seccomp::ThreadKind>,
    /// Test hook (repeatable): make a host call of the VMM fail,
    /// `POINT:ERRNO[:every=N|after=N|nth=N]` (docs/reliability.md, "Fault
    /// injection").
    #[arg(long, hide = true, value_name = "POINT:ERRNO[:PATTERN]",
          value_parser = parse_fault)]
    pub inject_fault: Vec<hypervisor::fault_inject::Rule>,
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

/// `--unused-delay`'s default, as typed (`hypervisor::config::DEFAULT_UNUSED_DELAY`).
const UNUSED_DELAY_DEFAULT: &str = "50";

/// Parses `--victim-order`.
pub fn parse_victim_order(s: &str) -> Result<VictimOrder, String> {
    VictimOrder::parse(s).ok_or_else(|| format!("'{s}' is not frame, host-age or guest-age"))
}

/// Parses `--unused-delay`: milliseconds (at most 600000), or `off`.
pub fn parse_unused_delay(s: &str) -> Result<Option<Duration>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match t.parse::<u64>() {
        Ok(ms) if ms <= 600_000 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(format!(
            "'{s}' is not a number of milliseconds from 0 to 600000, or off"
        )),
    }
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

/// `--seccomp-probe`'s thread name.
fn parse_probe(s: &str) -> Result<hypervisor::seccomp::ThreadKind, String> {
    hypervisor::seccomp::ThreadKind::from_name(s).ok_or_else(|| {
        format!("unknown thread '{s}' (main, vcpu, virtio-blk, discard-faults, reclaim, stats)")
    })
}

/// One `--inject-fault` rule.
fn parse_fault(s: &str) -> Result<hypervisor::fault_inject::Rule, String> {
    s.parse()
        .map_err(|e: hypervisor::fault_inject::FaultSpecError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;
    use lab::args::Mode;

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

        let gen_files = |count: &str, size: &str| {
            parse_from([
                "vmm",
                "gen-files",
                "--dir",
                "d",
                "--count",
                count,
                "--size",
                size,
            ])
        };
        match gen_files("3", "6K").unwrap().command {
            Command::GenFiles(g) => assert_eq!((g.count, g.size, g.first_id), (3, 6144, 1)),
            other => panic!("{other:?}"),
        }
        for (count, size) in [("3", "0"), ("100001", "1")] {
            let e = gen_files(count, size).unwrap_err();
            assert_eq!(parse_error_status(&e), USAGE, "{count} x {size}");
        }
        let e = parse_from(["vmm", "mkdisk", "--from", "d"]).unwrap_err();
        assert_eq!(parse_error_status(&e), USAGE);
        let c = parse_from(["vmm", "mkdisk", "--from", "d", "--out", "x.img"]).unwrap();
        assert!(matches!(c.command, Command::Mkdisk(_)));
    }

    #[test]
    fn reclaim_flags() {
        let r = run_args(&[]).unwrap();
        assert!(!r.no_hinting && !r.psi && !r.no_discard_faults);
        assert_eq!(r.hints, HintsArg::Shared);
        assert_eq!(
            run_args(&["--hints", "unbatched"]).unwrap().hints,
            HintsArg::Unbatched
        );
        assert!(run_args(&["--hints", "sideways"]).is_err());
        assert!(
            run_args(&["--no-discard-faults"])
                .unwrap()
                .no_discard_faults
        );
        assert_eq!((r.host_budget, r.reclaim_interval), (None, 50));
        assert_eq!(
            r.unused_delay,
            Some(hypervisor::config::DEFAULT_UNUSED_DELAY)
        );
        for (arg, want) in [
            ("0", Some(Duration::ZERO)),
            ("250", Some(Duration::from_millis(250))),
            ("off", None),
            ("OFF", None),
        ] {
            assert_eq!(
                run_args(&["--unused-delay", arg]).unwrap().unused_delay,
                want
            );
        }
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
            &["--unused-delay", "-1"],
            &["--unused-delay", "600001"],
            &["--unused-delay", "never"],
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
        assert!(!r.potentially_volatile);
        let pv = run_args(&["--potentially-volatile", "--hints", "batched"]).unwrap();
        assert!(pv.potentially_volatile);
        for other in [
            "--no-hinting",
            "--free-page-reporting",
            "--no-discard-faults",
        ] {
            let e = run_args(&["--potentially-volatile", other]).unwrap_err();
            assert_eq!(parse_error_status(&e), USAGE, "{other}");
            let first = e.to_string();
            let first = first.lines().next().unwrap_or_default();
            assert!(
                first.contains("--potentially-volatile") && first.contains(other),
                "{first}"
            );
        }
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
            "--limit",
            "20M",
            "--swap-file",
            "256M",
            "--cgroup-root",
            "/sys/fs/cgroup/memory/x",
            "--quick",
            "--out",
            "/tmp/r",
        ])
        .unwrap();
        assert_eq!((e.limit, e.swap_file), (Some(20 << 20), Some(256 << 20)));
        assert_eq!(
            e.cgroup_root.as_deref(),
            Some(std::path::Path::new("/sys/fs/cgroup/memory/x"))
        );
        assert!(exp(&["--limit", "0"]).is_err(), "a zero limit is refused");
        assert_eq!(e.name.as_deref(), Some("page-cache"));
        assert_eq!(
            e.modes,
            [
                Mode::HostSwap,
                Mode::HintingBatched,
                Mode::FreePageReporting
            ],
            "off is an alias of host-swap"
        );
        let shared = exp(&["--mode", "hinting-shared"]).unwrap();
        assert_eq!(shared.modes, [Mode::Hinting], "an alias of the default");
        assert_eq!((e.host_budget, e.quick), (Some(8 << 20), true));
        assert!(exp(&["--mode", "sometimes"]).is_err());
        assert_eq!(Mode::HintingUnbatched.name(), "hinting-unbatched");
        for m in Mode::ALL {
            assert_eq!(Mode::from_str(m.name(), false), Ok(m));
        }
        // The short plan unless --full or --quick, which exclude each other.
        let plan = |e: &ExperimentArgs| lab::experiment::plan::Plan::from_flags(e.full, e.quick);
        let d = exp(&[]).unwrap();
        assert!(!d.full && !d.quick);
        assert_eq!(plan(&d).name(), "short");
        let full = exp(&["--full", "--swap-file", "512M"]).unwrap();
        assert!(full.full && !full.quick);
        assert_eq!(plan(&full).name(), "full");
        assert_eq!(plan(&e).name(), "quick");
        let both = exp(&["--full", "--quick"]).unwrap_err();
        assert_eq!(parse_error_status(&both), USAGE);
        assert!(both.to_string().contains("--full"), "{both}");
        assert!(exp(&["--full=yes"]).is_err(), "a flag takes no value");
    }

    #[test]
    fn inject_fault_is_hidden_repeatable_and_checked() {
        use hypervisor::fault_inject::{Pattern, Point};
        assert!(run_args(&[]).unwrap().inject_fault.is_empty());
        let r = run_args(&[
            "--inject-fault",
            "madvise:EAGAIN:every=2",
            "--inject-fault",
            "disk-read:EIO:nth=3",
        ])
        .unwrap();
        let got: Vec<_> = r
            .inject_fault
            .iter()
            .map(|f| (f.point, f.pattern))
            .collect();
        assert_eq!(
            got,
            [
                (Point::Madvise, Pattern::Every(2)),
                (Point::DiskRead, Pattern::Nth(3))
            ]
        );
        let e = run_args(&["--inject-fault", "madvise:EWHAT"]).unwrap_err();
        assert_eq!(parse_error_status(&e), USAGE);
        let mut cli = <Cli as clap::CommandFactory>::command();
        let help = cli.find_subcommand_mut("run").unwrap().render_help();
        let help = help.to_string();
        assert!(!help.contains("inject-fault"), "{help}");
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
