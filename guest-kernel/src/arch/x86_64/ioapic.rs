//! The I/O APIC (KVM's in-kernel one): routes a device's interrupt line to
//! a vector on one CPU.
//!
//! Only redirection entries are touched; this module must never decide
//! which device gets which vector (`crate::trap` owns vectors).

use core::sync::atomic::{AtomicU32, Ordering};

use super::direct_map;
use pagehint_abi::boot::IOAPIC_BASE;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;

/// The I/O APIC page is mapped uncached in the direct map; the
/// select/window pair is its architectural interface. Callers serialise
/// (the block driver holds its lock).
fn write(reg: u32, value: u32) {
    // SAFETY: `IOAPIC_BASE` is the I/O APIC's device window, not RAM, so no
    // Rust reference points into it; IOREGSEL and IOWIN are its two
    // aligned 32-bit registers.
    unsafe {
        direct_map::write::<u32>(IOAPIC_BASE + IOREGSEL, reg);
        direct_map::write::<u32>(IOAPIC_BASE + IOWIN, value);
    }
}

/// APIC ID each line was last routed to (+1; 0 = never), to skip rewrites.
static ROUTED: [AtomicU32; 24] = [const { AtomicU32::new(0) }; 24];

/// Routes edge-triggered, active-high line `irq` to `vector` on the CPU
/// with `apic_id` (physical destination, fixed delivery), unmasked.
pub fn route(irq: u32, vector: u8, apic_id: u32) {
    let Some(slot) = ROUTED.get(irq as usize) else {
        return;
    };
    if slot.load(Ordering::Relaxed) == apic_id + 1 {
        return;
    }
    let reg = 0x10 + 2 * irq;
    write(reg + 1, apic_id << 24);
    write(reg, vector as u32);
    slot.store(apic_id + 1, Ordering::Relaxed);
}
