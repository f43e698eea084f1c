//! Page hinting's guest logic: a CPU's batch of hints, committed to the VMM
//! with one exit, and its frame pools, which let allocation and freeing be
//! hinted [`POOL_BATCH`] frames at a time.
//!
//! Ordering rules this module keeps: a frame's `SET_UNUSED` reaches the VMM
//! before the frame goes back to the allocator (so no other CPU can hand it
//! out while the host still thinks it free), and `SET_STABLE` reaches the
//! VMM before a reused frame is handed to its new owner.
//!
//! With a shared page-state table (`pagehint_abi::state_table`) the same
//! rules hold through the table instead: a freed frame's entry says Unused
//! before the frame goes back, a reused frame's entry is made Stable (and
//! the host's drop of it learnt) before it is handed out, all without an
//! exit; only a frame the host registered for discard faults (ARMED) costs
//! a `SET_STABLE` hypercall, batched with the others of its refill.
//!
//! The machine (the batch page, the hypercall, the frame allocator) comes
//! in through [`HintHost`]; the kernel implements it over its per-CPU data
//! with interrupts off (`mm::hints`), the tests with a fake VMM. Nothing
//! here may touch the batch page other than through the trait.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use pagehint_abi::hypercall::{
    CallResult, HintBatch, HintEntry, HintOp, HintResult, HINT_BATCH_MAX,
};
use pagehint_abi::page_state::PageState;
use pagehint_abi::state_table;
use pagehint_abi::{GuestPhys, Pfn};

/// Frames per pool refill and per free batch: one exit carries this many
/// hints (plus whatever else is queued).
pub const POOL_BATCH: usize = 64;
/// Most hints [`HintState::now_many`] sends and answers in one call.
pub const NOW_MAX: usize = 32;
/// Marks a pooled frame known to hold zeroes (low bit of its address).
const ZERO: u64 = 1;
// `refill` keeps one bit per pooled frame in a u64.
const _: () = assert!(POOL_BATCH <= 64);

/// What the hinting logic needs from the machine, for one CPU.
pub trait HintHost {
    /// The VMM takes hints (CPUID `PAGE_HINTS`, and not turned off).
    fn enabled(&self) -> bool;
    /// `hints=unbatched`: every hint is its own exit.
    fn unbatched(&self) -> bool;
    /// This CPU has its batch page (it may not early in boot).
    fn has_page(&self) -> bool;
    /// This CPU's batch page; only called when [`HintHost::has_page`].
    fn page(&mut self) -> &mut HintBatch;
    /// Sends the batch page (its `count` already set) with one
    /// `HINT_BATCH` hypercall of `count` entries: the call's result, the
    /// unknown wire value as the error, `None` when no VMM answered.
    fn send_batch(&mut self, count: usize) -> Option<Result<CallResult, i32>>;
    /// Takes up to `n` frames from the allocator, calling `f(i, pfn,
    /// fresh)` for each (`fresh`: never handed out before); how many.
    fn take_frames(&mut self, n: usize, f: impl FnMut(usize, Pfn, bool)) -> usize;
    /// Gives frames back to the allocator.
    fn give_back_frames(&mut self, frames: &[GuestPhys]);
    /// Fresh frames are known to read as zeroes (true under this VMM).
    fn fresh_frames_are_zero(&self) -> bool;
    /// The frame's entry in the shared page-state table, when the guest
    /// registered one: states then change there, without exits.
    fn shared_entry(&self, pfn: Pfn) -> Option<&AtomicU8>;
    /// Where the counters go.
    fn counters(&self) -> &Counters;
    /// Counts one state change made in the shared table (reports add it
    /// to `hints`): by default in [`Counters::shared`]; the kernel keeps
    /// these per CPU instead.
    fn count_shared(&self) {
        self.counters().shared.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of the hinting path.
#[derive(Debug, Default)]
pub struct Counters {
    /// Hints queued.
    pub hints: AtomicU64,
    /// `HINT_BATCH` hypercalls.
    pub batches: AtomicU64,
    /// Hints refused (the whole batch, or the entry).
    pub errors: AtomicU64,
    /// Zeroing skipped because the frame was known zero.
    pub zero_skips: AtomicU64,
    /// State changes made in the shared table (no exit); not in `hints`,
    /// which counts those sent by hypercall. Only through the default
    /// [`HintHost::count_shared`].
    pub shared: AtomicU64,
}

impl Counters {
    pub const fn new() -> Self {
        Self {
            hints: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            zero_skips: AtomicU64::new(0),
            shared: AtomicU64::new(0),
        }
    }
}

/// A frame from the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pooled {
    pub addr: GuestPhys,
    /// Known to read as zeroes (never used, or discarded by the host): no
    /// need to clear it.
    pub known_zero: bool,
}

/// A CPU's queued hints and frame pools.
pub struct HintState {
    /// Entries queued in the batch page.
    count: usize,
    /// Frames ready to hand out, stable in the VMM's view; low bit `ZERO`.
    ready: [u64; POOL_BATCH],
    nready: usize,
    /// Frames freed but not yet announced unused.
    freed: [GuestPhys; POOL_BATCH],
    nfreed: usize,
    /// Unbatched mode: the results of the hints sent one by one since the
    /// last `commit`, by the slot `queue` returned.
    results: [i16; HINT_BATCH_MAX],
    logical: usize,
}

impl HintState {
    pub const fn new() -> Self {
        Self {
            count: 0,
            ready: [0; POOL_BATCH],
            nready: 0,
            freed: [GuestPhys(0); POOL_BATCH],
            nfreed: 0,
            results: [0; HINT_BATCH_MAX],
            logical: 0,
        }
    }

    /// Queues a hint; commits the batch first if it is full. Returns the
    /// entry's slot (valid until the next commit).
    fn queue(&mut self, m: &mut impl HintHost, op: HintOp, pfn: Pfn, count: u32) -> usize {
        let entry = HintEntry::new(op, pfn, count);
        if m.unbatched() {
            // Send it alone, now; keep its result for `result(slot)`.
            if self.logical == HINT_BATCH_MAX {
                self.logical = 0;
            }
            m.page().entries[0] = entry;
            self.count = 1;
            m.counters().hints.fetch_add(1, Ordering::Relaxed);
            self.send(m);
            let slot = self.logical;
            self.results[slot] = m.page().entries[0].result;
            self.logical += 1;
            return slot;
        }
        if self.count == HINT_BATCH_MAX {
            self.send(m);
        }
        let slot = self.count;
        m.page().entries[slot] = entry;
        self.count += 1;
        m.counters().hints.fetch_add(1, Ordering::Relaxed);
        slot
    }

    /// Sends the queued hints with one exit. Results stay readable in the
    /// page until the next `queue`.
    fn commit_now(&mut self, m: &mut impl HintHost) {
        if m.unbatched() {
            // Everything went out already.
            self.logical = 0;
            return;
        }
        self.send(m);
    }

    fn send(&mut self, m: &mut impl HintHost) {
        if self.count == 0 {
            return;
        }
        let n = self.count;
        m.page().count = n as u32;
        let r = m.send_batch(n);
        let c = m.counters();
        c.batches.fetch_add(1, Ordering::Relaxed);
        self.count = 0;
        if r != Some(Ok(CallResult::Ok)) {
            m.counters().errors.fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        let bad = m.page().entries[..n]
            .iter()
            .filter(|e| e.result < 0)
            .count();
        if bad > 0 {
            m.counters().errors.fetch_add(bad as u64, Ordering::Relaxed);
        }
    }

    fn result(&self, m: &mut impl HintHost, slot: usize) -> i16 {
        if m.unbatched() {
            return self.results[slot];
        }
        m.page().entries[slot].result
    }

    /// Queues a one-frame hint without waiting for it (no answer needed).
    pub fn queue_one(&mut self, m: &mut impl HintHost, op: HintOp, pfn: Pfn) {
        if m.enabled() && m.has_page() {
            self.queue(m, op, pfn, 1);
        }
    }

    /// Sends up to [`NOW_MAX`] one-frame hints of one kind now and calls
    /// `each(pfn, result)` for every one of those (`Ok` for all when
    /// hinting is off).
    pub fn now_many(
        &mut self,
        m: &mut impl HintHost,
        op: HintOp,
        pfns: &[u64],
        mut each: impl FnMut(u64, Result<HintResult, i16>),
    ) {
        if !m.enabled() || !m.has_page() {
            pfns.iter().for_each(|&p| each(p, Ok(HintResult::Ok)));
            return;
        }
        // Room for all of them in one batch.
        if self.count + pfns.len() > HINT_BATCH_MAX {
            self.commit_now(m);
        }
        let mut slots = [0usize; NOW_MAX];
        let n = pfns.len().min(slots.len());
        for (slot, &p) in slots.iter_mut().zip(&pfns[..n]) {
            *slot = self.queue(m, op, Pfn(p), 1);
        }
        self.commit_now(m);
        for (&slot, &p) in slots.iter().zip(&pfns[..n]) {
            each(p, HintResult::try_from(self.result(m, slot)));
        }
    }

    /// Commits the queued hints (idle entry, timer, end of mprotect).
    pub fn commit(&mut self, m: &mut impl HintHost) {
        if m.enabled() {
            self.commit_now(m);
        }
    }

    /// Hints queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.count
    }

    /// A frame from the pool, refilled [`POOL_BATCH`] at a time with one
    /// batch of `SET_STABLE` for the reused ones.
    pub fn pool_alloc(&mut self, m: &mut impl HintHost) -> Option<Pooled> {
        if self.nready == 0 {
            self.refill(m);
        }
        if self.nready == 0 {
            return None;
        }
        self.nready -= 1;
        let tagged = self.ready[self.nready];
        Some(Pooled {
            addr: GuestPhys(tagged & !ZERO),
            known_zero: tagged & ZERO != 0,
        })
    }

    fn refill(&mut self, m: &mut impl HintHost) {
        let mut slots = [usize::MAX; POOL_BATCH];
        let fresh_zero = m.fresh_frames_are_zero();
        let hinting = m.enabled() && m.has_page();
        let ready = &mut self.ready;
        let got = m.take_frames(POOL_BATCH, |i, pfn, fresh| {
            let pa = pfn.addr().as_u64();
            ready[i] = if fresh && fresh_zero { pa | ZERO } else { pa };
            slots[i] = if fresh || !hinting { usize::MAX } else { 0 };
        });
        // Reused frames were announced unused: make them stable first. In
        // the shared table that is a compare-and-swap each, and only the
        // frames the host armed for discard faults need a SET_STABLE;
        // otherwise every one does. Either way all in one batch (room is
        // made first, so no slot is committed early).
        let mut shared_zero = 0u64;
        for (i, slot) in slots[..got].iter_mut().enumerate() {
            if *slot != 0 {
                continue;
            }
            let pfn = GuestPhys(self.ready[i] & !ZERO).pfn();
            if let Some(e) = m.shared_entry(pfn) {
                let t = state_table::guest_make_stable(e);
                if t.discarded {
                    shared_zero |= 1 << i;
                }
                if !t.armed {
                    // An armed frame's change is counted with its
                    // SET_STABLE below.
                    m.count_shared();
                    *slot = usize::MAX;
                }
            }
        }
        if slots[..got].contains(&0) {
            if self.count + got > HINT_BATCH_MAX {
                self.commit_now(m);
            }
            let ready = self.ready;
            for (slot, tagged) in slots[..got].iter_mut().zip(ready) {
                if *slot == 0 {
                    let pfn = GuestPhys(tagged & !ZERO).pfn();
                    *slot = self.queue(m, HintOp::SetStable, pfn, 1);
                }
            }
            self.commit_now(m);
            for (i, &slot) in slots[..got].iter().enumerate() {
                if slot != usize::MAX && self.result(m, slot) == i16::from(HintResult::Discarded) {
                    // The host dropped it: it reads as zeroes.
                    self.ready[i] |= ZERO;
                }
            }
        }
        for (i, tagged) in self.ready[..got].iter_mut().enumerate() {
            if shared_zero & (1 << i) != 0 {
                *tagged |= ZERO;
            }
        }
        self.nready = got;
    }

    /// Returns a frame; every [`POOL_BATCH`] frees are announced unused
    /// with one batch and then given back to the allocator.
    pub fn pool_free(&mut self, m: &mut impl HintHost, pa: GuestPhys) {
        if self.nfreed == POOL_BATCH {
            self.drain(m);
        }
        self.freed[self.nfreed] = pa;
        self.nfreed += 1;
    }

    fn drain(&mut self, m: &mut impl HintHost) {
        // The same condition as `refill`'s, which takes frames back: a CPU
        // without its batch page (it could not send the SET_STABLE of an
        // armed frame) does not hint at all.
        let shared = m.enabled()
            && m.has_page()
            && self.nfreed > 0
            && m.shared_entry(self.freed[0].pfn()).is_some();
        if shared {
            for pa in &self.freed[..self.nfreed] {
                if let Some(e) = m.shared_entry(pa.pfn()) {
                    state_table::guest_release(e, PageState::Unused);
                    m.count_shared();
                }
            }
        } else if m.enabled() && m.has_page() {
            // Coalesce contiguous runs into one entry each.
            let mut i = 0;
            while i < self.nfreed {
                let start = self.freed[i].pfn();
                let mut n = 1;
                while i + n < self.nfreed && self.freed[i + n].pfn() == start + n as u64 {
                    n += 1;
                }
                self.queue(m, HintOp::SetUnused, start, n as u32);
                i += n;
            }
            self.commit_now(m);
        }
        m.give_back_frames(&self.freed[..self.nfreed]);
        self.nfreed = 0;
    }

    /// Gives the freed frames back to the allocator now (memory is short).
    pub fn drain_local(&mut self, m: &mut impl HintHost) {
        if self.nfreed > 0 {
            self.drain(m);
        }
    }
}

impl Default for HintState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
