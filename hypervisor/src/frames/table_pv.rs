//! The state table's steps for potentially volatile frames: the dirty-log
//! verdict on a frame (`FrameTable::demote_written`) and the check that a
//! table takes them at all. A child of `table`, kept apart so that the
//! table's file stays about the states every guest uses; the claim, arm,
//! finish and abort steps are the table's own, for every class.
//!
//! This module must never drop memory, and never change a frame that is
//! not Potentially volatile: a demotion only ever makes a frame safer.

use std::sync::atomic::Ordering;

use pagehint_abi::page_state::PageState;
use pagehint_abi::state_table::{self as entry, BUSY};

use super::{FrameTable, CLAIMED};

impl FrameTable {
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
        // The livelock breaker takes a discarded PV frame too.
        assert!(t.try_claim(3, PageState::PotentiallyVolatile));
        t.finish_discard(3);
        assert!(t.force_stable(3));
        assert_eq!(t.state(3), Some(PageState::Stable));
    }
}
