//! Exhaustive concurrency check of the shared page-state table's protocol
//! (`pagehint_abi::state_table`), on the real entry code run over loom's
//! atomics: every interleaving (within loom's bounds) of the guest's steps
//! against the reclaimer's claim, arm, drop and finish (or abort).
//!
//! What must hold in every interleaving:
//! - the guest never sees a page intact ("not discarded") whose contents
//!   the host dropped: contents are checked after every stable-making step;
//! - every drop is reported to the guest exactly once (or is still marked
//!   on the entry at the end): none lost, none reported twice;
//! - the host never drops a frame twice without the guest taking it back
//!   in between, and never drops a Stable one;
//! - both sides finish (a guest waiting on BUSY is never stuck: loom fails
//!   a model whose threads cannot all complete).

use loom::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use loom::sync::Arc;
use loom::thread;
use pagehint_abi::page_state::PageState::{self, Stable, Unused, Volatile};
use pagehint_abi::state_table::{
    guest_make_stable, guest_release, host_abort, host_arm, host_finish, host_try_claim, state_of,
    EntryCell, DISCARDED,
};

/// One frame's entry, on loom's atomics.
struct Cell(AtomicU8);

impl EntryCell for Cell {
    fn load(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
    fn store(&self, v: u8) {
        self.0.store(v, Ordering::Release)
    }
    fn cas(&self, current: u8, new: u8) -> Result<u8, u8> {
        self.0
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }
    fn fetch_or(&self, bits: u8) -> u8 {
        self.0.fetch_or(bits, Ordering::AcqRel)
    }
    fn fetch_and(&self, bits: u8) -> u8 {
        self.0.fetch_and(bits, Ordering::AcqRel)
    }
    fn relax(&self) {
        thread::yield_now()
    }
}

/// A frame: its entry and its contents (0 once the host dropped them).
struct Frame {
    entry: Cell,
    contents: AtomicU64,
    /// Drops the host made.
    drops: AtomicU64,
}

const DATA: u64 = 0xc0ff_ee00;

impl Frame {
    fn new(state: PageState) -> Arc<Self> {
        Arc::new(Self {
            entry: Cell(AtomicU8::new(state as u8)),
            contents: AtomicU64::new(DATA),
            drops: AtomicU64::new(0),
        })
    }
}

/// The reclaimer: `passes` attempts to claim the frame as Unused or
/// Volatile; a claimed frame is armed (Volatile), dropped and finished, or,
/// when `fail` says so, its drop fails and the claim is aborted.
fn reclaimer(f: &Frame, passes: usize, fail: bool) {
    for pass in 0..passes {
        for class in [Unused, Volatile] {
            if !host_try_claim(&f.entry, class) {
                continue;
            }
            assert_ne!(state_of(f.entry.load()), Stable, "claimed a stable frame");
            if class == Volatile {
                host_arm(&f.entry);
            }
            if fail && pass == 0 {
                host_abort(&f.entry);
                continue;
            }
            f.contents.store(0, Ordering::Release);
            f.drops.fetch_add(1, Ordering::AcqRel);
            assert!(host_finish(&f.entry), "lost BUSY while holding it");
        }
    }
}

/// The guest makes the frame stable and checks what it was told against
/// the contents; refills a dropped frame (as a disk re-read would) and
/// returns how many drops it was told of.
fn take(f: &Frame) -> u64 {
    let t = guest_make_stable(&f.entry);
    let now = f.contents.load(Ordering::Acquire);
    if t.discarded {
        assert_eq!(now, 0, "told discarded, but the contents were there");
        f.contents.store(DATA, Ordering::Release);
        1
    } else {
        assert_eq!(now, DATA, "told intact, but the host dropped the contents");
        0
    }
}

fn check_totals(f: &Frame, reported: u64) {
    let drops = f.drops.load(Ordering::Acquire);
    let pending = u64::from(f.entry.load() & DISCARDED != 0);
    assert_eq!(drops, reported + pending, "a drop lost or reported twice");
}

/// Every interleaving of `guest` (on a frame that starts in `start`)
/// against a reclaimer making `passes` passes (`fail`: its first drop
/// fails); `guest` returns the drops it was told of, checked against the
/// drops made.
fn against_reclaimer(
    start: PageState,
    passes: usize,
    fail: bool,
    guest: impl Fn(&Frame) -> u64 + Sync + Send + 'static,
) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(move || {
        let f = Frame::new(start);
        let h = {
            let f = f.clone();
            thread::spawn(move || reclaimer(&f, passes, fail))
        };
        let reported = guest(&f);
        h.join().unwrap();
        check_totals(&f, reported);
    });
}

/// A cache hit on a volatile page against one discard.
#[test]
fn make_stable_against_a_discard() {
    against_reclaimer(Volatile, 1, false, take);
}

/// The page's whole life on the guest side (volatile, used, freed,
/// allocated again) against two reclaimer passes.
#[test]
fn a_frames_life_against_two_passes() {
    against_reclaimer(Stable, 2, false, |f| {
        guest_release(&f.entry, Volatile);
        let mut reported = take(f);
        guest_release(&f.entry, Unused);
        reported += take(f);
        assert_eq!(state_of(f.entry.load()), Stable);
        reported
    });
}

/// A failed drop (aborted claim) leaves the contents and tells nothing.
#[test]
fn an_aborted_claim_reports_nothing() {
    against_reclaimer(Volatile, 2, true, |f| {
        let mut reported = take(f);
        guest_release(&f.entry, Volatile);
        reported += take(f);
        reported
    });
}

/// A discarded volatile frame freed without being looked at: the marks
/// travel with it and the allocation that takes it learns of the drop
/// (after the reclaimer or during its pass: every interleaving).
#[test]
fn a_drop_survives_a_free_and_reaches_the_next_allocation() {
    against_reclaimer(Volatile, 1, false, |f| {
        guest_release(&f.entry, Unused);
        take(f)
    });
}
