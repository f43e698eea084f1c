//! Turns `vmm run`'s command line into the hypervisor library's
//! [`VmConfig`], and holds the bundled guest kernel the build made.
//!
//! This is the only place where a flag meets the library: the library
//! never sees clap's types. It must never check more than the mapping
//! needs; the library validates what it is given.

use std::borrow::Cow;
use std::time::Duration;

use hypervisor::{DiskConfig, HintMode, Kernel, ReclaimOptions, StatsOptions, Transport, VmConfig};
use lab::args::{CgroupBudget, HintsArg};

use crate::cli::RunArgs;

/// The guest kernel built with this binary (`build.rs`).
pub static BUNDLED_KERNEL: &[u8] = include_bytes!(env!("GUEST_KERNEL_ELF"));

/// The hint mode the flags ask for.
fn hint_mode(args: &RunArgs) -> HintMode {
    if args.no_hinting {
        HintMode::Off
    } else if args.free_page_reporting {
        HintMode::FreePageReporting
    } else {
        HintMode::Hinting {
            discard_faults: !args.no_discard_faults,
            transport: match args.hints {
                HintsArg::Shared => Transport::Shared,
                HintsArg::Batched => Transport::Batched,
                HintsArg::Unbatched => Transport::Unbatched,
            },
        }
    }
}

/// The library's configuration for `vmm run ARGS`.
pub fn vm_config(args: &RunArgs) -> VmConfig {
    VmConfig {
        kernel: match &args.kernel {
            Some(path) => Kernel::Path(path.clone()),
            None => Kernel::Image(Cow::Borrowed(BUNDLED_KERNEL)),
        },
        mem: args.mem,
        vcpus: args.vcpus,
        timeout: args.timeout,
        disk: args.disk.as_ref().map(|path| DiskConfig {
            path: path.clone(),
            writable: args.disk_rw,
        }),
        hints: hint_mode(args),
        reclaim: ReclaimOptions {
            host_budget: args.host_budget,
            interval: Duration::from_millis(args.reclaim_interval),
            psi_threshold: args.psi.then_some(args.psi_threshold),
            cgroup_budget: args.cgroup_budget == CgroupBudget::Auto,
            unused_delay: args.unused_delay,
            victim_order: args.victim_order,
        },
        stats: args.stats.as_ref().map(|path| StatsOptions {
            path: path.clone(),
            interval: Duration::from_millis(args.stats_interval),
        }),
        guest_args: args.args.clone(),
        count_instructions: args.count_instructions,
        potentially_volatile: args.potentially_volatile,
        seccomp: hypervisor::seccomp::Policy {
            enabled: !args.no_seccomp,
            probe: args.seccomp_probe,
        },
        faults: args.inject_fault.clone(),
        api_sock: args.api_sock.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse_from, Command};

    fn config(args: &[&str]) -> VmConfig {
        let mut v = vec!["vmm", "run"];
        v.extend_from_slice(args);
        match parse_from(v).map(|c| c.command) {
            Ok(Command::Run(r)) => vm_config(&r),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn flags_become_the_library_configuration() {
        let c = config(&[]);
        assert!(matches!(c.kernel, Kernel::Image(ref k) if k.len() == BUNDLED_KERNEL.len()));
        assert_eq!(c.hints, HintMode::DEFAULT);
        assert_eq!(c.reclaim, ReclaimOptions::default());
        assert_eq!((c.mem, c.vcpus, c.stats), (256 << 20, 2, None));
        let c = config(&[
            "--no-discard-faults",
            "--host-budget",
            "8M",
            "--psi",
            "--hints",
            "batched",
        ]);
        assert_eq!(
            c.hints,
            HintMode::Hinting {
                discard_faults: false,
                transport: Transport::Batched,
            }
        );
        assert_eq!(c.guest_cmdline_words(), ["hints=batched"]);
        assert_eq!(c.reclaim.host_budget, Some(8 << 20));
        assert_eq!(c.reclaim.psi_threshold, Some(10.0));
        let off = config(&["--unused-delay", "off"]);
        assert_eq!(off.reclaim.unused_delay, None);
        assert_eq!(
            config(&["--unused-delay", "0"]).reclaim.unused_delay,
            Some(Duration::ZERO)
        );
        assert_eq!(config(&["--no-hinting"]).hints, HintMode::Off);
        assert!(!config(&[]).potentially_volatile);
        let pv = config(&["--potentially-volatile"]);
        assert!(pv.potentially_volatile && pv.validate().is_ok());
        let c = config(&[
            "--free-page-reporting",
            "--cgroup-budget",
            "off",
            "--disk",
            "d.img",
            "--stats",
            "s.json",
            "--kernel",
            "k.elf",
            "--",
            "x",
        ]);
        assert_eq!(c.hints, HintMode::FreePageReporting);
        assert!(!c.reclaim.cgroup_budget);
        assert_eq!(c.disk.map(|d| d.writable), Some(false));
        assert_eq!(
            c.stats.map(|s| s.interval),
            Some(Duration::from_millis(1000))
        );
        assert!(matches!(c.kernel, Kernel::Path(ref p) if p.as_os_str() == "k.elf"));
        assert_eq!(c.guest_args, ["x"]);
    }
}
