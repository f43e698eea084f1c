//! The host's record of every guest frame: the guest's hinted state
//! (`pagehint_abi::page_state::PageState`) plus the host's marks, BUSY (the
//! reclaimer is discarding it right now), DISCARDED (the host dropped the
//! contents since the frame was last made stable) and ARMED (registered
//! for discard faults), in the entry layout of `pagehint_abi::state_table`.
//!
//! One atomic byte per frame, held by the host, or, once the guest
//! registered its shared page-state table (`SET_STATE_TABLE`), the guest's
//! own byte in guest memory ([`SharedEntries`]): then the guest changes
//! states without exits and this table only claims, finishes and reports.
//! vCPU threads (hints) and the reclaimer thread change an entry with
//! compare-exchange loops, so the hint path takes no lock. The protocol is
//! the ABI crate's (`state_table::host_try_claim`, `host_finish`, ...,
//! checked by loom there): the reclaimer claims a frame (Unused or
//! Volatile, neither BUSY nor DISCARDED) by setting BUSY, drops it with
//! `madvise`, then clears BUSY and sets DISCARDED. A hint that finds BUSY
//! waits for it to clear, so a frame is never made stable while its
//! contents are being dropped, and a stable-making hint always learns of a
//! discard. Whether a frame is registered with the userfaultfd is the
//! host's own truth, in host memory ([`FrameTable::take_registered`]),
//! whatever a shared entry says. This module must never discard memory
//! itself, block on a lock (but the one registration switch), or panic on
//! a frame number or an entry byte the guest chose.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use pagehint_abi::hypercall::HintOp;
use pagehint_abi::page_state::PageState;
use pagehint_abi::state_table::{self as entry, state_of, ARMED, BUSY, DISCARDED, STATE_MASK};

use crate::frames::census::{self, FrameCounts};
use crate::frames::shared::{ShareError, SharedEntries};
use crate::frames::transition::transition;

/// The host's own mark (in `registered`): the frame is registered with the
/// discard-fault userfaultfd; whoever clears it unregisters the frame.
const REGISTERED: u8 = 0x01;
/// The host's own mark: the reclaimer holds the frame's claim. Set before
/// the entry's BUSY and cleared after it, so that a BUSY bit without it is
/// one the guest wrote into its shared entry, which no host thread waits
/// on (nothing on the host would ever clear it).
const CLAIMED: u8 = 0x02;
/// The host's own mark: a hint (or the livelock breaker) acts on an entry
/// whose BUSY bit is the guest's; no claim starts while it is set, so a
/// BUSY bit seen once as the guest's cannot become a claim's under the
/// hint's compare-and-swap (a claim aborted and made again in between
/// leaves the same byte).
const HINTING: u8 = 0x04;
/// Spins before a waiting hint starts yielding its CPU.
const SPINS_BEFORE_YIELD: u32 = 128;

/// Why a hint could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A frame number past the end of the table.
    #[error("frame {0:#x} is outside guest RAM")]
    OutOfRange(u64),
    /// The state machine forbids this hint in the frame's state.
    #[error("hint {op:?} is illegal on frame {pfn:#x} in state {from:?}")]
    Illegal {
        pfn: u64,
        op: HintOp,
        from: PageState,
    },
}

/// What a legal hint found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintOutcome {
    /// Applied; contents intact (or the hint does not report discards).
    Applied,
    /// Applied to a stable state; the host had discarded at least one of
    /// the frames, which now read as zeroes.
    Discarded,
}

/// The state of every guest frame.
#[derive(Debug)]
pub struct FrameTable {
    /// The entries while the guest has not registered a shared table.
    own: Box<[AtomicU8]>,
    /// The host's own marks per frame, REGISTERED and CLAIMED (never in
    /// guest memory).
    registered: Box<[AtomicU8]>,
    /// The guest's shared table, once registered.
    shared: OnceLock<SharedEntries>,
    /// Held (read) by a reclaimer pass from claim to settle, and (write)
    /// by the switch to the shared table, so that no claim straddles it.
    switch: RwLock<()>,
    /// Frame numbers inside the table that are not RAM (the MMIO hole of a
    /// guest larger than 3 GiB): refused like frames past the end.
    hole: std::ops::Range<u64>,
    /// Frames per `PageState` (signed: updates from different threads on
    /// the same frame may land in either order for an instant).
    per_state: [AtomicI64; 4],
    discarded_now: AtomicI64,
    total_discards: AtomicU64,
    zero_fills: AtomicU64,
    potentially_volatile: bool,
}

/// HINTING held on a frame's host marks; dropped, it lets claims in again.
struct Hinting<'a>(&'a AtomicU8);

impl Drop for Hinting<'_> {
    fn drop(&mut self) {
        self.0.fetch_and(!HINTING, Ordering::AcqRel);
    }
}

/// The indexes of the bits set in `mask`, lowest first.
pub fn bits(mut mask: u64) -> impl Iterator<Item = u64> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros();
            mask &= mask - 1;
            u64::from(i)
        })
    })
}

/// Waits, without a lock, until a frame's entry is not held by a claim:
/// its BUSY bit clear, or shown to be the guest's (no CLAIMED mark), in
/// which case HINTING is taken so that no claim starts until the caller is
/// done. The entry's value then, and the HINTING hold if any.
fn wait_not_busy<'a>(cell: &AtomicU8, marks: &'a AtomicU8) -> (u8, Option<Hinting<'a>>) {
    let mut spins = 0u32;
    loop {
        let v = cell.load(Ordering::Acquire);
        if v & BUSY == 0 {
            return (v, None);
        }
        let m = marks.load(Ordering::Acquire);
        if m & (CLAIMED | HINTING) == 0
            && marks
                .compare_exchange(m, m | HINTING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // No claim held the frame when HINTING went on, and none can
            // start now: whatever BUSY the entry shows is the guest's.
            return (cell.load(Ordering::Acquire), Some(Hinting(marks)));
        }
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl FrameTable {
    /// A table of `frames` frames, all Stable (as the guest boots).
    /// `potentially_volatile` selects the transition-table option.
    pub fn new(frames: usize, potentially_volatile: bool) -> Self {
        Self::with_hole(frames, 0..0, potentially_volatile)
    }

    /// A table of `frames` frames of which those in `hole` are not RAM.
    pub fn with_hole(
        frames: usize,
        hole: std::ops::Range<u64>,
        potentially_volatile: bool,
    ) -> Self {
        let table: Box<[AtomicU8]> = (0..frames).map(|_| AtomicU8::new(0)).collect();
        let registered: Box<[AtomicU8]> = (0..frames).map(|_| AtomicU8::new(0)).collect();
        let in_hole = hole.end.min(frames as u64).saturating_sub(hole.start);
        let stable = i64::try_from(frames as u64 - in_hole).unwrap_or(i64::MAX);
        Self {
            own: table,
            registered,
            shared: OnceLock::new(),
            switch: RwLock::new(()),
            hole,
            per_state: [
                AtomicI64::new(stable),
                AtomicI64::new(0),
                AtomicI64::new(0),
                AtomicI64::new(0),
            ],
            discarded_now: AtomicI64::new(0),
            total_discards: AtomicU64::new(0),
            zero_fills: AtomicU64::new(0),
            potentially_volatile,
        }
    }

    /// Number of frames.
    pub fn len(&self) -> u64 {
        self.own.len() as u64
    }

    /// True if the table has no frames.
    pub fn is_empty(&self) -> bool {
        self.own.is_empty()
    }

    /// Frame `pfn`'s entry: the shared one once registered, else ours.
    fn cell(&self, pfn: u64) -> Result<&AtomicU8, StateError> {
        let idx = self.index(pfn)?;
        match self.shared.get() {
            Some(s) => s.entry(pfn).ok_or(StateError::OutOfRange(pfn)),
            None => Ok(&self.own[idx]),
        }
    }

    /// Frame `pfn`'s index, if it is RAM in the table.
    fn index(&self, pfn: u64) -> Result<usize, StateError> {
        if self.hole.contains(&pfn) {
            return Err(StateError::OutOfRange(pfn));
        }
        usize::try_from(pfn)
            .ok()
            .filter(|&i| i < self.own.len())
            .ok_or(StateError::OutOfRange(pfn))
    }

    /// The host's own REGISTERED byte of frame `pfn`.
    fn host_marks(&self, pfn: u64) -> Option<&AtomicU8> {
        self.index(pfn).ok().map(|i| &self.registered[i])
    }

    /// Switches to the guest's shared table (`SET_STATE_TABLE`): copies
    /// every frame's entry there, so hints sent before carry over, and
    /// from then on reads and writes the guest's entries. Waits for a
    /// reclaimer pass in progress to end. Once per table.
    pub fn share(&self, entries: SharedEntries) -> Result<(), ShareError> {
        let _no_pass = self.switch.write().unwrap_or_else(|e| e.into_inner());
        if self.shared.get().is_some() {
            return Err(ShareError::AlreadyShared);
        }
        for (pfn, own) in self.own.iter().enumerate() {
            let v = own.load(Ordering::Acquire);
            if let Some(e) = entries.entry(pfn as u64) {
                if v != 0 || e.load(Ordering::Relaxed) != 0 {
                    e.store(v & (STATE_MASK | ARMED | DISCARDED), Ordering::Release);
                }
            }
        }
        self.shared
            .set(entries)
            .map_err(|_| ShareError::AlreadyShared)
    }

    /// True once the guest's shared table holds the states.
    pub fn is_shared(&self) -> bool {
        self.shared.get().is_some()
    }

    /// Held by a reclaimer pass from its first claim to its last settle.
    pub fn pass_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.switch.read().unwrap_or_else(|e| e.into_inner())
    }

    fn account(&self, from: PageState, to: PageState) {
        if from != to {
            self.per_state[from as usize].fetch_sub(1, Ordering::Relaxed);
            self.per_state[to as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The state of one frame, or `None` past the end.
    pub fn state(&self, pfn: u64) -> Option<PageState> {
        self.cell(pfn)
            .ok()
            .map(|c| state_of(c.load(Ordering::Acquire)))
    }

    /// Frame `pfn`'s entry as it reads now (for the victim order, which
    /// decides nothing on it but an order), or `None` past the end.
    pub fn entry_value(&self, pfn: u64) -> Option<u8> {
        self.cell(pfn).ok().map(|c| c.load(Ordering::Relaxed))
    }

    /// Every entry as it is stored now (the shared table's once
    /// registered), indexed by frame; frames of the hole have entries
    /// nobody reads. For scans that read many entries and decide nothing
    /// on one but an order.
    pub fn entries(&self) -> &[AtomicU8] {
        match self.shared.get() {
            Some(s) => s.entries(),
            None => &self.own,
        }
    }

    /// Writes an entry's raw value, as a guest can (tests only).
    #[cfg(test)]
    pub fn set_entry_bits_for_test(&self, pfn: u64, v: u8) {
        if let Ok(c) = self.cell(pfn) {
            c.store(v, Ordering::Release);
        }
    }

    /// True if the frame is marked discarded.
    pub fn is_discarded(&self, pfn: u64) -> bool {
        self.cell(pfn)
            .is_ok_and(|c| c.load(Ordering::Acquire) & DISCARDED != 0)
    }

    /// Applies hint `op` to one frame. Waits while the reclaimer holds it.
    /// Illegal transitions leave the frame unchanged.
    pub fn apply(&self, pfn: u64, op: HintOp) -> Result<HintOutcome, StateError> {
        let cell = self.cell(pfn)?;
        let marks = &self.registered[self.index(pfn)?];
        // `_hold` keeps HINTING (if taken) until the hint is done; it is
        // dropped before waiting again, which would otherwise wait on it.
        let (mut cur, mut _hold) = wait_not_busy(cell, marks);
        loop {
            let from = state_of(cur);
            let mut to = transition(from, op, self.potentially_volatile)
                .ok_or(StateError::Illegal { pfn, op, from })?;
            let was_discarded = cur & DISCARDED != 0;
            if was_discarded && to == PageState::PotentiallyVolatile {
                // Contents gone: the page must be read again, as
                // `state_table::guest_check_writable` does.
                to = PageState::Stable;
            }
            // Making a frame stable (or potentially volatile: it is about to
            // be written) tells the guest of a discard; the other hints keep
            // the mark for the next stable-making hint to report.
            let reports = matches!(
                op,
                HintOp::SetStable | HintOp::MakeStable | HintOp::CheckWritable
            );
            // SET_STABLE hands a frame out afresh: its discard-fault
            // registration is undone (`DiscardFaults::unregister_marked`),
            // so its ARMED mark goes; the other hints keep it.
            let new = entry::after_host_hint(cur, to, reports, op == HintOp::SetStable);
            match cell.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.account(from, to);
                    if reports && was_discarded {
                        self.discarded_now.fetch_sub(1, Ordering::Relaxed);
                        self.zero_fills.fetch_add(1, Ordering::Relaxed);
                        return Ok(HintOutcome::Discarded);
                    }
                    return Ok(HintOutcome::Applied);
                }
                Err(actual) if actual & BUSY != 0 => {
                    _hold = None;
                    (cur, _hold) = wait_not_busy(cell, marks);
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Applies hint `op` to `count` frames from `pfn`, in order. The range
    /// must lie inside the table (checked before anything changes).
    /// Reports `Discarded` if any frame had been discarded.
    pub fn apply_range(&self, pfn: u64, count: u64, op: HintOp) -> Result<HintOutcome, StateError> {
        let end = pfn
            .checked_add(count)
            .filter(|&e| e <= self.len())
            .ok_or(StateError::OutOfRange(pfn))?;
        // A range that reaches into the hole is refused before any frame
        // of it changes.
        if pfn < self.hole.end && end > self.hole.start {
            return Err(StateError::OutOfRange(pfn.max(self.hole.start)));
        }
        let mut outcome = HintOutcome::Applied;
        for p in pfn..end {
            if self.apply(p, op)? == HintOutcome::Discarded {
                outcome = HintOutcome::Discarded;
            }
        }
        Ok(outcome)
    }

    /// The frame may never be claimed, whatever its entry says: it holds
    /// the shared table itself.
    fn pinned(&self, pfn: u64) -> bool {
        self.shared.get().is_some_and(|s| s.is_own_frame(pfn))
    }

    /// The reclaimer claims a frame of state `class` (never Stable) for
    /// discarding: sets BUSY. False if the frame is not claimable now.
    pub fn try_claim(&self, pfn: u64, class: PageState) -> bool {
        let (Ok(cell), Some(marks)) = (self.cell(pfn), self.host_marks(pfn)) else {
            return false;
        };
        if self.pinned(pfn) || !entry::claimable(cell.load(Ordering::Acquire), class) {
            return false;
        }
        // Not while a hint holds HINTING (it acts on a BUSY of the guest's).
        let m = marks.load(Ordering::Acquire);
        if m & (CLAIMED | HINTING) != 0
            || marks
                .compare_exchange(m, m | CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        if entry::host_try_claim(cell, class) {
            return true;
        }
        marks.fetch_and(!CLAIMED, Ordering::AcqRel);
        false
    }

    /// Drops the host's claim mark of a frame whose entry left BUSY.
    fn unclaim(&self, pfn: u64) {
        if let Some(m) = self.host_marks(pfn) {
            m.fetch_and(!CLAIMED, Ordering::AcqRel);
        }
    }

    /// True if the frame could be claimed for `class` now (a hint for the
    /// scan; [`FrameTable::try_claim`] decides).
    pub fn looks_claimable(&self, pfn: u64, class: PageState) -> bool {
        self.cell(pfn)
            .is_ok_and(|c| entry::claimable(c.load(Ordering::Relaxed), class))
    }

    /// [`FrameTable::looks_claimable`] for the frames of `among`, a mask
    /// of the 64 frames from `first` (bit `i`: frame `first + i`), with
    /// the table's checks made once for all 64: the mask of those that
    /// look claimable. For scans of a large guest every round.
    pub fn looks_claimable_mask(&self, first: u64, among: u64, class: PageState) -> u64 {
        let end = first.saturating_add(64);
        if end > self.len() || (first < self.hole.end && end > self.hole.start) {
            // The table's end or the hole: frame by frame.
            return bits(among)
                .filter(|&i| self.looks_claimable(first + i, class))
                .fold(0, |m, i| m | 1 << i);
        }
        let look = |c: Option<&AtomicU8>| {
            c.is_some_and(|c| entry::claimable(c.load(Ordering::Relaxed), class))
        };
        match self.shared.get() {
            Some(s) => bits(among)
                .filter(|&i| look(s.entry(first + i)))
                .fold(0, |m, i| m | 1 << i),
            None => {
                let own = usize::try_from(first)
                    .ok()
                    .and_then(|f| self.own.get(f..f + 64));
                bits(among)
                    .filter(|&i| look(own.and_then(|o| o.get(i as usize))))
                    .fold(0, |m, i| m | 1 << i)
            }
        }
    }

    /// Ends a claim after the contents were dropped: clears BUSY, sets
    /// DISCARDED. Only the claimer calls this, so no hint changed the
    /// frame in between (hints wait on BUSY; a guest that wrote its shared
    /// entry meanwhile broke the protocol and loses the report, not the
    /// host its count).
    pub fn finish_discard(&self, pfn: u64) {
        if let Ok(cell) = self.cell(pfn) {
            if entry::host_finish(cell) {
                self.discarded_now.fetch_add(1, Ordering::Relaxed);
            }
            self.unclaim(pfn);
            self.total_discards.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends a claim whose discard failed: clears BUSY (and the ARMED mark
    /// its arming set), contents intact. A frame that still carries the
    /// registered mark (from an earlier drop, its arming now refused)
    /// keeps ARMED: the guest must go on seeing the registration it has to
    /// end with `SET_STABLE`.
    pub fn abort_discard(&self, pfn: u64) {
        if let Ok(cell) = self.cell(pfn) {
            if self.is_registered(pfn) {
                entry::host_abort_registered(cell);
            } else {
                entry::host_abort(cell);
            }
            self.unclaim(pfn);
        }
    }

    /// Marks a frame (claimed, BUSY) registered with the discard-fault
    /// userfaultfd: the host's own mark, and ARMED in the entry for the
    /// guest to see.
    pub fn mark_registered(&self, pfn: u64) {
        if let (Some(m), Ok(cell)) = (self.host_marks(pfn), self.cell(pfn)) {
            m.fetch_or(REGISTERED, Ordering::AcqRel);
            entry::host_arm(cell);
        }
    }

    /// Clears the registered mark; true if it was set (the caller then
    /// unregisters the frame, exactly once).
    pub fn take_registered(&self, pfn: u64) -> bool {
        self.host_marks(pfn)
            .is_some_and(|m| m.fetch_and(!REGISTERED, Ordering::AcqRel) & REGISTERED != 0)
    }

    /// True if the frame carries the registered mark.
    pub fn is_registered(&self, pfn: u64) -> bool {
        self.host_marks(pfn)
            .is_some_and(|m| m.load(Ordering::Acquire) & REGISTERED != 0)
    }

    /// Frames per state and discarded now. With a shared table the guest
    /// changes states without telling, so they are counted from its
    /// entries (one pass over them).
    pub fn counts(&self) -> FrameCounts {
        if let Some(s) = self.shared.get() {
            return census::count(s.entries(), &self.hole);
        }
        let get = |a: &AtomicI64| u64::try_from(a.load(Ordering::Relaxed)).unwrap_or(0);
        FrameCounts {
            stable: get(&self.per_state[PageState::Stable as usize]),
            unused: get(&self.per_state[PageState::Unused as usize]),
            volatile: get(&self.per_state[PageState::Volatile as usize]),
            potentially_volatile: get(&self.per_state[PageState::PotentiallyVolatile as usize]),
            discarded: get(&self.discarded_now),
        }
    }

    /// Frames discarded since the start.
    pub fn total_discards(&self) -> u64 {
        self.total_discards.load(Ordering::Relaxed)
    }

    /// Frames a stable-making hint found discarded (the guest got them as
    /// zeroes without clearing them).
    pub fn zero_fills(&self) -> u64 {
        self.zero_fills.load(Ordering::Relaxed)
    }
}

#[path = "table_pv.rs"]
mod pv;

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
