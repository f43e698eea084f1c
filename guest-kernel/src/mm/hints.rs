//! The guest side of page hinting: a per-CPU batch of hints in guest
//! memory, committed to the VMM with one exit, and the per-CPU frame pools
//! that let allocation and freeing be hinted in batches of 32.
//!
//! Ordering rules this module keeps: a frame's `SET_UNUSED` reaches the VMM
//! before the frame goes back to the allocator (so no other CPU can hand it
//! out while the host still thinks it free), and `SET_STABLE` reaches the
//! VMM before a reused frame is handed to its new owner. Everything here
//! runs with interrupts off on the local CPU's data.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pagehint_abi::hypercall::{
    hint, op, result, HintBatch, HintEntry, HypercallBlock, HINT_BATCH_MAX,
};
use pagehint_abi::PAGE_SIZE;

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

pub static HINTS: AtomicU64 = AtomicU64::new(0);
pub static BATCHES: AtomicU64 = AtomicU64::new(0);
pub static ERRORS: AtomicU64 = AtomicU64::new(0);
pub static ZERO_SKIPS: AtomicU64 = AtomicU64::new(0);

/// Frames per pool refill and per free batch: one exit carries this many
/// hints (plus whatever else is queued).
pub const POOL_BATCH: usize = 64;
/// Marks a pooled frame known to hold zeroes (low bit of its address).
const ZERO: u64 = 1;

/// Turns hinting on (the VMM advertised it).
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A CPU's hint batch and frame pools.
pub struct CpuHints {
    /// The batch page (kernel-virtual address; 0 until `init_cpu`).
    batch: u64,
    count: usize,
    /// Frames ready to hand out, stable in the VMM's view; low bit `ZERO`.
    ready: [u64; POOL_BATCH],
    nready: usize,
    /// Frames freed but not yet announced unused.
    freed: [u64; POOL_BATCH],
    nfreed: usize,
    /// Unbatched mode: the results of the hints sent one by one since the
    /// last `commit`, by the slot `queue` returned.
    results: [i16; HINT_BATCH_MAX],
    logical: usize,
}

impl CpuHints {
    pub const fn new() -> Self {
        Self {
            batch: 0,
            count: 0,
            ready: [0; POOL_BATCH],
            nready: 0,
            freed: [0; POOL_BATCH],
            nfreed: 0,
            results: [0; HINT_BATCH_MAX],
            logical: 0,
        }
    }

    fn page(&mut self) -> &mut HintBatch {
        // SAFETY: `batch` is this CPU's own 4 KiB page, set up by
        // `init_cpu`, in the direct map; only this CPU touches it, with
        // interrupts off.
        unsafe { &mut *(self.batch as *mut HintBatch) }
    }

    /// Queues a hint; commits the batch first if it is full. Returns the
    /// entry's slot (valid until the next commit).
    fn queue(&mut self, op: u16, pfn: u64, count: u32) -> usize {
        if UNBATCHED.load(Ordering::Relaxed) {
            // Send it alone, now; keep its result for `result(slot)`.
            if self.logical == HINT_BATCH_MAX {
                self.logical = 0;
            }
            self.page().entries[0] = HintEntry {
                pfn,
                count,
                op,
                result: 0,
            };
            self.count = 1;
            HINTS.fetch_add(1, Ordering::Relaxed);
            self.send();
            let slot = self.logical;
            self.results[slot] = self.page().entries[0].result;
            self.logical += 1;
            return slot;
        }
        if self.count == HINT_BATCH_MAX {
            self.commit();
        }
        let slot = self.count;
        self.page().entries[slot] = HintEntry {
            pfn,
            count,
            op,
            result: 0,
        };
        self.count += 1;
        HINTS.fetch_add(1, Ordering::Relaxed);
        slot
    }

    /// Sends the queued hints with one exit. Results stay readable in the
    /// page until the next `queue`.
    fn commit(&mut self) {
        if UNBATCHED.load(Ordering::Relaxed) {
            // Everything went out already; results stay readable until the
            // next `queue`.
            self.logical = 0;
            return;
        }
        self.send();
    }

    fn send(&mut self) {
        if self.count == 0 {
            return;
        }
        let n = self.count;
        self.page().count = n as u32;
        let mut block = HypercallBlock {
            op: op::HINT_BATCH,
            result: 0,
            args: [super::virt_to_phys(self.batch), n as u64, 0, 0, 0, 0, 0],
        };
        let r = crate::hv::hypercall(&mut block);
        BATCHES.fetch_add(1, Ordering::Relaxed);
        self.count = 0;
        if r != Some(result::OK) {
            ERRORS.fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        let bad = self.page().entries[..n]
            .iter()
            .filter(|e| e.result < 0)
            .count();
        if bad > 0 {
            ERRORS.fetch_add(bad as u64, Ordering::Relaxed);
        }
    }

    fn result(&mut self, slot: usize) -> i16 {
        if UNBATCHED.load(Ordering::Relaxed) {
            return self.results[slot];
        }
        self.page().entries[slot].result
    }
}

impl Default for CpuHints {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `f` on this CPU's hint state with interrupts off.
fn with_cpu<R>(f: impl FnOnce(&mut CpuHints) -> R) -> R {
    let irq = cpu::interrupts_off();
    // SAFETY: interrupts are off, so nothing else on this CPU can reach
    // its hint state until we are done; other CPUs never touch it.
    let r = f(unsafe { &mut *percpu::this().hints.get() });
    if irq {
        cpu::interrupts_on();
    }
    r
}

/// Gives this CPU its batch page.
pub fn init_cpu() {
    if let Some(pa) = super::alloc_contiguous(1) {
        with_cpu(|h| h.batch = super::phys_to_virt(pa));
    }
}

/// Queues a hint without waiting for it (no answer needed).
pub fn queue(op: u16, pfn: u64) {
    if enabled() {
        with_cpu(|h| {
            if h.batch != 0 {
                h.queue(op, pfn, 1);
            }
        });
    }
}

/// Sends up to 32 hints of one kind now and calls `each(pfn, result)` for
/// every one (`OK` for all when hinting is off).
pub fn now_many(op: u16, pfns: &[u64], mut each: impl FnMut(u64, i16)) {
    if !enabled() {
        pfns.iter().for_each(|&p| each(p, result::OK as i16));
        return;
    }
    with_cpu(|h| {
        if h.batch == 0 {
            pfns.iter().for_each(|&p| each(p, result::OK as i16));
            return;
        }
        // Room for all of them in one batch.
        if h.count + pfns.len() > HINT_BATCH_MAX {
            h.commit();
        }
        let mut slots = [0usize; 32];
        let n = pfns.len().min(slots.len());
        for (slot, &p) in slots.iter_mut().zip(&pfns[..n]) {
            *slot = h.queue(op, p, 1);
        }
        h.commit();
        for (&slot, &p) in slots.iter().zip(&pfns[..n]) {
            each(p, h.result(slot));
        }
    })
}

/// Commits this CPU's queued hints (idle entry, timer, end of mprotect).
pub fn commit() {
    if enabled() {
        with_cpu(|h| h.commit());
    }
}

/// Hints queued and not yet sent on this CPU.
pub fn pending() -> usize {
    with_cpu(|h| h.count)
}

/// A frame from this CPU's pool (refilled 32 at a time, with one batch of
/// `SET_STABLE` for the reused ones); `zeroed` asks for a cleared frame.
pub fn pool_alloc(zeroed: bool) -> Option<u64> {
    let tagged = with_cpu(|h| {
        if h.nready == 0 {
            refill(h);
        }
        if h.nready == 0 {
            return None;
        }
        h.nready -= 1;
        Some(h.ready[h.nready])
    })?;
    let pa = tagged & !ZERO;
    if zeroed {
        if tagged & ZERO == 0 {
            // SAFETY: the frame is ours now and in the direct map.
            unsafe {
                core::ptr::write_bytes(super::phys_to_virt(pa) as *mut u8, 0, PAGE_SIZE as usize)
            };
        } else {
            ZERO_SKIPS.fetch_add(1, Ordering::Relaxed);
        }
    }
    Some(pa)
}

fn refill(h: &mut CpuHints) {
    let mut slots = [usize::MAX; POOL_BATCH];
    let fresh_zero = super::fresh_frames_are_zero();
    let got = super::take_frames(POOL_BATCH, |i, pfn, fresh| {
        let pa = pfn * PAGE_SIZE;
        h.ready[i] = if fresh && fresh_zero { pa | ZERO } else { pa };
        slots[i] = if fresh || !enabled() || h.batch == 0 {
            usize::MAX
        } else {
            0
        };
    });
    // Reused frames were announced unused: make them stable first, all in
    // one batch (room is made first, so no slot is committed early).
    if slots[..got].contains(&0) {
        if h.count + got > HINT_BATCH_MAX {
            h.commit();
        }
        for (slot, tagged) in slots[..got].iter_mut().zip(h.ready) {
            if *slot == 0 {
                *slot = h.queue(hint::SET_STABLE, (tagged & !ZERO) / PAGE_SIZE, 1);
            }
        }
        h.commit();
        for (i, &slot) in slots[..got].iter().enumerate() {
            if slot != usize::MAX && h.result(slot) == result::DISCARDED as i16 {
                // The host dropped it: it reads as zeroes.
                h.ready[i] |= ZERO;
            }
        }
    }
    h.nready = got;
}

/// Returns a frame; every 32 frees are announced unused with one batch and
/// then given back to the allocator.
pub fn pool_free(pa: u64) {
    with_cpu(|h| {
        if h.nfreed == POOL_BATCH {
            drain(h);
        }
        h.freed[h.nfreed] = pa;
        h.nfreed += 1;
    });
}

fn drain(h: &mut CpuHints) {
    if enabled() && h.batch != 0 {
        // Coalesce contiguous runs into one entry each.
        let mut i = 0;
        while i < h.nfreed {
            let start = h.freed[i] / PAGE_SIZE;
            let mut n = 1;
            while i + n < h.nfreed && h.freed[i + n] / PAGE_SIZE == start + n as u64 {
                n += 1;
            }
            h.queue(hint::SET_UNUSED, start, n as u32);
            i += n;
        }
        h.commit();
    }
    super::give_back_frames(&h.freed[..h.nfreed]);
    h.nfreed = 0;
}

/// Gives this CPU's freed frames back to the allocator now (memory is short).
pub fn drain_local() {
    with_cpu(|h| {
        if h.nfreed > 0 {
            drain(h);
        }
    });
}
