//! seccomp filters, one per kind of VMM thread (rust-vmm's `seccompiler`):
//! each thread installs its own before it touches anything the guest
//! controls, the main thread once every other thread runs. A system call
//! outside a thread's list raises SIGSYS, whose handler writes one line
//! (`vmm: error: seccomp: the <thread> thread made system call <n>, which
//! its filter forbids`) and ends the process with
//! `pagehint_abi::exit::vmm::SECCOMP`: a VMM thread the guest subverted gets
//! no further.
//!
//! The lists are system call numbers only (no argument checks), taken from
//! `strace -f` of the VMM in every mode (`README.md` lists them) plus the
//! calls of paths rarely taken (logging, a panic's abort). This module must
//! never be bypassed by default (`--no-seccomp` is for debugging), and the
//! SIGSYS handler must only write and exit: it runs under the filter.

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The kinds of VMM thread, each with its own list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Main,
    Vcpu,
    BlockWorker,
    DiscardFaults,
    Reclaim,
    Stats,
    Api,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::BlockWorker,
        ThreadKind::DiscardFaults,
        ThreadKind::Reclaim,
        ThreadKind::Stats,
        ThreadKind::Api,
    ];

    /// The name in messages and `--seccomp-probe`.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::BlockWorker => "virtio-blk",
            ThreadKind::DiscardFaults => "discard-faults",
            ThreadKind::Reclaim => "reclaim",
            ThreadKind::Stats => "stats",
            ThreadKind::Api => "api",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The system calls this kind of thread may make.
    pub fn allowed(self) -> Vec<i64> {
        let mut v = BASE.to_vec();
        v.extend_from_slice(match self {
            ThreadKind::Main => MAIN,
            ThreadKind::Vcpu => VCPU,
            ThreadKind::BlockWorker => BLOCK,
            ThreadKind::DiscardFaults => FAULTS,
            ThreadKind::Reclaim => RECLAIM,
            ThreadKind::Stats => STATS,
            ThreadKind::Api => API,
        });
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Every thread: memory, signals, locks, time, logging, ending.
const BASE: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Debug builds check that a descriptor is open before closing it.
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_set_robust_list,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_write,
    libc::SYS_writev,
];

/// vCPU threads: `KVM_RUN` and the other vCPU and VM ioctls, userfaultfd
/// ioctls of the hint path, free page reporting's drops, `poll` on stdout
/// before console output is written (it must never block), and taking the
/// discard-fault kick off the pending signals (`vstate::kick_mask`).
const VCPU: &[i64] = &[
    libc::SYS_ioctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_process_madvise,
    libc::SYS_read,
    libc::SYS_rt_sigtimedwait,
];

/// The block worker: its eventfds and epoll, the image file, dirty-log
/// clears.
const BLOCK: &[i64] = &[
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_fadvise64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_ioctl,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_read,
];

/// The discard-fault handler: the userfaultfd and its ioctls.
const FAULTS: &[i64] = &[
    libc::SYS_ioctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_read,
];

/// The reclaimer: pagemap (`PAGEMAP_SCAN`, or `pread`), cgroup and PSI
/// files, the cgroup usage event (an eventfd registered through
/// `cgroup.event_control`), drops, userfaultfd registration, the dirty log.
const RECLAIM: &[i64] = &[
    libc::SYS_eventfd2,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_ioctl,
    libc::SYS_lseek,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_pidfd_open,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pread64,
    libc::SYS_process_madvise,
    libc::SYS_read,
    libc::SYS_statx,
];

/// The stats writer: a temporary file renamed over the stats file, and
/// `poll` on its stop descriptor.
const STATS: &[i64] = &[
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_fsync,
    libc::SYS_lseek,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_rename,
    libc::SYS_statx,
];

/// The API socket's thread (`--api-sock`): accepting clients on the
/// socket the main thread bound, non-blocking reads and writes with `poll`,
/// and removing the socket file when it stops. No `socket`, `bind` or
/// `connect`: it can reach no one who did not come to it.
const API: &[i64] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_ioctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// The main thread once the guest runs: waiting, stopping and joining the
/// others, closing the VM, the final stats.
const MAIN: &[i64] = &[
    libc::SYS_epoll_ctl,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_fsync,
    libc::SYS_ioctl,
    libc::SYS_lseek,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_read,
    libc::SYS_rename,
    libc::SYS_statx,
];

/// Why a filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0} thread's seccomp filter: {1}")]
    Build(&'static str, String),
    #[error("cannot install the {0} thread's seccomp filter: {1}")]
    Install(&'static str, String),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

thread_local! {
    /// This thread's kind once its filter is on, for the SIGSYS line.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86-64 (after signo,
/// errno, code, padding and `si_call_addr`).
const SI_SYSCALL: usize = 24;

/// Set by the first thread to reach the SIGSYS handler: when several
/// threads break their filters at once (every vCPU running the same code),
/// only the first writes its line and ends the process; the others wait
/// for that exit instead of writing a second line.
static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if REPORTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // Another thread is writing the line and will end the process;
        // calling _exit here could end it before that line is written.
        loop {
            std::hint::spin_loop();
        }
    }
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS, whose
    // `si_syscall` (an int) sits at SI_SYSCALL.
    let nr = unsafe { std::ptr::read_unaligned((info as *const u8).add(SI_SYSCALL) as *const i32) };
    let name = KIND
        .try_with(|k| k.get().map_or("unknown", ThreadKind::name))
        .unwrap_or("unknown");
    let mut line = [0u8; 160];
    let mut n = 0;
    for part in [
        "vmm: error: seccomp: the ".as_bytes(),
        name.as_bytes(),
        b" thread made system call ",
    ] {
        n += copy(&mut line[n..], part);
    }
    let mut digits = [0u8; 12];
    n += copy(&mut line[n..], decimal(i64::from(nr), &mut digits));
    n += copy(&mut line[n..], b", which its filter forbids\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe and in every
    // thread's list; `line[..n]` is initialised.
    unsafe {
        libc::write(2, line.as_ptr() as *const libc::c_void, n);
        libc::_exit(pagehint_abi::exit::vmm::SECCOMP);
    }
}

/// Copies what fits of `src` into `dst`; how many bytes.
fn copy(dst: &mut [u8], src: &[u8]) -> usize {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    n
}

/// `v` in decimal, in `buf` (no allocation: it runs in a signal handler).
fn decimal(v: i64, buf: &mut [u8; 12]) -> &[u8] {
    let neg = v < 0;
    let mut x = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (x % 10) as u8;
        x /= 10;
        if x == 0 || i == 1 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Installs the SIGSYS handler (before any filter). Idempotent.
pub fn install_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is "no flags, empty mask"; SA_SIGINFO
    // with a handler of the three-argument form; the handler only writes
    // and exits.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The compiled filter of `kind`.
pub fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = kind
        .allowed()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind.name(), e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(kind.name(), e.to_string()))
}

/// Whether threads filter themselves, and the test hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Filters installed (`--no-seccomp` turns them off).
    pub enabled: bool,
    /// The kind of thread that makes a forbidden call right after its
    /// filter is on (`--seccomp-probe`, for the tests).
    pub probe: Option<ThreadKind>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            probe: None,
        }
    }
}

/// The compiled filters of this run, set once before the first thread
/// starts (never set: no filters, as in unit tests).
struct Filters {
    programs: Vec<(ThreadKind, BpfProgram)>,
    probe: Option<ThreadKind>,
}

static FILTERS: std::sync::OnceLock<Filters> = std::sync::OnceLock::new();

/// Prepares this run's filters: the SIGSYS handler and every kind's
/// program, compiled up front so that a thread only installs its own.
/// Call once, before any VMM thread starts.
pub fn prepare(policy: Policy) -> Result<(), SeccompError> {
    if !policy.enabled {
        return Ok(());
    }
    install_handler()?;
    let programs = ThreadKind::ALL
        .into_iter()
        .map(|k| program(k).map(|p| (k, p)))
        .collect::<Result<Vec<_>, _>>()?;
    let _ = FILTERS.set(Filters {
        programs,
        probe: policy.probe,
    });
    Ok(())
}

/// Installs `kind`'s filter on the calling thread, if this run filters;
/// then makes the probe's forbidden call if it names `kind`.
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(f) = FILTERS.get() else {
        return Ok(());
    };
    let Some((_, prog)) = f.programs.iter().find(|(k, _)| *k == kind) else {
        return Ok(());
    };
    KIND.with(|k| k.set(Some(kind)));
    seccompiler::apply_filter(prog)
        .map_err(|e| SeccompError::Install(kind.name(), e.to_string()))?;
    if f.probe == Some(kind) {
        // SAFETY: getppid has no arguments and no effect; here it is the
        // forbidden call the test wants to see stopped.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(())
}

/// [`enter`] at the start of a spawned thread, which has nobody to return
/// an error to: a filter that cannot be installed ends the process with
/// one line and the internal-error status rather than run unfiltered.
pub fn enter_or_exit(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        eprintln!("vmm: error: {e}");
        std::process::exit(pagehint_abi::exit::vmm::INTERNAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_builds_and_none_allows_process_creation_or_exec() {
        for k in ThreadKind::ALL {
            assert!(program(k).is_ok(), "{k:?}");
            let a = k.allowed();
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_fork,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_socket,
                libc::SYS_ptrace,
                libc::SYS_getppid,
            ] {
                assert!(!a.contains(&forbidden), "{k:?} allows {forbidden}");
            }
            assert_eq!(ThreadKind::from_name(k.name()), Some(k));
        }
        // Only the threads that open files may.
        assert!(!ThreadKind::Vcpu.allowed().contains(&libc::SYS_openat));
        assert!(!ThreadKind::BlockWorker
            .allowed()
            .contains(&libc::SYS_openat));
        assert!(!ThreadKind::DiscardFaults
            .allowed()
            .contains(&libc::SYS_openat));
    }

    #[test]
    fn numbers_print_without_allocating() {
        let mut b = [0u8; 12];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(110, &mut b), b"110");
        assert_eq!(decimal(-38, &mut b), b"-38");
    }
}
