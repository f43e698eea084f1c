//! The CPUID table each vCPU sees.
//!
//! Starts from what KVM supports on this host, gives every vCPU its APIC ID
//! and the vCPU count, sets the "running under a hypervisor" bit, and adds
//! this VMM's signature and feature leaves at `pagehint_abi::cpuid`. KVM's own
//! leaves at 0x4000_0000 stay as supplied. The transformation is a pure
//! function; this module must never issue ioctls other than applying the
//! finished table.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use kvm_ioctls::VcpuFd;
use pagehint_abi::cpuid::{signature_regs, LEAF_FEATURES, LEAF_SIGNATURE};
use pagehint_abi::ports::HYPERCALL_PORT;
use pagehint_abi::ABI_VERSION;

/// Leaf 1 EDX: hyper-threading (more than one logical processor).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;

/// Why a vCPU's CPUID could not be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The table grew past what a `kvm_cpuid2` can carry.
    #[error("CPUID table too large: {0:?}")]
    TooManyEntries(vmm_sys_util::fam::Error),
    /// `KVM_SET_CPUID2` failed.
    #[error("KVM_SET_CPUID2 failed: {0}")]
    Set(#[source] kvm_ioctls::Error),
}

/// What differs between vCPUs' tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuTopology {
    /// The vCPU index, which is also its APIC ID.
    pub index: u8,
    /// Number of vCPUs of the VM.
    pub count: u8,
    /// Guest TSC frequency in kHz, or 0 if unknown.
    pub tsc_khz: u32,
    /// The feature bits of our leaf (`pagehint_abi::cpuid::features`), as
    /// the hint mode gives them (`HintMode::cpuid_features`).
    pub features: u32,
}

fn leaf(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index: 0,
        flags: 0,
        eax,
        ebx,
        ecx,
        edx,
        padding: [0; 3],
    }
}

/// The table for one vCPU, derived from KVM's supported table.
pub fn vcpu_cpuid(supported: &CpuId, topo: VcpuTopology) -> Result<CpuId, CpuidError> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_SIGNATURE && e.function != LEAF_FEATURES)
        .copied()
        .collect();
    let apic_id = u32::from(topo.index);
    for e in &mut entries {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (u32::from(topo.count) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                e.edx |= LEAF1_EDX_HTT;
            }
            // Extended topology: EDX is the x2APIC ID on every subleaf.
            0xb | 0x1f => e.edx = apic_id,
            _ => {}
        }
    }
    let (sig_b, sig_c, sig_d) = signature_regs();
    entries.push(leaf(LEAF_SIGNATURE, LEAF_FEATURES, sig_b, sig_c, sig_d));
    entries.push(leaf(
        LEAF_FEATURES,
        ABI_VERSION,
        topo.features,
        u32::from(HYPERCALL_PORT),
        topo.tsc_khz,
    ));
    CpuId::from_entries(&entries).map_err(CpuidError::TooManyEntries)
}

/// Builds and applies the table for one vCPU.
pub fn setup_cpuid(
    vcpu: &VcpuFd,
    supported: &CpuId,
    index: u8,
    count: u8,
    features: u32,
) -> Result<(), CpuidError> {
    let tsc_khz = vcpu.get_tsc_khz().unwrap_or_else(|e| {
        log::debug!("KVM_GET_TSC_KHZ failed ({e}); advertising 0");
        0
    });
    let table = vcpu_cpuid(
        supported,
        VcpuTopology {
            index,
            count,
            tsc_khz,
            features,
        },
    )?;
    vcpu.set_cpuid2(&table).map_err(CpuidError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::cpuid::features;

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    fn synthetic() -> CpuId {
        let mut sub1 = leaf(0xb, 1, 2, 0x201, 0x77);
        sub1.index = 1;
        sub1.flags = kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        CpuId::from_entries(&[
            leaf(0, 0xd, 1, 2, 3),
            leaf(1, 0x806f0, 0xff_ff_08_00, 0x0000_0001, 0x0000_0001),
            leaf(0xb, 1, 1, 0x100, 0x55),
            sub1,
            leaf(0x4000_0000, 0x4000_0001, 0x4b4d564b, 0x564b4d56, 0x4d),
            // A stale entry of ours must be replaced, not duplicated.
            leaf(LEAF_FEATURES, 99, 99, 99, 99),
        ])
        .unwrap()
    }

    #[test]
    fn sets_apic_id_count_and_hypervisor_bits() {
        let topo = VcpuTopology {
            index: 3,
            count: 4,
            tsc_khz: 2_000_000,
            features: features::HYPERCALLS | features::PAGE_HINTS,
        };
        let c = vcpu_cpuid(&synthetic(), topo).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.ecx & 1, 1);
        assert_eq!(find(&c, 0xb, 0).edx, 3);
        assert_eq!(find(&c, 0xb, 1).edx, 3);
        assert_eq!(
            find(&c, 0xb, 1).flags,
            kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        );
        assert_eq!(find(&c, 0x4000_0000, 0).ebx, 0x4b4d564b);
    }

    #[test]
    fn adds_our_leaves_once() {
        let topo = VcpuTopology {
            index: 0,
            count: 1,
            tsc_khz: 1234,
            features: features::HYPERCALLS,
        };
        let c = vcpu_cpuid(&synthetic(), topo).unwrap();
        let sig = find(&c, LEAF_SIGNATURE, 0);
        assert_eq!(sig.eax, LEAF_FEATURES);
        assert!(pagehint_abi::cpuid::is_signature(sig.ebx, sig.ecx, sig.edx));
        let feat = find(&c, LEAF_FEATURES, 0);
        assert_eq!(
            (feat.eax, feat.ebx, feat.ecx, feat.edx),
            (
                ABI_VERSION,
                features::HYPERCALLS,
                u32::from(HYPERCALL_PORT),
                1234
            )
        );
        let all = features::HYPERCALLS
            | features::PAGE_HINTS
            | features::DISCARD_FAULTS
            | features::SHARED_STATES;
        let hinted = vcpu_cpuid(
            &synthetic(),
            VcpuTopology {
                features: all,
                ..topo
            },
        )
        .unwrap();
        assert_eq!(find(&hinted, LEAF_FEATURES, 0).ebx, all);
        let ours = c
            .as_slice()
            .iter()
            .filter(|e| e.function == LEAF_FEATURES)
            .count();
        assert_eq!(ours, 1);
    }
}
