//! The kernel's side of page hinting: the machine that the library's
//! [`guest_kernel::hinting`] logic runs on (this CPU's batch page, the
//! `HINT_BATCH` hypercall, the frame allocator) and the entry points the
//! rest of the kernel calls. The batching and the ordering rules live in
//! the library, where they are tested; nothing but the adapter may go here.
//! Everything runs with interrupts off on the local CPU's data.

use core::sync::atomic::{AtomicBool, Ordering};

use guest_kernel::hinting::{self, Counters, HintHost};
use pagehint_abi::hypercall::{CallResult, HintBatch, HintOp, HintResult, Request};
use pagehint_abi::{GuestPhys, Pfn, PAGE_SIZE};

use crate::arch::cpu;
use crate::percpu;

/// Whether the VMM takes hints (CPUID feature `PAGE_HINTS`).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// `hints=unbatched`: every hint is its own exit (to measure what
/// batching buys).
static UNBATCHED: AtomicBool = AtomicBool::new(false);

/// How hints travel, from the command line's `hints=` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Hints queue in a per-CPU batch, one exit per batch (default).
    Batched,
    /// One exit per hint.
    Unbatched,
    /// No page-state hints at all; only free 2 MiB blocks are reported,
    /// at most every 2 s (Linux's free page reporting, `mm::report`).
    FreePageReporting,
}

/// Selects how hints travel (before any process starts).
pub fn set_mode(mode: Mode) {
    UNBATCHED.store(mode == Mode::Unbatched, Ordering::Release);
    if mode == Mode::FreePageReporting {
        ENABLED.store(false, Ordering::Release);
    }
}

/// Hints, batches, refusals and skipped zeroing, for `mm::stats`.
pub static COUNTERS: Counters = Counters::new();

/// Turns hinting on (the VMM advertised it).
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A CPU's hint state: the library's, plus the batch page it works on.
pub struct CpuHints {
    /// The batch page (kernel-virtual address; 0 until `init_cpu`).
    batch: u64,
    state: hinting::CpuHints,
}

impl CpuHints {
    pub const fn new() -> Self {
        Self {
            batch: 0,
            state: hinting::CpuHints::new(),
        }
    }
}

impl Default for CpuHints {
    fn default() -> Self {
        Self::new()
    }
}

/// The machine for one CPU's hints: its batch page and the kernel's
/// hypercall and allocator.
struct Kernel {
    batch: u64,
}

impl HintHost for Kernel {
    fn enabled(&self) -> bool {
        enabled()
    }
    fn unbatched(&self) -> bool {
        UNBATCHED.load(Ordering::Relaxed)
    }
    fn has_page(&self) -> bool {
        self.batch != 0
    }
    fn page(&mut self) -> &mut HintBatch {
        // SAFETY: `batch` is this CPU's own 4 KiB page, set up by
        // `init_cpu` (the library asks only after `has_page`), in the
        // direct map; only this CPU touches it, with interrupts off.
        unsafe { &mut *(self.batch as *mut HintBatch) }
    }
    fn send_batch(&mut self, count: usize) -> Option<Result<CallResult, i32>> {
        crate::hv::call(Request::HintBatch {
            batch: GuestPhys(super::virt_to_phys(self.batch)),
            count: count as u64,
        })
    }
    fn take_frames(&mut self, n: usize, f: impl FnMut(usize, Pfn, bool)) -> usize {
        super::take_frames(n, f)
    }
    fn give_back_frames(&mut self, frames: &[GuestPhys]) {
        super::give_back_frames(frames)
    }
    fn fresh_frames_are_zero(&self) -> bool {
        super::fresh_frames_are_zero()
    }
    fn counters(&self) -> &Counters {
        &COUNTERS
    }
}

/// Runs `f` on this CPU's hint state and machine with interrupts off.
fn with_cpu<R>(f: impl FnOnce(&mut hinting::CpuHints, &mut Kernel) -> R) -> R {
    let irq = cpu::interrupts_off();
    // SAFETY: interrupts are off, so nothing else on this CPU can reach
    // its hint state until we are done; other CPUs never touch it.
    let h = unsafe { &mut *percpu::this().hints.get() };
    let r = f(&mut h.state, &mut Kernel { batch: h.batch });
    if irq {
        cpu::interrupts_on();
    }
    r
}

/// Gives this CPU its batch page.
pub fn init_cpu() {
    if let Some(pa) = super::alloc_contiguous(1) {
        let irq = cpu::interrupts_off();
        // SAFETY: as in `with_cpu`.
        unsafe { (*percpu::this().hints.get()).batch = super::phys_to_virt(pa) };
        if irq {
            cpu::interrupts_on();
        }
    }
}

/// Queues a hint without waiting for it (no answer needed).
pub fn queue(op: HintOp, pfn: u64) {
    if enabled() {
        with_cpu(|h, m| h.queue_one(m, op, Pfn(pfn)));
    }
}

/// Sends up to [`hinting::NOW_MAX`] hints of one kind now and calls
/// `each(pfn, result)` for every one (`Ok` for all when hinting is off).
pub fn now_many(op: HintOp, pfns: &[u64], mut each: impl FnMut(u64, Result<HintResult, i16>)) {
    if !enabled() {
        pfns.iter().for_each(|&p| each(p, Ok(HintResult::Ok)));
        return;
    }
    with_cpu(|h, m| h.now_many(m, op, pfns, each))
}

/// Commits this CPU's queued hints (idle entry, timer, end of mprotect).
pub fn commit() {
    if enabled() {
        with_cpu(|h, m| h.commit(m));
    }
}

/// Hints queued and not yet sent on this CPU.
pub fn pending() -> usize {
    with_cpu(|h, _| h.pending())
}

/// A frame from this CPU's pool (refilled `POOL_BATCH` at a time, with one
/// batch of `SET_STABLE` for the reused ones); `zeroed` asks for a cleared
/// frame.
pub fn pool_alloc(zeroed: bool) -> Option<u64> {
    let f = with_cpu(|h, m| h.pool_alloc(m))?;
    let pa = f.addr.as_u64();
    if zeroed {
        if !f.known_zero {
            // SAFETY: the frame is ours now and in the direct map.
            unsafe {
                core::ptr::write_bytes(super::phys_to_virt(pa) as *mut u8, 0, PAGE_SIZE as usize)
            };
        } else {
            COUNTERS.zero_skips.fetch_add(1, Ordering::Relaxed);
        }
    }
    Some(pa)
}

/// Returns a frame; every `POOL_BATCH` frees are announced unused with one
/// batch and then given back to the allocator.
pub fn pool_free(pa: u64) {
    with_cpu(|h, m| h.pool_free(m, GuestPhys(pa)));
}

/// Gives this CPU's freed frames back to the allocator now (memory is short).
pub fn drain_local() {
    with_cpu(|h, m| h.drain_local(m));
}
