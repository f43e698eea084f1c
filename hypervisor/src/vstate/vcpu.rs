//! One vCPU: its file descriptor, its thread, its exit loop, and the kick
//! that gets it out of `KVM_RUN`.
//!
//! Each vCPU runs on its own thread, which owns the `VcpuFd`. The loop turns
//! every exit into a [`Step`]: continue, or stop for a [`StopReason`] that is
//! sent to the main thread. To stop a vCPU the main thread sets the shared
//! stop flag and sends the thread `SIGRTMIN`; the signal handler sets
//! `kvm_run.immediate_exit`, so a kick that lands just before `KVM_RUN`
//! still makes it return `EINTR` at once. With discard faults on, the thread
//! records its thread id for the fault handler and, whenever `KVM_RUN`
//! returns `EINTR`, lets `discard_fault::inject` deliver a pending discard
//! fault before running again. This module must never panic on an
//! exit the guest provoked, and must never leave a thread that ignores the
//! stop flag.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{CpuId, KVM_EXIT_INTERNAL_ERROR};
use kvm_ioctls::{VcpuExit, VcpuFd};
use pagehint_abi::ports::HYPERCALL_PORT;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::cpuid::{setup_cpuid, CpuidError};
use crate::arch::x86_64::regs::{setup_ap, setup_bsp, setup_lint, RegDump, RegsError};
use crate::devices::bus::{PioBus, PioOutcome};
use crate::devices::mmio::MmioBus;
use crate::discard_fault::inject::Delivery;
use crate::discard_fault::DiscardFaults;
use crate::hypercall::HypercallDevice;
use crate::metrics::Metrics;

/// Why a vCPU could not be prepared or started.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: {source}")]
    Cpuid {
        index: u8,
        #[source]
        source: CpuidError,
    },
    #[error("vCPU {index}: {source}")]
    Regs {
        index: u8,
        #[source]
        source: RegsError,
    },
    #[error("cannot register the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    #[error("cannot spawn the thread of vCPU {index}: {source}")]
    Spawn {
        index: u8,
        #[source]
        source: std::io::Error,
    },
}

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote this value to the exit port.
    GuestExit(u32),
    /// `KVM_EXIT_SHUTDOWN`: the guest triple-faulted.
    TripleFault(RegDump),
    /// `KVM_EXIT_INTERNAL_ERROR`, `KVM_EXIT_FAIL_ENTRY` or a failed
    /// `KVM_RUN`.
    KvmFailure(String, RegDump),
    /// An exit this VMM does not handle.
    UnexpectedExit(String, RegDump),
    /// The VMM asked the vCPU to stop.
    Stopped,
    /// The vCPU thread panicked (a VMM bug).
    Panicked,
}

/// The result of handling one exit.
#[derive(Debug)]
enum Step {
    Continue,
    Stop(StopReason),
}

/// What a vCPU thread reports when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuReport {
    pub index: u8,
    pub reason: StopReason,
}

impl fmt::Display for VcpuReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vCPU {}: {:?}", self.index, self.reason)
    }
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, or null when it runs no vCPU.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with` on a const-initialised Cell without destructor only reads
    // thread-local storage: async-signal-safe.
    let _ = IMMEDIATE_EXIT.try_with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: a non-null pointer is this thread's own kvm_run
            // mapping, published by `Vcpu::run_loop` and cleared before the
            // VcpuFd (and its mapping) can go away; a byte store is atomic.
            unsafe { std::ptr::write_volatile(p, 1) };
        }
    });
}

/// Installs the handler of the kick signal. Call once before spawning.
pub fn register_kick_signal() -> Result<(), VcpuError> {
    register_signal_handler(SIGRTMIN(), kick_handler).map_err(VcpuError::Signal)
}

/// Clears the published immediate_exit pointer when the loop ends.
struct PublishedRun;

impl Drop for PublishedRun {
    fn drop(&mut self) {
        let _ = IMMEDIATE_EXIT.try_with(|p| p.set(std::ptr::null_mut()));
    }
}

/// Forgets the vCPU thread's id in the discard-fault slots when the loop ends.
struct BoundThread(Arc<DiscardFaults>, u64);

impl Drop for BoundThread {
    fn drop(&mut self) {
        self.0.unbind(self.1);
    }
}

/// Width of the hypercall doorbell.
pub const HYPERCALL_PORT_LEN: u16 = 4;

/// One vCPU and what it needs to handle exits.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    bus: Arc<PioBus>,
    mmio: Arc<MmioBus>,
    hypercalls: Arc<HypercallDevice>,
    metrics: Arc<Metrics>,
    faults: Option<Arc<DiscardFaults>>,
}

/// The doorbell's ports: served on the vCPU thread without the bus's
/// per-device lock, so that vCPUs hint concurrently.
fn doorbell_offset(port: u16) -> Option<u16> {
    port.checked_sub(HYPERCALL_PORT)
        .filter(|&o| o < HYPERCALL_PORT_LEN)
}

impl fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vcpu")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Vcpu {
    /// Wraps a created vCPU.
    pub fn new(
        index: u8,
        fd: VcpuFd,
        bus: Arc<PioBus>,
        mmio: Arc<MmioBus>,
        hypercalls: Arc<HypercallDevice>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            index,
            fd,
            bus,
            mmio,
            hypercalls,
            metrics,
            faults: None,
        }
    }

    /// Delivers discard faults through `faults` (discard faults on).
    pub fn with_discard_faults(mut self, faults: Arc<DiscardFaults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// The vCPU's file descriptor.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Applies CPUID, the local APIC's LINT wiring, and the PVH entry state
    /// (BSP) or the wait-for-SIPI state (APs).
    pub fn configure(
        &self,
        supported: &CpuId,
        count: u8,
        entry: u64,
        hints: bool,
        discard_faults: bool,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        setup_cpuid(&self.fd, supported, index, count, hints, discard_faults)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        setup_lint(&self.fd).map_err(|source| VcpuError::Regs { index, source })?;
        if index == 0 {
            setup_bsp(&self.fd, entry)
        } else {
            setup_ap(&self.fd)
        }
        .map_err(|source| VcpuError::Regs { index, source })
    }

    /// Runs the vCPU until it stops or `stop` is set.
    pub fn run_loop(&mut self, stop: &AtomicBool) -> StopReason {
        let run: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        let _published = PublishedRun;
        let _ = IMMEDIATE_EXIT.try_with(|p| p.set(run));
        let _bound = self.faults.clone().map(|f| {
            if let Err(e) = f.bind_current_thread(u64::from(self.index)) {
                log::error!("vcpu{}: {e}", self.index);
            }
            BoundThread(f, u64::from(self.index))
        });
        loop {
            // Clear before checking: a kick after the check sets it again
            // and KVM_RUN returns at once.
            self.fd.set_kvm_immediate_exit(0);
            if stop.load(Ordering::SeqCst) {
                return StopReason::Stopped;
            }
            match self.run_once() {
                Step::Continue => {}
                Step::Stop(reason) => return reason,
            }
        }
    }

    fn run_once(&mut self) -> Step {
        let m = &self.metrics.exits;
        // Exits that need a register dump are named here and dumped after
        // the borrow of the kvm_run mapping ends.
        let fatal: (bool, String) = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                m.io_out.inc();
                if let Some(offset) = doorbell_offset(port) {
                    self.hypercalls.write(offset, data);
                    return Step::Continue;
                }
                return match self.bus.write(port, data) {
                    PioOutcome::Continue => Step::Continue,
                    PioOutcome::Exit(value) => Step::Stop(StopReason::GuestExit(value)),
                };
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                m.io_in.inc();
                if let Some(offset) = doorbell_offset(port) {
                    self.hypercalls.read(offset, data);
                    return Step::Continue;
                }
                self.bus.read(port, data);
                return Step::Continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                m.mmio_read.inc();
                if self.mmio.read(addr, data) {
                    return Step::Continue;
                }
                log::debug!(
                    "vcpu{}: unhandled MMIO read at {addr:#x} ({} bytes)",
                    self.index,
                    data.len()
                );
                data.fill(0xff);
                return Step::Continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                m.mmio_write.inc();
                if self.mmio.write(addr, data) {
                    return Step::Continue;
                }
                log::debug!(
                    "vcpu{}: unhandled MMIO write of {data:02x?} at {addr:#x}",
                    self.index
                );
                return Step::Continue;
            }
            Ok(VcpuExit::Hlt) => {
                m.hlt.inc();
                return Step::Continue;
            }
            Ok(VcpuExit::Intr) => {
                m.interrupted.inc();
                return self.after_interrupt();
            }
            Ok(VcpuExit::Shutdown) => {
                m.shutdown.inc();
                let dump = RegDump::capture(&self.fd);
                return Step::Stop(StopReason::TripleFault(dump));
            }
            Ok(VcpuExit::InternalError) => {
                m.internal_error.inc();
                (true, "KVM_EXIT_INTERNAL_ERROR".to_string())
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                m.fail_entry.inc();
                (
                    true,
                    format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, host cpu {cpu})"),
                )
            }
            Ok(other) => {
                m.other.inc();
                (false, format!("{other:?}"))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                m.interrupted.inc();
                return self.after_interrupt();
            }
            Err(e) => (true, format!("KVM_RUN failed: {e}")),
        };
        let (kvm_failure, mut what) = fatal;
        if what == "KVM_EXIT_INTERNAL_ERROR" {
            what = self.internal_error_detail();
        }
        let dump = RegDump::capture(&self.fd);
        if kvm_failure {
            Step::Stop(StopReason::KvmFailure(what, dump))
        } else {
            Step::Stop(StopReason::UnexpectedExit(what, dump))
        }
    }

    /// After `KVM_RUN` was interrupted: deliver a pending discard fault.
    fn after_interrupt(&mut self) -> Step {
        let Some(faults) = &self.faults else {
            return Step::Continue;
        };
        match faults.on_interrupt(u64::from(self.index), &self.fd) {
            Ok(Delivery::Injected) => {
                log::trace!("vcpu{}: discard fault injected", self.index);
                Step::Continue
            }
            Ok(_) => Step::Continue,
            Err(e) => {
                let dump = RegDump::capture(&self.fd);
                Step::Stop(StopReason::KvmFailure(e.to_string(), dump))
            }
        }
    }

    /// The suberror of a `KVM_EXIT_INTERNAL_ERROR`.
    fn internal_error_detail(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
            return "KVM_EXIT_INTERNAL_ERROR".to_string();
        }
        // SAFETY: exit_reason says the `internal` member of the union is the
        // one KVM filled in; it is plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        format!("KVM_EXIT_INTERNAL_ERROR (suberror {})", internal.suberror)
    }
}

/// Runs `vcpu` on a new thread that reports on `tx` when it ends.
pub fn spawn(
    mut vcpu: Vcpu,
    stop: Arc<AtomicBool>,
    tx: Sender<VcpuReport>,
) -> Result<JoinHandle<()>, VcpuError> {
    let index = vcpu.index;
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vcpu.run_loop(&stop)));
            let reason = result.unwrap_or(StopReason::Panicked);
            log::debug!("vcpu{index}: stopped: {reason:?}");
            // The receiver may be gone if the VMM is already shutting down.
            let _ = tx.send(VcpuReport { index, reason });
        })
        .map_err(|source| VcpuError::Spawn { index, source })
}

/// Stops every vCPU thread and joins it: sets `stop`, then kicks each thread
/// still running until it has ended.
pub fn stop_and_join(handles: Vec<JoinHandle<()>>, stop: &AtomicBool) {
    stop.store(true, Ordering::SeqCst);
    let signal = SIGRTMIN();
    let mut rounds = 0u32;
    while handles.iter().any(|h| !h.is_finished()) {
        for h in handles.iter().filter(|h| !h.is_finished()) {
            if let Err(e) = h.kill(signal) {
                log::debug!("kicking a vCPU thread failed: {e}");
            }
        }
        rounds = rounds.saturating_add(1);
        if rounds == 200 {
            log::warn!("vCPU threads are slow to stop; still kicking");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for h in handles {
        // A panic was already caught and reported inside the thread.
        let _ = h.join();
    }
}
