//! The VM file descriptor: creation, the in-kernel interrupt controllers,
//! the guest RAM memslot, irqfds and ioeventfds.
//!
//! This module must never run vCPUs or decide the memory layout; it applies
//! what it is given. It is tested against the host's KVM in
//! `hypervisor/tests/kvm_vcpu.rs`.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, IoEventAddress, NoDatamatch, VcpuFd, VmFd};
use pagehint_abi::GuestPhys;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestRam;
use crate::vstate::dirty_log::{DirtyLog, DirtyLogError, RAM_SLOT};
use crate::vstate::kvm::KvmContext;

/// Guest-physical address of the three pages KVM needs for the real-mode
/// TSS on Intel hosts; just below the 4 GiB BIOS area, above the LAPIC.
pub const TSS_ADDR: usize = 0xfffb_d000;

/// `map_err` of a setup ioctl named `ioctl`.
fn ioctl(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { ioctl, source }
}

/// Why the VM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A VM ioctl of setup failed: `KVM_CREATE_VM`, `KVM_SET_TSS_ADDR`,
    /// `KVM_CREATE_IRQCHIP`, `KVM_SET_USER_MEMORY_REGION`, or enabling
    /// manual dirty-log protection.
    #[error("{ioctl} failed: {source}")]
    Ioctl {
        ioctl: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_IRQFD for GSI {gsi} failed: {source}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_IOEVENTFD at {addr:#x} failed: {source}")]
    Ioevent {
        addr: GuestPhys,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Enabling KVM_CAP_X86_DISABLE_EXITS failed.
    #[error("KVM_ENABLE_CAP(X86_DISABLE_EXITS, HLT) failed: {0}")]
    DisableExits(#[source] kvm_ioctls::Error),
    #[error(transparent)]
    DirtyLog(#[from] DirtyLogError),
    #[error("KVM_CREATE_VCPU {index} failed: {source}")]
    CreateVcpu {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// One VM.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates a VM with the in-kernel PIC, IOAPIC and LAPICs.
    pub fn new(kvm: &KvmContext) -> Result<Self, VmError> {
        let fd = kvm.kvm().create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        fd.set_tss_address(TSS_ADDR)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        Ok(Self { fd })
    }

    /// Lets the guest's `hlt` halt in the guest instead of exiting to KVM.
    ///
    /// Why: with HLT exits on, KVM serves a guest page fault on memory
    /// that is not resident by an "async page fault": it parks the vCPU in
    /// an artificial halt and lets a kernel worker fetch the page. A
    /// userfaultfd event for a discarded page then names that worker, not
    /// the vCPU thread, and no discard fault can be aimed at the vCPU that
    /// touched the page. With HLT in the guest KVM cannot park the vCPU
    /// (our guest does not enable paravirtual async page faults), so the
    /// vCPU thread takes the fault itself. Measured on the development
    /// machines: every discard-fault event came from `kworker` threads
    /// before this, from vCPU threads after.
    pub fn disable_hlt_exits(&self) -> Result<(), VmError> {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_X86_DISABLE_EXITS,
            args: [kvm_bindings::KVM_X86_DISABLE_EXITS_HLT as u64, 0, 0, 0],
            ..Default::default()
        };
        self.fd.enable_cap(&cap).map_err(VmError::DisableExits)
    }

    /// True if KVM hands a vCPU's pending events over in `kvm_run` at every
    /// exit and takes them back at the next entry (`KVM_CAP_SYNC_REGS`
    /// with `KVM_SYNC_X86_EVENTS`): a discard fault is then injected with
    /// no ioctl (`crate::discard_fault::inject`).
    pub fn syncs_vcpu_events(&self) -> bool {
        let fields = self.fd.check_extension_int(Cap::SyncRegs);
        u32::try_from(fields).is_ok_and(|f| f & kvm_bindings::KVM_SYNC_X86_EVENTS != 0)
    }

    /// Turns on manual dirty-log protection with every bit initially set
    /// (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`, args 3): `KVM_GET_DIRTY_LOG`
    /// then leaves the bitmap alone and only `KVM_CLEAR_DIRTY_LOG` clears
    /// bits. Before [`Vm::register_ram_logged`].
    pub fn enable_manual_dirty_log(&self) -> Result<(), VmError> {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            args: [
                u64::from(
                    kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
                        | kvm_bindings::KVM_DIRTY_LOG_INITIALLY_SET,
                ),
                0,
                0,
                0,
            ],
            ..Default::default()
        };
        self.fd.enable_cap(&cap).map_err(ioctl(
            "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2, manual protect + initially set)",
        ))
    }

    /// The dirty log of `ram`'s memslots (a duplicate of the VM's fd).
    pub fn dirty_log(&self, ram: &GuestRam) -> Result<DirtyLog, VmError> {
        Ok(DirtyLog::new(&self.fd, ram)?)
    }

    /// Registers guest RAM: memslot 0 below the MMIO hole, memslot 1 for
    /// RAM above 4 GiB when there is any.
    pub fn register_ram(&self, ram: &GuestRam) -> Result<(), VmError> {
        self.register_ram_logged(ram, false)
    }

    /// [`Vm::register_ram`], with `KVM_MEM_LOG_DIRTY_PAGES` on every slot
    /// when `log_dirty`.
    pub fn register_ram_logged(&self, ram: &GuestRam, log_dirty: bool) -> Result<(), VmError> {
        let flags = if log_dirty {
            kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        for (slot, (gpa, len)) in (RAM_SLOT..).zip(ram.ranges()) {
            let region = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: ram.host_base() + gpa,
            };
            // SAFETY: the host range is a readable and writable part of the
            // mapping owned by `ram`. The caller keeps a clone of that memory
            // alive (in the devices and in `run`) for as long as the VM
            // exists, so KVM never sees the mapping disappear under the
            // memslot.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Makes a write to `evt` raise interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// Makes a guest store of any width to MMIO address `addr` a write to
    /// `evt`, completed inside KVM without a VM exit.
    pub fn register_ioevent(&self, evt: &EventFd, addr: GuestPhys) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr.as_u64()), NoDatamatch)
            .map_err(|source| VmError::Ioevent { addr, source })
    }

    /// Creates vCPU `index` (its APIC ID is the index).
    pub fn create_vcpu(&self, index: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(index))
            .map_err(|source| VmError::CreateVcpu { index, source })
    }
}
