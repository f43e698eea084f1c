//! Time since boot: the TSC scaled by the frequency the VMM reports, or
//! timer ticks where no frequency is known (under another hypervisor).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::cpu;
use crate::arch::vectors::TICK_NS;
use crate::percpu;

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// Records the boot TSC and, if known, its frequency.
pub fn init(tsc_khz: u32) {
    BOOT_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
    TSC_KHZ.store(tsc_khz as u64, Ordering::Relaxed);
}

/// Nanoseconds since boot.
pub fn now_ns() -> u64 {
    let khz = TSC_KHZ.load(Ordering::Relaxed);
    if khz == 0 {
        return percpu::get(0).ticks.load(Ordering::Relaxed) * TICK_NS;
    }
    let cycles = cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    (cycles as u128 * 1_000_000 / khz as u128) as u64
}
