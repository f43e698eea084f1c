//! The local APIC (xAPIC, memory-mapped): enable, periodic timer, EOI,
//! inter-processor interrupts and the INIT/SIPI start-up sequence.
//!
//! Every register access is an emulated MMIO access, so callers keep them
//! out of loops. This module must never decide timer periods or vector
//! numbers: `crate::trap` owns those.

use super::direct_map;
use pagehint_abi::boot::LAPIC_BASE;

const ID: u64 = 0x20;
const EOI: u64 = 0xb0;
const SVR: u64 = 0xf0;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_DIVIDE: u64 = 0x3e0;

const ICR_PENDING: u32 = 1 << 12;

/// A LAPIC register: the LAPIC page is mapped uncached in the direct map
/// and the offsets are architectural registers.
fn read(offset: u64) -> u32 {
    // SAFETY: `LAPIC_BASE` is the LAPIC's device window, not RAM, so no
    // Rust reference points into it; every `offset` passed here is one of
    // the register constants above, 16-byte aligned inside that page.
    unsafe { direct_map::read::<u32>(LAPIC_BASE + offset) }
}

fn write(offset: u64, value: u32) {
    // SAFETY: as for `read`: an aligned register of the LAPIC window.
    unsafe { direct_map::write::<u32>(LAPIC_BASE + offset, value) }
}

/// Enables this CPU's LAPIC with `spurious` as the spurious vector.
pub fn enable(spurious: u8) {
    write(SVR, 0x100 | spurious as u32);
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Signals the end of the interrupt being handled.
pub fn eoi() {
    write(EOI, 0);
}

/// Starts the periodic timer: `vector` every `count` ticks of the APIC
/// clock divided by 16.
pub fn start_periodic_timer(vector: u8, count: u32) {
    write(TIMER_DIVIDE, 0x3); // divide by 16
    write(LVT_TIMER, (1 << 17) | vector as u32);
    write(TIMER_INITIAL, count);
}

fn send(apic_id: u32, low: u32) {
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, low);
    while read(ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
}

/// Sends fixed interrupt `vector` to the CPU with `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    send(apic_id, vector as u32);
}

/// INIT, then two start-up IPIs pointing at the 4 KiB page `page` (below
/// 1 MiB), as the MultiProcessor specification asks. KVM's in-kernel
/// LAPIC needs none of the delays real hardware wants between them.
pub fn start_ap(apic_id: u32, page: u8) {
    send(apic_id, 0x4500); // INIT, level assert
    send(apic_id, 0x4600 | page as u32);
    send(apic_id, 0x4600 | page as u32);
}
