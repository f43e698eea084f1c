//! What one VM run is asked to be: [`VmConfig`], built by the caller (the
//! `vmm` binary translates its command line into it), and the guest
//! command line derived from it.
//!
//! The library takes no command-line type: this module is the whole of
//! its input. Checks that need no host resource (vCPU count, RAM size)
//! live here; whatever needs KVM or files is checked where it is opened.
//! This module must never open a file or touch KVM.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use pagehint_abi::boot::{
    VIRTIO_BLK_IRQ, VIRTIO_BLK_MMIO_BASE, VIRTIO_MMIO_CMDLINE_KEY, VIRTIO_MMIO_SIZE,
};

use crate::error::VmmError;
use crate::memory;

/// Most vCPUs we support (APIC IDs stay below 255, tables stay small).
pub const MAX_VCPUS: u32 = 64;

/// How long a frame stays Unused before the reclaimer drops it whatever
/// the budget (`--unused-delay`; `docs/reclaim.md` has the measurement).
pub const DEFAULT_UNUSED_DELAY: Duration = Duration::from_millis(50);

/// The guest option that turns its page hints into free page reporting.
pub const FPR_CMDLINE_OPTION: &str = "hints=fpr";

/// Where the guest kernel comes from.
#[derive(Debug, Clone)]
pub enum Kernel {
    /// A PVH ELF file, read when the VM is built.
    Path(PathBuf),
    /// An image already in memory (the `vmm` binary's bundled guest).
    Image(Cow<'static, [u8]>),
}

/// How the guest may tell the host about its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintMode {
    /// No hints: CPUID does not advertise them and every batch is refused.
    Off,
    /// Page hinting; with `discard_faults`, dropped volatile frames are
    /// registered with userfaultfd and a touch of one is a discard fault;
    /// `transport` says how states travel.
    Hinting {
        discard_faults: bool,
        transport: Transport,
    },
    /// Free page reporting: the guest reports free 2 MiB blocks, which the
    /// host drops at once; nothing else is dropped.
    FreePageReporting,
}

/// How page states travel from the guest to the VMM (`--hints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The shared page-state table (CPUID `SHARED_STATES`): plain stores
    /// and compare-and-swaps in guest memory, exits only where the host
    /// took something. Guests that do not register a table keep batching.
    Shared,
    /// Batched hint hypercalls (ABI version 1 as it was); the bundled guest
    /// is told so with `hints=batched`.
    Batched,
    /// One hypercall per hint; the bundled guest is told with
    /// `hints=unbatched`.
    Unbatched,
}

impl Transport {
    /// The flag's value, and the experiment's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Shared => "shared",
            Transport::Batched => "batched",
            Transport::Unbatched => "unbatched",
        }
    }
}

impl HintMode {
    /// Hinting with discard faults over the shared table: `vmm run`'s
    /// default.
    pub const DEFAULT: HintMode = HintMode::Hinting {
        discard_faults: true,
        transport: Transport::Shared,
    };

    /// Is the shared page-state table offered?
    pub fn shared_states(self) -> bool {
        matches!(
            self,
            HintMode::Hinting {
                transport: Transport::Shared,
                ..
            }
        )
    }

    /// The word that tells the bundled guest how to hint, if any.
    pub fn guest_word(self) -> Option<&'static str> {
        match self {
            HintMode::FreePageReporting => Some(FPR_CMDLINE_OPTION),
            HintMode::Hinting {
                transport: Transport::Batched,
                ..
            } => Some("hints=batched"),
            HintMode::Hinting {
                transport: Transport::Unbatched,
                ..
            } => Some("hints=unbatched"),
            _ => None,
        }
    }

    /// The CPUID feature bits (`pagehint_abi::cpuid::features`) of this
    /// mode, with discard faults as actually set up.
    pub fn cpuid_features(self, discard_faults: bool) -> u32 {
        use pagehint_abi::cpuid::features as f;
        if !self.hypercalls() {
            return f::HYPERCALLS;
        }
        let mut bits = f::HYPERCALLS | f::PAGE_HINTS;
        if discard_faults {
            bits |= f::DISCARD_FAULTS;
        }
        if self.shared_states() {
            bits |= f::SHARED_STATES;
        }
        bits
    }

    /// Does the guest see the hint hypercalls at all?
    pub fn hypercalls(self) -> bool {
        self != HintMode::Off
    }
    /// Are discard faults asked for?
    pub fn discard_faults(self) -> bool {
        matches!(
            self,
            HintMode::Hinting {
                discard_faults: true,
                ..
            }
        )
    }
    /// Does the reclaimer drop hinted frames (rather than only measure)?
    pub fn reclaims(self) -> bool {
        matches!(self, HintMode::Hinting { .. })
    }
}

/// The virtio block device's backing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// Let the guest write to it.
    pub writable: bool,
}

/// The host side of reclaim.
#[derive(Debug, Clone, PartialEq)]
pub struct ReclaimOptions {
    /// Target for resident guest memory, in bytes.
    pub host_budget: Option<u64>,
    /// Time between reclaimer rounds.
    pub interval: Duration,
    /// Reclaim when host PSI "some avg10" exceeds this percentage.
    pub psi_threshold: Option<f64>,
    /// Use the headroom of the memory cgroup the VMM runs in as a budget.
    pub cgroup_budget: bool,
    /// With hinting, drop every resident frame that stayed Unused this
    /// long, whatever the budget; `None` leaves Unused frames to the
    /// budget and PSI.
    pub unused_delay: Option<Duration>,
    /// Which Volatile frames a budget or PSI round takes first.
    pub victim_order: crate::reclaim::age::VictimOrder,
}

impl Default for ReclaimOptions {
    fn default() -> Self {
        ReclaimOptions {
            host_budget: None,
            interval: Duration::from_millis(50),
            psi_threshold: None,
            cgroup_budget: true,
            unused_delay: Some(DEFAULT_UNUSED_DELAY),
            victim_order: crate::reclaim::age::VictimOrder::default(),
        }
    }
}

/// The periodic stats file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsOptions {
    pub path: PathBuf,
    pub interval: Duration,
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: Kernel,
    /// Guest RAM in bytes.
    pub mem: u64,
    pub vcpus: u32,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    pub disk: Option<DiskConfig>,
    pub hints: HintMode,
    pub reclaim: ReclaimOptions,
    pub stats: Option<StatsOptions>,
    /// The user's guest command-line words.
    pub guest_args: Vec<String>,
    /// Serve the instruction counter port (`--count-instructions`).
    pub count_instructions: bool,
    /// Potentially volatile frames (`--potentially-volatile`): CPUID
    /// advertises them, `CHECK_WRITABLE` keeps an intact volatile page
    /// potentially volatile, and the reclaimer drops those KVM's dirty log
    /// proves clean. Needs hinting with discard faults.
    pub potentially_volatile: bool,
    /// Per-thread seccomp filters (on unless `--no-seccomp`).
    pub seccomp: crate::seccomp::Policy,
    /// The test hook's host calls to fail (`--inject-fault`), at most one
    /// rule per point; empty: none.
    pub faults: Vec<crate::fault_inject::Rule>,
    /// The API's Unix socket (`--api-sock`), or none.
    pub api_sock: Option<PathBuf>,
}

impl VmConfig {
    /// A configuration with the defaults of `vmm run` for `kernel`.
    pub fn new(kernel: Kernel) -> Self {
        VmConfig {
            kernel,
            mem: 256 << 20,
            vcpus: 2,
            timeout: None,
            disk: None,
            hints: HintMode::DEFAULT,
            reclaim: ReclaimOptions::default(),
            stats: None,
            guest_args: Vec::new(),
            count_instructions: false,
            potentially_volatile: false,
            seccomp: crate::seccomp::Policy::default(),
            faults: Vec::new(),
            api_sock: None,
        }
    }

    /// Checks everything that needs no host resource; returns the vCPU
    /// count as the VM needs it.
    pub fn validate(&self) -> Result<u8, VmmError> {
        let vcpus = check_vcpus(self.vcpus)?;
        memory::validate_size(self.mem)?;
        check_potentially_volatile(self.potentially_volatile, self.hints)?;
        Ok(vcpus)
    }

    /// The guest's command-line words for this configuration.
    pub fn guest_cmdline_words(&self) -> Vec<String> {
        guest_cmdline_words(
            self.disk.is_some(),
            self.hints.guest_word(),
            &self.guest_args,
        )
    }
}

/// Checks a vCPU count.
fn check_vcpus(vcpus: u32) -> Result<u8, VmmError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(VmmError::Config(format!(
            "--vcpus {vcpus} is out of range: need 1 to {MAX_VCPUS}"
        )));
    }
    u8::try_from(vcpus).map_err(|_| VmmError::Config(format!("--vcpus {vcpus} is too large")))
}

/// Potentially volatile frames are mapped writable: the host may drop one
/// only if a touch of it is a discard fault, so they need hinting with
/// discard faults.
fn check_potentially_volatile(on: bool, hints: HintMode) -> Result<(), VmmError> {
    let why = match hints {
        _ if !on => return Ok(()),
        HintMode::Off => "--no-hinting",
        HintMode::FreePageReporting => "--free-page-reporting",
        HintMode::Hinting {
            discard_faults: false,
            ..
        } => "--no-discard-faults",
        HintMode::Hinting { .. } => return Ok(()),
    };
    Err(VmmError::Config(format!(
        "--potentially-volatile needs hinting with discard faults; it cannot go with {why}"
    )))
}

/// A size as the kernel's `memparse` reads it: `4K`, `1M`, or bytes.
fn cmdline_size(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b.is_multiple_of(1 << 30) => format!("{}G", b >> 30),
        b if b.is_multiple_of(1 << 20) => format!("{}M", b >> 20),
        b if b.is_multiple_of(1 << 10) => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

/// The command-line option announcing the virtio block device, as Linux
/// and Firecracker write it: `virtio_mmio.device=4K@0xd0000000:5`.
pub fn virtio_blk_cmdline_option() -> String {
    format!(
        "{VIRTIO_MMIO_CMDLINE_KEY}={}@{VIRTIO_BLK_MMIO_BASE:#x}:{VIRTIO_BLK_IRQ}",
        cmdline_size(VIRTIO_MMIO_SIZE)
    )
}

/// The guest's command-line words: the device option first when there is
/// a disk, then the hint mode's word (`hints=fpr` with free page
/// reporting, `hints=batched`/`unbatched` for those transports), then the
/// user's words.
pub fn guest_cmdline_words(
    with_disk: bool,
    hint_word: Option<&str>,
    args: &[String],
) -> Vec<String> {
    let mut words = Vec::with_capacity(args.len() + 2);
    if with_disk {
        words.push(virtio_blk_cmdline_option());
    }
    if let Some(w) = hint_word {
        words.push(w.to_string());
    }
    words.extend(args.iter().cloned());
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader;
    use pagehint_abi::exit::vmm as status;

    #[test]
    fn vcpu_count_limits() {
        assert_eq!(check_vcpus(0).unwrap_err().exit_status(), status::CONFIG);
        assert_eq!(check_vcpus(65).unwrap_err().exit_status(), status::CONFIG);
        assert_eq!(check_vcpus(64).unwrap(), 64);
        assert_eq!(check_vcpus(1).unwrap(), 1);
    }

    #[test]
    fn hint_modes() {
        use pagehint_abi::cpuid::features as f;
        let on = HintMode::DEFAULT;
        assert!(on.hypercalls() && on.discard_faults() && on.reclaims());
        assert!(on.shared_states() && on.guest_word().is_none());
        assert_eq!(
            on.cpuid_features(true),
            f::HYPERCALLS | f::PAGE_HINTS | f::DISCARD_FAULTS | f::SHARED_STATES
        );
        assert_eq!(
            on.cpuid_features(false),
            f::HYPERCALLS | f::PAGE_HINTS | f::SHARED_STATES
        );
        let batched = HintMode::Hinting {
            discard_faults: true,
            transport: Transport::Batched,
        };
        assert!(!batched.shared_states() && batched.guest_word() == Some("hints=batched"));
        assert_eq!(
            batched.cpuid_features(true),
            f::HYPERCALLS | f::PAGE_HINTS | f::DISCARD_FAULTS
        );
        assert_eq!(HintMode::Off.cpuid_features(true), f::HYPERCALLS);
        assert_eq!(
            HintMode::FreePageReporting.cpuid_features(false),
            f::HYPERCALLS | f::PAGE_HINTS
        );
        let fpr = HintMode::FreePageReporting;
        assert!(fpr.hypercalls() && !fpr.discard_faults() && !fpr.reclaims());
        assert!(!HintMode::Off.hypercalls() && !HintMode::Off.reclaims());
        let mut c = VmConfig::new(Kernel::Image(Cow::Borrowed(&[])));
        c.hints = fpr;
        c.guest_args = vec!["x".into()];
        assert_eq!(c.guest_cmdline_words(), ["hints=fpr", "x"]);
    }

    #[test]
    fn potentially_volatile_needs_hinting_with_discard_faults() {
        let mut c = VmConfig::new(Kernel::Image(Cow::Borrowed(&[])));
        c.potentially_volatile = true;
        assert_eq!(c.validate().unwrap(), 2);
        for (hints, flag) in [
            (HintMode::Off, "--no-hinting"),
            (HintMode::FreePageReporting, "--free-page-reporting"),
            (
                HintMode::Hinting {
                    discard_faults: false,
                    transport: Transport::Shared,
                },
                "--no-discard-faults",
            ),
        ] {
            c.hints = hints;
            let e = c.validate().unwrap_err();
            assert_eq!(e.exit_status(), status::CONFIG);
            assert!(e.to_string().contains(flag), "{e}");
            c.potentially_volatile = false;
            assert!(c.validate().is_ok());
            c.potentially_volatile = true;
        }
        c.hints = HintMode::Hinting {
            discard_faults: true,
            transport: Transport::Batched,
        };
        assert!(c.validate().is_ok(), "batched hints take it too");
    }

    #[test]
    fn the_disk_option_comes_first_on_the_command_line() {
        assert_eq!(
            virtio_blk_cmdline_option(),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        let args = vec!["hello".to_string(), "x".to_string()];
        let line = loader::build_cmdline(&guest_cmdline_words(true, None, &args)).unwrap();
        assert_eq!(line, "virtio_mmio.device=4K@0xd0000000:5 hello x");
        assert_eq!(guest_cmdline_words(false, None, &args), args);
        let line =
            loader::build_cmdline(&guest_cmdline_words(true, Some(FPR_CMDLINE_OPTION), &args))
                .unwrap();
        assert_eq!(line, "virtio_mmio.device=4K@0xd0000000:5 hints=fpr hello x");
        assert_eq!(
            guest_cmdline_words(false, Some(FPR_CMDLINE_OPTION), &args),
            ["hints=fpr", "hello", "x"]
        );
        assert_eq!(cmdline_size(1 << 20), "1M");
        assert_eq!(cmdline_size(513), "513");
        let long = vec!["a".repeat(pagehint_abi::boot::CMDLINE_MAX - 10)];
        assert!(loader::build_cmdline(&guest_cmdline_words(false, None, &long)).is_ok());
        let e = loader::build_cmdline(&guest_cmdline_words(true, None, &long)).unwrap_err();
        assert_eq!(VmmError::from(e).exit_status(), status::USAGE);
    }
}
