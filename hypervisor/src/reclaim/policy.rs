//! What the reclaimer drops and when: how many pages a round should free
//! (a resident budget, or host memory pressure from PSI), and which frames
//! (resident ones only, Unused before Volatile, never Stable nor BUSY),
//! coalesced into runs so that each `madvise` covers as much as it can.
//!
//! The decisions are pure functions of their inputs, unit-tested here;
//! [`discard_pass`] claims frames in the state table, hands the runs to the
//! [`Discarder`] and settles the claims. This module must never drop a frame
//! it has not claimed, nor leave a claim unsettled.

use pagehint_abi::page_state::PageState;

use crate::discard_fault::DiscardFaults;
use crate::reclaim::discard::{Discarder, Method, IOV_BATCH};
use crate::reclaim::resident::ResidentMap;
use crate::reclaim::state_table::FrameTable;

/// Most frames claimed at once: hints on claimed frames wait while they are
/// dropped, so a batch stays short (4096 pages is ~2 ms of madvise).
pub const CHUNK_PAGES: u64 = 4096;
/// The PSI file of host memory pressure.
pub const PSI_MEMORY: &str = "/proc/pressure/memory";

/// Why the host's memory pressure could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The PSI file has no `some avg10=` figure.
    #[error("no 'some avg10=' figure in the PSI text")]
    NoSomeAvg10,
}

/// A run of contiguous guest frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub pfn: u64,
    pub count: u64,
}

/// Collects frame numbers, pushed in ascending order, into runs.
#[derive(Debug, Default)]
pub struct RunBuilder {
    runs: Vec<Run>,
    pages: u64,
}

impl RunBuilder {
    /// Adds a frame: extends the last run if adjacent, else starts a run.
    pub fn push(&mut self, pfn: u64) {
        match self.runs.last_mut() {
            Some(last) if last.pfn.checked_add(last.count) == Some(pfn) => last.count += 1,
            _ => self.runs.push(Run { pfn, count: 1 }),
        }
        self.pages += 1;
    }

    /// Runs so far.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Frames so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Empties the builder.
    pub fn clear(&mut self) {
        self.runs.clear();
        self.pages = 0;
    }
}

/// Pages a round should drop: down to the budget if resident exceeds it;
/// everything droppable under host pressure; nothing otherwise.
pub fn pages_to_drop(resident_pages: u64, budget_pages: Option<u64>, pressure: bool) -> u64 {
    if pressure {
        return resident_pages;
    }
    match budget_pages {
        Some(b) => resident_pages.saturating_sub(b),
        None => 0,
    }
}

/// The `some avg10` percentage of a PSI file's text.
pub fn parse_psi_some_avg10(text: &str) -> Result<f64, PolicyError> {
    text.lines()
        .find_map(|l| l.strip_prefix("some "))
        .and_then(|rest| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix("avg10="))
        })
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .ok_or(PolicyError::NoSomeAvg10)
}

/// What one [`discard_pass`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Frames dropped (each was resident, so resident fell by as many).
    pub pages: u64,
    /// Frames claimed but not dropped (madvise failed; contents intact).
    pub failed: u64,
    pub madvise_calls: u64,
    pub process_madvise_calls: u64,
}

/// Drops up to `want` resident frames: Unused ones first, then Volatile.
/// Claims frames a chunk at a time, drops the chunk's runs, settles them.
pub fn discard_pass(
    table: &FrameTable,
    discarder: &mut Discarder,
    resident: &ResidentMap,
    want: u64,
    method: Method,
) -> PassReport {
    discard_pass_with(table, discarder, resident, want, method, None)
}

/// [`discard_pass`], registering each run of Volatile frames with the
/// discard-fault userfaultfd (`faults`) before dropping it; a run the
/// kernel refuses to register is kept.
pub fn discard_pass_with(
    table: &FrameTable,
    discarder: &mut Discarder,
    resident: &ResidentMap,
    want: u64,
    method: Method,
    faults: Option<&DiscardFaults>,
) -> PassReport {
    let mut report = PassReport::default();
    let mut chunk = RunBuilder::default();
    let frames = table.len().min(resident.pages());
    for class in [PageState::Unused, PageState::Volatile] {
        // Only resident frames are candidates: skip the rest 64 at a time.
        let mut next = resident.next_set(0);
        while let Some(pfn) = next.filter(|&p| p < frames) {
            next = pfn.checked_add(1).and_then(|p| resident.next_set(p));
            if report.pages + chunk.pages() >= want {
                break;
            }
            if !table.looks_claimable(pfn, class) {
                continue;
            }
            if table.try_claim(pfn, class) {
                chunk.push(pfn);
                if chunk.pages() >= CHUNK_PAGES || chunk.runs().len() >= IOV_BATCH {
                    let faults = faults.filter(|_| class == PageState::Volatile);
                    settle(table, discarder, &mut chunk, method, faults, &mut report);
                }
            }
        }
        let faults = faults.filter(|_| class == PageState::Volatile);
        settle(table, discarder, &mut chunk, method, faults, &mut report);
    }
    report
}

/// Drops the claimed runs of `chunk` and ends every claim. With `faults`
/// (Volatile runs, discard faults on) each run is registered first; runs
/// the kernel refuses are not dropped, runs whose drop failed are
/// unregistered again.
fn settle(
    table: &FrameTable,
    discarder: &mut Discarder,
    chunk: &mut RunBuilder,
    method: Method,
    faults: Option<&DiscardFaults>,
    report: &mut PassReport,
) {
    if chunk.runs().is_empty() {
        return;
    }
    let mut runs: Vec<Run> = Vec::with_capacity(chunk.runs().len());
    for run in chunk.runs() {
        match faults {
            Some(f) if !f.register_volatile_run(run.pfn, run.count) => {
                for pfn in run.pfn..run.pfn.saturating_add(run.count) {
                    table.abort_discard(pfn);
                }
                report.failed += run.count;
            }
            _ => runs.push(*run),
        }
    }
    let done = discarder.discard(&runs, method);
    let mut failed = vec![false; runs.len()];
    for &i in &done.failed {
        if let Some(f) = failed.get_mut(i) {
            *f = true;
        }
    }
    for (run, &bad) in runs.iter().zip(&failed) {
        if bad {
            if let Some(f) = faults {
                f.unregister_marked(run.pfn, run.count);
            }
        }
        for pfn in run.pfn..run.pfn.saturating_add(run.count) {
            if bad {
                table.abort_discard(pfn);
            } else {
                table.finish_discard(pfn);
            }
        }
        if bad {
            report.failed += run.count;
        }
    }
    report.pages += done.pages;
    report.madvise_calls += done.madvise_calls;
    report.process_madvise_calls += done.process_madvise_calls;
    chunk.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use pagehint_abi::hypercall::hint;

    #[test]
    fn frames_coalesce_into_runs() {
        let mut b = RunBuilder::default();
        for p in [3, 4, 5, 7, 9, 10, u64::MAX] {
            b.push(p);
        }
        assert_eq!(
            b.runs(),
            &[
                Run { pfn: 3, count: 3 },
                Run { pfn: 7, count: 1 },
                Run { pfn: 9, count: 2 },
                Run {
                    pfn: u64::MAX,
                    count: 1
                },
            ]
        );
        assert_eq!(b.pages(), 7);
        b.clear();
        assert!(b.runs().is_empty());
    }

    #[test]
    fn budget_and_pressure_decide_how_much() {
        assert_eq!(pages_to_drop(100, None, false), 0);
        assert_eq!(pages_to_drop(100, Some(40), false), 60);
        assert_eq!(pages_to_drop(30, Some(40), false), 0);
        assert_eq!(pages_to_drop(30, Some(40), true), 30);
        assert_eq!(pages_to_drop(30, None, true), 30);
    }

    #[test]
    fn psi_text_parses() {
        let t = "some avg10=12.50 avg60=3.00 avg300=0.10 total=12345\n\
                 full avg10=1.00 avg60=0.00 avg300=0.00 total=99\n";
        assert_eq!(parse_psi_some_avg10(t), Ok(12.5));
        assert_eq!(
            parse_psi_some_avg10("full avg10=1.00"),
            Err(PolicyError::NoSomeAvg10)
        );
        assert_eq!(
            parse_psi_some_avg10("some avg10=x"),
            Err(PolicyError::NoSomeAvg10)
        );
        assert_eq!(parse_psi_some_avg10(""), Err(PolicyError::NoSomeAvg10));
    }

    #[test]
    fn passes_take_unused_before_volatile_and_never_stable() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let frames = ram.frames();
        let table = FrameTable::new(frames as usize, false);
        let mut d = Discarder::new(&ram).unwrap();
        table.apply_range(10, 4, hint::SET_UNUSED).unwrap();
        table.apply_range(20, 2, hint::SET_UNUSED).unwrap();
        table.apply(30, hint::MAKE_VOLATILE).unwrap();
        table.apply(31, hint::MAKE_VOLATILE).unwrap();
        // Frame 21 is not resident: not worth dropping.
        let mut resident = ResidentMap::new(frames);
        (0..frames)
            .filter(|&p| p != 21)
            .for_each(|p| resident.set(p));
        let r = discard_pass(&table, &mut d, &resident, 6, Method::Auto);
        assert_eq!((r.pages, r.failed, r.madvise_calls), (6, 0, 3));
        for p in [10, 11, 12, 13, 20, 30] {
            assert!(table.is_discarded(p), "frame {p}");
        }
        assert!(!table.is_discarded(21) && !table.is_discarded(31));
        let r = discard_pass(&table, &mut d, &resident, u64::MAX, Method::Auto);
        assert_eq!(r.pages, 1, "only frame 31 is left");
        assert_eq!(table.counts().discarded, 7);
        let r = discard_pass(&table, &mut d, &resident, u64::MAX, Method::Auto);
        assert_eq!(r, PassReport::default());
    }

    #[test]
    fn volatile_runs_are_registered_before_they_are_dropped_unused_never() {
        use crate::metrics::Metrics;
        use std::sync::Arc;
        let ram = GuestRam::new(16 << 20).unwrap();
        let frames = ram.frames();
        let table = Arc::new(FrameTable::new(frames as usize, false));
        let metrics = Arc::new(Metrics::default());
        let faults = DiscardFaults::new(&ram, table.clone(), metrics.clone(), 1).unwrap();
        let mut d = Discarder::new(&ram).unwrap();
        table.apply_range(10, 3, hint::SET_UNUSED).unwrap();
        for p in [20, 21, 22, 30] {
            table.apply(p, hint::MAKE_VOLATILE).unwrap();
        }
        let mut resident = ResidentMap::new(frames);
        (0..frames).for_each(|p| resident.set(p));
        let r = discard_pass_with(
            &table,
            &mut d,
            &resident,
            u64::MAX,
            Method::Auto,
            Some(&faults),
        );
        assert_eq!((r.pages, r.failed), (7, 0));
        for p in [20, 21, 22, 30] {
            assert!(
                table.is_registered(p) && table.discard_fault_due(p),
                "frame {p}"
            );
        }
        for p in [10, 11, 12] {
            assert!(
                !table.is_registered(p) && table.is_discarded(p),
                "frame {p}"
            );
        }
        assert_eq!(metrics.discard_faults.uffd_registered_pages.get(), 4);
    }
}
