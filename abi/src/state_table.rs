//! The shared page-state table: one byte per guest frame, in guest memory,
//! written by the guest without an exit and by the VMM's reclaimer with a
//! compare-and-swap (`docs/abi.md`, "The shared page-state table").
//!
//! This is the one exception to the crate's "numbers only" rule: the few
//! steps each side takes on an entry are the protocol itself, and both
//! sides (and the exhaustive concurrency check in `tests/state_table_loom.rs`)
//! must run exactly the same code, so it lives here once. Every step works
//! on one [`EntryCell`], so the check can run it on loom's atomics.
//!
//! An entry:
//!
//! | bits | field | written by |
//! | --- | --- | --- |
//! | 0..=1 | the [`PageState`] | the guest |
//! | 2..=4 | reserved, zero | nobody |
//! | 5 | [`ARMED`]: the host registered the frame for discard faults | the host (set with BUSY held, cleared by `SET_STABLE`) |
//! | 6 | [`DISCARDED`]: the host dropped the contents | the host sets, the guest clears when it makes the frame stable |
//! | 7 | [`BUSY`]: the host is discarding the frame now | the host |
//!
//! Who may write an entry, and how: the host changes an entry only with a
//! compare-and-swap from a discardable state (Unused or Volatile, neither
//! BUSY nor DISCARDED), and then only the BUSY, DISCARDED and ARMED bits
//! while it holds BUSY; it never writes a Stable entry. So a Stable entry
//! belongs to the guest and leaves Stable with a plain store; every step
//! out of a discardable state is a compare-and-swap, and waits while BUSY
//! is set. Nothing here may block on anything but a BUSY bit, allocate, or
//! panic on any byte value: the guest can write anything, at any time.

use crate::page_state::PageState;

/// Bits 0..=1: the guest's [`PageState`].
pub const STATE_MASK: u8 = 0x03;
/// The host registered the frame for discard faults; the guest must send
/// `SET_STABLE` for it before it reuses the frame.
pub const ARMED: u8 = 0x20;
/// The host dropped the contents; they read as zeroes.
pub const DISCARDED: u8 = 0x40;
/// The host is discarding the frame right now: wait.
pub const BUSY: u8 = 0x80;
/// The bits only the host sets.
pub const HOST_BITS: u8 = ARMED | DISCARDED | BUSY;
/// Bits 2..=4: how long the guest has seen a discardable frame idle, 0
/// (used lately) to 7, published with CPUID feature `GUEST_AGES`
/// ([`guest_publish_age`]); the host takes the highest first. Every other
/// guest write of the entry clears them: a frame that changes state starts
/// young.
pub const AGE_MASK: u8 = 0x1c;
/// The shift of [`AGE_MASK`].
pub const AGE_SHIFT: u32 = 2;
/// The highest age.
pub const AGE_MAX: u8 = 7;

/// One entry's storage: an atomic byte. The guest and the VMM use
/// `core`'s `AtomicU8`; the concurrency check uses loom's.
pub trait EntryCell {
    fn load(&self) -> u8;
    fn store(&self, v: u8);
    /// Compare-and-swap (acquire-release); the value found on failure.
    fn cas(&self, current: u8, new: u8) -> Result<u8, u8>;
    fn fetch_or(&self, bits: u8) -> u8;
    fn fetch_and(&self, bits: u8) -> u8;
    /// Called while waiting for BUSY to clear.
    fn relax(&self);
}

impl EntryCell for core::sync::atomic::AtomicU8 {
    #[inline]
    fn load(&self) -> u8 {
        self.load(core::sync::atomic::Ordering::Acquire)
    }
    #[inline]
    fn store(&self, v: u8) {
        self.store(v, core::sync::atomic::Ordering::Release)
    }
    #[inline]
    fn cas(&self, current: u8, new: u8) -> Result<u8, u8> {
        use core::sync::atomic::Ordering::{AcqRel, Acquire};
        self.compare_exchange(current, new, AcqRel, Acquire)
    }
    #[inline]
    fn fetch_or(&self, bits: u8) -> u8 {
        self.fetch_or(bits, core::sync::atomic::Ordering::AcqRel)
    }
    #[inline]
    fn fetch_and(&self, bits: u8) -> u8 {
        self.fetch_and(bits, core::sync::atomic::Ordering::AcqRel)
    }
    #[inline]
    fn relax(&self) {
        core::hint::spin_loop()
    }
}

/// The state an entry's byte holds (two bits always decode).
#[inline]
pub const fn state_of(v: u8) -> PageState {
    match PageState::from_u8(v & STATE_MASK) {
        Some(s) => s,
        None => PageState::Stable,
    }
}

/// What the guest learnt when it made a frame stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Taken {
    /// The host had dropped the contents: the frame reads as zeroes.
    pub discarded: bool,
    /// The frame is registered for discard faults: send `SET_STABLE` for
    /// it before reusing it for anything else.
    pub armed: bool,
}

/// Waits until BUSY is clear; the entry's value then.
#[inline]
fn settled(c: &impl EntryCell) -> u8 {
    loop {
        let v = c.load();
        if v & BUSY == 0 {
            return v;
        }
        c.relax();
    }
}

/// Guest: moves a frame to `to` (Unused or Volatile), keeping the host's
/// marks. From Stable this is one plain store; from a discardable state a
/// compare-and-swap that waits out a discard in progress. Moving an Unused
/// frame to Volatile is not a transition the guest makes; if asked, the
/// frame goes Volatile all the same (the host may drop either).
#[inline]
pub fn guest_release(c: &impl EntryCell, to: PageState) {
    let v = c.load();
    if v & STATE_MASK == PageState::Stable as u8 {
        // Only the guest writes a Stable entry.
        c.store(to as u8 | (v & ARMED));
        return;
    }
    let mut cur = if v & BUSY == 0 { v } else { settled(c) };
    loop {
        match c.cas(cur, to as u8 | (cur & (ARMED | DISCARDED))) {
            Ok(_) => return,
            Err(_) => cur = settled(c),
        }
    }
}

/// Guest: makes a frame Stable (allocating an Unused frame, or using a
/// Volatile one again) and reports whether the host had dropped it. A
/// Stable frame stays as it is, with nothing to report. Waits while the
/// host holds the frame BUSY.
#[inline]
pub fn guest_make_stable(c: &impl EntryCell) -> Taken {
    let v = c.load();
    if v & STATE_MASK == PageState::Stable as u8 {
        return Taken {
            discarded: false,
            armed: v & ARMED != 0,
        };
    }
    let cur = if v & BUSY == 0 { v } else { settled(c) };
    swap_reporting(c, cur, |cur| PageState::Stable as u8 | (cur & ARMED))
}

/// Guest: [`guest_make_stable`] as one compare-and-swap from the value
/// read, the hot path of a cache hit on a page the guest made volatile:
/// `None`, with nothing written, if the host holds the entry BUSY or
/// changed it between the load and the swap (then call
/// [`guest_make_stable`], which waits and tries again). No branch before
/// the swap: a BUSY entry fails it, since the value it expects has BUSY
/// clear. An entry that is Stable already (the host demoted a written
/// Potentially volatile frame) gets back the value it held, ARMED being
/// all a Stable entry carries; a DISCARDED bit someone wrote into one is
/// cleared and reported, which costs the guest a read, never data.
#[inline]
pub fn guest_try_make_stable(c: &impl EntryCell) -> Option<Taken> {
    let cur = c.load() & !BUSY;
    // What the swap replaced (`cur`): read from its answer, the register
    // the compare-and-swap instruction leaves it in.
    let was = c.cas(cur, PageState::Stable as u8 | (cur & ARMED)).ok()?;
    Some(Taken {
        discarded: was & DISCARDED != 0,
        armed: was & ARMED != 0,
    })
}

/// Compare-and-swaps the entry from `cur` (BUSY clear) to `next(cur)`,
/// waiting out BUSY and trying again from whatever it found; what the
/// value it replaced said.
#[inline]
fn swap_reporting(c: &impl EntryCell, mut cur: u8, next: impl Fn(u8) -> u8) -> Taken {
    loop {
        match c.cas(cur, next(cur)) {
            Ok(_) => {
                return Taken {
                    discarded: cur & DISCARDED != 0,
                    armed: cur & ARMED != 0,
                }
            }
            Err(_) => cur = settled(c),
        }
    }
}

/// Guest, `CHECK_WRITABLE` through the table (seed 000): the first
/// writable PTE of a cache page is about to be set. With `potentially` (the
/// VMM's `POTENTIALLY_VOLATILE` feature) a Volatile or Potentially
/// volatile frame whose contents are intact becomes Potentially volatile
/// (one compare-and-swap; the page stays a candidate for the host, which
/// checks its dirty log before taking it). Otherwise, and whenever the
/// host had dropped the contents, exactly [`guest_make_stable`].
#[inline]
pub fn guest_check_writable(c: &impl EntryCell, potentially: bool) -> Taken {
    if potentially {
        let mut cur = settled(c);
        loop {
            let s = state_of(cur);
            let keep = matches!(s, PageState::Volatile | PageState::PotentiallyVolatile);
            if !keep || cur & DISCARDED != 0 {
                break;
            }
            let new = PageState::PotentiallyVolatile as u8 | (cur & ARMED);
            match c.cas(cur, new) {
                Ok(_) => {
                    return Taken {
                        discarded: false,
                        armed: cur & ARMED != 0,
                    }
                }
                Err(_) => cur = settled(c),
            }
        }
    }
    guest_make_stable(c)
}

/// Guest: publishes `age` (clamped to [`AGE_MAX`]) on an unused,
/// volatile or potentially volatile entry the host is not dropping, by
/// one compare-and-swap from the value read; nothing else changes. An
/// advisory write: a stable, `BUSY` or `DISCARDED` entry, or a CAS that
/// loses a race, is left as it is (false), never waited for or retried.
pub fn guest_publish_age(c: &impl EntryCell, age: u8) -> bool {
    let v = c.load();
    if v & (BUSY | DISCARDED) != 0 || v & STATE_MASK == PageState::Stable as u8 {
        return false;
    }
    let next = (v & !AGE_MASK) | (age.min(AGE_MAX) << AGE_SHIFT);
    next == v || c.cas(v, next).is_ok()
}

/// The age a guest published in entry `v` (0 if none).
#[inline]
pub const fn age_of(v: u8) -> u8 {
    (v & AGE_MASK) >> AGE_SHIFT
}

/// Is an entry one the host may claim for `class` now? Potentially
/// volatile entries are claimable only by a host that checks its dirty log
/// before it drops one (`docs/reclaim.md`).
#[inline]
pub const fn claimable(v: u8, class: PageState) -> bool {
    v & (BUSY | DISCARDED) == 0
        && (v & STATE_MASK) == class as u8
        && matches!(
            class,
            PageState::Unused | PageState::Volatile | PageState::PotentiallyVolatile
        )
}

/// Host: the dirty log says the guest wrote a Potentially volatile frame,
/// so its contents must reach the disk before anyone may drop them: moves
/// it to Stable (keeping ARMED) with one compare-and-swap, or, if the host
/// holds it BUSY, releases the claim the same way. False if the entry was
/// neither (the guest changed it meanwhile, which it may). This and
/// [`host_finish`] are the only host writes that change a state, and this
/// one only ever makes a frame safer.
#[inline]
pub fn host_demote_written(c: &impl EntryCell) -> bool {
    let mut cur = c.load();
    loop {
        if state_of(cur) != PageState::PotentiallyVolatile || cur & DISCARDED != 0 {
            return false;
        }
        match c.cas(cur, PageState::Stable as u8 | (cur & ARMED)) {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
}

/// Host: claims a frame of state `class` (Unused, Volatile or Potentially
/// volatile, never Stable) for discarding by setting BUSY. False if it is
/// not claimable.
#[inline]
pub fn host_try_claim(c: &impl EntryCell, class: PageState) -> bool {
    let mut cur = c.load();
    while claimable(cur, class) {
        match c.cas(cur, cur | BUSY) {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
    false
}

/// Host: the VMM is about to back a frame it dropped with zeroes without
/// delivering a discard fault (an access it cannot fault: a vCPU stuck on
/// the frame, or a thread that runs no vCPU). The entry must go on telling
/// the guest that the contents are gone. `seen` is the entry as the host
/// read it while the frame was still registered for discard faults, hence
/// still missing, and still so until this host fills it: only if `seen`
/// is neither Stable (the guest was told of the drop when it made the
/// frame stable), BUSY (the claimer's [`host_finish`] sets DISCARDED) nor
/// DISCARDED already does one compare-and-swap from `seen` add DISCARDED.
/// It never retries on another value: an entry the guest changed since may
/// be one it took back and refilled (after `SET_STABLE`, which ends the
/// registration), and marking that would report intact contents lost. So
/// the caller marks before it fills, never after. True if it set
/// DISCARDED; never clears a bit, never changes the state, never waits.
#[inline]
pub fn host_zero_filled(c: &impl EntryCell, seen: u8) -> bool {
    if seen & (BUSY | DISCARDED) != 0 || seen & STATE_MASK == PageState::Stable as u8 {
        return false;
    }
    c.cas(seen, seen | DISCARDED).is_ok()
}

/// Host, `SET_STABLE` (a `HINT_BATCH` entry): the frame is handed out
/// afresh, unregistered from discard faults. Stable, its ARMED mark gone;
/// a drop it carried is reported (the caller answers `DISCARDED`: the
/// frame reads as zeroes). Waits while BUSY is set: the caller must have
/// made sure the BUSY bit, if any, is the host's own (it never waits on
/// one the guest wrote). Returns what the guest learns.
#[inline]
pub fn host_set_stable(c: &impl EntryCell) -> Taken {
    swap_reporting(c, settled(c), |cur| {
        after_host_hint(cur, PageState::Stable, true, true)
    })
}

/// The entry a hint the host applies leaves behind (`HINT_BATCH`, with
/// or without a shared table): state `to`; a stable-making hint
/// (`reports`: `SET_STABLE`, `MAKE_STABLE`, `CHECK_WRITABLE`) reports and
/// so clears DISCARDED, the others keep it; `SET_STABLE` (`unregisters`)
/// clears ARMED, the others keep it. BUSY is never kept: the caller
/// applies hints only to idle entries.
#[inline]
pub const fn after_host_hint(cur: u8, to: PageState, reports: bool, unregisters: bool) -> u8 {
    let discarded = if reports { 0 } else { cur & DISCARDED };
    let armed = if unregisters { 0 } else { cur & ARMED };
    to as u8 | discarded | armed
}

/// Host, holding BUSY: the frame is registered for discard faults.
#[inline]
pub fn host_arm(c: &impl EntryCell) {
    c.fetch_or(ARMED);
}

/// Host, holding BUSY: the contents are gone. Clears BUSY, sets DISCARDED.
/// False if BUSY was not set (the guest broke the protocol and wrote the
/// entry meanwhile; the host keeps its own record all the same).
#[inline]
pub fn host_finish(c: &impl EntryCell) -> bool {
    let mut cur = c.load();
    loop {
        if cur & BUSY == 0 {
            return false;
        }
        match c.cas(cur, (cur & !BUSY) | DISCARDED) {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
}

/// Host, holding BUSY: the discard did not happen; contents intact.
#[inline]
pub fn host_abort(c: &impl EntryCell) {
    c.fetch_and(!(BUSY | ARMED));
}

/// Host, holding BUSY: the discard did not happen, but the frame is still
/// registered for discard faults from an earlier drop (its new arming was
/// refused): only BUSY goes, ARMED stays for the guest to see.
#[inline]
pub fn host_abort_registered(c: &impl EntryCell) {
    c.fetch_and(!BUSY);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU8, Ordering};
    use PageState::*;

    #[test]
    fn ages_are_published_only_on_idle_discardable_entries_and_cleared_by_any_change() {
        let v = Volatile as u8;
        let c = AtomicU8::new(v | ARMED);
        assert!(guest_publish_age(&c, 3));
        assert_eq!(c.load(Ordering::Relaxed), v | ARMED | 3 << AGE_SHIFT);
        assert_eq!(age_of(c.load(Ordering::Relaxed)), 3);
        assert!(guest_publish_age(&c, 200), "clamped, not refused");
        assert_eq!(age_of(c.load(Ordering::Relaxed)), AGE_MAX);
        // The host's claim keeps the age; a stable-making CAS clears it.
        assert!(host_try_claim(&c, Volatile));
        assert!(!guest_publish_age(&c, 1), "never on a BUSY entry");
        assert!(host_finish(&c));
        assert_eq!(age_of(c.load(Ordering::Relaxed)), AGE_MAX);
        assert!(!guest_publish_age(&c, 1), "never on a DISCARDED entry");
        assert!(guest_make_stable(&c).discarded);
        assert_eq!(c.load(Ordering::Relaxed), Stable as u8 | ARMED);
        assert!(!guest_publish_age(&c, 1), "never on a stable entry");
        // Released again: young.
        let c = AtomicU8::new(v | 5 << AGE_SHIFT);
        guest_release(&c, Unused);
        assert_eq!(c.load(Ordering::Relaxed), Unused as u8);
        // Ages change nothing a claim looks at.
        for age in 0..=AGE_MAX {
            assert!(claimable(v | age << AGE_SHIFT, Volatile));
            assert!(!claimable(Stable as u8 | age << AGE_SHIFT, Volatile));
        }
    }

    #[test]
    fn a_stable_entry_leaves_with_a_store_and_keeps_the_armed_mark() {
        let c = AtomicU8::new(Stable as u8 | ARMED);
        guest_release(&c, Unused);
        assert_eq!(
            c.load(core::sync::atomic::Ordering::Relaxed),
            Unused as u8 | ARMED
        );
        assert_eq!(
            guest_make_stable(&c),
            Taken {
                discarded: false,
                armed: true
            }
        );
        guest_release(&c, Volatile);
        assert_eq!(state_of(EntryCell::load(&c)), Volatile);
    }

    #[test]
    fn the_host_claims_only_discardable_idle_entries_and_the_guest_learns_of_the_drop() {
        let c = AtomicU8::new(Stable as u8);
        assert!(!host_try_claim(&c, Stable));
        assert!(!host_try_claim(&c, Unused));
        guest_release(&c, Volatile);
        assert!(!host_try_claim(&c, Unused), "wrong class");
        assert!(host_try_claim(&c, Volatile));
        assert!(!host_try_claim(&c, Volatile), "already busy");
        host_arm(&c);
        assert!(host_finish(&c));
        assert!(!host_try_claim(&c, Volatile), "already discarded");
        assert_eq!(
            guest_make_stable(&c),
            Taken {
                discarded: true,
                armed: true
            }
        );
        assert_eq!(EntryCell::load(&c), Stable as u8 | ARMED);
        // An aborted claim leaves nothing behind.
        guest_release(&c, Unused);
        assert!(host_try_claim(&c, Unused));
        host_arm(&c);
        host_abort(&c);
        assert_eq!(EntryCell::load(&c), Unused as u8);
        assert!(!host_finish(&c), "no claim to finish");
    }

    #[test]
    fn a_writable_mapping_keeps_an_intact_page_potentially_volatile_only_with_the_option() {
        let c = AtomicU8::new(Volatile as u8 | ARMED);
        assert_eq!(
            guest_check_writable(&c, false),
            Taken {
                discarded: false,
                armed: true
            }
        );
        assert_eq!(EntryCell::load(&c), Stable as u8 | ARMED);
        guest_release(&c, Volatile);
        assert!(!guest_check_writable(&c, true).discarded);
        assert_eq!(EntryCell::load(&c), PotentiallyVolatile as u8 | ARMED);
        // A stable page stays stable; a dropped one reports the drop.
        let s = AtomicU8::new(Stable as u8);
        guest_check_writable(&s, true);
        assert_eq!(EntryCell::load(&s), Stable as u8);
        assert!(host_try_claim(&c, PotentiallyVolatile));
        host_finish(&c);
        assert!(guest_check_writable(&c, true).discarded);
        assert_eq!(state_of(EntryCell::load(&c)), Stable);
    }

    #[test]
    fn a_written_potentially_volatile_page_goes_back_to_stable_claimed_or_not() {
        let c = AtomicU8::new(PotentiallyVolatile as u8 | ARMED);
        assert!(host_demote_written(&c));
        assert_eq!(EntryCell::load(&c), Stable as u8 | ARMED);
        assert!(!host_demote_written(&c), "stable is the guest's");
        guest_release(&c, PotentiallyVolatile);
        assert!(host_try_claim(&c, PotentiallyVolatile));
        assert!(host_demote_written(&c), "a claim is released the same way");
        assert_eq!(EntryCell::load(&c), Stable as u8 | ARMED);
        let v = AtomicU8::new(Volatile as u8);
        assert!(!host_demote_written(&v), "only potentially volatile frames");
    }

    #[test]
    fn freeing_a_discarded_volatile_frame_keeps_both_marks() {
        let c = AtomicU8::new(Volatile as u8);
        assert!(host_try_claim(&c, Volatile));
        host_arm(&c);
        host_finish(&c);
        guest_release(&c, Unused);
        assert_eq!(EntryCell::load(&c), Unused as u8 | ARMED | DISCARDED);
        assert_eq!(
            guest_make_stable(&c),
            Taken {
                discarded: true,
                armed: true
            }
        );
    }

    #[test]
    fn the_one_swap_make_stable_does_what_the_waiting_one_does_and_leaves_busy_entries_alone() {
        for v in 0..=255u8 {
            let c = AtomicU8::new(v);
            let fast = guest_try_make_stable(&c);
            if v & BUSY != 0 {
                assert_eq!(fast, None, "{v:#x}");
                assert_eq!(c.load(Ordering::Relaxed), v, "{v:#x}: the host's");
                continue;
            }
            let fast = fast.expect("nobody changed the entry");
            let slow = AtomicU8::new(v);
            let want = guest_make_stable(&slow);
            if state_of(v) != Stable || v & !ARMED == 0 {
                assert_eq!(fast, want, "{v:#x}");
                assert_eq!(c.load(Ordering::Relaxed), slow.load(Ordering::Relaxed));
            } else {
                // Bits no protocol step leaves on a Stable entry.
                assert_eq!(c.load(Ordering::Relaxed), v & ARMED, "{v:#x}");
                assert_eq!(fast.discarded, v & DISCARDED != 0, "{v:#x}");
            }
        }
    }

    /// An entry whose loads return what it held before someone changed it.
    struct Changed {
        now: AtomicU8,
        seen: u8,
    }

    impl EntryCell for Changed {
        fn load(&self) -> u8 {
            self.seen
        }
        fn store(&self, v: u8) {
            self.now.store(v, Ordering::Relaxed)
        }
        fn cas(&self, current: u8, new: u8) -> Result<u8, u8> {
            EntryCell::cas(&self.now, current, new)
        }
        fn fetch_or(&self, bits: u8) -> u8 {
            EntryCell::fetch_or(&self.now, bits)
        }
        fn fetch_and(&self, bits: u8) -> u8 {
            EntryCell::fetch_and(&self.now, bits)
        }
        fn relax(&self) {}
    }

    #[test]
    fn the_one_swap_make_stable_gives_up_on_an_entry_changed_under_it() {
        let v = Volatile as u8;
        for now in [v | BUSY, v | DISCARDED, v | ARMED, v | 3 << AGE_SHIFT] {
            let c = Changed {
                now: AtomicU8::new(now),
                seen: v,
            };
            assert_eq!(guest_try_make_stable(&c), None, "{now:#x}");
            assert_eq!(c.now.load(Ordering::Relaxed), now, "nothing written");
        }
    }

    #[test]
    fn every_byte_decodes_and_nothing_panics() {
        for v in 0..=255u8 {
            let _ = state_of(v);
            for class in [Stable, Unused, Volatile, PotentiallyVolatile] {
                let c = AtomicU8::new(v);
                let claimed = host_try_claim(&c, class);
                assert_eq!(claimed, claimable(v, class));
                assert!(!claimed || class != Stable);
            }
            let c = AtomicU8::new(v & !BUSY);
            let _ = guest_check_writable(&c, v & 1 != 0);
            let _ = host_demote_written(&c);
            let _ = guest_make_stable(&c);
            guest_release(&c, Unused);
        }
    }
}
