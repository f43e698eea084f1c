//! [`VmmError`]: every way a VM run can end other than the guest's own
//! exit, gathered from each module's error, and the documented process
//! exit status of each (`pagehint_abi::exit::vmm`).
//!
//! This module must never decide anything but the mapping: errors are made
//! where they happen.

use std::time::Duration;

use pagehint_abi::exit::vmm as status;

use crate::arch::x86_64::regs::RegDump;
use crate::devices::blk_worker::WorkerError;
use crate::devices::bus::BusError;
use crate::devices::disk::DiskError;
use crate::devices::serial::SerialError;
use crate::devices::virtio_mmio::VirtioMmioError;
use crate::discard_fault::DiscardFaultError;
use crate::loader::LoaderError;
use crate::memory::MemoryError;
use crate::reclaim::ReclaimError;
use crate::vstate::kvm::KvmError;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vm::VmError;

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
    #[error("cannot set up the device buses: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error(transparent)]
    Disk(#[from] DiskError),
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
    /// SIGINT or SIGTERM (the number) stopped the run.
    #[error("stopped by signal {0} ({name}): the guest was stopped, every thread joined and the final stats written", name = crate::signals::name(*.0))]
    Signal(i32),
    /// The API's `PUT /actions {"action": "stop"}` stopped the run, along
    /// the same path as SIGTERM and with its status.
    #[error("stopped through the API (PUT /actions stop, as SIGTERM): the guest was stopped, every thread joined and the final stats written")]
    ApiStop,
    /// The host failed an operation the guest needs to go on
    /// (`crate::fatal`).
    #[error(
        "host failure: {0}; the guest was stopped, every thread joined and the final stats written"
    )]
    HostFailure(String),
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
            | VmmError::Virtio(_)
            | VmmError::Worker(_)
            | VmmError::Reclaim(_)
            | VmmError::DiscardFault(_) => status::INTERNAL,
            VmmError::TripleFault { .. } => status::GUEST_TRIPLE_FAULT,
            VmmError::KvmFailure { .. } => status::KVM_FAILURE,
            VmmError::UnexpectedExit { .. } => status::UNEXPECTED_EXIT,
            VmmError::Timeout(_) => status::TIMEOUT,
            VmmError::Signal(s) => crate::signals::exit_status(*s),
            VmmError::ApiStop => crate::signals::exit_status(libc::SIGTERM),
            VmmError::HostFailure(_) => status::HOST_FAILURE,
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
