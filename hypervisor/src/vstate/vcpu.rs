//! One vCPU: its file descriptor, its thread, its exit loop, and the kick
//! that gets it out of `KVM_RUN`.
//!
//! Each vCPU runs on its own thread (a [`Worker`]), which owns the
//! `VcpuFd`. The loop hands every exit to `exit::handle_exit`, which serves
//! it through the vCPU's [`ExitDevices`] (static dispatch: the type is the
//! caller's) and says what comes next as a `Step`: continue, hand an
//! interrupted run to the [`KickHandler`], or stop for a [`StopReason`]
//! that is sent to the main thread. [`VcpuHandles`] owns the threads:
//! dropping it stops and joins every one. To stop a vCPU the main thread
//! sets the shared [`Stop`] and sends the thread `SIGRTMIN`; the signal
//! handler sets `kvm_run.immediate_exit`, so a kick that lands just before
//! `KVM_RUN` still makes it return `EINTR` at once. With a kick handler
//! (the discard faults, which implement it in `crate::discard_fault`), the
//! thread binds itself to it when the loop starts and, whenever `KVM_RUN`
//! returns `EINTR`, lets it act (deliver a pending discard fault) before
//! running again, and tells it just before that next `KVM_RUN` if it asked
//! (to time the way back into the guest). The kick handler's own signal is
//! kept blocked outside `KVM_RUN` (`kick_mask`), and its injections can go
//! through `kvm_run`'s synced events (`Vcpu::with_synced_events`). This
//! module knows no device: it must never panic on an exit the guest
//! provoked, and must never leave a thread that ignores the stop.

use std::cell::Cell;
use std::fmt;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_EXIT_INTERNAL_ERROR};
use kvm_ioctls::{SyncReg, VcpuFd};
use pagehint_abi::GuestPhys;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::x86_64::cpuid::{setup_cpuid, CpuidError};
use crate::arch::x86_64::regs::{setup_ap, setup_bsp, setup_lint, RegDump, RegsError};
use crate::metrics::Metrics;
use crate::vstate::exit::{handle_exit, ExitDevices, Step};
use crate::vstate::kick_mask::MaskedKick;
use crate::vstate::pause::VcpuGate;
use crate::vstate::step_count::{set_single_step, StepCounter};
use crate::worker::{Stop, Worker};

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
    #[error("cannot spawn the thread of vCPU {index} (or its stop eventfd): {source}")]
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

/// What a [`KickHandler`] wants after acting on an interrupted run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    /// Nothing: run again.
    Untimed,
    /// Call [`KickHandler::reentering`] just before the next `KVM_RUN`
    /// (it times the way back into the guest).
    Timed,
}

/// What a vCPU thread does for whoever kicks it out of `KVM_RUN` with
/// work for it (the discard faults), known to the vCPU only by this trait.
pub trait KickHandler: Send + Sync {
    /// On the vCPU thread, as its loop starts: this thread runs vCPU `index`.
    fn bind(&self, index: u8);
    /// On the vCPU thread, as its loop ends.
    fn unbind(&self, index: u8);
    /// `KVM_RUN` of vCPU `index` returned `EINTR`: act on `fd` before it
    /// runs again. An error ends the vCPU as a KVM failure.
    fn interrupted(&self, index: u8, fd: &mut VcpuFd) -> Result<Reentry, String>;
    /// On the vCPU thread, just before the `KVM_RUN` that follows an
    /// `interrupted` that answered [`Reentry::Timed`].
    fn reentering(&self, index: u8);
    /// The signal this handler's kicks use, if it only ever has to
    /// interrupt `KVM_RUN`: the thread then keeps it blocked outside
    /// `KVM_RUN` and takes it off the pending set after an interrupted run
    /// (`vstate::kick_mask`), so that no signal frame is built for it.
    fn kick_signal(&self) -> Option<i32> {
        None
    }
}

/// Unbinds the vCPU thread from its kick handler when the loop ends.
struct BoundThread(Arc<dyn KickHandler>, u8);

impl Drop for BoundThread {
    fn drop(&mut self) {
        self.0.unbind(self.1);
    }
}

/// One vCPU and what it needs to handle exits: `D` serves its port and
/// MMIO accesses.
pub struct Vcpu<D> {
    index: u8,
    fd: VcpuFd,
    devices: D,
    metrics: Arc<Metrics>,
    kicks: Option<Arc<dyn KickHandler>>,
    /// The kick handler asked to hear of the next `KVM_RUN`.
    reentry_due: bool,
    steps: StepCounter,
    gate: Option<Arc<VcpuGate>>,
}

impl<D> fmt::Debug for Vcpu<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vcpu")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<D: ExitDevices + Send + 'static> Vcpu<D> {
    /// Wraps a created vCPU.
    pub fn new(index: u8, fd: VcpuFd, devices: D, metrics: Arc<Metrics>) -> Self {
        Self {
            index,
            fd,
            devices,
            metrics,
            kicks: None,
            reentry_due: false,
            steps: StepCounter::default(),
            gate: None,
        }
    }

    /// Asks KVM to leave the vCPU's pending events in `kvm_run` at every
    /// exit (`KVM_SYNC_X86_EVENTS`; only where `Vm::syncs_vcpu_events`),
    /// so that the kick handler can inject without an ioctl.
    pub fn with_synced_events(mut self) -> Self {
        self.fd.set_sync_valid_reg(SyncReg::VcpuEvents);
        self
    }

    /// Serves the instruction counter port (`--count-instructions`).
    pub fn with_instruction_counter(mut self) -> Self {
        self.steps = StepCounter::new(true);
        self
    }

    /// Binds the vCPU thread to `kicks` and lets it act on every
    /// interrupted run (discard faults on).
    pub fn with_kick_handler(mut self, kicks: Arc<dyn KickHandler>) -> Self {
        self.kicks = Some(kicks);
        self
    }

    /// Parks at `gate` before each `KVM_RUN` while a pause is held
    /// (potentially volatile frames' reclaim, `crate::vstate::pause`).
    pub fn with_pause_gate(mut self, gate: Arc<VcpuGate>) -> Self {
        self.gate = Some(gate);
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
        entry: GuestPhys,
        features: u32,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        setup_cpuid(&self.fd, supported, index, count, features)
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
    pub fn run_loop(&mut self, stop: &Stop) -> StopReason {
        let run: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        let _published = PublishedRun;
        let _ = IMMEDIATE_EXIT.try_with(|p| p.set(run));
        let _bound = self.kicks.clone().map(|k| {
            k.bind(self.index);
            BoundThread(k, self.index)
        });
        let masked = self.mask_kick();
        // Seated after the kick target is published, so a pause's kick
        // always reaches KVM_RUN.
        let _seat = self.gate.as_ref().map(|g| g.seat(self.index));
        loop {
            // Clear before checking: a kick after the check sets it again
            // and KVM_RUN returns at once.
            self.fd.set_kvm_immediate_exit(0);
            if stop.is_set() {
                return StopReason::Stopped;
            }
            if let Some(g) = &self.gate {
                g.park_if_asked(stop);
                if stop.is_set() {
                    return StopReason::Stopped;
                }
            }
            if let Some(reason) = self.run_once(masked.as_ref()) {
                return reason;
            }
        }
    }

    /// Keeps the kick handler's signal blocked outside `KVM_RUN`, if it
    /// has one; if that fails the signal keeps its (empty) handler, which
    /// works too, only slower.
    fn mask_kick(&self) -> Option<MaskedKick> {
        let signo = self.kicks.as_ref()?.kick_signal()?;
        match MaskedKick::install(&self.fd, signo) {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!(
                    "vcpu{}: cannot keep signal {signo} to KVM_RUN ({e}); it is handled instead",
                    self.index
                );
                None
            }
        }
    }

    /// Runs the guest until one exit and acts on it; `Some` ends the loop.
    /// `masked`: the kick signal kept to `KVM_RUN`, taken after an
    /// interrupted run.
    fn run_once(&mut self, masked: Option<&MaskedKick>) -> Option<StopReason> {
        if std::mem::take(&mut self.reentry_due) {
            if let Some(k) = &self.kicks {
                k.reentering(self.index);
            }
        }
        let step = handle_exit(
            self.fd.run(),
            &self.devices,
            &self.metrics.exits,
            &mut self.steps,
        );
        let what = match step {
            Step::Continue => return None,
            Step::SingleStep(change) => {
                if let Err(e) = set_single_step(&self.fd, change) {
                    log::warn!("vcpu{}: KVM_SET_GUEST_DEBUG ({change:?}): {e}", self.index);
                }
                return None;
            }
            Step::Interrupted => {
                if let Some(m) = masked {
                    m.take_pending();
                }
                return self.after_interrupt();
            }
            Step::GuestExit(value) => return Some(StopReason::GuestExit(value)),
            Step::TripleFault => {
                return Some(StopReason::TripleFault(RegDump::capture(&self.fd)));
            }
            Step::InternalError => self.internal_error_detail(),
            Step::FailEntry { reason, cpu } => {
                format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, host cpu {cpu})")
            }
            Step::RunFailed(errno) => format!(
                "KVM_RUN failed: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
            Step::Unhandled(ref what) => what.clone(),
        };
        let dump = RegDump::capture(&self.fd);
        Some(if step.is_kvm_failure() {
            StopReason::KvmFailure(what, dump)
        } else {
            StopReason::UnexpectedExit(what, dump)
        })
    }

    /// After `KVM_RUN` was interrupted: the kick handler acts (delivers a
    /// pending discard fault).
    fn after_interrupt(&mut self) -> Option<StopReason> {
        let kicks = self.kicks.as_ref()?;
        match kicks.interrupted(self.index, &mut self.fd) {
            Ok(reentry) => {
                self.reentry_due = reentry == Reentry::Timed;
                None
            }
            Err(what) => {
                let dump = RegDump::capture(&self.fd);
                Some(StopReason::KvmFailure(what, dump))
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

/// Runs `vcpu` on a new thread, stopped by `stop`, that reports on `tx`
/// when it ends.
fn spawn<D: ExitDevices + Send + 'static>(
    mut vcpu: Vcpu<D>,
    stop: &Arc<Stop>,
    tx: Sender<VcpuReport>,
) -> Result<Worker, VcpuError> {
    let index = vcpu.index;
    Worker::spawn_with(&format!("vcpu{index}"), stop.clone(), move |stop: &Stop| {
        crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Vcpu);
        // A panic aborts the process (the workspace's one panic
        // strategy), so every report is a real end of the loop.
        let reason = vcpu.run_loop(stop);
        log::debug!("vcpu{index}: stopped: {reason:?}");
        // The receiver may be gone if the VMM is already shutting down.
        let _ = tx.send(VcpuReport { index, reason });
    })
    .map_err(|source| VcpuError::Spawn { index, source })
}

/// The running vCPU threads. Dropping (or [`VcpuHandles::stop`]) sets the
/// stop they share and kicks each thread still running until it has
/// ended, then joins them all, so no vCPU thread outlives its handle.
#[derive(Debug)]
pub struct VcpuHandles {
    workers: Vec<Worker>,
    stop: Arc<Stop>,
}

impl VcpuHandles {
    /// Starts one thread per vCPU, each reporting on `tx` when it ends. If a
    /// thread cannot be started, those already running are stopped.
    pub fn spawn<D: ExitDevices + Send + 'static>(
        vcpus: Vec<Vcpu<D>>,
        tx: Sender<VcpuReport>,
    ) -> Result<Self, VcpuError> {
        let stop = Stop::new().map_err(|source| VcpuError::Spawn { index: 0, source })?;
        let mut started = Self {
            workers: Vec::with_capacity(vcpus.len()),
            stop,
        };
        for vcpu in vcpus {
            // On error, dropping `started` stops the threads begun so far.
            let worker = spawn(vcpu, &started.stop, tx.clone())?;
            started.workers.push(worker);
        }
        Ok(started)
    }

    /// Stops and joins every vCPU thread.
    pub fn stop(mut self) {
        self.stop_and_join(&mut || {});
    }

    /// [`VcpuHandles::stop`]; if threads are still running after 100 ms of
    /// kicks (one waits on a page fault no one will answer, which a
    /// signal does not end), `unstick` is called once.
    pub fn stop_or_unstick(mut self, unstick: &mut dyn FnMut()) {
        self.stop_and_join(unstick);
    }

    fn stop_and_join(&mut self, unstick: &mut dyn FnMut()) {
        // Setting the flag cannot fail; only the eventfd's write could,
        // which no vCPU waits on.
        if let Err(e) = self.stop.set() {
            log::debug!("vCPU stop: {e}");
        }
        let signal = SIGRTMIN();
        let mut rounds = 0u32;
        while self.workers.iter().any(|w| !w.is_finished()) {
            for w in self.workers.iter().filter(|w| !w.is_finished()) {
                if let Err(e) = w.kick(signal) {
                    log::debug!("kicking a vCPU thread failed: {e}");
                }
            }
            rounds = rounds.saturating_add(1);
            if rounds == 20 {
                unstick();
            }
            if rounds == 200 {
                log::warn!("vCPU threads are slow to stop; still kicking");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for w in self.workers.drain(..) {
            w.stop();
        }
    }
}

impl Drop for VcpuHandles {
    fn drop(&mut self) {
        self.stop_and_join(&mut || {});
    }
}
