//! Bringing up the application processors: copy the real-mode trampoline
//! below 1 MiB, then INIT/SIPI each AP in turn and wait for it to report.
//!
//! APs start one at a time because they share the boot stack slot and CPU
//! index handed over in `AP_BOOT_STACK`/`AP_BOOT_CPU`.
//!
//! Writing the trampoline page (`AP_TRAMPOLINE_ADDR`, reserved low memory)
//! through the direct map is part of its job: its one unsafe block.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::direct_map::phys_to_virt;
use crate::arch::{apic, boot, cpu, direct_map};
use crate::percpu;
use crate::phys;
use pagehint_abi::boot::AP_TRAMPOLINE_ADDR;
use pagehint_abi::PAGE_SIZE;

/// Stack pointer the next AP starts on (read by `boot.rs`).
#[no_mangle]
static AP_BOOT_STACK: AtomicU64 = AtomicU64::new(0);
/// Index of the next AP (read by `boot.rs`).
#[no_mangle]
static AP_BOOT_CPU: AtomicU64 = AtomicU64::new(0);

/// Pages of each AP's boot (later idle) stack.
const AP_STACK_PAGES: u64 = 4;

/// Starts CPUs 1..n (APIC IDs equal to indices); returns how many came up,
/// the bootstrap CPU included.
pub fn start_aps(n: usize, tsc_khz: u32) -> usize {
    if n <= 1 {
        return 1;
    }
    let code = boot::ap_trampoline();
    // SAFETY: the trampoline page is reserved low memory that no allocator
    // hands out (everything below the kernel image is excluded) and no
    // Rust reference points into; no AP runs yet, so nothing executes it;
    // `code` is in the kernel image, far from it.
    unsafe { direct_map::write_from(AP_TRAMPOLINE_ADDR, code) };
    // Give each AP up to ~200 ms (TSC-timed when the frequency is known).
    let budget = if tsc_khz != 0 {
        tsc_khz as u64 * 200
    } else {
        0
    };
    for i in 1..n {
        let Some(stack) = phys::allocator::alloc_contiguous(AP_STACK_PAGES) else {
            crate::console::println!("guest: no memory for cpu {i}'s stack");
            return i;
        };
        AP_BOOT_STACK.store(
            phys_to_virt(stack + AP_STACK_PAGES * PAGE_SIZE),
            Ordering::Release,
        );
        AP_BOOT_CPU.store(i as u64, Ordering::Release);
        let before = percpu::online();
        apic::start_ap(i as u32, (AP_TRAMPOLINE_ADDR >> 12) as u8);
        let t0 = cpu::rdtsc();
        let mut spins: u64 = 0;
        while percpu::online() == before {
            core::hint::spin_loop();
            spins += 1;
            let expired = if budget != 0 {
                cpu::rdtsc().wrapping_sub(t0) > budget
            } else {
                spins > 200_000
            };
            if expired {
                crate::console::println!("guest: cpu {i} did not come up");
                return i;
            }
        }
    }
    n
}
