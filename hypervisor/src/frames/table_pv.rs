//! The state table's steps for frames a guest mapping may still reach
//! after the host dropped them (Volatile and Potentially volatile): whether
//! a touch of one is a discard fault, what a zero fill leaves in the entry
//! (the livelock breaker's way out, among others), and
//! the dirty log's verdict on a Potentially volatile frame
//! (`FrameTable::demote_written`). A child of `table`, kept apart so that
//! the table's file stays about hints and claims; the claim, arm, finish
//! and abort steps are the table's own, for every class.
//!
//! This module must never drop memory, never wait on a BUSY bit the guest
//! wrote, and never change a frame that is not in the state a step names:
//! a demotion only ever makes a frame safer, and a zero fill never hides a
//! drop (it never clears DISCARDED or changes a state).

use std::sync::atomic::Ordering;

use pagehint_abi::page_state::PageState;
use pagehint_abi::state_table::{self as entry, state_of, BUSY, DISCARDED};

use super::{FrameTable, CLAIMED};

impl FrameTable {
    /// True if a touch of the frame is a discard fault: its contents are
    /// dropped (or being dropped) and a guest mapping may still reach it.
    /// That is a Volatile or Potentially volatile frame that is DISCARDED
    /// or BUSY, and also a
    /// Stable frame still registered: one whose discard a `MAKE_STABLE` or
    /// `CHECK_WRITABLE` reported, which the guest is dropping from its
    /// cache while another CPU's mapping may still touch it (that touch
    /// must be a discard fault, never a silent zero page). `SET_STABLE`
    /// unregisters a frame (it is being handed out afresh, unmapped).
    pub fn discard_fault_due(&self, pfn: u64) -> bool {
        self.cell(pfn).is_ok_and(|c| {
            let v = c.load(Ordering::Acquire);
            match state_of(v) {
                PageState::Volatile | PageState::PotentiallyVolatile => v & (DISCARDED | BUSY) != 0,
                PageState::Stable => self.is_registered(pfn),
                _ => false,
            }
        })
    }

    /// The VMM is about to back frame `pfn` with zeroes without a discard
    /// fault (a livelock broken, a fault by a thread that runs no vCPU, a
    /// frame no longer due one): marks its entry so that it goes on saying
    /// the contents are gone (`state_table::host_zero_filled`: DISCARDED
    /// set where the state is not Stable and neither DISCARDED nor BUSY is;
    /// nothing else changes). Only while the frame carries the registered
    /// mark: then it is still missing, and stays so until the caller's fill
    /// (the discard-fault handler is the only thread that fills registered
    /// frames, and unregisters each it fills). Call it before the fill,
    /// never after: once the page is back the guest may take the frame,
    /// refill it and free it, and a mark then would report intact contents
    /// lost. True if it set DISCARDED. Never waits on a BUSY bit.
    pub fn mark_zero_filled(&self, pfn: u64) -> bool {
        let Ok(cell) = self.cell(pfn) else {
            return false;
        };
        // The entry first, then the mark: a SET_STABLE between the two
        // clears ARMED (and ends the registration), so the entry cannot
        // come back to `seen` without a new drop that leaves the frame
        // missing again.
        let seen = cell.load(Ordering::Acquire);
        if !self.is_registered(pfn) || !entry::host_zero_filled(cell, seen) {
            return false;
        }
        self.discarded_now.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Does this table let frames become Potentially volatile (the VMM's
    /// `--potentially-volatile`)?
    pub fn potentially_volatile(&self) -> bool {
        self.potentially_volatile
    }

    /// The dirty log says the guest wrote this Potentially volatile frame
    /// since it was last clean: it goes back to Stable (ARMED kept), so no
    /// one drops it until the guest makes it volatile again after writing
    /// it back. A claim the host holds on it ends here too. False if the
    /// frame was not Potentially volatile (nothing changed), or if its BUSY
    /// bit is one the guest wrote (left for the guest's own protocol).
    pub fn demote_written(&self, pfn: u64) -> bool {
        let (Ok(cell), Some(marks)) = (self.cell(pfn), self.host_marks(pfn)) else {
            return false;
        };
        let ours = marks.load(Ordering::Acquire) & CLAIMED != 0;
        if cell.load(Ordering::Acquire) & BUSY != 0 && !ours {
            return false;
        }
        if !entry::host_demote_written(cell) {
            return false;
        }
        self.account(PageState::PotentiallyVolatile, PageState::Stable);
        if ours {
            self.unclaim(pfn);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::hypercall::HintOp;

    #[test]
    fn a_written_frame_goes_back_to_stable_claimed_or_not() {
        let t = FrameTable::new(8, true);
        assert!(t.potentially_volatile());
        for p in 0..4 {
            t.apply(p, HintOp::MakeVolatile).unwrap();
            t.apply(p, HintOp::CheckWritable).unwrap();
            assert_eq!(t.state(p), Some(PageState::PotentiallyVolatile));
        }
        assert_eq!(t.counts().potentially_volatile, 4);
        assert!(t.demote_written(0));
        assert!(t.try_claim(1, PageState::PotentiallyVolatile));
        assert!(t.demote_written(1), "a claim ends the same way");
        assert!(!t.try_claim(1, PageState::Stable));
        assert_eq!(t.state(1), Some(PageState::Stable));
        assert!(!t.demote_written(1), "stable is the guest's");
        assert!(!t.demote_written(7), "never potentially volatile");
        assert!(!t.demote_written(99), "outside RAM");
        let c = t.counts();
        assert_eq!((c.potentially_volatile, c.stable), (2, 6));
        // A discarded one is a discard fault while it is still PV, and a
        // writable mapping of it reads again (stable, reported).
        assert!(t.try_claim(2, PageState::PotentiallyVolatile));
        t.finish_discard(2);
        assert!(t.discard_fault_due(2));
        assert!(!t.demote_written(2), "discarded: nothing to keep");
        assert_eq!(
            t.apply(2, HintOp::CheckWritable),
            Ok(crate::frames::HintOutcome::Discarded)
        );
        assert_eq!(t.state(2), Some(PageState::Stable));
        // A zero fill of a discarded PV frame leaves it discarded.
        assert!(t.try_claim(3, PageState::PotentiallyVolatile));
        t.finish_discard(3);
        assert!(!t.mark_zero_filled(3), "discarded already");
        assert_eq!(t.state(3), Some(PageState::PotentiallyVolatile));
        assert!(t.is_discarded(3));
    }
}
