//! The kernel's side of page hinting: the machine that the library's
//! [`guest_logic::hint_state`] logic runs on (this CPU's batch page, the
//! `HINT_BATCH` hypercall, the frame allocator, the shared page-state
//! table) and the entry points the rest of the kernel calls. The batching
//! and the ordering rules live in the library, where they are tested, and
//! the entry protocol in `pagehint_abi::state_table`; nothing but the
//! adapter may go here. Batched work runs with interrupts off on the local
//! CPU's data; a single state change in the shared table needs neither
//! (it is one store or compare-and-swap on the frame's own entry), and
//! must stay a few instructions: it is the hot path of a cache hit.
//!
//! Reaching the shared page-state table, this CPU's batch page and its
//! hint state is this module's job, so it holds that unsafe code, each
//! block with its reason.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use guest_logic::hint_state::{self, Counters, HintHost};
use pagehint_abi::hypercall::{CallResult, HintBatch, HintOp, HintResult, Request};
use pagehint_abi::page_state::PageState;
use pagehint_abi::state_table;
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
    /// at most every 2 s (Linux's free page reporting, `phys::report`).
    FreePageReporting,
}

/// Selects how hints travel (before any process starts).
pub fn set_mode(mode: Mode) {
    UNBATCHED.store(mode == Mode::Unbatched, Ordering::Release);
    if mode == Mode::FreePageReporting {
        ENABLED.store(false, Ordering::Release);
    }
}

/// Hints, batches, refusals and skipped zeroing, for `mm::stats`. The
/// state changes made in the shared table are not here but counted per
/// CPU (`percpu::count_shared_change`, summed by `mm::kernel_stats`):
/// they are the hot path, on every CPU at once.
pub static COUNTERS: Counters = Counters::new();

/// The shared page-state table (kernel-virtual address; 0 while none is
/// registered) and its entries.
static TABLE: AtomicU64 = AtomicU64::new(0);
static TABLE_LEN: AtomicU64 = AtomicU64::new(0);

/// Frame `pfn`'s entry in the shared table, once one is registered.
#[inline]
fn shared_entry(pfn: u64) -> Option<&'static AtomicU8> {
    let base = TABLE.load(Ordering::Relaxed) as *const AtomicU8;
    if base.is_null() || pfn >= TABLE_LEN.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: `base` is the table's `TABLE_LEN` bytes, frames the kernel
    // took for good in `share_table` and mapped in the direct map, and
    // `pfn` is below `TABLE_LEN`; each entry is only ever accessed
    // atomically (the VMM does the same). (An offset from the pointer,
    // not an integer sum, so the compiler knows the entry is not null.)
    Some(unsafe { &*base.add(pfn as usize) })
}

/// Whether the host dropped frame `pfn` (its shared entry says
/// DISCARDED); `None` without a table.
pub fn dropped_shared(pfn: u64) -> Option<bool> {
    shared_value(pfn).map(|v| v & state_table::DISCARDED != 0)
}

/// Frame `pfn`'s shared entry as it is now; `None` without a table.
pub fn shared_value(pfn: u64) -> Option<u8> {
    shared_entry(pfn).map(|e| e.load(Ordering::Acquire))
}

/// The frames holding the shared table (empty without one).
pub fn table_frames() -> core::ops::Range<u64> {
    let va = TABLE.load(Ordering::Acquire);
    if va == 0 {
        return 0..0;
    }
    let first = crate::arch::direct_map::virt_to_phys(va) / PAGE_SIZE;
    first..first + TABLE_LEN.load(Ordering::Relaxed).div_ceil(PAGE_SIZE)
}

/// Writes `value` into frame `pfn`'s entry, whatever the protocol says
/// (`phys::scribble` only: the VMM's stress tests).
pub fn scribble(pfn: u64, value: u8) {
    if let Some(e) = shared_entry(pfn) {
        e.store(value, Ordering::Relaxed);
    }
}

/// Whether states travel through the shared table.
pub fn shared() -> bool {
    TABLE.load(Ordering::Relaxed) != 0
}

/// Sets up the shared page-state table, when the VMM offers it (CPUID
/// `SHARED_STATES`) and the command line did not ask for hypercalls: one
/// zeroed byte per frame up to the top of RAM (all Stable), registered
/// with `SET_STATE_TABLE`. Queued hints are sent first, so that the VMM
/// copies every state there. Call on the bootstrap CPU before the others
/// run. False if there is no table (hints then keep to hypercalls).
pub fn share_table() -> bool {
    let entries = super::allocator::max_pfn();
    let pages = entries.div_ceil(PAGE_SIZE);
    let Some(pa) = super::allocator::alloc_contiguous(pages) else {
        return false;
    };
    let va = crate::arch::direct_map::phys_to_virt(pa);
    if !super::allocator::fresh_frames_are_zero() {
        // SAFETY: the frames are ours for good, in the direct map.
        unsafe { core::ptr::write_bytes(va as *mut u8, 0, (pages * PAGE_SIZE) as usize) };
    }
    commit();
    let r = crate::hv::call(Request::SetStateTable {
        table: GuestPhys(pa),
        entries,
    });
    if r != Some(Ok(CallResult::Ok)) {
        crate::console::println!("guest: the VMM refused the shared state table: {r:?}");
        return false;
    }
    TABLE_LEN.store(entries, Ordering::Relaxed);
    TABLE.store(va, Ordering::Release);
    true
}

/// Turns hinting on (the VMM advertised it).
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// The VMM offers potentially volatile pages (CPUID `POTENTIALLY_VOLATILE`).
static POTENTIALLY: AtomicBool = AtomicBool::new(false);

/// Takes the VMM's potentially-volatile option.
pub fn enable_potentially_volatile() {
    POTENTIALLY.store(true, Ordering::Release);
}

/// Whether clean cache pages mapped writable may be potentially volatile.
pub fn potentially_volatile() -> bool {
    POTENTIALLY.load(Ordering::Relaxed) && enabled()
}

/// The VMM orders its victims by the ages the guest publishes (CPUID
/// `GUEST_AGES`).
static GUEST_AGES: AtomicBool = AtomicBool::new(false);

/// Takes the VMM's offer to read published ages.
pub fn enable_guest_ages() {
    GUEST_AGES.store(true, Ordering::Release);
}

/// Whether ages are worth publishing: offered, and a shared table to
/// publish them in.
pub fn guest_ages() -> bool {
    GUEST_AGES.load(Ordering::Relaxed) && shared()
}

/// Publishes how long the guest has seen discardable frame `pfn` idle:
/// 0 if `used`, else one more than the entry says (at most
/// `state_table::AGE_MAX`). One compare-and-swap on the frame's entry,
/// never waited for or retried: an entry the host is dropping, or a
/// stable one, keeps its value. The age written, if any.
pub fn publish_age(pfn: u64, used: bool) -> Option<u8> {
    let e = shared_entry(pfn)?;
    let age = if used {
        0
    } else {
        state_table::age_of(e.load(Ordering::Relaxed)).saturating_add(1)
    };
    state_table::guest_publish_age(e, age).then_some(age.min(state_table::AGE_MAX))
}

/// Seed 000's `check_writable`, answered now: the first writable PTE of
/// cache page `pfn` is about to be set. True if the host had dropped it
/// (it is stable and reads as zeroes: the caller drops it and reads it
/// again). A volatile page stays a candidate (potentially volatile) with
/// the VMM's option, else becomes stable; a stable one stays stable.
pub fn check_writable_now(pfn: u64) -> bool {
    if let Some(e) = shared_entry(pfn) {
        percpu::count_shared_change();
        return state_table::guest_check_writable(e, potentially_volatile()).discarded;
    }
    let mut lost = false;
    now_many(HintOp::CheckWritable, &[pfn], |_, r| {
        lost = r == Ok(HintResult::Discarded);
    });
    lost
}

/// Makes stable cache page `pfn`, clean and mapped writable, potentially
/// volatile: one store in the shared table. False (nothing done) without
/// a table: through hypercalls it would pass through Volatile, where a
/// write could be lost, so a batched guest keeps such pages stable.
pub fn release_potentially_volatile(pfn: u64) -> bool {
    if !potentially_volatile() {
        return false;
    }
    match shared_entry(pfn) {
        Some(e) => {
            percpu::count_shared_change();
            state_table::guest_release(e, PageState::PotentiallyVolatile);
            true
        }
        None => false,
    }
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
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
            batch: GuestPhys(crate::arch::direct_map::virt_to_phys(self.batch)),
            count: count as u64,
        })
    }
    fn take_frames(&mut self, n: usize, f: impl FnMut(usize, Pfn, bool)) -> usize {
        super::allocator::take_frames(n, f)
    }
    fn give_back_frames(&mut self, frames: &[GuestPhys]) {
        super::allocator::give_back_frames(frames)
    }
    fn fresh_frames_are_zero(&self) -> bool {
        super::allocator::fresh_frames_are_zero()
    }
    fn counters(&self) -> &Counters {
        &COUNTERS
    }
    fn count_shared(&self) {
        percpu::count_shared_change();
    }
    fn shared_entry(&self, pfn: Pfn) -> Option<&AtomicU8> {
        shared_entry(pfn.as_u64())
    }
}

/// One state change in the shared table: no exit. True if the host had
/// dropped the frame (for the stable-making hints). Counted once, on this
/// CPU's count of shared changes (`mm::kernel_stats` adds them to `hints`).
#[inline]
fn change_shared(e: &AtomicU8, op: HintOp) -> bool {
    percpu::count_shared_change();
    match op {
        HintOp::MakeVolatile => {
            state_table::guest_release(e, PageState::Volatile);
            false
        }
        HintOp::SetUnused => {
            state_table::guest_release(e, PageState::Unused);
            false
        }
        HintOp::MakeStable | HintOp::CheckWritable | HintOp::SetStable => {
            // One compare-and-swap, all a cache hit on an aged page pays;
            // the loop that waits only if the host holds the entry or
            // changed it meanwhile.
            match state_table::guest_try_make_stable(e) {
                Some(t) => t.discarded,
                None => make_stable_waiting(e),
            }
        }
    }
}

/// [`state_table::guest_make_stable`], out of line: the host is dropping
/// the frame now, or changed its entry under a swap.
#[cold]
#[inline(never)]
fn make_stable_waiting(e: &AtomicU8) -> bool {
    state_table::guest_make_stable(e).discarded
}

/// Runs `f` on this CPU's hint state and machine with interrupts off.
fn with_cpu<R>(f: impl FnOnce(&mut hint_state::HintState, &mut Kernel) -> R) -> R {
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
    if let Some(pa) = super::allocator::alloc_contiguous(1) {
        let irq = cpu::interrupts_off();
        // SAFETY: as in `with_cpu`.
        unsafe { (*percpu::this().hints.get()).batch = crate::arch::direct_map::phys_to_virt(pa) };
        if irq {
            cpu::interrupts_on();
        }
    }
}

/// Queues a hint without waiting for it (no answer needed); with the
/// shared table, makes the change there at once. (Frames are only freed
/// and allocated through the pools, which keep the armed ones' order.)
#[inline]
pub fn queue(op: HintOp, pfn: u64) {
    // A registered table implies hinting is on.
    match shared_entry(pfn) {
        Some(e) if !matches!(op, HintOp::SetUnused | HintOp::SetStable) => {
            change_shared(e, op);
        }
        _ => queue_batched(op, pfn),
    }
}

/// [`queue`] without the shared table: into this CPU's batch. Out of
/// line so that `queue`'s table path, inlined at every caller, stays short;
/// not `#[cold]`: it is the hot path of the hypercall transports.
#[inline(never)]
fn queue_batched(op: HintOp, pfn: u64) {
    if enabled() {
        with_cpu(|h, m| h.queue_one(m, op, Pfn(pfn)));
    }
}

/// Makes one volatile page stable through the shared table, now: `None`
/// without a table (use [`now_many`]), else whether the host had dropped
/// it. The cache-hit path on an aged page: one compare-and-swap, no exit.
#[inline]
pub fn make_stable_shared(pfn: u64) -> Option<bool> {
    shared_entry(pfn).map(|e| change_shared(e, HintOp::MakeStable))
}

/// Sends up to [`hint_state::NOW_MAX`] hints of one kind now and calls
/// `each(pfn, result)` for every one (`Ok` for all when hinting is off).
pub fn now_many(op: HintOp, pfns: &[u64], mut each: impl FnMut(u64, Result<HintResult, i16>)) {
    if !enabled() {
        pfns.iter().for_each(|&p| each(p, Ok(HintResult::Ok)));
        return;
    }
    if shared() && !matches!(op, HintOp::SetUnused | HintOp::SetStable) {
        for &p in pfns {
            let lost = shared_entry(p).is_some_and(|e| change_shared(e, op));
            each(
                p,
                Ok(if lost {
                    HintResult::Discarded
                } else {
                    HintResult::Ok
                }),
            );
        }
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
                core::ptr::write_bytes(
                    crate::arch::direct_map::phys_to_virt(pa) as *mut u8,
                    0,
                    PAGE_SIZE as usize,
                )
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
