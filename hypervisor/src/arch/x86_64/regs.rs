//! Initial vCPU state for the PVH boot protocol, and register dumps.
//!
//! The bootstrap processor starts in 32-bit protected mode with paging off,
//! flat 4 GiB segments, `%ebx` holding the `hvm_start_info` address and
//! `%eip` the ELF note's entry point. Application processors are left in
//! `KVM_MP_STATE_UNINITIALIZED` and wait for the guest's INIT/SIPI. This
//! module must never guess guest state beyond what the PVH ABI promises.

use std::fmt;

use kvm_bindings::{kvm_mp_state, kvm_regs, kvm_segment, kvm_sregs, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::VcpuFd;
use pagehint_abi::boot::START_INFO_ADDR;
use pagehint_abi::GuestPhys;

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// RFLAGS bit 1 is reserved and always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Flat code selector the PVH ABI specifies (GDT entry 1).
pub const CODE_SELECTOR: u16 = 0x8;
/// Flat data selector the PVH ABI specifies (GDT entry 2).
pub const DATA_SELECTOR: u16 = 0x10;

/// Offsets of local-APIC registers in `kvm_lapic_state`.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// LVT delivery modes (bits 10:8).
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Why a vCPU could not be given its initial state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_MP_STATE failed: {0}")]
    SetMpState(#[source] kvm_ioctls::Error),
    #[error("KVM_GET_LAPIC/KVM_SET_LAPIC failed: {0}")]
    Lapic(#[source] kvm_ioctls::Error),
}

fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The special registers of a PVH entry, starting from KVM's reset state.
pub fn pvh_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = flat_segment(CODE_SELECTOR, 0xb);
    let data = flat_segment(DATA_SELECTOR, 0x3);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    // A busy 32-bit TSS and an LDT that look valid: some hosts refuse VM
    // entry otherwise, even though the guest never uses them before it
    // loads its own.
    s.tr = kvm_segment {
        base: 0,
        limit: 0xffff,
        selector: 0,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    s.ldt = kvm_segment {
        base: 0,
        limit: 0xffff,
        selector: 0,
        type_: 0x2,
        present: 1,
        s: 0,
        ..Default::default()
    };
    s.cr0 = CR0_PE | CR0_ET;
    s.cr2 = 0;
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
    s
}

/// The general registers of a PVH entry.
pub fn pvh_regs(entry: GuestPhys) -> kvm_regs {
    kvm_regs {
        rip: entry.as_u64(),
        rbx: START_INFO_ADDR,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// Puts the bootstrap processor at the PVH entry point.
pub fn setup_bsp(vcpu: &VcpuFd, entry: GuestPhys) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    vcpu.set_sregs(&pvh_sregs(sregs))
        .map_err(RegsError::SetSregs)?;
    vcpu.set_regs(&pvh_regs(entry))
        .map_err(RegsError::SetRegs)?;
    Ok(())
}

/// Leaves an application processor waiting for INIT/SIPI.
pub fn setup_ap(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let state = kvm_mp_state {
        mp_state: KVM_MP_STATE_UNINITIALIZED,
    };
    vcpu.set_mp_state(state).map_err(RegsError::SetMpState)
}

/// Wires LINT0 as ExtINT and LINT1 as NMI (the PC's virtual-wire mode),
/// as firmware would, so that legacy PIC interrupts reach the BSP.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(RegsError::Lapic)?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = lapic.regs[reg + i] as u8;
        }
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(RegsError::Lapic)
}

/// The registers worth seeing when a guest dies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegDump {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: u16,
    pub ss: u16,
}

impl RegDump {
    /// Reads the registers of a stopped vCPU; registers that cannot be read
    /// are shown as zero rather than hiding the rest.
    pub fn capture(vcpu: &VcpuFd) -> Self {
        let mut d = RegDump::default();
        match vcpu.get_regs() {
            Ok(r) => {
                d.rip = r.rip;
                d.rsp = r.rsp;
                d.rflags = r.rflags;
            }
            Err(e) => log::warn!("KVM_GET_REGS failed while dumping: {e}"),
        }
        match vcpu.get_sregs() {
            Ok(s) => {
                d.cr0 = s.cr0;
                d.cr2 = s.cr2;
                d.cr3 = s.cr3;
                d.cr4 = s.cr4;
                d.efer = s.efer;
                d.cs = s.cs.selector;
                d.ss = s.ss.selector;
            }
            Err(e) => log::warn!("KVM_GET_SREGS failed while dumping: {e}"),
        }
        d
    }
}

impl fmt::Display for RegDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rip={:#018x} rsp={:#018x} rflags={:#010x}",
            self.rip, self.rsp, self.rflags
        )?;
        writeln!(
            f,
            "cr0={:#010x} cr2={:#018x} cr3={:#018x} cr4={:#010x}",
            self.cr0, self.cr2, self.cr3, self.cr4
        )?;
        write!(
            f,
            "efer={:#06x} cs={:#06x} ss={:#06x}",
            self.efer, self.cs, self.ss
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_entry_state() {
        let s = pvh_sregs(kvm_sregs::default());
        assert_eq!(s.cr0, 0x11);
        assert_eq!((s.cr4, s.efer), (0, 0));
        assert_eq!(
            (s.cs.selector, s.cs.type_, s.cs.db, s.cs.g, s.cs.s),
            (8, 0xb, 1, 1, 1)
        );
        assert_eq!(s.cs.limit, 0xffff_ffff);
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!((seg.selector, seg.type_, seg.present), (0x10, 3, 1));
        }
        assert_eq!((s.tr.type_, s.tr.present, s.tr.s), (0xb, 1, 0));
        assert_eq!((s.ldt.type_, s.ldt.present), (2, 1));
        let r = pvh_regs(GuestPhys(0x10_0000));
        assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0000, START_INFO_ADDR, 2));
    }

    #[test]
    fn dump_prints_every_register() {
        let text = RegDump {
            rip: 0x1234,
            cr3: 0x5000,
            cs: 8,
            ..Default::default()
        }
        .to_string();
        for name in [
            "rip=",
            "rsp=",
            "rflags=",
            "cr0=",
            "cr2=",
            "cr3=0x",
            "cr4=",
            "efer=",
            "cs=0x0008",
            "ss=",
        ] {
            assert!(text.contains(name), "{name} missing in {text}");
        }
    }
}
