//! One vCPU: its file descriptor, its thread, its exit loop, and the kick
//! that gets it out of `KVM_RUN`.
//!
//! Each vCPU runs on its own thread, which owns the `VcpuFd`. The loop hands
//! every exit to `exit::handle_exit`, which says what comes next as a
//! `Step`: continue, deliver a pending discard fault, or stop for a
//! [`StopReason`] that is sent to the main thread. [`VcpuHandles`] owns the
//! threads: dropping it stops and joins every one. To stop a vCPU the main thread sets the shared
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
use kvm_ioctls::VcpuFd;
use pagehint_abi::ports::HYPERCALL_PORT;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::cpuid::{setup_cpuid, CpuidError};
use crate::arch::x86_64::regs::{setup_ap, setup_bsp, setup_lint, RegDump, RegsError};
use crate::devices::mmio::MmioBus;
use crate::devices::pio::{PioBus, PioOutcome};
use crate::discard_fault::inject::Delivery;
use crate::discard_fault::DiscardFaults;
use crate::hypercall::HypercallDevice;
use crate::metrics::Metrics;
use crate::vstate::exit::{handle_exit, ExitDevices, Step};
use crate::vstate::pause::VcpuGate;
use crate::vstate::step_count::{set_single_step, StepCounter};

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

/// The devices a vCPU's exits reach: the port bus, the MMIO bus and the
/// hypercall doorbell.
#[derive(Debug, Clone)]
pub struct VcpuDevices {
    pub pio: Arc<PioBus>,
    pub mmio: Arc<MmioBus>,
    pub hypercalls: Arc<HypercallDevice>,
}

impl ExitDevices for VcpuDevices {
    fn pio_write(&self, port: u16, data: &[u8]) -> PioOutcome {
        if let Some(offset) = doorbell_offset(port) {
            self.hypercalls.write(offset, data);
            return PioOutcome::Continue;
        }
        self.pio.write(port, data)
    }

    fn pio_read(&self, port: u16, data: &mut [u8]) {
        match doorbell_offset(port) {
            Some(offset) => self.hypercalls.read(offset, data),
            None => self.pio.read(port, data),
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.mmio.read(addr, data)
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.mmio.write(addr, data)
    }
}

/// One vCPU and what it needs to handle exits.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    devices: VcpuDevices,
    metrics: Arc<Metrics>,
    faults: Option<Arc<DiscardFaults>>,
    steps: StepCounter,
    gate: Option<Arc<VcpuGate>>,
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
    pub fn new(index: u8, fd: VcpuFd, devices: VcpuDevices, metrics: Arc<Metrics>) -> Self {
        Self {
            index,
            fd,
            devices,
            metrics,
            faults: None,
            steps: StepCounter::default(),
            gate: None,
        }
    }

    /// Serves the instruction counter port (`--count-instructions`).
    pub fn with_instruction_counter(mut self) -> Self {
        self.steps = StepCounter::new(true);
        self
    }

    /// Delivers discard faults through `faults` (discard faults on).
    pub fn with_discard_faults(mut self, faults: Arc<DiscardFaults>) -> Self {
        self.faults = Some(faults);
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
        entry: u64,
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
        // Seated after the kick target is published, so a pause's kick
        // always reaches KVM_RUN.
        let _seat = self.gate.as_ref().map(|g| g.seat(self.index));
        loop {
            // Clear before checking: a kick after the check sets it again
            // and KVM_RUN returns at once.
            self.fd.set_kvm_immediate_exit(0);
            if stop.load(Ordering::SeqCst) {
                return StopReason::Stopped;
            }
            if let Some(g) = &self.gate {
                g.park_if_asked(stop);
                if stop.load(Ordering::SeqCst) {
                    return StopReason::Stopped;
                }
            }
            if let Some(reason) = self.run_once() {
                return reason;
            }
        }
    }

    /// Runs the guest until one exit and acts on it; `Some` ends the loop.
    fn run_once(&mut self) -> Option<StopReason> {
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
            Step::Interrupted => return self.after_interrupt(),
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

    /// After `KVM_RUN` was interrupted: deliver a pending discard fault.
    fn after_interrupt(&mut self) -> Option<StopReason> {
        let faults = self.faults.as_ref()?;
        match faults.on_interrupt(u64::from(self.index), &self.fd) {
            Ok(Delivery::Injected) => {
                log::trace!("vcpu{}: discard fault injected", self.index);
                None
            }
            Ok(_) => None,
            Err(e) => {
                let dump = RegDump::capture(&self.fd);
                Some(StopReason::KvmFailure(e.to_string(), dump))
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
fn spawn(
    mut vcpu: Vcpu,
    stop: Arc<AtomicBool>,
    tx: Sender<VcpuReport>,
) -> Result<JoinHandle<()>, VcpuError> {
    let index = vcpu.index;
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Vcpu);
            // A panic aborts the process (the workspace's one panic
            // strategy), so every report is a real end of the loop.
            let reason = vcpu.run_loop(&stop);
            log::debug!("vcpu{index}: stopped: {reason:?}");
            // The receiver may be gone if the VMM is already shutting down.
            let _ = tx.send(VcpuReport { index, reason });
        })
        .map_err(|source| VcpuError::Spawn { index, source })
}

/// The running vCPU threads. Dropping (or [`VcpuHandles::stop`]) sets the
/// stop flag and kicks each thread still running until it has ended, then
/// joins them all, so no vCPU thread outlives its handle.
#[derive(Debug)]
pub struct VcpuHandles {
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl VcpuHandles {
    /// Starts one thread per vCPU, each reporting on `tx` when it ends. If a
    /// thread cannot be started, those already running are stopped.
    pub fn spawn(vcpus: Vec<Vcpu>, tx: Sender<VcpuReport>) -> Result<Self, VcpuError> {
        let mut started = Self {
            handles: Vec::with_capacity(vcpus.len()),
            stop: Arc::new(AtomicBool::new(false)),
        };
        for vcpu in vcpus {
            // On error, dropping `started` stops the threads begun so far.
            let handle = spawn(vcpu, started.stop.clone(), tx.clone())?;
            started.handles.push(handle);
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
        self.stop.store(true, Ordering::SeqCst);
        let signal = SIGRTMIN();
        let mut rounds = 0u32;
        while self.handles.iter().any(|h| !h.is_finished()) {
            for h in self.handles.iter().filter(|h| !h.is_finished()) {
                if let Err(e) = h.kill(signal) {
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
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for VcpuHandles {
    fn drop(&mut self) {
        self.stop_and_join(&mut || {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pio::ExitDevice;
    use crate::frames::FrameTable;
    use crate::memory::GuestRam;
    use crate::vstate::kvm::KvmContext;
    use crate::vstate::vm::Vm;
    use std::sync::mpsc;
    use std::sync::Mutex;
    use std::time::Duration;
    use vm_memory::{Bytes, GuestAddress};

    /// Where the test code goes (above the PVH boot structures' page).
    const ENTRY: u64 = 0x10_0000;

    /// A one-vCPU VM whose BSP starts at `ENTRY` running `code`, with the
    /// exit port on the bus.
    fn machine(code: &[u8]) -> (Vm, Vec<Vcpu>, Arc<Metrics>) {
        let kvm = KvmContext::new().expect("these tests need /dev/kvm");
        let vm = Vm::new(&kvm).unwrap();
        let ram = GuestRam::new(16 << 20).unwrap();
        ram.mem().write_slice(code, GuestAddress(ENTRY)).unwrap();
        vm.register_ram(&ram).unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut pio = PioBus::new(metrics.clone());
        pio.insert(0xf4, 4, Arc::new(Mutex::new(ExitDevice::new())))
            .unwrap();
        let table = Arc::new(FrameTable::new(ram.frames() as usize, false));
        let devices = VcpuDevices {
            pio: Arc::new(pio),
            mmio: Arc::new(MmioBus::new(metrics.clone())),
            hypercalls: Arc::new(HypercallDevice::new(ram, metrics.clone(), table, false)),
        };
        let vcpu = Vcpu::new(0, vm.create_vcpu(0).unwrap(), devices, metrics.clone());
        setup_bsp(vcpu.fd(), ENTRY).unwrap();
        (vm, vec![vcpu], metrics)
    }

    #[test]
    fn a_guest_exit_reaches_the_machine_as_a_report() {
        // mov al, 7; out 0xf4, al; hlt
        let (_vm, vcpus, metrics) = machine(&[0xb0, 0x07, 0xe6, 0xf4, 0xf4]);
        register_kick_signal().unwrap();
        let (tx, rx) = mpsc::channel();
        let handles = VcpuHandles::spawn(vcpus, tx).unwrap();
        let report = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(
            report,
            VcpuReport {
                index: 0,
                reason: StopReason::GuestExit(7)
            }
        );
        handles.stop();
        assert_eq!(metrics.exits.io_out.get(), 1);
    }

    #[test]
    fn a_pause_takes_a_spinning_vcpu_out_of_kvm_run_until_it_ends() {
        // jmp $
        let (_vm, vcpus, metrics) = machine(&[0xeb, 0xfe]);
        register_kick_signal().unwrap();
        let gate = VcpuGate::new();
        let vcpus = vcpus
            .into_iter()
            .map(|v| v.with_pause_gate(gate.clone()))
            .collect();
        let (tx, rx) = mpsc::channel();
        let handles = VcpuHandles::spawn(vcpus, tx).unwrap();
        while gate.seated() < 1 {
            std::thread::yield_now();
        }
        for _ in 0..3 {
            let paused = gate.pause(Duration::from_secs(5)).unwrap();
            let interrupted = metrics.exits.interrupted.get();
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(metrics.exits.interrupted.get(), interrupted, "parked");
            drop(paused);
        }
        // Stopping while paused does not wait for the pause.
        let paused = gate.pause(Duration::from_secs(5)).unwrap();
        drop(handles);
        drop(paused);
        let report = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(report.reason, StopReason::Stopped);
        assert_eq!(gate.seated(), 0);
    }

    #[test]
    fn a_spinning_vcpu_is_kicked_out_and_joined() {
        // jmp $
        let (_vm, vcpus, _metrics) = machine(&[0xeb, 0xfe]);
        register_kick_signal().unwrap();
        let (tx, rx) = mpsc::channel();
        let handles = VcpuHandles::spawn(vcpus, tx).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        // Dropping the handles stops and joins the thread.
        drop(handles);
        let report = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(report.reason, StopReason::Stopped);
    }
}
