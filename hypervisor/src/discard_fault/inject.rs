//! The vCPU side of a discard fault: after the handler's kick made
//! `KVM_RUN` return `EINTR`, the vCPU thread takes its pending fault, writes
//! the guest-physical address into the vCPU's `DiscardFaultInfo` (then bumps
//! `sequence`), and injects vector 20 (`exception.injected`: on the
//! development machines `exception.pending` without
//! `KVM_CAP_EXCEPTION_PAYLOAD` is silently dropped). Where KVM syncs the
//! vCPU's events through `kvm_run` (`Vcpu::with_synced_events`), the events
//! KVM left there at the exit are read and the injection handed back for
//! the next entry, with no ioctl; elsewhere `KVM_GET_VCPU_EVENTS` and
//! `KVM_SET_VCPU_EVENTS` do the same in two ioctls. The faulting
//! instruction restarts after the guest's handler returns.
//!
//! Before injecting, the frame is checked again: if the guest made it
//! stable meanwhile there is nothing to report. A vCPU without an info area
//! gets its fault backed with zeroes instead (a protocol violation, warned
//! once). The vCPU loop reaches this through `vstate::vcpu::KickHandler`,
//! which [`DiscardFaults`] implements here; it also times the vCPU's
//! stages (back from `KVM_RUN`, injected, entering `KVM_RUN` again) into
//! `metrics::DiscardStages`. This module must never inject anything else,
//! and never clobber an event KVM is already delivering. It is tested
//! against the host's KVM in `hypervisor/tests/kvm_vcpu.rs`.

use std::sync::atomic::Ordering;

use kvm_bindings::{kvm_vcpu_events, KVM_SYNC_X86_EVENTS};
use kvm_ioctls::{SyncReg, VcpuFd};
use pagehint_abi::hypercall::{DiscardFaultInfo, DISCARD_FAULT_VECTOR};
use pagehint_abi::GuestPhys;
use vm_memory::{Bytes, GuestAddress};

use super::slots::Injected;
use super::{DiscardFaultError, DiscardFaults};
use crate::vstate::vcpu::{KickHandler, Reentry};

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

/// Sets exception `vector` (no error code) in `ev` as injected, unless an
/// exception, interrupt or NMI is already being delivered. True if set.
fn stage_exception(ev: &mut kvm_vcpu_events, vector: u8) -> bool {
    if ev.exception.injected != 0
        || ev.exception.pending != 0
        || ev.interrupt.injected != 0
        || ev.nmi.injected != 0
    {
        return false;
    }
    ev.exception.injected = 1;
    ev.exception.pending = 0;
    ev.exception.nr = vector;
    ev.exception.has_error_code = 0;
    ev.exception.error_code = 0;
    true
}

/// Injects exception `vector` (no error code) into `fd`'s vCPU, unless an
/// exception, interrupt or NMI is already being delivered. True if injected.
/// With the vCPU's events synced through `kvm_run`, the events of the last
/// exit are changed in place and marked for the next entry (no ioctl);
/// otherwise they are read and written with two ioctls.
pub fn inject_exception(fd: &mut VcpuFd, vector: u8) -> Result<bool, DiscardFaultError> {
    let synced = fd.get_kvm_run().kvm_valid_regs & u64::from(KVM_SYNC_X86_EVENTS) != 0;
    if synced {
        if !stage_exception(&mut fd.sync_regs_mut().events, vector) {
            return Ok(false);
        }
        fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
        return Ok(true);
    }
    let mut ev = fd.get_vcpu_events().map_err(DiscardFaultError::GetEvents)?;
    if !stage_exception(&mut ev, vector) {
        return Ok(false);
    }
    fd.set_vcpu_events(&ev)
        .map_err(DiscardFaultError::SetEvents)?;
    Ok(true)
}

impl DiscardFaults {
    /// Writes a discard fault at `gpa` into the info area at `info`:
    /// the address first, then `sequence + 1`.
    fn write_info(
        &self,
        info: GuestPhys,
        gpa: GuestPhys,
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let mem = self.ram.mem();
        let seq_at = GuestAddress((info + SEQUENCE_OFFSET).as_u64());
        let seq: u64 = mem.read_obj(seq_at)?;
        mem.write_obj(gpa.as_u64(), GuestAddress((info + GPA_OFFSET).as_u64()))?;
        std::sync::atomic::fence(Ordering::Release);
        mem.write_obj(seq.wrapping_add(1), seq_at)
    }

    /// Called by vCPU `index`'s thread when `KVM_RUN` returned `EINTR`:
    /// delivers the discard fault waiting for it, if any.
    pub fn on_interrupt(&self, index: u64, fd: &mut VcpuFd) -> Result<Delivery, DiscardFaultError> {
        let exit_ns = self.slots.now_ns();
        let Some(p) = self.slots.take_pending(index) else {
            return Ok(Delivery::Nothing);
        };
        let pfn = p.gpa.pfn().as_u64();
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
        let injected_ns = self.slots.now_ns();
        self.slots.note_injected(index, p.gpa);
        m.injected.inc();
        m.round_trip_us
            .record(injected_ns.saturating_sub(p.published_ns) / 1000);
        m.stages.kick_to_exit.record_span(p.published_ns, exit_ns);
        m.stages.inject.record_span(exit_ns, injected_ns);
        self.slots.await_reentry(
            index,
            Injected {
                woken_ns: p.woken_ns,
                injected_ns,
            },
        );
        Ok(Delivery::Injected)
    }

    /// Called by vCPU `index`'s thread just before it enters `KVM_RUN`
    /// after an injection: times the re-entry and the whole round trip.
    pub fn on_reentry(&self, index: u64) {
        let Some(i) = self.slots.take_reentry(index) else {
            return;
        };
        let now = self.slots.now_ns();
        let stages = &self.metrics.discard_faults.stages;
        stages.reenter.record_span(i.injected_ns, now);
        stages.total.record_span(i.woken_ns, now);
    }

    fn no_info_area(&self, index: u64, gpa: GuestPhys) {
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

/// The vCPU thread's side: bound to its slot while its loop runs, and
/// delivering its pending discard fault after every interrupted run.
impl KickHandler for DiscardFaults {
    fn bind(&self, index: u8) {
        if let Err(e) = self.bind_current_thread(u64::from(index)) {
            log::error!("vcpu{index}: {e}");
        }
    }

    fn unbind(&self, index: u8) {
        DiscardFaults::unbind(self, u64::from(index));
    }

    fn interrupted(&self, index: u8, fd: &mut VcpuFd) -> Result<Reentry, String> {
        match self.on_interrupt(u64::from(index), fd) {
            Ok(Delivery::Injected) => {
                log::trace!("vcpu{index}: discard fault injected");
                Ok(Reentry::Timed)
            }
            Ok(_) => Ok(Reentry::Untimed),
            Err(e) => Err(e.to_string()),
        }
    }

    fn reentering(&self, index: u8) {
        self.on_reentry(u64::from(index));
    }

    fn kick_signal(&self) -> Option<i32> {
        Some(super::fault_kick_signal())
    }
}
