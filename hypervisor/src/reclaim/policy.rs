//! What the reclaimer drops and when: how many pages a round should free
//! (a resident budget, or host memory pressure from PSI), and which frames
//! (resident ones only, Unused before Volatile, never Stable nor BUSY),
//! coalesced into runs so that each `madvise` covers as much as it can.
//!
//! The decisions are pure functions of their inputs, unit-tested here;
//! [`discard_pass`] claims frames in the state table and hands each chunk to
//! the core's [`Discarder::settle`], which drops and settles it. This module
//! must never drop a frame it has not claimed, nor leave a claim unsettled.

use pagehint_abi::page_state::PageState;
use pagehint_abi::state_table::claimable;

use crate::frames::discard::IOV_BATCH;
use crate::frames::{Arming, Discarder, FrameTable, Method, PassReport, RunBuilder};
use crate::reclaim::age::{Ages, VictimOrder};
use crate::reclaim::resident::ResidentMap;

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

/// Drops up to `want` resident frames: Unused ones first, then Volatile.
/// Claims frames a chunk at a time, drops the chunk's runs, settles them.
pub fn discard_pass(
    table: &FrameTable,
    discarder: &mut Discarder,
    resident: &ResidentMap,
    want: u64,
    method: Method,
) -> PassReport {
    discard_pass_ordered(table, discarder, resident, want, method, None, None)
}

/// [`discard_pass`], arming each run of Volatile frames for discard faults
/// (`arming`) before dropping it (a run that cannot be armed is kept),
/// and taking Volatile frames coldest first by `ages` (`None`, or
/// [`crate::reclaim::age::VictimOrder::Frame`]: in frame order). Unused
/// frames hold nothing the guest wants: any order will do.
pub fn discard_pass_ordered(
    table: &FrameTable,
    discarder: &mut Discarder,
    resident: &ResidentMap,
    want: u64,
    method: Method,
    arming: Option<&dyn Arming>,
    ages: Option<&Ages>,
) -> PassReport {
    // No switch to the guest's shared table while claims are out.
    let _pass = table.pass_guard();
    let mut pass = Pass::new(table, discarder, method);
    // Only resident frames are candidates.
    let frames = table.len().min(resident.pages());
    let resident_frames = || resident.resident_below(frames);
    for class in [PageState::Unused, PageState::Volatile] {
        let arming = arming.filter(|_| class == PageState::Volatile);
        let ordered =
            ages.filter(|a| class == PageState::Volatile && a.order() != VictimOrder::Frame);
        match ordered {
            Some(ages) => {
                let left = want.saturating_sub(pass.report.pages);
                if left == 0 {
                    break;
                }
                // One read of each entry: claimable now, and its age.
                let candidates: Vec<(u64, u8)> = resident_frames()
                    .filter_map(|p| table.entry_value(p).map(|e| (p, e)))
                    .filter(|&(_, e)| claimable(e, class))
                    .collect();
                for pfn in ages.coldest(candidates, left) {
                    pass.take(pfn, class, arming);
                }
            }
            None => {
                for pfn in resident_frames() {
                    if pass.pages() >= want {
                        break;
                    }
                    if table.looks_claimable(pfn, class) {
                        pass.take(pfn, class, arming);
                    }
                }
            }
        }
        pass.settle(arming);
    }
    pass.report
}

/// A pass in progress: the chunk of claimed frames not yet dropped. Both
/// passes (this module's and [`crate::reclaim::pv`]'s) claim through it.
pub struct Pass<'a> {
    table: &'a FrameTable,
    discarder: &'a mut Discarder,
    method: Method,
    report: PassReport,
    chunk: RunBuilder,
}

impl<'a> Pass<'a> {
    /// A pass over `table` that drops through `discarder` by `method`.
    pub fn new(table: &'a FrameTable, discarder: &'a mut Discarder, method: Method) -> Self {
        Self {
            table,
            discarder,
            method,
            report: PassReport::default(),
            chunk: RunBuilder::default(),
        }
    }

    /// Pages dropped so far and claimed to drop next.
    pub fn pages(&self) -> u64 {
        self.report.pages + self.chunk.pages()
    }

    /// What the pass did (after the last [`Pass::settle`]).
    pub fn into_report(self) -> PassReport {
        self.report
    }

    /// Claims `pfn` for `class` if it still can be; drops the chunk when
    /// it is full.
    pub fn take(&mut self, pfn: u64, class: PageState, arming: Option<&dyn Arming>) {
        if self.table.try_claim(pfn, class) {
            self.chunk.push(pfn);
            if self.chunk.pages() >= CHUNK_PAGES || self.chunk.runs().len() >= IOV_BATCH {
                self.settle(arming);
            }
        }
    }

    /// Drops and settles the chunk.
    pub fn settle(&mut self, arming: Option<&dyn Arming>) {
        self.discarder.settle(
            self.table,
            &mut self.chunk,
            self.method,
            arming,
            &mut self.report,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::Run;
    use crate::memory::GuestRam;
    use pagehint_abi::hypercall::HintOp;
    use std::sync::Mutex;

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

    /// 16 MiB of guest RAM, its table (all stable) and a discarder.
    fn fixture() -> (GuestRam, FrameTable, Discarder) {
        let ram = GuestRam::new(16 << 20).unwrap();
        let table = FrameTable::new(ram.frames() as usize, false);
        let d = Discarder::new(&ram).unwrap();
        (ram, table, d)
    }

    #[test]
    fn passes_take_unused_before_volatile_and_never_stable() {
        let (ram, table, mut d) = fixture();
        let frames = ram.frames();
        table.apply_range(10, 4, HintOp::SetUnused).unwrap();
        table.apply_range(20, 2, HintOp::SetUnused).unwrap();
        table.apply(30, HintOp::MakeVolatile).unwrap();
        table.apply(31, HintOp::MakeVolatile).unwrap();
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
    fn published_ages_choose_the_victims_and_garbage_ages_lose_nothing_else() {
        use crate::reclaim::age::{Ages, VictimOrder};
        use pagehint_abi::state_table::{AGE_SHIFT, BUSY, DISCARDED};
        use vm_memory::{Bytes, GuestAddress};
        let (ram, table, mut d) = fixture();
        let frames = ram.frames();
        let mut resident = ResidentMap::new(frames);
        (0..frames).for_each(|p| resident.set(p));
        let v = PageState::Volatile as u8;
        for p in 10..20 {
            table.apply(p, HintOp::MakeVolatile).unwrap();
            ram.mem().write_obj(p, GuestAddress(p * 4096)).unwrap();
        }
        // The guest says 15..20 have been idle longest.
        for p in 15..20 {
            table.set_entry_bits_for_test(p, v | 6 << AGE_SHIFT);
        }
        // Garbage: age bits on stable frames, and on entries the host
        // must never claim (BUSY or DISCARDED the guest wrote itself).
        for p in 30..36 {
            ram.mem().write_obj(p, GuestAddress(p * 4096)).unwrap();
            let junk = [
                0x1c,
                0x1c | BUSY | v,
                0x1c | DISCARDED | v,
                0x9f,
                0x5e,
                0x3c,
            ][(p - 30) as usize];
            table.set_entry_bits_for_test(p, junk);
        }
        let mut ages = Ages::new(frames, VictimOrder::GuestAge);
        ages.observe(&table, &resident);
        // A pass by the ages for at most `want` pages.
        let mut by_age = |want| {
            discard_pass_ordered(
                &table,
                &mut d,
                &resident,
                want,
                Method::Auto,
                None,
                Some(&ages),
            )
        };
        let r = by_age(5);
        assert_eq!(r.pages, 5);
        for p in 15..20 {
            assert!(table.is_discarded(p), "frame {p}: idle longest, taken");
        }
        for p in 10..15 {
            assert!(!table.is_discarded(p), "frame {p}: younger, kept");
            assert_eq!(
                ram.mem().read_obj::<u64>(GuestAddress(p * 4096)).unwrap(),
                p
            );
        }
        // Everything else goes; never a frame whose entry is not claimable.
        let r = by_age(u64::MAX);
        assert_eq!(r.pages, 5, "10..15 and nothing of 30..36");
        for p in 30..36 {
            assert_eq!(
                ram.mem().read_obj::<u64>(GuestAddress(p * 4096)).unwrap(),
                p,
                "frame {p} kept its contents"
            );
        }
    }

    /// Records what it was asked to arm; refuses runs from `refuse_from`.
    struct FakeArming {
        refuse_from: u64,
        armed: Mutex<Vec<Run>>,
        disarmed: Mutex<Vec<Run>>,
    }

    impl Arming for FakeArming {
        fn arm(&self, run: Run) -> bool {
            if run.pfn >= self.refuse_from {
                return false;
            }
            self.armed.lock().unwrap().push(run);
            true
        }
        fn disarm(&self, run: Run) {
            self.disarmed.lock().unwrap().push(run);
        }
    }

    #[test]
    fn only_volatile_runs_are_armed_and_refused_runs_are_kept() {
        let (ram, table, mut d) = fixture();
        let frames = ram.frames();
        table.apply_range(10, 3, HintOp::SetUnused).unwrap();
        for p in [20, 21, 22, 30] {
            table.apply(p, HintOp::MakeVolatile).unwrap();
        }
        let mut resident = ResidentMap::new(frames);
        (0..frames).for_each(|p| resident.set(p));
        let arming = FakeArming {
            refuse_from: 30,
            armed: Mutex::new(Vec::new()),
            disarmed: Mutex::new(Vec::new()),
        };
        let r = discard_pass_ordered(
            &table,
            &mut d,
            &resident,
            u64::MAX,
            Method::Auto,
            Some(&arming),
            None,
        );
        assert_eq!((r.pages, r.failed), (6, 1));
        assert_eq!(*arming.armed.lock().unwrap(), [Run { pfn: 20, count: 3 }]);
        assert!(arming.disarmed.lock().unwrap().is_empty());
        for p in [10, 11, 12, 20, 21, 22] {
            assert!(table.is_discarded(p), "frame {p}");
        }
        assert!(
            !table.is_discarded(30),
            "a run that cannot be armed is kept"
        );
        assert_eq!(table.state(30), Some(PageState::Volatile));
    }
}
