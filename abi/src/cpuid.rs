//! The hypervisor CPUID leaves that advertise this VMM and its hinting ABI.
//!
//! KVM's own leaves stay at 0x4000_0000; ours sit at the next slot,
//! 0x4000_0100, the way hypervisors that offer several interfaces stack
//! them. A guest that finds no signature there is not running under this VMM
//! (under QEMU, say) and must run without hints.

/// Leaf whose EBX, ECX, EDX hold [`SIGNATURE`] and whose EAX is the highest
/// leaf of ours.
pub const LEAF_SIGNATURE: u32 = 0x4000_0100;
/// Leaf with EAX = [`crate::ABI_VERSION`], EBX = feature bits ([`features`]),
/// ECX = the hypercall port, EDX = the guest TSC frequency in kHz (0 if
/// unknown).
pub const LEAF_FEATURES: u32 = 0x4000_0101;

/// The 12-byte signature, as it reads in EBX, ECX, EDX order.
pub const SIGNATURE: [u8; 12] = *b"PageHintVMM\0";

/// Feature bits in EBX of [`LEAF_FEATURES`].
pub mod features {
    /// The hypercall port is live.
    pub const HYPERCALLS: u32 = 1 << 0;
    /// Page-state hints (set_unused, make_volatile, ...) are accepted.
    pub const PAGE_HINTS: u32 = 1 << 1;
    /// The VMM delivers discard faults (vector 20) for volatile pages it
    /// dropped while they were mapped (the discard-fault issue).
    pub const DISCARD_FAULTS: u32 = 1 << 2;
    /// The guest may register a shared page-state table
    /// (`SET_STATE_TABLE`) and change frame states in it without exits
    /// (`crate::state_table`); only ever with [`PAGE_HINTS`].
    pub const SHARED_STATES: u32 = 1 << 3;
    /// `vmm run --potentially-volatile`: a clean cache page the guest maps
    /// writable may be potentially volatile (state 3) instead of stable;
    /// the host discards one only when KVM's dirty log proves the guest
    /// did not write it since it became so, and moves a written one back
    /// to stable (seed 000). Only ever with [`PAGE_HINTS`].
    pub const POTENTIALLY_VOLATILE: u32 = 1 << 4;
    /// The host orders its victims by the age a guest publishes in bits
    /// 2..=4 of a shared-table entry (`state_table::AGE_MASK`), highest
    /// first. Only ever with [`SHARED_STATES`], and only from a host that
    /// may take volatile frames (one with a budget, say); a guest that
    /// publishes nothing loses nothing.
    pub const GUEST_AGES: u32 = 1 << 5;
}

/// Splits [`SIGNATURE`] into the (EBX, ECX, EDX) register values.
pub const fn signature_regs() -> (u32, u32, u32) {
    let s = SIGNATURE;
    (
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    )
}

/// True if the three registers of [`LEAF_SIGNATURE`] spell [`SIGNATURE`].
pub const fn is_signature(ebx: u32, ecx: u32, edx: u32) -> bool {
    let (b, c, d) = signature_regs();
    ebx == b && ecx == c && edx == d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips_through_registers() {
        let (b, c, d) = signature_regs();
        assert!(is_signature(b, c, d));
        assert!(!is_signature(b, c, d ^ 1));
        assert_eq!(&b.to_le_bytes(), b"Page");
    }
}
