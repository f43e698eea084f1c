//! The eager unused policy: every round, the reclaimer drops the resident
//! frames that have stayed Unused for at least `--unused-delay`, whatever
//! the budget, so freed guest memory goes back to the host at 4 KiB
//! granularity soon after the guest frees it (free page reporting waits
//! for whole 2 MiB blocks). The budget and PSI then govern Volatile pages.
//!
//! The host does not see the guest's transitions through the shared
//! page-state table (it reads entries), so the age of a frame is kept on
//! the host side, in rounds: a frame seen Unused (idle, resident) in
//! `rounds + 1` consecutive rounds has been Unused for at least
//! `rounds` intervals (the thread ticks no faster than its interval) and is
//! claimed; a frame the guest took back in between breaks its streak. A
//! frame freed, reused and freed again between two rounds looks as if it
//! never left: the host cannot tell. Works the same with the hypercall
//! transports (the table's entries are read either way).
//!
//! Frames are claimed (`FrameTable::try_claim`, for Unused only) and
//! dropped through `Discarder::settle`, as every other drop; the frames
//! this policy dropped are remembered, so that those the guest takes back
//! (their DISCARDED mark gone: made stable, so handed out as zeroes) are
//! counted as refaults, the price of the eagerness. This module must never
//! claim a frame for anything but Unused, never drop one it has not
//! claimed, and never scan a frame the last residency reading says is not
//! resident.

use std::time::Duration;

use pagehint_abi::page_state::PageState;

use crate::frames::discard::IOV_BATCH;
use crate::frames::table::bits;
use crate::frames::{Discarder, FrameTable, Method, PassReport, Run, RunBuilder};
use crate::reclaim::policy::CHUNK_PAGES;
use crate::reclaim::resident::ResidentMap;

/// Passes between two looks for refaults over every frame this policy
/// dropped (1 s at the default interval): they cost a load per frame
/// still dropped, more than a pass over a guest that frees little.
pub const SWEEP_EVERY: u32 = 20;

/// The rounds a frame must have been seen Unused before the one that
/// drops it: `delay / interval`, rounded up (0 for no delay: every
/// resident Unused frame goes each round); at most `u16::MAX`.
pub fn rounds_for(delay: Duration, interval: Duration) -> u16 {
    if delay.is_zero() {
        return 0;
    }
    let interval = interval.max(Duration::from_millis(1)).as_nanos();
    let rounds = delay.as_nanos().div_ceil(interval);
    u16::try_from(rounds).unwrap_or(u16::MAX)
}

/// A mask of the lowest `n` bits (all 64 from 64 up).
fn low_bits(n: u64) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1 << n) - 1
    }
}

/// What one eager pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EagerReport {
    /// The drops (pages, failures, calls).
    pub pass: PassReport,
    /// Frames this policy had dropped before that the guest took back
    /// since (seen in this pass's drops or its sweep).
    pub refaults: u64,
}

/// The host's record of how long each resident frame has been Unused.
#[derive(Debug)]
pub struct EagerUnused {
    /// Rounds a frame must have been seen Unused before the one that
    /// drops it.
    rounds: u16,
    /// Per frame: rounds since it was first seen Unused in its current
    /// streak; meaningful only where `seen` is set (empty for 0 rounds).
    ages: Vec<u16>,
    /// Frames seen Unused, idle and resident in the last pass, and those
    /// of the pass in progress.
    seen: ResidentMap,
    now: ResidentMap,
    /// Frames this policy dropped whose drop the guest has not yet been
    /// seen to take back.
    dropped: ResidentMap,
    passes: u32,
}

impl EagerUnused {
    /// A record for `frames` frames that drops frames Unused for
    /// `rounds` rounds (see [`rounds_for`]).
    pub fn new(frames: u64, rounds: u16) -> Self {
        let (ages, seen, now) = if rounds == 0 {
            (Vec::new(), ResidentMap::default(), ResidentMap::default())
        } else {
            let n = usize::try_from(frames).unwrap_or(0);
            (
                vec![0; n],
                ResidentMap::new(frames),
                ResidentMap::new(frames),
            )
        };
        Self {
            rounds,
            ages,
            seen,
            now,
            dropped: ResidentMap::new(frames),
            passes: 0,
        }
    }

    /// The rounds of delay this record applies.
    pub fn rounds(&self) -> u16 {
        self.rounds
    }

    /// One round: ages every resident idle Unused frame and drops those
    /// old enough. Every `SWEEP_EVERY` passes also looks for refaults.
    pub fn pass(
        &mut self,
        table: &FrameTable,
        discarder: &mut Discarder,
        resident: &ResidentMap,
        method: Method,
    ) -> EagerReport {
        let mut report = EagerReport::default();
        {
            // No switch to the guest's shared table while claims are out.
            let _pass = table.pass_guard();
            let mut chunk = RunBuilder::default();
            let frames = table.len().min(resident.pages());
            // Only resident frames are candidates, and only those whose
            // entries say Unused: 64 at a time.
            for (k, &word) in resident.words().iter().enumerate() {
                let first = k as u64 * 64;
                if first >= frames {
                    break;
                }
                let word = word & low_bits(frames - first);
                if word == 0 {
                    continue;
                }
                let unused = table.looks_claimable_mask(first, word, PageState::Unused);
                for pfn in bits(unused).map(|i| first + i) {
                    let age = self.age_now(pfn);
                    if age >= self.rounds && table.try_claim(pfn, PageState::Unused) {
                        chunk.push(pfn);
                        if chunk.pages() >= CHUNK_PAGES || chunk.runs().len() >= IOV_BATCH {
                            self.settle(table, discarder, &mut chunk, method, &mut report);
                        }
                    } else if let Some(a) =
                        usize::try_from(pfn).ok().and_then(|i| self.ages.get_mut(i))
                    {
                        // Not old enough, or claimed by nobody this time
                        // (a hint holds it): the streak goes on.
                        *a = age;
                        self.now.set(pfn);
                    }
                }
            }
            self.settle(table, discarder, &mut chunk, method, &mut report);
        }
        std::mem::swap(&mut self.seen, &mut self.now);
        self.now.clear();
        self.passes = self.passes.wrapping_add(1);
        if self.passes.is_multiple_of(SWEEP_EVERY) {
            report.refaults += self.sweep(table);
        }
        report
    }

    /// Rounds frame `pfn` has been seen Unused before this one.
    fn age_now(&self, pfn: u64) -> u16 {
        if self.rounds == 0 || !self.seen.get(pfn) {
            return 0;
        }
        usize::try_from(pfn)
            .ok()
            .and_then(|i| self.ages.get(i))
            .map_or(0, |a| a.saturating_add(1))
    }

    /// Drops and settles `chunk`; remembers the frames it dropped. One
    /// dropped before is a refault: it lost its DISCARDED mark (it was
    /// made stable) or it could not have been claimed again.
    fn settle(
        &mut self,
        table: &FrameTable,
        discarder: &mut Discarder,
        chunk: &mut RunBuilder,
        method: Method,
        report: &mut EagerReport,
    ) {
        let runs: Vec<Run> = chunk.runs().to_vec();
        discarder.settle(table, chunk, method, None, &mut report.pass);
        for pfn in runs.iter().flat_map(Run::frames) {
            // A frame the guest took back at once is missed (a count
            // that errs low).
            if table.is_discarded(pfn) {
                if self.dropped.get(pfn) {
                    report.refaults += 1;
                }
                self.dropped.set(pfn);
            }
        }
    }

    /// Looks at every frame this policy dropped: those no longer marked
    /// DISCARDED were taken back by the guest. Returns how many.
    pub fn sweep(&mut self, table: &FrameTable) -> u64 {
        let mut refaults = 0;
        let mut next = self.dropped.next_set(0);
        while let Some(pfn) = next {
            next = self.dropped.next_set(pfn + 1);
            if !table.is_discarded(pfn) {
                self.dropped.assign(pfn, false);
                refaults += 1;
            }
        }
        refaults
    }
}

#[cfg(test)]
#[path = "eager_tests.rs"]
mod tests;
