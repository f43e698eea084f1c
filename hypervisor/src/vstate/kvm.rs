//! Opens `/dev/kvm` and checks that the host offers what this VMM needs.
//!
//! Every requirement is checked up front, before any VM exists, so that a
//! host without (say) `KVM_CAP_SYNC_MMU` is refused with a message naming the
//! capability instead of failing later in an obscure way. This module must
//! never create VMs or touch guest state: it only answers "can we run here?".

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// The only KVM API version there has ever been.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities we refuse to run without, with the names the error uses.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Hlt, "KVM_CAP_HLT"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    // Host-side reclaim (madvise on guest RAM) is only safe when KVM's MMU
    // notifiers drop the stale mappings.
    (Cap::SyncMmu, "KVM_CAP_SYNC_MMU"),
];

/// Why the host cannot run us.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// The API version is not 12.
    #[error("/dev/kvm reports API version {0}, expected {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A required capability is missing.
    #[error("KVM lacks the required capability {0}")]
    MissingCap(&'static str),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
}

/// An open, checked `/dev/kvm`.
#[derive(Debug)]
pub struct KvmContext {
    kvm: Kvm,
    max_vcpus: usize,
}

impl KvmContext {
    /// Opens `/dev/kvm` and checks the API version and every required
    /// capability.
    pub fn new() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion(version));
        }
        if let Some(name) = first_missing(|cap| kvm.check_extension(cap)) {
            return Err(KvmError::MissingCap(name));
        }
        let max_vcpus = kvm.get_max_vcpus();
        log::debug!("kvm: API {version}, max vCPUs {max_vcpus}");
        Ok(Self { kvm, max_vcpus })
    }

    /// The system file descriptor.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// `KVM_CAP_MAX_VCPUS` (or `KVM_CAP_NR_VCPUS` on old hosts).
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// The CPUID leaves KVM can virtualise on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)
    }
}

/// The name of the first required capability `has` says is missing.
fn first_missing(has: impl Fn(Cap) -> bool) -> Option<&'static str> {
    REQUIRED_CAPS
        .iter()
        .find(|(cap, _)| !has(*cap))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_capability() {
        assert_eq!(first_missing(|_| true), None);
        let missing = first_missing(|c| c != Cap::SyncMmu);
        assert_eq!(missing, Some("KVM_CAP_SYNC_MMU"));
        let msg = KvmError::MissingCap("KVM_CAP_SYNC_MMU").to_string();
        assert!(msg.contains("KVM_CAP_SYNC_MMU"));
    }
}
