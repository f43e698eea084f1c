//! Which Volatile frames are coldest: the order in which the reclaimer
//! takes them when it must hold a budget (`--victim-order`).
//!
//! Three orders, measured side by side in `docs/reclaim.md`:
//!
//! - `frame`: the lowest frame numbers first (what the reclaimer did
//!   before it had an order; kept for the comparison). The guest's
//!   allocator hands the frames of re-read pages out again from the same
//!   places, so this order keeps taking the pages that just came back.
//! - `host-age`: the frames whose shared-table entry has gone longest
//!   without changing, oldest first. Every round [`Ages::observe`]
//!   compares each entry (its state, `ARMED` and `DISCARDED`; not the
//!   guest-published age bits) with the value seen the round before and
//!   restamps those that changed: a page the guest made stable on a cache
//!   hit and volatile again, read again after a discard fault, or freed
//!   and reused. The host sees only what changes between two rounds, so
//!   it is a FIFO with reinsertion on a miss, not an LRU: a page used
//!   through a mapping without a fault leaves no trace here.
//! - `guest-age` (the default): the age the guest publishes in bits 2..=4
//!   of the entry (0 used lately, 7 idle through seven of the guest's
//!   ageing looks; `pagehint_abi::state_table::AGE_MASK`), the highest
//!   first, ties broken by `host-age`. The guest sees the accessed bits of
//!   its own page tables, which the host cannot; a guest that publishes
//!   nothing (all ages 0) gets `host-age`, and one that publishes garbage
//!   reorders only its own frames.
//!
//! The cost is one byte compared per frame a round (and two words of host
//! memory per frame, 1/800 of guest RAM) plus a selection over the
//! candidates when a pass runs. This module only reads the table: it must
//! never claim, write an entry or decide how much to drop.

use std::sync::atomic::Ordering;

use pagehint_abi::state_table::{AGE_MASK, AGE_SHIFT};

use crate::frames::FrameTable;
use crate::reclaim::resident::ResidentMap;

/// Most resident entries one round looks at (4 GiB of guest RAM, about
/// half a millisecond here).
pub const LOOK_PER_ROUND: u64 = 1 << 20;

/// How the reclaimer orders Volatile frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VictimOrder {
    /// Lowest frame number first.
    Frame,
    /// Longest unchanged entry first.
    HostAge,
    /// Highest guest-published age first, then longest unchanged.
    #[default]
    GuestAge,
}

impl VictimOrder {
    /// The order named on the command line.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "frame" => Some(Self::Frame),
            "host-age" => Some(Self::HostAge),
            "guest-age" => Some(Self::GuestAge),
            _ => None,
        }
    }

    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Frame => "frame",
            Self::HostAge => "host-age",
            Self::GuestAge => "guest-age",
        }
    }
}

/// The reclaimer's per-frame record of when each entry last changed.
#[derive(Debug)]
pub struct Ages {
    order: VictimOrder,
    /// The entry as last observed, without the age bits.
    seen: Vec<u8>,
    /// The round in which it was observed to change.
    since: Vec<u32>,
    round: u32,
    /// The part of a large resident set this round looks at.
    part: usize,
}

impl Ages {
    /// A record for `frames` frames, all stamped now.
    pub fn new(frames: u64, order: VictimOrder) -> Self {
        let n = if order == VictimOrder::Frame {
            0
        } else {
            usize::try_from(frames).unwrap_or(0)
        };
        Self {
            order,
            seen: vec![0; n],
            since: vec![0; n],
            round: 0,
            part: 0,
        }
    }

    /// The order this record serves.
    pub fn order(&self) -> VictimOrder {
        self.order
    }

    /// One round's look at the table: restamps every resident frame's
    /// entry that changed. Only resident frames can be victims, so only
    /// they are looked at (the cost follows resident memory, not guest
    /// RAM); a frame that comes back after a drop has changed its entry
    /// meanwhile and starts young.
    pub fn observe(&mut self, table: &FrameTable, resident: &ResidentMap) {
        if self.order == VictimOrder::Frame {
            return;
        }
        self.round = self.round.wrapping_add(1);
        let round = self.round;
        let entries = table.entries();
        let n = self.seen.len().min(entries.len());
        // A large resident set is looked at in parts, one a round, so that
        // a round reads at most about LOOK_PER_ROUND entries; its frames
        // are stamped up to `parts - 1` rounds late.
        let parts = resident.resident().div_ceil(LOOK_PER_ROUND).max(1) as usize;
        self.part = (self.part + 1) % parts;
        // A word of the resident map at a time, set bits only: the cost
        // follows resident frames, however sparse.
        let words = resident.words().iter().enumerate();
        for (w, &word) in words.skip(self.part).step_by(parts) {
            let first = w * 64;
            let mut bits = word;
            while bits != 0 {
                let pfn = first + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if pfn >= n {
                    break;
                }
                let v = entries[pfn].load(Ordering::Relaxed) & !AGE_MASK;
                if v != self.seen[pfn] {
                    self.seen[pfn] = v;
                    self.since[pfn] = round;
                }
            }
        }
    }

    /// How cold frame `pfn` is whose entry reads `entry` now: the larger,
    /// the sooner it goes. Frame order: the lower the frame, the colder.
    pub fn coldness(&self, pfn: u64, entry: u8) -> u64 {
        let host_age = || {
            usize::try_from(pfn)
                .ok()
                .and_then(|i| self.since.get(i))
                .map_or(0, |&s| u64::from(self.round.wrapping_sub(s)))
        };
        match self.order {
            VictimOrder::Frame => u64::MAX - pfn,
            VictimOrder::HostAge => host_age(),
            VictimOrder::GuestAge => {
                let guest = u64::from((entry & AGE_MASK) >> AGE_SHIFT);
                guest << 32 | host_age().min(u64::from(u32::MAX))
            }
        }
    }

    /// The `want` coldest of `candidates` (frame numbers with their
    /// entries), in frame order so that neighbours coalesce into runs.
    pub fn coldest(&self, mut candidates: Vec<(u64, u8)>, want: u64) -> Vec<u64> {
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        let mut keyed: Vec<(u64, u64)> = candidates
            .drain(..)
            .map(|(pfn, e)| (u64::MAX - self.coldness(pfn, e), pfn))
            .collect();
        if want < keyed.len() {
            keyed.select_nth_unstable(want);
            keyed.truncate(want);
        }
        let mut pfns: Vec<u64> = keyed.into_iter().map(|(_, p)| p).collect();
        pfns.sort_unstable();
        pfns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::hypercall::HintOp;

    fn every(frames: u64) -> ResidentMap {
        ResidentMap::all(frames)
    }

    fn volatile_table(frames: u64, volatile: &[u64]) -> FrameTable {
        let t = FrameTable::new(frames as usize, false);
        for &p in volatile {
            t.apply(p, HintOp::MakeVolatile).unwrap();
        }
        t
    }

    #[test]
    fn the_oldest_go_first_and_a_change_makes_a_frame_young() {
        let t = volatile_table(64, &[40]);
        let mut a = Ages::new(64, VictimOrder::HostAge);
        a.observe(&t, &every(64)); // 40 stamped in round 1
        t.apply(10, HintOp::MakeVolatile).unwrap();
        a.observe(&t, &every(64)); // 10 in round 2
        t.apply(30, HintOp::MakeVolatile).unwrap();
        a.observe(&t, &every(64)); // 30 in round 3
        let all = |t: &FrameTable| {
            [10u64, 30, 40]
                .iter()
                .map(|&p| (p, t.entry_value(p).unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(a.coldest(all(&t), 1), [40]);
        assert_eq!(a.coldest(all(&t), 2), [10, 40]);
        // A hit: the guest made 40 stable and volatile again between two
        // rounds; this round sees the same value, so 40 stays old...
        t.apply(40, HintOp::MakeStable).unwrap();
        t.apply(40, HintOp::MakeVolatile).unwrap();
        a.observe(&t, &every(64));
        assert_eq!(a.coldest(all(&t), 1), [40]);
        // ...but a change seen by a round makes it the youngest.
        t.apply(40, HintOp::MakeStable).unwrap();
        a.observe(&t, &every(64));
        t.apply(40, HintOp::MakeVolatile).unwrap();
        a.observe(&t, &every(64));
        assert_eq!(a.coldest(all(&t), 2), [10, 30]);
        assert_eq!(a.coldest(all(&t), 9), [10, 30, 40]);
    }

    #[test]
    fn frame_order_takes_the_lowest_frames() {
        let a = Ages::new(64, VictimOrder::Frame);
        let c = vec![(50, 2), (7, 2), (33, 2)];
        assert_eq!(a.coldest(c, 2), [7, 33]);
    }

    #[test]
    fn guest_age_comes_first_and_host_age_breaks_ties() {
        let t = volatile_table(64, &[1, 2, 3]);
        let mut a = Ages::new(64, VictimOrder::GuestAge);
        a.observe(&t, &every(64));
        t.apply(4, HintOp::MakeVolatile).unwrap();
        a.observe(&t, &every(64));
        let v = pagehint_abi::page_state::PageState::Volatile as u8;
        let aged = |age: u8| v | (age << AGE_SHIFT);
        // Frame 4 is younger on the host's clock but the guest says it is
        // idle longest; 1..3 tie on guest age 0 and 1 is older than none.
        let c = vec![(1, aged(0)), (2, aged(0)), (3, aged(5)), (4, aged(7))];
        assert_eq!(a.coldest(c.clone(), 1), [4]);
        assert_eq!(a.coldest(c.clone(), 2), [3, 4]);
        assert_eq!(a.coldest(c, 4), [1, 2, 3, 4]);
        // Ages the guest writes do not restamp the host's clock.
        let before = a.coldness(1, aged(0));
        t.set_entry_bits_for_test(1, aged(3));
        a.observe(&t, &every(64));
        assert_eq!(a.coldness(1, aged(0)), before + 1);
    }

    #[test]
    fn names_round_trip() {
        for o in [
            VictimOrder::Frame,
            VictimOrder::HostAge,
            VictimOrder::GuestAge,
        ] {
            assert_eq!(VictimOrder::parse(o.name()), Some(o));
        }
        assert_eq!(VictimOrder::parse("lru"), None);
    }
}
