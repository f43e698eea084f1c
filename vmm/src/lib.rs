//! The `vmm` library: boots a PVH guest kernel on KVM and runs it until the
//! guest writes its exit status, fails, or runs out of time.
//!
//! [`run`] wires the modules together: check the configuration, open the
//! disk image if any, load the kernel into fresh guest RAM, open KVM, create
//! the VM, its devices (and the block device's worker thread), the host
//! reclaimer thread and the vCPU threads, wait for the first vCPU to stop
//! (or the timeout), then stop and join every vCPU thread, the worker and
//! the reclaimer, and write the stats. [`VmmError`] gathers every module's error and
//! maps it to the documented exit status. Nothing here may panic on
//! anything the guest or the user sends.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pagehint_abi::boot::{
    VIRTIO_BLK_IRQ, VIRTIO_BLK_MMIO_BASE, VIRTIO_MMIO_CMDLINE_KEY, VIRTIO_MMIO_SIZE,
};
use pagehint_abi::exit::{status_from_guest, vmm as status};
use pagehint_abi::ports::{COM1_BASE, COM1_IRQ, COM1_LEN, EXIT_PORT};

pub mod arch;
pub mod cli;
pub mod devices;
pub mod discard_fault;
pub mod disk_image;
pub mod experiment;
pub mod hypercall;
pub mod kvm;
pub mod loader;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod reclaim;
pub mod stats;
pub mod tools;
pub mod vstate;

use arch::x86_64::regs::RegDump;
use cli::{CgroupBudget, RunArgs};
use devices::blk_worker::{BlockWorker, WorkerError};
use devices::bus::{BusError, ExitDevice, PioBus};
use devices::disk::{DiskError, DiskFile};
use devices::mmio::{MmioBus, MmioError};
use devices::serial::{SerialDevice, SerialError};
use devices::virtio_mmio::{VirtioBlock, VirtioMmioError, QUEUE_NOTIFY};
use discard_fault::handler::FaultHandler;
use discard_fault::{DiscardFaultError, DiscardFaults};
use hypercall::HypercallDevice;
use kvm::{KvmContext, KvmError};
use loader::LoaderError;
use memory::{GuestRam, MemoryError};
use metrics::Metrics;
use reclaim::reporting::FreePageReporter;
use reclaim::state_table::FrameTable;
use reclaim::{ReclaimConfig, ReclaimError, Reclaimer};
use stats::StatsSource;
use vstate::vcpu::{self, StopReason, Vcpu, VcpuError, VcpuReport};
use vstate::vm::{Vm, VmError};

/// The guest kernel built with this VMM.
pub static BUNDLED_KERNEL: &[u8] = include_bytes!(env!("GUEST_KERNEL_ELF"));

/// Most vCPUs we support (APIC IDs stay below 255, tables stay small).
pub const MAX_VCPUS: u32 = 64;
/// Width of the exit port (QEMU's `isa-debug-exit,iosize=0x04`).
const EXIT_PORT_LEN: u16 = 4;

/// Everything that can end a VMM run other than the guest's own exit.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A configuration that cannot work.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot set up the port bus: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("cannot set up the MMIO bus: {0}")]
    Mmio(#[from] MmioError),
    #[error(transparent)]
    Virtio(#[from] VirtioMmioError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Reclaim(#[from] ReclaimError),
    #[error(transparent)]
    DiscardFault(#[from] DiscardFaultError),
    /// The guest triple-faulted.
    #[error("guest triple fault (KVM_EXIT_SHUTDOWN) on vCPU {vcpu}")]
    TripleFault { vcpu: u8, dump: RegDump },
    /// KVM could not run the guest.
    #[error("KVM failure on vCPU {vcpu}: {what}")]
    KvmFailure {
        vcpu: u8,
        what: String,
        dump: RegDump,
    },
    /// The guest made an exit we do not handle.
    #[error("unhandled exit on vCPU {vcpu}: {what}")]
    UnexpectedExit {
        vcpu: u8,
        what: String,
        dump: RegDump,
    },
    /// `--timeout` expired.
    #[error("guest did not exit within the {0:?} timeout")]
    Timeout(Duration),
    /// A bug of the VMM (a vCPU thread panicked or vanished).
    #[error("internal error: {0}")]
    Internal(String),
}

impl VmmError {
    /// The process exit status for this error (`pagehint_abi::exit::vmm`).
    pub fn exit_status(&self) -> i32 {
        match self {
            VmmError::Config(_) => status::CONFIG,
            VmmError::Memory(MemoryError::BadSize(_) | MemoryError::Unaligned(_)) => status::CONFIG,
            VmmError::Memory(_) => status::INTERNAL,
            VmmError::Loader(LoaderError::Read { .. }) => status::NO_INPUT,
            VmmError::Loader(LoaderError::CmdlineTooLong(_)) => status::USAGE,
            VmmError::Loader(LoaderError::WriteBootInfo(_)) => status::INTERNAL,
            VmmError::Loader(_) => status::BAD_KERNEL,
            VmmError::Kvm(KvmError::SupportedCpuid(_)) => status::INTERNAL,
            VmmError::Kvm(_) => status::KVM_UNAVAILABLE,
            VmmError::Disk(e) => e.exit_status(),
            VmmError::Vm(_)
            | VmmError::Vcpu(_)
            | VmmError::Bus(_)
            | VmmError::Serial(_)
            | VmmError::Mmio(_)
            | VmmError::Virtio(_)
            | VmmError::Worker(_)
            | VmmError::Reclaim(_)
            | VmmError::DiscardFault(_) => status::INTERNAL,
            VmmError::TripleFault { .. } => status::GUEST_TRIPLE_FAULT,
            VmmError::KvmFailure { .. } => status::KVM_FAILURE,
            VmmError::UnexpectedExit { .. } => status::UNEXPECTED_EXIT,
            VmmError::Timeout(_) => status::TIMEOUT,
            VmmError::Internal(_) => status::INTERNAL,
        }
    }

    /// The registers of the vCPU that failed, when the error has them.
    pub fn register_dump(&self) -> Option<(u8, &RegDump)> {
        match self {
            VmmError::TripleFault { vcpu, dump }
            | VmmError::KvmFailure { vcpu, dump, .. }
            | VmmError::UnexpectedExit { vcpu, dump, .. } => Some((*vcpu, dump)),
            _ => None,
        }
    }
}

/// Checks the parts of the configuration that need no host resources.
fn check_vcpus(vcpus: u32) -> Result<u8, VmmError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(VmmError::Config(format!(
            "--vcpus {vcpus} is out of range: need 1 to {MAX_VCPUS}"
        )));
    }
    u8::try_from(vcpus).map_err(|_| VmmError::Config(format!("--vcpus {vcpus} is too large")))
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

/// The guest option that turns its page hints into free page reporting.
pub const FPR_CMDLINE_OPTION: &str = "hints=fpr";

/// The guest's command-line words: the device option first when there is
/// a disk, then `hints=fpr` with free page reporting, then the user's
/// `-- ARGS`.
pub fn guest_cmdline_words(with_disk: bool, fpr: bool, args: &[String]) -> Vec<String> {
    let mut words = Vec::with_capacity(args.len() + 2);
    if with_disk {
        words.push(virtio_blk_cmdline_option());
    }
    if fpr {
        words.push(FPR_CMDLINE_OPTION.to_string());
    }
    words.extend(args.iter().cloned());
    words
}

/// Creates the virtio block device on `disk`: wires its interrupt and
/// notification into KVM, puts it on the MMIO bus, and starts its worker.
fn attach_disk(
    vm: &Vm,
    ram: &GuestRam,
    disk: DiskFile,
    mmio: &mut MmioBus,
    metrics: &Arc<Metrics>,
) -> Result<BlockWorker, VmmError> {
    log::info!(
        "disk {} ({} sectors, {})",
        disk.path().display(),
        disk.sectors(),
        if disk.read_only() {
            "read-only"
        } else {
            "read-write"
        }
    );
    let (dev, irq, notify) = VirtioBlock::new(ram.mem().clone(), disk, metrics.clone())?;
    vm.register_irqfd(&irq, VIRTIO_BLK_IRQ)?;
    vm.register_ioevent(&notify, VIRTIO_BLK_MMIO_BASE + QUEUE_NOTIFY)?;
    let dev = Arc::new(Mutex::new(dev));
    mmio.insert(VIRTIO_BLK_MMIO_BASE, VIRTIO_MMIO_SIZE, dev.clone())?;
    Ok(BlockWorker::spawn(dev, notify)?)
}

/// The memory cgroup whose headroom is a budget, if `--cgroup-budget auto`
/// finds one with a limit.
fn cgroup_budget(args: &RunArgs) -> Option<reclaim::cgroup::CgroupMemory> {
    if args.cgroup_budget == CgroupBudget::Off {
        return None;
    }
    let (cg, limit) = reclaim::cgroup::detect()?;
    log::info!(
        "memory cgroup {} ({:?}) has a limit of {limit} bytes: its headroom is a budget",
        cg.dir.display(),
        cg.version
    );
    Some(cg)
}

/// The reclaimer's configuration from the command line.
fn reclaim_config(args: &RunArgs) -> ReclaimConfig {
    ReclaimConfig {
        discard: !args.free_page_reporting,
        cgroup: if args.free_page_reporting {
            None
        } else {
            cgroup_budget(args)
        },
        interval: Duration::from_millis(args.reclaim_interval),
        budget_bytes: args.host_budget,
        psi_threshold: args.psi.then_some(args.psi_threshold),
        stats: args
            .stats
            .clone()
            .map(|p| (p, Duration::from_millis(args.stats_interval))),
    }
}

/// The discard-fault machinery, unless hinting or discard faults are off.
/// A host that refuses userfaultfd runs without discard faults (warned).
fn discard_faults(
    args: &RunArgs,
    ram: &GuestRam,
    table: &Arc<FrameTable>,
    metrics: &Arc<Metrics>,
    vcpus: u8,
) -> Result<Option<Arc<DiscardFaults>>, VmmError> {
    if args.no_hinting || args.no_discard_faults || args.free_page_reporting {
        return Ok(None);
    }
    match DiscardFaults::new(ram, table.clone(), metrics.clone(), usize::from(vcpus)) {
        Ok(f) => Ok(Some(Arc::new(f))),
        Err(e) => {
            log::warn!("{e}; running without discard faults");
            Ok(None)
        }
    }
}

/// Logs the stats document (at info) and writes the stats file if asked.
fn report_stats(stats: &StatsSource, args: &RunArgs) {
    match stats.to_json() {
        Ok(json) => log::info!("metrics: {json}"),
        Err(e) => log::warn!("{e}"),
    }
    if let Some(path) = &args.stats {
        if let Err(e) = stats.write(path) {
            log::error!("stats: {e}");
        }
    }
}

/// Turns the first vCPU report into the run's result.
fn outcome(report: VcpuReport) -> Result<i32, VmmError> {
    let vcpu = report.index;
    match report.reason {
        StopReason::GuestExit(value) => {
            log::info!("guest exited with value {value} (vCPU {vcpu})");
            Ok(status_from_guest(value))
        }
        StopReason::TripleFault(dump) => Err(VmmError::TripleFault { vcpu, dump }),
        StopReason::KvmFailure(what, dump) => Err(VmmError::KvmFailure { vcpu, what, dump }),
        StopReason::UnexpectedExit(what, dump) => {
            Err(VmmError::UnexpectedExit { vcpu, what, dump })
        }
        StopReason::Stopped => Err(VmmError::Internal(format!(
            "vCPU {vcpu} stopped before anything asked it to"
        ))),
        StopReason::Panicked => Err(VmmError::Internal(format!("vCPU {vcpu} thread panicked"))),
    }
}

/// Boots the guest described by `args` and runs it to the end. Returns the
/// exit status the guest asked for, or the error that ended the run.
pub fn run(args: &RunArgs) -> Result<i32, VmmError> {
    let vcpu_count = check_vcpus(args.vcpus)?;
    memory::validate_size(args.mem)?;
    let disk = match &args.disk {
        Some(path) => Some(DiskFile::open(path, args.disk_rw)?),
        None => None,
    };
    let cmdline = loader::build_cmdline(&guest_cmdline_words(
        disk.is_some(),
        args.free_page_reporting,
        &args.args,
    ))?;
    let image: Cow<'_, [u8]> = match &args.kernel {
        Some(path) => Cow::Owned(loader::read_kernel(path)?),
        None => Cow::Borrowed(BUNDLED_KERNEL),
    };

    let ram = GuestRam::new(args.mem)?;
    let entry = loader::load_kernel(&ram, &image)?;
    loader::write_boot_info(&ram, &cmdline)?;
    drop(image);

    let kvm = KvmContext::new()?;
    if usize::from(vcpu_count) > kvm.max_vcpus() {
        return Err(VmmError::Config(format!(
            "--vcpus {vcpu_count} exceeds KVM_CAP_MAX_VCPUS ({})",
            kvm.max_vcpus()
        )));
    }
    let supported = kvm.supported_cpuid()?;
    let vm = Vm::new(&kvm)?;
    vm.register_ram(&ram)?;

    let metrics = Arc::new(Metrics::default());
    let mut bus = PioBus::new(metrics.clone());
    let (serial, serial_irq) = SerialDevice::new(std::io::stdout(), metrics.clone())?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)?;
    bus.insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial)))?;
    bus.insert(
        EXIT_PORT,
        EXIT_PORT_LEN,
        Arc::new(Mutex::new(ExitDevice::new())),
    )?;
    let frames = usize::try_from(ram.frames())
        .map_err(|_| VmmError::Config("--mem is too large for this host".into()))?;
    let table = Arc::new(FrameTable::with_hole(frames, ram.hole_frames(), false));
    let hinting = !args.no_hinting;
    let mut faults = discard_faults(args, &ram, &table, &metrics, vcpu_count)?;
    if faults.is_some() {
        // Discard faults must be taken by the vCPU thread itself, not by an
        // async-page-fault worker (see `Vm::disable_hlt_exits`).
        if let Err(e) = vm.disable_hlt_exits() {
            log::warn!("{e}; running without discard faults");
            faults = None;
        }
    }
    let mut hypercalls = HypercallDevice::new(ram.clone(), metrics.clone(), table.clone(), hinting);
    if let Some(f) = &faults {
        hypercalls = hypercalls.with_discard_faults(f.clone());
    }
    if args.free_page_reporting {
        hypercalls = hypercalls.with_free_page_reporting(FreePageReporter::new(&ram));
    }
    let hypercalls = Arc::new(hypercalls);
    let bus = Arc::new(bus);
    let mut mmio = MmioBus::new(metrics.clone());
    // Dropping the worker stops and joins it, on every way out of here.
    let mut worker = match disk {
        Some(disk) => Some(attach_disk(&vm, &ram, disk, &mut mmio, &metrics)?),
        None => None,
    };
    let mmio = Arc::new(mmio);
    let stats = StatsSource::new(metrics.clone(), table.clone(), ram.size(), args.host_budget);
    // Dropping the reclaimer stops and joins it, on every way out of here.
    let reclaimer = Reclaimer::spawn(
        &ram,
        table,
        metrics.clone(),
        reclaim_config(args),
        stats.clone(),
        faults.clone(),
    )?;
    // Dropping the handler stops and joins it, on every way out of here.
    let fault_handler = match &faults {
        Some(f) => Some(FaultHandler::spawn(f.clone())?),
        None => None,
    };

    let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
    for index in 0..vcpu_count {
        let fd = vm.create_vcpu(index)?;
        let mut vcpu = Vcpu::new(
            index,
            fd,
            bus.clone(),
            mmio.clone(),
            hypercalls.clone(),
            metrics.clone(),
        );
        if let Some(f) = &faults {
            vcpu = vcpu.with_discard_faults(f.clone());
        }
        vcpu.configure(&supported, vcpu_count, entry, hinting, faults.is_some())?;
        vcpus.push(vcpu);
    }

    vcpu::register_kick_signal()?;
    if faults.is_some() {
        discard_fault::register_fault_kick_signal()?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        match vcpu::spawn(vcpu, stop.clone(), tx.clone()) {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                vcpu::stop_and_join(handles, &stop);
                return Err(e.into());
            }
        }
    }
    drop(tx);
    log::info!(
        "running {vcpu_count} vCPU(s), {} bytes of RAM, entry {entry:#x}",
        ram.size()
    );

    let first = match args.timeout {
        Some(limit) => rx.recv_timeout(limit),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    };
    vcpu::stop_and_join(handles, &stop);
    if let Some(w) = worker.take() {
        w.stop();
    }
    reclaimer.stop();
    if let Some(h) = fault_handler {
        h.stop();
    }
    let _ = std::io::stdout().flush();
    report_stats(&stats, args);

    match first {
        Ok(report) => outcome(report),
        Err(RecvTimeoutError::Timeout) => Err(VmmError::Timeout(args.timeout.unwrap_or_default())),
        Err(RecvTimeoutError::Disconnected) => Err(VmmError::Internal(
            "every vCPU thread ended without a report".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_count_limits() {
        assert_eq!(check_vcpus(0).unwrap_err().exit_status(), status::CONFIG);
        assert_eq!(check_vcpus(65).unwrap_err().exit_status(), status::CONFIG);
        assert_eq!(check_vcpus(64).unwrap(), 64);
        assert_eq!(check_vcpus(1).unwrap(), 1);
    }

    #[test]
    fn the_disk_option_comes_first_on_the_command_line() {
        assert_eq!(
            virtio_blk_cmdline_option(),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        let args = vec!["hello".to_string(), "x".to_string()];
        let line = loader::build_cmdline(&guest_cmdline_words(true, false, &args)).unwrap();
        assert_eq!(line, "virtio_mmio.device=4K@0xd0000000:5 hello x");
        assert_eq!(guest_cmdline_words(false, false, &args), args);
        let line = loader::build_cmdline(&guest_cmdline_words(true, true, &args)).unwrap();
        assert_eq!(line, "virtio_mmio.device=4K@0xd0000000:5 hints=fpr hello x");
        assert_eq!(
            guest_cmdline_words(false, true, &args),
            ["hints=fpr", "hello", "x"]
        );
        assert_eq!(cmdline_size(1 << 20), "1M");
        assert_eq!(cmdline_size(513), "513");
        let long = vec!["a".repeat(pagehint_abi::boot::CMDLINE_MAX - 10)];
        assert!(loader::build_cmdline(&guest_cmdline_words(false, false, &long)).is_ok());
        let e = loader::build_cmdline(&guest_cmdline_words(true, false, &long)).unwrap_err();
        assert_eq!(VmmError::from(e).exit_status(), status::USAGE);
    }

    #[test]
    fn guest_exit_and_faults_map_to_statuses() {
        let report = |reason| VcpuReport { index: 1, reason };
        assert_eq!(outcome(report(StopReason::GuestExit(0))).unwrap(), 0);
        assert_eq!(outcome(report(StopReason::GuestExit(1000))).unwrap(), 63);
        let dump = RegDump::default();
        let e = outcome(report(StopReason::TripleFault(dump))).unwrap_err();
        assert_eq!(e.exit_status(), status::GUEST_TRIPLE_FAULT);
        assert_eq!(e.register_dump().map(|(v, _)| v), Some(1));
        let e = outcome(report(StopReason::KvmFailure("x".into(), dump))).unwrap_err();
        assert_eq!(e.exit_status(), status::KVM_FAILURE);
        let e = outcome(report(StopReason::UnexpectedExit("y".into(), dump))).unwrap_err();
        assert_eq!(e.exit_status(), status::UNEXPECTED_EXIT);
        assert_eq!(
            VmmError::Timeout(Duration::ZERO).exit_status(),
            status::TIMEOUT
        );
    }
}
