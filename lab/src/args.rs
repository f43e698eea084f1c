//! The lab's command-line arguments: `vmm experiment`, `vmm gen-files` and
//! `vmm mkdisk`, and the size syntax every `vmm` flag shares.
//!
//! The `vmm` binary puts these under its own subcommands; this module
//! only parses syntax and must never touch files or start anything.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Whether a memory cgroup's limit becomes a reclaim budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupBudget {
    /// When the VMM runs in a memory cgroup with a limit: budget =
    /// limit - a measured reserve - what everything but guest RAM and
    /// unmapped file cache uses; a round also runs at once when usage
    /// crosses limit - reserve (cgroup v1 threshold, v2 memory.events).
    Auto,
    /// Never.
    Off,
}

/// How page states travel from the guest (`vmm run --hints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HintsArg {
    /// A page-state table shared by guest and VMM: no exits unless the
    /// host took something.
    Shared,
    /// Batched hint hypercalls (ABI version 1).
    Batched,
    /// One hypercall per hint.
    Unbatched,
}

/// The modes `vmm experiment` compares, each under the workload's host
/// memory limit (a memory cgroup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Mode {
    /// No hints: the host holds the limit by swapping guest memory out.
    #[value(alias = "off")]
    HostSwap,
    /// Linux's free page reporting (whole free 2 MiB blocks, every 2 s).
    FreePageReporting,
    /// Page hinting with discard faults, states in the shared table (the
    /// VMM's default, `--hints shared`).
    #[value(alias = "hinting-shared")]
    Hinting,
    /// Page hinting by batched hypercalls (`--hints batched`).
    HintingBatched,
    /// Page hinting, one exit per hint (`--hints unbatched`).
    HintingUnbatched,
    /// Page hinting with potentially volatile pages (`--potentially-volatile`):
    /// clean file pages mapped writable are candidates too, taken only when
    /// KVM's dirty log proves them clean. Only the writing workload maps
    /// file pages writable, so only it runs this mode unless asked.
    HintingPv,
}

impl Mode {
    /// Every mode, in table order.
    pub const ALL: [Mode; 6] = [
        Mode::HostSwap,
        Mode::FreePageReporting,
        Mode::Hinting,
        Mode::HintingBatched,
        Mode::HintingUnbatched,
        Mode::HintingPv,
    ];

    /// The modes run when none is asked for (one exit per hint is
    /// measured on request only: it changes no memory figure).
    pub const DEFAULT: [Mode; 5] = [
        Mode::HostSwap,
        Mode::FreePageReporting,
        Mode::Hinting,
        Mode::HintingBatched,
        Mode::HintingPv,
    ];

    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Mode::HostSwap => "host-swap",
            Mode::FreePageReporting => "free-page-reporting",
            Mode::Hinting => "hinting",
            Mode::HintingBatched => "hinting-batched",
            Mode::HintingUnbatched => "hinting-unbatched",
            Mode::HintingPv => "hinting-pv",
        }
    }
}

/// Options of `vmm experiment`.
#[derive(Debug, Clone, Args)]
pub struct ExperimentArgs {
    /// One workload (page-cache, kv, build, anon-free, write), or `density` (how
    /// many key-value guests fit under one limit, per mode); default: every
    /// workload.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// density: the most guests tried (default 6; 3 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub guests: Option<u32>,
    /// density: a guest slower than this against the same guests with no
    /// limit fails (default 2).
    #[arg(long, value_name = "X", value_parser = parse_slowdown)]
    pub max_slowdown: Option<f64>,
    /// Run only this mode (repeatable); default: host-swap,
    /// free-page-reporting and hinting, and with --full or --quick also
    /// hinting-batched (and hinting-pv for write).
    #[arg(long = "mode", value_name = "MODE")]
    pub modes: Vec<Mode>,
    /// The host memory limit of every constrained run (default: the
    /// workload's).
    #[arg(long, value_name = "SIZE", value_parser = parse_nonzero_size)]
    pub limit: Option<u64>,
    /// Also give the hinting runs this budget (default: the headroom the
    /// limit leaves, `--cgroup-budget auto`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub host_budget: Option<u64>,
    /// Make a temporary swap file of SIZE in the results folder for the
    /// runs (removed at the end); for hosts without swap.
    #[arg(long, value_name = "SIZE", value_parser = parse_nonzero_size)]
    pub swap_file: Option<u64>,
    /// Make the runs' memory cgroups in DIR (a memory cgroup directory)
    /// instead of the one found.
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,
    /// Also reclaim on host memory pressure (passed to every run).
    #[arg(long)]
    pub psi: bool,
    /// The hinting runs' `--victim-order` (default: `vmm run`'s).
    #[arg(long, value_name = "ORDER",
          value_parser = ["frame", "host-age", "guest-age"])]
    pub victim_order: Option<String>,
    /// Memory cgroup budget of the runs (see `vmm run --cgroup-budget`).
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = CgroupBudget::Auto)]
    pub cgroup_budget: CgroupBudget,
    /// Where the results go; default: results/<UTC timestamp>/.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The full matrix: every default mode at the full sizes (about 25
    /// minutes on the development machine); default: the short plan
    /// (every workload against host swap, free page reporting and
    /// hinting at smaller sizes, a few minutes, its figures marked
    /// "short"). density: its default sizes either way.
    #[arg(long, conflicts_with = "quick")]
    pub full: bool,
    /// Tiny sizes and the full matrix's modes, for the tests (a few
    /// seconds per run).
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

/// Parses a size like [`parse_size`] that must not be zero.
pub fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("'{s}' must be at least 1 byte")),
        n => Ok(n),
    }
}

/// A slowdown bound: a number above 1.
fn parse_slowdown(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 1.0 => Ok(x),
        _ => Err(format!("'{s}' is not a slowdown bound (a number above 1)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_nonzero_size("1"), Ok(1));
        assert!(parse_nonzero_size("0").is_err());
    }
}
