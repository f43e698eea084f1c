//! The machine: builds one VM from a [`VmConfig`], runs it to the end and
//! tears it down.
//!
//! [`run`] checks the configuration, then `Machine::build` opens the disk
//! image if any, loads the kernel into fresh guest RAM, opens KVM and
//! creates the VM, its devices and vCPUs; `Machine::start` starts the
//! threads (`Threads`: the vCPUs, the block worker, the discard-fault
//! handler, the reclaimer, the stats writer), each a handle that stops and
//! joins its thread on drop. `run` waits for the first vCPU to stop (or the
//! timeout), stops every thread in that fixed order and writes the final
//! stats. Nothing here may panic on anything the guest or the user sends.

use std::borrow::Cow;
use std::io::Write;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagehint_abi::boot::{VIRTIO_BLK_IRQ, VIRTIO_BLK_MMIO_BASE, VIRTIO_MMIO_SIZE};
use pagehint_abi::exit::status_from_guest;
use pagehint_abi::ports::{COM1_BASE, COM1_IRQ, COM1_LEN, EXIT_PORT};
use pagehint_abi::GuestPhys;
use vmm_sys_util::eventfd::EventFd;

use crate::api::control::MachineControl;
use crate::api::server::{self as api_server, ApiServer};
use crate::config::{HintMode, Kernel, VmConfig};
use crate::devices::blk_worker::BlockWorker;
use crate::devices::console_out::ConsoleOut;
use crate::devices::disk::DiskFile;
use crate::devices::mmio::MmioBus;
use crate::devices::pio::{ExitDevice, PioBus};
use crate::devices::serial::SerialDevice;
use crate::devices::virtio_blk::PagesOnDisk;
use crate::devices::virtio_mmio::{VirtioBlock, QUEUE_NOTIFY};
use crate::discard_fault::handler::FaultHandler;
use crate::discard_fault::{self, DiscardFaults};
use crate::error::VmmError;
use crate::frames::{Arming, FrameTable};
use crate::hypercall::reporting::FreePageReporter;
use crate::hypercall::HypercallDevice;
use crate::loader;
use crate::memory::GuestRam;
use crate::metrics::Metrics;
use crate::reclaim::budget::BudgetControl;
use crate::reclaim::pv::{PvReclaim, PAUSE_TIMEOUT};
use crate::reclaim::{self, ReclaimConfig, Reclaimer};
use crate::stats::{StatsSource, StatsWriter};
use crate::vcpu_devices::VcpuDevices;
use crate::vstate::dirty_log::ClearOnDisk;
use crate::vstate::kvm::KvmContext;
use crate::vstate::pause::VcpuGate;
use crate::vstate::vcpu::{self, StopReason, Vcpu, VcpuHandles, VcpuReport};
use crate::vstate::vm::Vm;
use crate::{fatal, fault_inject, seccomp, signals};

/// Width of the exit port (QEMU's `isa-debug-exit,iosize=0x04`).
const EXIT_PORT_LEN: u16 = 4;

/// The block device tells the dirty log which pages now equal the disk
/// (potentially volatile frames).
impl PagesOnDisk for ClearOnDisk {
    fn on_disk(&self, buffers: &[(u64, u64)]) {
        ClearOnDisk::on_disk(self, buffers);
    }
}

/// Creates the virtio block device on `disk`: wires its interrupt and
/// notification into KVM and puts it on the MMIO bus. Its worker thread
/// starts with the others.
fn attach_disk(
    vm: &Vm,
    ram: &GuestRam,
    disk: DiskFile,
    mmio: &mut MmioBus,
    metrics: &Arc<Metrics>,
    on_disk: Option<Arc<dyn PagesOnDisk>>,
) -> Result<(Arc<Mutex<VirtioBlock>>, EventFd), VmmError> {
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
    let (mut dev, irq, notify) = VirtioBlock::new(ram.mem().clone(), disk, metrics.clone())?;
    if let Some(o) = on_disk {
        dev = dev.with_pages_on_disk(o);
    }
    vm.register_irqfd(&irq, VIRTIO_BLK_IRQ)?;
    vm.register_ioevent(&notify, GuestPhys(VIRTIO_BLK_MMIO_BASE) + QUEUE_NOTIFY)?;
    let dev = Arc::new(Mutex::new(dev));
    mmio.insert(
        GuestPhys(VIRTIO_BLK_MMIO_BASE),
        VIRTIO_MMIO_SIZE,
        dev.clone(),
    )?;
    Ok((dev, notify))
}

/// The memory cgroup whose headroom is a budget, if `--cgroup-budget auto`
/// finds one with a limit.
fn cgroup_budget(config: &VmConfig) -> Option<reclaim::cgroup::CgroupMemory> {
    if !config.reclaim.cgroup_budget {
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

/// The reclaimer's configuration.
fn reclaim_config(config: &VmConfig) -> ReclaimConfig {
    let fpr = config.hints == HintMode::FreePageReporting;
    ReclaimConfig {
        discard: !fpr,
        cgroup: if fpr { None } else { cgroup_budget(config) },
        interval: config.reclaim.interval,
        budget_bytes: config.reclaim.host_budget,
        budget_may_change: config.api_sock.is_some(),
        psi_threshold: config.reclaim.psi_threshold,
        // Hinting only: without it no frame is Unused.
        unused_delay: config
            .reclaim
            .unused_delay
            .filter(|_| config.hints.reclaims()),
        victim_order: config.reclaim.victim_order,
    }
}

/// The discard-fault machinery, unless hinting or discard faults are off.
/// A host that refuses userfaultfd runs without discard faults (warned).
fn discard_faults(
    config: &VmConfig,
    ram: &GuestRam,
    table: &Arc<FrameTable>,
    metrics: &Arc<Metrics>,
    vcpus: u8,
) -> Result<Option<Arc<DiscardFaults>>, VmmError> {
    if !config.hints.discard_faults() {
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
fn report_stats(stats: &StatsSource, config: &VmConfig) {
    match stats.to_json() {
        Ok(json) => log::info!("metrics: {json}"),
        Err(e) => log::warn!("{e}"),
    }
    if let Some(s) = &config.stats {
        // The last document matters most: one more try if the first fails.
        if let Err(e) = stats.write(&s.path).or_else(|_| stats.write(&s.path)) {
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
    }
}

/// The threads of a running machine, in the order they stop: the API
/// socket's first (no client changes anything while the rest stop), the
/// vCPUs (nothing runs guest code after them), then the block worker, the
/// discard-fault handler, the reclaimer (its last round sees the guest
/// stopped), and the stats writer. Fields drop in declaration order, so
/// every way out of [`run`] stops them in this order; [`Threads::stop`]
/// does the same explicitly.
struct Threads {
    api: Option<ApiServer>,
    vcpus: Option<VcpuHandles>,
    block_worker: Option<BlockWorker>,
    fault_handler: Option<FaultHandler>,
    reclaimer: Option<Reclaimer>,
    stats_writer: Option<StatsWriter>,
    /// After a fault that could not be answered (`crate::fatal`), its
    /// waiters are released so that their threads can stop.
    faults: Option<Arc<DiscardFaults>>,
}

impl Threads {
    /// Unregisters all of guest RAM if a fault went unanswered.
    fn release_waiters(&self) {
        if let (true, Some(f)) = (fatal::recorded(), &self.faults) {
            if let Err(e) = f.release_all() {
                log::warn!("discard faults: cannot release the waiting threads: {e}");
            }
        }
    }

    fn stop(mut self) {
        if let Some(a) = self.api.take() {
            a.stop();
        }
        if let Some(v) = self.vcpus.take() {
            v.stop_or_unstick(&mut || self.release_waiters());
        }
        // The block worker may wait on the same fault.
        self.release_waiters();
        if let Some(w) = self.block_worker.take() {
            w.stop();
        }
        if let Some(h) = self.fault_handler.take() {
            h.stop();
        }
        if let Some(r) = self.reclaimer.take() {
            r.stop();
        }
        if let Some(s) = self.stats_writer.take() {
            s.stop();
        }
    }
}

/// The VM, its memory and its devices, built but not yet running.
struct Machine {
    vm: Vm,
    ram: GuestRam,
    metrics: Arc<Metrics>,
    table: Arc<FrameTable>,
    faults: Option<Arc<DiscardFaults>>,
    devices: VcpuDevices,
    vcpus: Vec<Vcpu<VcpuDevices>>,
    /// The block device, waiting for its worker thread.
    disk: Option<(Arc<Mutex<VirtioBlock>>, EventFd)>,
    entry: GuestPhys,
    /// `--potentially-volatile`: what the reclaimer's pass over those
    /// frames needs.
    pv: Option<PvReclaim>,
    /// The reclaimer's configuration (the cgroup found once).
    reclaim: ReclaimConfig,
}

impl Machine {
    /// Loads the kernel into fresh RAM and creates the VM, its devices and
    /// its vCPUs. Starts no thread.
    fn build(config: &VmConfig, vcpu_count: u8) -> Result<Self, VmmError> {
        let disk = match &config.disk {
            Some(d) => Some(DiskFile::open(&d.path, d.writable)?),
            None => None,
        };
        let cmdline = loader::build_cmdline(&config.guest_cmdline_words())?;
        let image: Cow<'_, [u8]> = match &config.kernel {
            Kernel::Path(path) => Cow::Owned(loader::read_kernel(path)?),
            Kernel::Image(bytes) => Cow::Borrowed(bytes),
        };
        let ram = GuestRam::new(config.mem)?;
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
        // Potentially volatile frames: KVM's dirty log, manual protect,
        // every bit initially set (`docs/reclaim.md`).
        let pv = config.potentially_volatile;
        if pv {
            vm.enable_manual_dirty_log()?;
        }
        vm.register_ram_logged(&ram, pv)?;
        let dirty = match pv {
            true => Some(Arc::new(vm.dirty_log(&ram)?)),
            false => None,
        };

        let metrics = Arc::new(Metrics::default());
        let frames = usize::try_from(ram.frames())
            .map_err(|_| VmmError::Config("--mem is too large for this host".into()))?;
        let table = Arc::new(FrameTable::with_hole(frames, ram.hole_frames(), pv));
        let mut faults = discard_faults(config, &ram, &table, &metrics, vcpu_count)?;
        if faults.is_some() {
            // Discard faults must be taken by the vCPU thread itself, not by
            // an async-page-fault worker (see `Vm::disable_hlt_exits`).
            if let Err(e) = vm.disable_hlt_exits() {
                log::warn!("{e}; running without discard faults");
                faults = None;
            }
        }
        if pv && faults.is_none() {
            return Err(VmmError::Config(
                "--potentially-volatile needs discard faults, which this host could not set up (see the warning above)".into(),
            ));
        }
        let gate = pv.then(VcpuGate::new);
        let pv_reclaim = match (&gate, &dirty) {
            (Some(g), Some(d)) => Some(PvReclaim {
                pauser: g.clone(),
                dirty: d.clone(),
                timeout: PAUSE_TIMEOUT,
            }),
            _ => None,
        };
        let on_disk =
            dirty.map(|d| Arc::new(ClearOnDisk::new(d, metrics.clone())) as Arc<dyn PagesOnDisk>);

        let mut pio = PioBus::new(metrics.clone());
        let (serial, serial_irq) = SerialDevice::new(
            ConsoleOut::new(libc::STDOUT_FILENO, metrics.clone()),
            metrics.clone(),
        )?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)?;
        pio.insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial)))?;
        pio.insert(
            EXIT_PORT,
            EXIT_PORT_LEN,
            Arc::new(Mutex::new(ExitDevice::new())),
        )?;
        let mut mmio = MmioBus::new(metrics.clone());
        let disk = match disk {
            Some(disk) => Some(attach_disk(&vm, &ram, disk, &mut mmio, &metrics, on_disk)?),
            None => None,
        };
        let hinting = config.hints.hypercalls();
        let mut features = config.hints.cpuid_features(faults.is_some());
        if pv {
            features |= pagehint_abi::cpuid::features::POTENTIALLY_VOLATILE;
        }
        // Ages only for a reclaimer that reads them (one that may take
        // Volatile frames): elsewhere they cost the guest and serve nobody.
        let reclaim = reclaim_config(config);
        if config.hints.shared_states()
            && config.reclaim.victim_order == crate::reclaim::age::VictimOrder::GuestAge
            && reclaim.takes_volatile()
        {
            features |= pagehint_abi::cpuid::features::GUEST_AGES;
        }
        let mut hypercalls =
            HypercallDevice::new(ram.clone(), metrics.clone(), table.clone(), hinting);
        if config.hints.shared_states() {
            hypercalls = hypercalls.with_shared_states();
        }
        if let Some(f) = &faults {
            hypercalls = hypercalls.with_discard_faults(f.clone());
        }
        if config.hints == HintMode::FreePageReporting {
            hypercalls = hypercalls.with_free_page_reporting(FreePageReporter::new(&ram));
        }
        let devices = VcpuDevices {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            hypercalls: Arc::new(hypercalls),
        };

        let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
        let synced_events = faults.is_some() && vm.syncs_vcpu_events();
        if faults.is_some() {
            log::debug!(
                "discard faults: injected through {}",
                if synced_events {
                    "kvm_run's synced events"
                } else {
                    "KVM_GET/SET_VCPU_EVENTS"
                }
            );
        }
        for index in 0..vcpu_count {
            let fd = vm.create_vcpu(index)?;
            let mut vcpu = Vcpu::new(index, fd, devices.clone(), metrics.clone());
            if let Some(f) = &faults {
                vcpu = vcpu.with_kick_handler(f.clone());
            }
            if synced_events {
                vcpu = vcpu.with_synced_events();
            }
            if config.count_instructions {
                vcpu = vcpu.with_instruction_counter();
            }
            if let Some(g) = &gate {
                vcpu = vcpu.with_pause_gate(g.clone());
            }
            vcpu.configure(&supported, vcpu_count, entry, features)?;
            vcpus.push(vcpu);
        }
        Ok(Self {
            vm,
            ram,
            metrics,
            table,
            faults,
            devices,
            vcpus,
            disk,
            entry,
            pv: pv_reclaim,
            reclaim,
        })
    }

    /// Starts the device threads, then the vCPU threads, in the order of
    /// [`Threads`]. A thread that cannot start stops those already running.
    fn start(
        &mut self,
        config: &VmConfig,
        stats: &StatsSource,
        budget: &Arc<BudgetControl>,
        tx: mpsc::Sender<VcpuReport>,
    ) -> Result<Threads, VmmError> {
        let mut threads = Threads {
            api: None,
            vcpus: None,
            block_worker: None,
            fault_handler: None,
            reclaimer: None,
            stats_writer: None,
            faults: self.faults.clone(),
        };
        if let Some((dev, notify)) = self.disk.take() {
            threads.block_worker = Some(BlockWorker::spawn(dev, notify)?);
        }
        let arming = self.faults.clone().map(|f| f as Arc<dyn Arming>);
        threads.reclaimer = Some(Reclaimer::spawn_with_pv(
            &self.ram,
            self.table.clone(),
            self.metrics.clone(),
            self.reclaim.clone(),
            arming,
            self.pv.clone(),
            budget.clone(),
        )?);
        if let Some(f) = &self.faults {
            threads.fault_handler = Some(FaultHandler::spawn(f.clone())?);
        }
        if let Some(s) = &config.stats {
            let writer = StatsWriter::spawn(stats.clone(), s.path.clone(), s.interval)
                .map_err(|e| VmmError::Internal(format!("cannot spawn the stats thread: {e}")))?;
            threads.stats_writer = Some(writer);
        }
        if let Some(path) = &config.api_sock {
            let control = MachineControl::new(
                config,
                u8::try_from(self.vcpus.len()).unwrap_or(u8::MAX),
                stats.clone(),
                self.table.clone(),
                self.metrics.clone(),
                budget.clone(),
            );
            // A socket the path cannot take is the user's to fix (78); a
            // thread that cannot start is ours (70).
            let listener = api_server::bind(path).map_err(|e| VmmError::Config(e.to_string()))?;
            let server = ApiServer::spawn(listener, path.clone(), Arc::new(control));
            threads.api = Some(server.map_err(|e| {
                let _ = std::fs::remove_file(path);
                VmmError::Internal(e.to_string())
            })?);
            log::info!("api: listening on {}", path.display());
        }
        vcpu::register_kick_signal()?;
        if self.faults.is_some() {
            discard_fault::register_fault_kick_signal()?;
        }
        let vcpus = std::mem::take(&mut self.vcpus);
        threads.vcpus = Some(VcpuHandles::spawn(vcpus, tx)?);
        Ok(threads)
    }
}

/// Boots the guest `config` describes and runs it to the end. Returns the
/// exit status the guest asked for, or the error that ended the run.
pub fn run(config: &VmConfig) -> Result<i32, VmmError> {
    let vcpu_count = config.validate()?;
    // Before any thread that makes a hooked call starts.
    let plan = fault_inject::Plan::new(config.faults.clone())
        .map_err(|e| VmmError::Config(format!("--inject-fault: {e}")))?;
    fault_inject::install(&plan);
    let mut machine = Machine::build(config, vcpu_count)?;
    let budget = Arc::new(
        BudgetControl::new(config.reclaim.host_budget)
            .map_err(|e| VmmError::Internal(format!("cannot create the budget's eventfd: {e}")))?,
    );
    let stats = StatsSource::new(
        machine.metrics.clone(),
        machine.table.clone(),
        machine.ram.size(),
        budget.clone(),
    );
    // Before any thread starts, so that all of them inherit it.
    signals::install().map_err(|e| {
        VmmError::Internal(format!("cannot install the SIGINT/SIGTERM handlers: {e}"))
    })?;
    seccomp::prepare(config.seccomp).map_err(|e| VmmError::Internal(e.to_string()))?;
    let (tx, rx) = mpsc::channel();
    let threads = machine.start(config, &stats, &budget, tx)?;
    // Every other thread runs (each filtered itself first): the main
    // thread's filter goes on before it waits for the guest.
    seccomp::enter(seccomp::ThreadKind::Main).map_err(|e| VmmError::Internal(e.to_string()))?;
    log::info!(
        "running {vcpu_count} vCPU(s), {} bytes of RAM, entry {:#x}",
        machine.ram.size(),
        machine.entry
    );
    let first = wait_first(&rx, config.timeout);
    threads.stop();
    // The devices and the VM outlive every thread that used them.
    drop((machine.devices, machine.vm));
    let _ = std::io::stdout().flush();
    report_stats(&stats, config);

    match first {
        Ok(report) => outcome(report),
        Err(Waited::Signal(_)) if signals::by_api() => Err(VmmError::ApiStop),
        Err(Waited::Signal(s)) => Err(VmmError::Signal(s)),
        Err(Waited::HostFailure(what)) => Err(VmmError::HostFailure(what)),
        Err(Waited::Timeout) => Err(VmmError::Timeout(config.timeout.unwrap_or_default())),
        Err(Waited::Disconnected) => Err(VmmError::Internal(
            "every vCPU thread ended without a report".into(),
        )),
    }
}

/// Why the wait for the first vCPU report ended without one.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    Timeout,
    HostFailure(String),
    Signal(i32),
    Disconnected,
}

/// The first vCPU report, waited for in slices of at most
/// [`signals::POLL`] so that SIGINT/SIGTERM and `--timeout` are seen.
fn wait_first(rx: &Receiver<VcpuReport>, timeout: Option<Duration>) -> Result<VcpuReport, Waited> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if let Some(s) = signals::requested() {
            return Err(Waited::Signal(s));
        }
        if let Some(what) = fatal::first() {
            return Err(Waited::HostFailure(what));
        }
        let slice = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(signals::POLL),
                _ => return Err(Waited::Timeout),
            },
            None => signals::POLL,
        };
        match rx.recv_timeout(slice) {
            Ok(report) => return Ok(report),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(Waited::Disconnected),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::regs::RegDump;
    use pagehint_abi::exit::vmm as status;

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
        assert_eq!(VmmError::Signal(libc::SIGINT).exit_status(), status::SIGINT);
        assert_eq!(
            VmmError::Signal(libc::SIGTERM).exit_status(),
            status::SIGTERM
        );
    }

    #[test]
    fn the_wait_ends_at_a_report_the_deadline_or_a_lost_channel() {
        let (tx, rx) = mpsc::channel();
        tx.send(VcpuReport {
            index: 0,
            reason: StopReason::GuestExit(3),
        })
        .unwrap();
        assert!(matches!(wait_first(&rx, None), Ok(r) if r.index == 0));
        let t = Instant::now();
        assert_eq!(
            wait_first(&rx, Some(Duration::from_millis(250))).err(),
            Some(Waited::Timeout)
        );
        assert!(t.elapsed() >= Duration::from_millis(250));
        drop(tx);
        assert_eq!(wait_first(&rx, None).err(), Some(Waited::Disconnected));
    }
}
