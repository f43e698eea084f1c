//! The vCPU side of a discard fault: after the handler's kick made
//! `KVM_RUN` return `EINTR`, the vCPU thread takes its pending fault, writes
//! the guest-physical address into the vCPU's `DiscardFaultInfo` (then bumps
//! `sequence`), and injects vector 20 with `KVM_SET_VCPU_EVENTS`
//! (`exception.injected`: on the development machines `exception.pending`
//! without `KVM_CAP_EXCEPTION_PAYLOAD` is silently dropped). The faulting
//! instruction restarts after the guest's handler returns.
//!
//! Before injecting, the frame is checked again: if the guest made it
//! stable meanwhile there is nothing to report. A vCPU without an info area
//! gets its fault backed with zeroes instead (a protocol violation, warned
//! once). This module must never inject anything else, and never clobber an
//! event KVM is already delivering.

use std::sync::atomic::Ordering;

use kvm_ioctls::VcpuFd;
use pagehint_abi::hypercall::{DiscardFaultInfo, DISCARD_FAULT_VECTOR};
use vm_memory::{Bytes, GuestAddress};

use super::{DiscardFaultError, DiscardFaults, PAGE};

/// Offset of `sequence` in the info area.
const SEQUENCE_OFFSET: u64 = core::mem::offset_of!(DiscardFaultInfo, sequence) as u64;
/// Offset of `gpa` in the info area.
const GPA_OFFSET: u64 = core::mem::offset_of!(DiscardFaultInfo, gpa) as u64;

/// What [`DiscardFaults::on_interrupt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// No discard fault was waiting (an ordinary kick).
    Nothing,
    /// The discard fault was injected.
    Injected,
    /// The frame was no longer discarded and volatile: nothing to report.
    Stale,
    /// KVM was delivering another event: the access will fault again.
    Deferred,
    /// The vCPU has no info area: the page was backed with zeroes.
    NoInfoArea,
}

/// Injects exception `vector` (no error code) into `fd`'s vCPU, unless an
/// exception, interrupt or NMI is already being delivered. True if injected.
pub fn inject_exception(fd: &VcpuFd, vector: u8) -> Result<bool, DiscardFaultError> {
    let mut ev = fd.get_vcpu_events().map_err(DiscardFaultError::GetEvents)?;
    if ev.exception.injected != 0
        || ev.exception.pending != 0
        || ev.interrupt.injected != 0
        || ev.nmi.injected != 0
    {
        return Ok(false);
    }
    ev.exception.injected = 1;
    ev.exception.pending = 0;
    ev.exception.nr = vector;
    ev.exception.has_error_code = 0;
    ev.exception.error_code = 0;
    fd.set_vcpu_events(&ev)
        .map_err(DiscardFaultError::SetEvents)?;
    Ok(true)
}

impl DiscardFaults {
    /// Writes a discard fault at `gpa` into the info area at `info`:
    /// the address first, then `sequence + 1`.
    fn write_info(&self, info: u64, gpa: u64) -> Result<(), vm_memory::GuestMemoryError> {
        let mem = self.ram.mem();
        let seq: u64 = mem.read_obj(GuestAddress(info + SEQUENCE_OFFSET))?;
        mem.write_obj(gpa, GuestAddress(info + GPA_OFFSET))?;
        std::sync::atomic::fence(Ordering::Release);
        mem.write_obj(seq.wrapping_add(1), GuestAddress(info + SEQUENCE_OFFSET))
    }

    /// Called by vCPU `index`'s thread when `KVM_RUN` returned `EINTR`:
    /// delivers the discard fault waiting for it, if any.
    pub fn on_interrupt(&self, index: u64, fd: &VcpuFd) -> Result<Delivery, DiscardFaultError> {
        let Some(p) = self.slots.take_pending(index) else {
            return Ok(Delivery::Nothing);
        };
        let pfn = p.gpa / PAGE;
        if !self.table.discard_fault_due(pfn) {
            return Ok(Delivery::Stale);
        }
        let m = &self.metrics.discard_faults;
        let Some(info) = self.slots.info(index) else {
            self.zero_fill(pfn);
            self.no_info_area(index, p.gpa);
            return Ok(Delivery::NoInfoArea);
        };
        if let Err(e) = self.write_info(info, p.gpa) {
            // Checked at registration; only a VMM bug gets here.
            log::error!("discard faults: cannot write vCPU {index}'s info area: {e}");
            self.zero_fill(pfn);
            self.no_info_area(index, p.gpa);
            return Ok(Delivery::NoInfoArea);
        }
        if !inject_exception(fd, DISCARD_FAULT_VECTOR)? {
            m.deferred.inc();
            return Ok(Delivery::Deferred);
        }
        self.slots.note_injected(index, p.gpa);
        m.injected.inc();
        let ns = self.slots.now_ns().saturating_sub(p.kicked_ns);
        m.round_trip_us.record(ns / 1000);
        Ok(Delivery::Injected)
    }

    fn no_info_area(&self, index: u64, gpa: u64) {
        self.violation(format_args!(
            "vCPU {index} took a discard fault at {gpa:#x} without a registered info area; \
             backed with zeroes"
        ));
        if !self.warned_no_info.swap(true, Ordering::Relaxed) {
            log::warn!(
                "discard faults: the guest advertised no SET_FAULT_INFO area; \
                 discarded volatile pages it touches read as zeroes"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discard_fault::tests::hub;
    use crate::vstate::kvm::KvmContext;
    use crate::vstate::vm::Vm;
    use pagehint_abi::hypercall::HintOp;
    use pagehint_abi::page_state::PageState;

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
        let (_vm, fd) = vcpu();
        assert_eq!(f.on_interrupt(0, &fd).unwrap(), Delivery::Nothing);
        f.set_fault_info(pagehint_abi::GuestPhys(0x9000), 0)
            .unwrap();
        discarded(&f, 40);
        f.slots().set_pending(0, 40 * PAGE);
        assert_eq!(f.on_interrupt(0, &fd).unwrap(), Delivery::Injected);
        let info: DiscardFaultInfo = ram.mem().read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!((info.gpa, info.sequence), (40 * PAGE, 1));
        let ev = fd.get_vcpu_events().unwrap();
        assert_eq!(
            (ev.exception.injected, ev.exception.nr),
            (1, DISCARD_FAULT_VECTOR)
        );
        assert_eq!(m.discard_faults.injected.get(), 1);
        // Another fault while the first is still being injected waits.
        discarded(&f, 41);
        f.slots().set_pending(0, 41 * PAGE);
        assert_eq!(f.on_interrupt(0, &fd).unwrap(), Delivery::Deferred);
        assert_eq!(m.discard_faults.deferred.get(), 1);
        let info: DiscardFaultInfo = ram.mem().read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(info.sequence, 2, "the info area names the newest fault");
    }

    #[test]
    fn stale_faults_and_missing_info_areas_inject_nothing() {
        let (f, _ram, m) = hub(1);
        let (_vm, fd) = vcpu();
        // The guest freed and reallocated the frame before the vCPU got
        // the kick (SET_STABLE unregisters it on the hint path).
        discarded(&f, 50);
        f.table().apply(50, HintOp::SetUnused).unwrap();
        f.table().apply(50, HintOp::SetStable).unwrap();
        f.unregister_marked(50, 1);
        f.slots().set_pending(0, 50 * PAGE);
        assert_eq!(f.on_interrupt(0, &fd).unwrap(), Delivery::Stale);
        // No SET_FAULT_INFO: the page is backed with zeroes, a violation.
        discarded(&f, 51);
        f.slots().set_pending(0, 51 * PAGE);
        assert_eq!(f.on_interrupt(0, &fd).unwrap(), Delivery::NoInfoArea);
        assert_eq!(m.discard_faults.protocol_violations.get(), 1);
        assert!(!f.table().is_registered(51), "zero-filled and unregistered");
        assert_eq!(fd.get_vcpu_events().unwrap().exception.injected, 0);
        assert_eq!(m.discard_faults.injected.get(), 0);
    }
}
