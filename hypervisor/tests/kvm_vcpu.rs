//! The KVM wrappers against the host's `/dev/kvm`: opening and checking
//! KVM, one VM's memslots, irqfds, ioeventfds and vCPUs, vCPU threads that
//! run tiny guest programs and are stopped, paused and kicked, and the
//! injection of a discard fault into a real vCPU.
//!
//! Every test here needs KVM: without it they fail, never skip. They live
//! outside the library's unit tests so that `cargo test --lib` runs on a
//! machine without KVM.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hypervisor::arch::x86_64::regs::setup_bsp;
use hypervisor::devices::mmio::MmioBus;
use hypervisor::devices::pio::{ExitDevice, PioBus};
use hypervisor::discard_fault::inject::Delivery;
use hypervisor::discard_fault::DiscardFaults;
use hypervisor::frames::FrameTable;
use hypervisor::hypercall::HypercallDevice;
use hypervisor::memory::GuestRam;
use hypervisor::metrics::Metrics;
use hypervisor::vcpu_devices::VcpuDevices;
use hypervisor::vstate::kvm::KvmContext;
use hypervisor::vstate::pause::VcpuGate;
use hypervisor::vstate::vcpu::{register_kick_signal, StopReason, Vcpu, VcpuHandles, VcpuReport};
use hypervisor::vstate::vm::{Vm, VmError};
use kvm_ioctls::{SyncReg, VcpuFd};
use pagehint_abi::hypercall::{DiscardFaultInfo, HintOp, DISCARD_FAULT_VECTOR};
use pagehint_abi::page_state::PageState;
use pagehint_abi::GuestPhys;
use pagehint_abi::PAGE_SIZE as PAGE;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[test]
fn opens_dev_kvm() {
    let ctx = KvmContext::new().expect("host KVM");
    assert!(ctx.max_vcpus() >= 1);
    assert!(!ctx.supported_cpuid().expect("cpuid").as_slice().is_empty());
}

#[test]
fn a_vm_takes_ram_devices_and_vcpus_and_refuses_duplicates() {
    let kvm = KvmContext::new().expect("these tests need /dev/kvm");
    let vm = Vm::new(&kvm).unwrap();
    // RAM on both sides of the MMIO hole: two memslots.
    let ram = GuestRam::new(4 << 30).unwrap();
    vm.register_ram(&ram).unwrap();
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    vm.register_irqfd(&evt, 5).unwrap();
    vm.register_ioevent(&evt, GuestPhys(0xd000_0050)).unwrap();
    assert!(
        matches!(
            vm.register_ioevent(&evt, GuestPhys(0xd000_0050)),
            Err(VmError::Ioevent { .. })
        ),
        "the same ioeventfd twice"
    );
    // KVM takes the exit setting only before the first vCPU exists.
    vm.disable_hlt_exits().unwrap();
    vm.create_vcpu(0).unwrap();
    vm.create_vcpu(1).unwrap();
    assert!(matches!(
        vm.create_vcpu(1),
        Err(VmError::CreateVcpu { index: 1, .. })
    ));
    assert!(matches!(
        vm.disable_hlt_exits(),
        Err(VmError::DisableExits(_))
    ));
}

/// Where the test code goes (above the PVH boot structures' page).
const ENTRY: u64 = 0x10_0000;

/// A one-vCPU VM whose BSP starts at `ENTRY` running `code`, with the
/// exit port on the bus.
fn machine(code: &[u8]) -> (Vm, Vec<Vcpu<VcpuDevices>>, Arc<Metrics>) {
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
    setup_bsp(vcpu.fd(), GuestPhys(ENTRY)).unwrap();
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

/// The discard-fault machinery of 16 MiB of fresh RAM, for `vcpus` vCPUs.
fn hub(vcpus: usize) -> (Arc<DiscardFaults>, GuestRam, Arc<Metrics>) {
    let ram = GuestRam::new(16 << 20).unwrap();
    let table = Arc::new(FrameTable::new(ram.frames() as usize, false));
    let metrics = Arc::new(Metrics::default());
    let f = DiscardFaults::new(&ram, table, metrics.clone(), vcpus).unwrap();
    (Arc::new(f), ram, metrics)
}

/// A real vCPU (never run) whose event state the injection changes.
fn vcpu() -> (Vm, VcpuFd) {
    let kvm = KvmContext::new().expect("these tests need /dev/kvm");
    let vm = Vm::new(&kvm).unwrap();
    let fd = vm.create_vcpu(0).unwrap();
    (vm, fd)
}

/// Makes `pfn` a discarded, registered Volatile frame.
fn discarded(f: &DiscardFaults, pfn: u64) {
    let t = f.table();
    t.apply(pfn, HintOp::MakeVolatile).unwrap();
    assert!(t.try_claim(pfn, PageState::Volatile));
    assert!(f.register_volatile_run(pfn, 1));
    t.finish_discard(pfn);
}

#[test]
fn a_due_fault_is_written_to_the_info_area_and_injected_once() {
    let (f, ram, m) = hub(1);
    let (_vm, mut fd) = vcpu();
    assert_eq!(f.on_interrupt(0, &mut fd).unwrap(), Delivery::Nothing);
    f.set_fault_info(pagehint_abi::GuestPhys(0x9000), 0)
        .unwrap();
    discarded(&f, 40);
    f.slots().set_pending(0, GuestPhys(40 * PAGE));
    assert_eq!(f.on_interrupt(0, &mut fd).unwrap(), Delivery::Injected);
    let info: DiscardFaultInfo = ram.mem().read_obj(GuestAddress(0x9000)).unwrap();
    assert_eq!((info.gpa, info.sequence), (40 * PAGE, 1));
    let ev = fd.get_vcpu_events().unwrap();
    assert_eq!(
        (ev.exception.injected, ev.exception.nr),
        (1, DISCARD_FAULT_VECTOR)
    );
    assert_eq!(m.discard_faults.injected.get(), 1);
    // The vCPU's stages are timed; the re-entry once, before KVM_RUN.
    let st = &m.discard_faults.stages;
    assert_eq!(st.kick_to_exit.summary().count, 1);
    assert_eq!(st.inject.summary().count, 1);
    f.on_reentry(0);
    f.on_reentry(0);
    assert_eq!(st.reenter.summary().count, 1);
    assert_eq!(st.total.summary().count, 1);
    // Another fault while the first is still being injected waits.
    discarded(&f, 41);
    f.slots().set_pending(0, GuestPhys(41 * PAGE));
    assert_eq!(f.on_interrupt(0, &mut fd).unwrap(), Delivery::Deferred);
    assert_eq!(m.discard_faults.deferred.get(), 1);
    let info: DiscardFaultInfo = ram.mem().read_obj(GuestAddress(0x9000)).unwrap();
    assert_eq!(info.sequence, 2, "the info area names the newest fault");
}

#[test]
fn stale_faults_and_missing_info_areas_inject_nothing() {
    let (f, _ram, m) = hub(1);
    let (_vm, mut fd) = vcpu();
    // The guest freed and reallocated the frame before the vCPU got
    // the kick (SET_STABLE unregisters it on the hint path).
    discarded(&f, 50);
    f.table().apply(50, HintOp::SetUnused).unwrap();
    f.table().apply(50, HintOp::SetStable).unwrap();
    f.unregister_marked(50, 1);
    f.slots().set_pending(0, GuestPhys(50 * PAGE));
    assert_eq!(f.on_interrupt(0, &mut fd).unwrap(), Delivery::Stale);
    // No SET_FAULT_INFO: the page is backed with zeroes, a violation.
    discarded(&f, 51);
    f.slots().set_pending(0, GuestPhys(51 * PAGE));
    assert_eq!(f.on_interrupt(0, &mut fd).unwrap(), Delivery::NoInfoArea);
    assert_eq!(m.discard_faults.protocol_violations.get(), 1);
    assert!(!f.table().is_registered(51), "zero-filled and unregistered");
    assert_eq!(fd.get_vcpu_events().unwrap().exception.injected, 0);
    assert_eq!(m.discard_faults.injected.get(), 0);
}

/// `KVM_RUN` with `immediate_exit` set: KVM takes the synced registers,
/// stores them back and returns `EINTR` without running the guest.
fn enter_and_leave(fd: &mut VcpuFd) {
    fd.set_kvm_immediate_exit(1);
    let e = fd.run().err().map(|e| e.errno());
    assert_eq!(e, Some(libc::EINTR));
    fd.set_kvm_immediate_exit(0);
}

#[test]
fn with_synced_events_the_injection_needs_no_ioctl_and_reaches_kvm() {
    let (f, _ram, m) = hub(1);
    let (vm, mut fd) = vcpu();
    if !vm.syncs_vcpu_events() {
        eprintln!("KVM_CAP_SYNC_REGS lacks KVM_SYNC_X86_EVENTS here: nothing to test");
        return;
    }
    fd.set_sync_valid_reg(SyncReg::VcpuEvents);
    enter_and_leave(&mut fd);
    f.set_fault_info(GuestPhys(0x9000), 0).unwrap();
    discarded(&f, 60);
    f.slots().set_pending(0, GuestPhys(60 * PAGE));
    assert_eq!(f.on_interrupt(0, &mut fd).unwrap(), Delivery::Injected);
    // Staged in kvm_run, not yet in KVM.
    let staged = fd.sync_regs().events.exception;
    assert_eq!((staged.injected, staged.nr), (1, DISCARD_FAULT_VECTOR));
    assert_ne!(fd.get_kvm_run().kvm_dirty_regs, 0);
    assert_eq!(fd.get_vcpu_events().unwrap().exception.injected, 0);
    // The next entry hands it to KVM, and the exit reports it back.
    enter_and_leave(&mut fd);
    let ev = fd.get_vcpu_events().unwrap();
    assert_eq!(
        (ev.exception.injected, ev.exception.nr),
        (1, DISCARD_FAULT_VECTOR)
    );
    assert_eq!(fd.get_kvm_run().kvm_dirty_regs, 0, "taken by KVM");
    assert_eq!(fd.sync_regs().events.exception.injected, 1);
    // Another fault now waits, as without syncing.
    discarded(&f, 61);
    f.slots().set_pending(0, GuestPhys(61 * PAGE));
    assert_eq!(f.on_interrupt(0, &mut fd).unwrap(), Delivery::Deferred);
    assert_eq!(m.discard_faults.injected.get(), 1);
    assert_eq!(m.discard_faults.deferred.get(), 1);
}
