//! Exhaustive concurrency check of the shared page-state table's protocol
//! (`pagehint_abi::state_table`), on the real entry code run over loom's
//! atomics: every interleaving (within loom's bounds) of the guest's steps
//! against the host's.
//!
//! Steps modelled (all of them `state_table`'s own code):
//! - guest: `guest_release` (to Unused or Volatile), `guest_make_stable`
//!   (and the cache hit's one-swap `guest_try_make_stable` before it),
//!   `guest_check_writable` (with `POTENTIALLY_VOLATILE`), and writes to a
//!   page mapped writable, which set the frame's bit in KVM's dirty log (a
//!   write to a dropped page is a discard fault: made stable, read again,
//!   written again); a page it was told was dropped is read again from the
//!   disk (the block device fills it, then clears its dirty bit), and one
//!   it writes back is made stable first (the block device clears the
//!   dirty bit, then copies the page to the disk);
//! - the reclaimer's Unused and Volatile passes: `host_try_claim`,
//!   `host_arm` (with the discard-fault registration), the drop, then
//!   `host_finish`, or `host_abort` (unregistered) when the drop fails;
//! - the reclaimer's Potentially volatile pass, as `hypervisor/src/reclaim/
//!   pv.rs` runs it: with the guest's vCPU paused, it reads the dirty log
//!   and `host_demote_written`s a written frame, or claims, arms and drops
//!   a clean one (and, as `FrameTable::demote_written` allows, a pass that
//!   claims first and demotes its own claim); the pause holds off the
//!   guest's writes to memory, not its entry steps (more interleavings
//!   than a paused vCPU allows, never fewer);
//! - the livelock breaker (or any zero fill without a discard fault), in
//!   `DiscardFaults::zero_fill`'s order: it reads the entry, and only if
//!   the frame is still registered (so still missing: the handler is the
//!   only thread that fills a registered frame) marks it
//!   (`host_zero_filled`, one compare-and-swap from the value read), then
//!   backs it with zeroes and unregisters it;
//! - the guest's `SET_STABLE` applied by the host (`host_set_stable`, i.e.
//!   `after_host_hint`), then its unregistration.
//!
//! What must hold in every interleaving:
//! - the guest never sees a page intact ("not discarded") whose contents
//!   the host dropped, and is never told of a drop when its contents are
//!   there: contents are checked after every stable-making step;
//! - every drop is reported to the guest exactly once (or is still marked
//!   on the entry at the end): none lost, none reported twice (a zero fill
//!   that marks the entry counts as a drop);
//! - no write the guest made is lost: a page it wrote is dropped only once
//!   the write reached the disk, so reading it again gives the write back;
//! - the guest is never told a frame is unregistered ("not armed") while
//!   the host holds its discard-fault registration (it would never send
//!   the `SET_STABLE` that undoes it);
//! - `SET_STABLE` reports a drop exactly when the contents were dropped,
//!   and leaves the entry Stable with neither ARMED nor DISCARDED;
//! - the host never drops a frame twice without the guest taking it back
//!   in between, and never drops a Stable one; a claimed written frame is
//!   always demoted;
//! - both sides finish (a guest waiting on BUSY is never stuck: loom fails
//!   a model whose threads cannot all complete).
//!
//! This model found a defect of the zero fill as first written (mark
//! after the fill, retrying on whatever the entry held): a frame the guest
//! took back, refilled and freed in between was marked DISCARDED while its
//! contents were there
//! ([`a_zero_fill_never_marks_a_frame_refilled_meanwhile`]; the mutations
//! `mutation_a_zero_fill_that_marks_whatever_the_entry_holds` and
//! `mutation_a_zero_fill_marked_after_the_fill` are that code).
//!
//! Each check has teeth: the `mutation_*` tests run the same model on a
//! broken step (or a broken reclaimer) and must fail with the message of
//! the invariant it breaks.

use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use pagehint_abi::page_state::PageState::{self, PotentiallyVolatile, Stable, Unused, Volatile};
use pagehint_abi::state_table::{
    after_host_hint, claimable, guest_check_writable, guest_make_stable, guest_release,
    guest_try_make_stable, host_abort, host_arm, host_demote_written, host_finish, host_set_stable,
    host_try_claim, host_zero_filled, state_of, EntryCell, Taken, ARMED, BUSY, DISCARDED,
    STATE_MASK,
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

/// The frame's contents as the disk holds them (and the guest first had).
const DATA: u64 = 0xc0ff_ee00;
/// What the guest writes into a page mapped writable.
const WRITTEN: u64 = 0xc0ff_ee01;
/// What a new owner fills an allocated frame with.
const FRESH: u64 = 0xf00d;
/// The registration invariant's message.
const UNREGISTERED: &str = "the guest does not know of the host's discard-fault registration";

/// A frame: its entry, its contents (0 once the host dropped them), and
/// what the rest of the machine knows about it.
struct Frame {
    entry: Cell,
    contents: AtomicU64,
    /// The frame's block on the disk.
    disk: AtomicU64,
    /// What the guest last put in the frame (only the guest writes it).
    written: AtomicU64,
    /// The frame's bit in KVM's dirty log: set by a guest write, cleared
    /// by the block device.
    dirty: AtomicBool,
    /// The host's discard-fault registration (its `REGISTERED` mark).
    registered: AtomicBool,
    /// Held by the guest's vCPU while it writes guest memory, and by the
    /// reclaimer while it has every vCPU paused.
    vcpu: Mutex<()>,
    /// Drops the reclaimer made.
    drops: AtomicU64,
    /// Drops a zero fill marked on the entry.
    zero_marks: AtomicU64,
}

/// KVM's dirty log is read, set and cleared under KVM's own locks: every
/// reading sees the latest change (read-modify-writes, never a stale
/// value).
fn read_log(f: &Frame) -> bool {
    f.dirty.fetch_or(false, Ordering::AcqRel)
}

fn set_log(f: &Frame, written: bool) {
    f.dirty.swap(written, Ordering::AcqRel);
}

impl Frame {
    fn new(entry: u8) -> Arc<Self> {
        Arc::new(Self {
            entry: Cell(AtomicU8::new(entry)),
            contents: AtomicU64::new(DATA),
            disk: AtomicU64::new(DATA),
            written: AtomicU64::new(DATA),
            dirty: AtomicBool::new(false),
            registered: AtomicBool::new(entry & ARMED != 0),
            vcpu: Mutex::new(()),
            drops: AtomicU64::new(0),
            zero_marks: AtomicU64::new(0),
        })
    }
}

/// The host steps the model runs: the real ones, or a mutation.
#[derive(Clone, Copy)]
struct Steps {
    zero_filled: fn(&Cell, u8) -> bool,
    /// The zero fill marks the entry after the fill instead of before.
    mark_after_fill: bool,
    demote_written: fn(&Cell) -> bool,
    set_stable: fn(&Cell) -> Taken,
    /// The reclaimer's pass over Potentially volatile frames.
    pv_pass: fn(&Frame, &Steps),
}

fn real_zero_filled(c: &Cell, seen: u8) -> bool {
    host_zero_filled(c, seen)
}

fn real_demote_written(c: &Cell) -> bool {
    host_demote_written(c)
}

fn real_set_stable(c: &Cell) -> Taken {
    host_set_stable(c)
}

/// `state_table`'s code, unchanged.
const REAL: Steps = Steps {
    zero_filled: real_zero_filled,
    mark_after_fill: false,
    demote_written: real_demote_written,
    set_stable: real_set_stable,
    pv_pass,
};

/// What the host runs besides the guest.
#[derive(Clone, Copy)]
struct Host {
    /// Reclaimer passes over `classes`.
    passes: usize,
    classes: &'static [PageState],
    /// The reclaimer's first drop fails (its claim is aborted).
    fail: bool,
    /// A thread that touches the frame and, if its contents are gone,
    /// backs it with zeroes (the livelock breaker).
    zero_fill: bool,
}

const VOLATILE_PASSES: &[PageState] = &[Unused, Volatile];
const PV_PASSES: &[PageState] = &[PotentiallyVolatile];

impl Host {
    const fn reclaimer(passes: usize) -> Self {
        Self {
            passes,
            classes: VOLATILE_PASSES,
            fail: false,
            zero_fill: false,
        }
    }
}

// ---- the host ----

/// Registers the claimed frame for discard faults and arms its entry.
fn arm(f: &Frame) {
    f.registered.store(true, Ordering::Release);
    host_arm(&f.entry);
}

/// Drops the claimed frame's contents and ends the claim.
fn drop_contents(f: &Frame) {
    f.contents.store(0, Ordering::Release);
    f.drops.fetch_add(1, Ordering::AcqRel);
    assert!(host_finish(&f.entry), "lost BUSY while holding it");
}

/// The reclaimer: `passes` passes over `classes`. An Unused or Volatile
/// frame is claimed, armed (Volatile), dropped and finished, or, when
/// `fail` says so, its drop fails and the claim is aborted (and the
/// registration undone, as `Discarder::settle` does). Potentially volatile
/// frames go through `steps.pv_pass`.
fn reclaimer(f: &Frame, host: Host, steps: &Steps) {
    for pass in 0..host.passes {
        for &class in host.classes {
            if class == PotentiallyVolatile {
                (steps.pv_pass)(f, steps);
                continue;
            }
            if !host_try_claim(&f.entry, class) {
                continue;
            }
            assert_ne!(state_of(f.entry.load()), Stable, "claimed a stable frame");
            if class == Volatile {
                arm(f);
            }
            if host.fail && pass == 0 {
                f.registered.store(false, Ordering::Release);
                host_abort(&f.entry);
                continue;
            }
            drop_contents(f);
        }
    }
}

/// The pass over Potentially volatile frames, as `reclaim/pv.rs` walks
/// them: every vCPU paused, one reading of the dirty log, then a frame
/// that looks claimable is demoted if its bit is set, else claimed, armed
/// and dropped; the vCPUs resume after the drop.
fn pv_pass(f: &Frame, steps: &Steps) {
    let _paused = f.vcpu.lock().unwrap();
    let written = read_log(f);
    pv_walk(f, steps, written);
}

fn pv_walk(f: &Frame, steps: &Steps, written: bool) {
    if !claimable(f.entry.load(), PotentiallyVolatile) {
        return;
    }
    if written {
        (steps.demote_written)(&f.entry);
        return;
    }
    if host_try_claim(&f.entry, PotentiallyVolatile) {
        arm(f);
        drop_contents(f);
    }
}

/// The same pass, claiming first and reading the log with the claim held
/// (`FrameTable::demote_written` ends such a claim): a written frame's
/// claim must end in Stable.
fn pv_pass_claiming_first(f: &Frame, steps: &Steps) {
    let _paused = f.vcpu.lock().unwrap();
    if !host_try_claim(&f.entry, PotentiallyVolatile) {
        return;
    }
    if read_log(f) {
        assert!(
            (steps.demote_written)(&f.entry),
            "a claimed written frame was not demoted"
        );
        return;
    }
    arm(f);
    drop_contents(f);
}

/// The livelock breaker (or a fault of a thread that runs no vCPU), as
/// `DiscardFaults::zero_fill` and `FrameTable::mark_zero_filled` run it:
/// a touch that finds the page missing; the entry read; then, only for a
/// frame still registered (nobody but this thread brings a registered
/// page back), the mark from the value read; then the fill (the contents
/// stay 0) and the end of the registration.
fn zero_filler(f: &Frame, steps: &Steps) {
    // The fault: a touch finds the page missing.
    if f.contents.load(Ordering::Acquire) != 0 {
        return;
    }
    let seen = f.entry.load();
    if !f.registered.load(Ordering::Acquire) {
        return;
    }
    let mark = || {
        if (steps.zero_filled)(&f.entry, seen) {
            f.zero_marks.fetch_add(1, Ordering::AcqRel);
        }
    };
    if !steps.mark_after_fill {
        mark();
    }
    f.registered.store(false, Ordering::Release);
    if steps.mark_after_fill {
        mark();
    }
}

// ---- the guest ----

/// Checks what a stable-making step told the guest against the frame,
/// reads a dropped page again from the disk; the drops it was told of.
fn learn(f: &Frame, t: Taken) -> u64 {
    let now = f.contents.load(Ordering::Acquire);
    let written = f.written.load(Ordering::Acquire);
    let reported = if t.discarded {
        assert_eq!(now, 0, "told discarded, but the contents were there");
        if t.armed {
            // Documented: an armed frame is reused only after SET_STABLE,
            // which ends its registration (the bundled guest reads the
            // page again into a frame an allocation hands out so).
            let again = host_set_stable(&f.entry);
            assert!(!again.discarded, "a drop reported twice");
            f.registered.store(false, Ordering::Release);
        }
        let disk = f.disk.load(Ordering::Acquire);
        assert_eq!(disk, written, "a write the guest made was lost");
        f.contents.store(disk, Ordering::Release);
        // The block device clears the dirty bit after the fill.
        set_log(f, false);
        1
    } else {
        assert_eq!(
            now, written,
            "told intact, but the host dropped the contents"
        );
        0
    };
    if f.registered.load(Ordering::Acquire) {
        assert!(t.armed, "{UNREGISTERED}: told not armed");
    }
    reported
}

/// The guest makes the frame stable (`MAKE_STABLE`, or an allocation
/// through the table).
fn take(f: &Frame) -> u64 {
    let t = guest_make_stable(&f.entry);
    learn(f, t)
}

/// The guest releases the frame as `state` and takes it again: what the
/// taking told.
fn release_take(f: &Frame, state: PageState) -> u64 {
    guest_release(&f.entry, state);
    take(f)
}

/// The guest takes the frame, releases it as `state` and takes it once
/// more: what both takings told.
fn take_release_take(f: &Frame, state: PageState) -> u64 {
    let reported = take(f);
    reported + release_take(f, state)
}

/// The guest maps the page writable (`CHECK_WRITABLE` with
/// `POTENTIALLY_VOLATILE`). A page it made stable is checked as by
/// [`take`]; one it left Potentially volatile (intact when it looked) is
/// still the host's to drop, so there is nothing to check yet: a write to
/// it checks.
fn check_writable(f: &Frame) -> u64 {
    let t = guest_check_writable(&f.entry, true);
    if t.discarded {
        learn(f, t)
    } else {
        0
    }
}

/// The guest writes `v` through a writable mapping: KVM sets the frame's
/// dirty bit before the write lands. A touch of a dropped page is a
/// discard fault: the guest makes it stable (learning of the drop), reads
/// it again and writes once more.
fn write(f: &Frame, v: u64) -> u64 {
    let mut reported = 0;
    loop {
        let running = f.vcpu.lock().unwrap();
        if f.contents.load(Ordering::Acquire) != 0 {
            set_log(f, true);
            f.contents.store(v, Ordering::Release);
            f.written.store(v, Ordering::Release);
            return reported;
        }
        drop(running);
        reported += take(f);
    }
}

/// The guest writes the page back (`mm/writeback.rs`): stable first, then
/// the block device clears the dirty bit and reads the page to the disk.
fn write_back(f: &Frame) -> u64 {
    let reported = take(f);
    set_log(f, false);
    let c = f.contents.load(Ordering::Acquire);
    f.disk.store(c, Ordering::Release);
    reported
}

/// The guest allocates the frame with `SET_STABLE` (a `HINT_BATCH` entry
/// the host applies, then unregisters the frame); the new owner fills it.
fn allocate(f: &Frame, steps: &Steps) -> u64 {
    let t = (steps.set_stable)(&f.entry);
    f.registered.store(false, Ordering::Release);
    assert_eq!(
        f.entry.load(),
        Stable as u8,
        "SET_STABLE must leave the entry Stable with no ARMED and no DISCARDED"
    );
    let now = f.contents.load(Ordering::Acquire);
    let reported = if t.discarded {
        assert_eq!(now, 0, "told discarded, but the contents were there");
        1
    } else {
        assert_ne!(now, 0, "told intact, but the host dropped the contents");
        0
    };
    f.contents.store(FRESH, Ordering::Release);
    f.written.store(FRESH, Ordering::Release);
    reported
}

/// The bundled guest's allocation of a frame it had freed
/// (`hinting.rs`): made stable through the table, then `SET_STABLE` only
/// if armed, which has nothing left to report.
fn allocate_like_the_guest(f: &Frame, steps: &Steps) -> u64 {
    let t = guest_make_stable(&f.entry);
    let reported = learn(f, t);
    if t.armed {
        assert_eq!(allocate(f, steps), 0, "a drop reported twice");
    }
    reported
}

// ---- the model ----

/// After every thread finished: every drop reported once or pending, and
/// what the guest last wrote is in the frame, or (dropped, pending) on
/// the disk for a page it may read again.
fn check_end(f: &Frame, reported: u64) {
    let drops = f.drops.load(Ordering::Acquire) + f.zero_marks.load(Ordering::Acquire);
    let v = f.entry.load();
    let pending = v & DISCARDED != 0;
    assert_eq!(
        drops,
        reported + u64::from(pending),
        "a drop lost or reported twice"
    );
    let written = f.written.load(Ordering::Acquire);
    if !pending {
        assert_eq!(
            f.contents.load(Ordering::Acquire),
            written,
            "a write the guest made was lost"
        );
    } else if matches!(state_of(v), Volatile | PotentiallyVolatile) {
        assert_eq!(
            f.disk.load(Ordering::Acquire),
            written,
            "a write the guest made was lost"
        );
    }
    if f.registered.load(Ordering::Acquire) {
        assert_ne!(v & ARMED, 0, "{UNREGISTERED}: the entry lost ARMED");
    }
}

/// Loom's bound on preemptions per interleaving.
const PREEMPTIONS: usize = 4;

/// Every interleaving of `guest` (on a frame whose entry starts as
/// `start`) against `host`, with the host steps `steps`; `guest` returns
/// the drops it was told of.
fn model(
    start: u8,
    host: Host,
    steps: Steps,
    guest: impl Fn(&Frame, &Steps) -> u64 + Sync + Send + 'static,
) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(PREEMPTIONS);
    b.check(move || {
        let f = Frame::new(start);
        let h = {
            let f = f.clone();
            thread::spawn(move || reclaimer(&f, host, &steps))
        };
        let z = host.zero_fill.then(|| {
            let f = f.clone();
            thread::spawn(move || zero_filler(&f, &steps))
        });
        let reported = guest(&f, &steps);
        h.join().unwrap();
        if let Some(z) = z {
            z.join().unwrap();
        }
        check_end(&f, reported);
    });
}

/// The guest steps of the original model, against the Unused and
/// Volatile passes.
fn against_reclaimer(
    start: PageState,
    passes: usize,
    fail: bool,
    guest: impl Fn(&Frame, &Steps) -> u64 + Sync + Send + 'static,
) {
    let host = Host {
        fail,
        ..Host::reclaimer(passes)
    };
    model(start as u8, host, REAL, guest);
}

/// A cache hit on a volatile page against one discard.
#[test]
fn make_stable_against_a_discard() {
    against_reclaimer(Volatile, 1, false, |f, _| take(f));
}

/// The bundled guest's cache hit on a page its ageing made volatile: one
/// swap from the value read, the waiting loop only if that swap failed.
fn aged_hit(f: &Frame, make_stable: fn(&Cell) -> Taken) -> u64 {
    guest_release(&f.entry, Volatile);
    learn(f, make_stable(&f.entry))
}

fn one_swap_then_waiting(c: &Cell) -> Taken {
    guest_try_make_stable(c).unwrap_or_else(|| guest_make_stable(c))
}

/// Two hits against two passes: the second hit's load may find the
/// host's claim (the model's first load of a thread sees no store of
/// another, so one hit would only meet claims made after its load).
#[test]
fn cache_hits_against_discards() {
    against_reclaimer(Stable, 2, false, |f, _| {
        aged_hit(f, one_swap_then_waiting) + aged_hit(f, one_swap_then_waiting)
    });
}

/// The same against an aborted claim, then a hit against a zero fill.
#[test]
fn cache_hits_against_an_aborted_claim_and_a_zero_fill() {
    against_reclaimer(Stable, 2, true, |f, _| {
        aged_hit(f, one_swap_then_waiting) + aged_hit(f, one_swap_then_waiting)
    });
    model(Volatile as u8, ZERO_FILL, REAL, |f, _| {
        learn(f, one_swap_then_waiting(&f.entry))
    });
}

/// The one swap without the BUSY bit masked off the value it expects.
fn one_swap_from_a_busy_entry(c: &Cell) -> Taken {
    let cur = c.load();
    match c.cas(cur, Stable as u8 | (cur & ARMED)) {
        Ok(_) => Taken {
            discarded: cur & DISCARDED != 0,
            armed: cur & ARMED != 0,
        },
        Err(_) => guest_make_stable(c),
    }
}

/// It takes the frame back from under a discard in progress.
#[test]
#[should_panic(expected = "lost BUSY while holding it")]
fn mutation_a_cache_hit_that_swaps_a_busy_entry() {
    against_reclaimer(Stable, 2, false, |f, _| {
        aged_hit(f, one_swap_from_a_busy_entry) + aged_hit(f, one_swap_from_a_busy_entry)
    });
}

/// The page's whole life on the guest side (volatile, used, freed,
/// allocated again) against two reclaimer passes.
#[test]
fn a_frames_life_against_two_passes() {
    against_reclaimer(Stable, 2, false, |f, _| {
        guest_release(&f.entry, Volatile);
        let reported = take_release_take(f, Unused);
        assert_eq!(state_of(f.entry.load()), Stable);
        reported
    });
}

/// A failed drop (aborted claim) leaves the contents and tells nothing.
#[test]
fn an_aborted_claim_reports_nothing() {
    against_reclaimer(Volatile, 2, true, |f, _| take_release_take(f, Volatile));
}

/// A discarded volatile frame freed without being looked at: the marks
/// travel with it and the allocation that takes it learns of the drop
/// (after the reclaimer or during its pass: every interleaving).
#[test]
fn a_drop_survives_a_free_and_reaches_the_next_allocation() {
    against_reclaimer(Volatile, 1, false, |f, _| release_take(f, Unused));
}

// ---- the zero fill (livelock breaker) ----

const ZERO_FILL: Host = Host {
    zero_fill: true,
    ..Host::reclaimer(1)
};

/// A cache hit on a volatile page against a discard and a zero fill of
/// the dropped page: the guest still learns of the drop.
fn zero_fill_then_make_stable(steps: Steps) {
    model(Volatile as u8, ZERO_FILL, steps, |f, _| take(f));
}

#[test]
fn a_zero_fill_never_hides_a_drop() {
    zero_fill_then_make_stable(REAL);
}

/// The same, the frame freed first (the marks travel with it).
#[test]
fn a_zero_filled_frame_freed_still_reports_its_drop() {
    model(Volatile as u8, ZERO_FILL, REAL, |f, _| {
        release_take(f, Unused)
    });
}

/// The guest takes the dropped frame back (told of the drop), reads it
/// again, frees it and takes it once more, against a discard and a zero
/// fill. The zero fill as first written (fill, then mark whatever the
/// entry held) marked the freed, refilled frame DISCARDED: the next
/// allocation was told "reads as zeroes" while the old contents were
/// there (the bundled guest then skips clearing it). The interleaving:
/// the reclaimer drops the frame (Volatile|ARMED|DISCARDED); the breaker
/// finds it missing and fills it; the guest makes it stable (discarded),
/// reads it again and frees it (Unused|ARMED); the breaker marks it
/// (Unused|ARMED|DISCARDED); the guest takes it: "discarded", contents
/// intact. Marking before the fill, only while registered and only from
/// the value read, closes it.
fn refilled_meanwhile(steps: Steps) {
    model(Volatile as u8, ZERO_FILL, steps, |f, _| {
        take_release_take(f, Unused)
    });
}

#[test]
fn a_zero_fill_never_marks_a_frame_refilled_meanwhile() {
    refilled_meanwhile(REAL);
}

/// The first zero-fill mark: whatever the entry holds when it runs.
fn zero_filled_whatever_the_entry_holds(c: &Cell, _seen: u8) -> bool {
    let mut cur = c.load();
    loop {
        if cur & (BUSY | DISCARDED) != 0 || cur & STATE_MASK == Stable as u8 {
            return false;
        }
        match c.cas(cur, cur | DISCARDED) {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
}

#[test]
#[should_panic(expected = "told discarded, but the contents were there")]
fn mutation_a_zero_fill_that_marks_whatever_the_entry_holds() {
    refilled_meanwhile(Steps {
        zero_filled: zero_filled_whatever_the_entry_holds,
        ..REAL
    });
}

#[test]
#[should_panic(expected = "told discarded, but the contents were there")]
fn mutation_a_zero_fill_marked_after_the_fill() {
    refilled_meanwhile(Steps {
        zero_filled: zero_filled_whatever_the_entry_holds,
        mark_after_fill: true,
        ..REAL
    });
}

/// The old breaker: it made the entry Stable with DISCARDED cleared.
fn zero_filled_making_stable(c: &Cell, _seen: u8) -> bool {
    let mut cur = c.load();
    loop {
        if cur & BUSY != 0 || cur & STATE_MASK == Stable as u8 {
            return false;
        }
        match c.cas(cur, Stable as u8) {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
}

#[test]
#[should_panic(expected = "told intact, but the host dropped the contents")]
fn mutation_a_zero_fill_that_makes_the_frame_stable() {
    zero_fill_then_make_stable(Steps {
        zero_filled: zero_filled_making_stable,
        ..REAL
    });
}

// ---- Potentially volatile frames and the dirty log ----

/// A clean page-cache page, dropped once before (ARMED, registered), that
/// the guest maps writable, writes, writes back and maps writable again,
/// against two Potentially volatile passes.
fn pv_life(steps: Steps) {
    let host = Host {
        passes: 2,
        classes: PV_PASSES,
        fail: false,
        zero_fill: false,
    };
    model(Volatile as u8 | ARMED, host, steps, |f, _| {
        let mut reported = check_writable(f);
        reported += write(f, WRITTEN);
        reported += write_back(f);
        guest_release(&f.entry, Volatile);
        reported + check_writable(f)
    });
}

#[test]
fn a_written_potentially_volatile_page_is_never_lost() {
    pv_life(REAL);
}

/// The claimed branch of `host_demote_written`.
#[test]
fn a_claimed_written_page_is_demoted() {
    pv_life(Steps {
        pv_pass: pv_pass_claiming_first,
        ..REAL
    });
}

/// A demote that drops the ARMED mark it must keep.
fn demote_dropping_armed(c: &Cell) -> bool {
    let mut cur = c.load();
    loop {
        if state_of(cur) != PotentiallyVolatile || cur & DISCARDED != 0 {
            return false;
        }
        match c.cas(cur, Stable as u8) {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
}

#[test]
#[should_panic(expected = "the guest does not know of the host's discard-fault registration")]
fn mutation_a_demote_that_drops_the_armed_mark() {
    pv_life(Steps {
        demote_written: demote_dropping_armed,
        ..REAL
    });
}

/// A pass that drops every clean-looking frame without reading the log.
fn pv_pass_ignoring_the_log(f: &Frame, steps: &Steps) {
    let _paused = f.vcpu.lock().unwrap();
    pv_walk(f, steps, false);
}

#[test]
#[should_panic(expected = "a write the guest made was lost")]
fn mutation_a_pv_pass_that_ignores_the_dirty_log() {
    pv_life(Steps {
        pv_pass: pv_pass_ignoring_the_log,
        ..REAL
    });
}

/// A pass that reads the log before it pauses the vCPUs.
fn pv_pass_reading_the_log_unpaused(f: &Frame, steps: &Steps) {
    let written = read_log(f);
    let _paused = f.vcpu.lock().unwrap();
    pv_walk(f, steps, written);
}

#[test]
#[should_panic(expected = "a write the guest made was lost")]
fn mutation_a_pv_pass_that_reads_the_log_before_the_pause() {
    pv_life(Steps {
        pv_pass: pv_pass_reading_the_log_unpaused,
        ..REAL
    });
}

// ---- SET_STABLE ----

/// A volatile frame (dropped or not, during or before this) freed and
/// allocated again with `SET_STABLE`.
fn free_then_set_stable(steps: Steps) {
    model(Volatile as u8, Host::reclaimer(1), steps, |f, s| {
        guest_release(&f.entry, Unused);
        allocate(f, s)
    });
}

#[test]
fn set_stable_reports_a_drop_exactly_when_there_was_one() {
    free_then_set_stable(REAL);
}

/// Allocated, used, freed and allocated again, against two passes.
#[test]
fn a_frames_life_with_set_stable() {
    model(Volatile as u8, Host::reclaimer(2), REAL, |f, s| {
        guest_release(&f.entry, Unused);
        let mut reported = allocate(f, s);
        guest_release(&f.entry, Unused);
        reported += allocate(f, s);
        reported
    });
}

/// The bundled guest's way: through the table, then `SET_STABLE` if armed.
#[test]
fn the_guests_allocation_sends_set_stable_when_armed() {
    model(Volatile as u8, Host::reclaimer(1), REAL, |f, s| {
        guest_release(&f.entry, Unused);
        allocate_like_the_guest(f, s)
    });
}

/// `host_set_stable`'s body with the entry it leaves and what it reports
/// taken from the arguments.
fn set_stable_with(c: &Cell, after: fn(u8) -> u8, reports: bool) -> Taken {
    let settled = |c: &Cell| loop {
        let v = c.load();
        if v & BUSY == 0 {
            break v;
        }
        c.relax();
    };
    let mut cur = settled(c);
    loop {
        match c.cas(cur, after(cur)) {
            Ok(_) => {
                return Taken {
                    discarded: reports && cur & DISCARDED != 0,
                    armed: cur & ARMED != 0,
                }
            }
            Err(_) => cur = settled(c),
        }
    }
}

fn set_stable_not_reporting(c: &Cell) -> Taken {
    set_stable_with(c, |cur| after_host_hint(cur, Stable, true, true), false)
}

#[test]
#[should_panic(expected = "told intact, but the host dropped the contents")]
fn mutation_a_set_stable_that_does_not_report() {
    free_then_set_stable(Steps {
        set_stable: set_stable_not_reporting,
        ..REAL
    });
}

/// `after_host_hint` broken: it keeps DISCARDED whatever `reports` says.
fn after_hint_keeping_discarded(cur: u8, to: PageState, reports: bool, unregisters: bool) -> u8 {
    after_host_hint(cur, to, reports, unregisters) | (cur & DISCARDED)
}

fn set_stable_keeping_discarded(c: &Cell) -> Taken {
    set_stable_with(
        c,
        |cur| after_hint_keeping_discarded(cur, Stable, true, true),
        true,
    )
}

#[test]
#[should_panic(expected = "SET_STABLE must leave the entry Stable with no ARMED and no DISCARDED")]
fn mutation_after_host_hint_keeping_discarded() {
    free_then_set_stable(Steps {
        set_stable: set_stable_keeping_discarded,
        ..REAL
    });
}

/// `after_host_hint` called as for a hint that does not unregister.
fn set_stable_keeping_armed(c: &Cell) -> Taken {
    set_stable_with(c, |cur| after_host_hint(cur, Stable, true, false), true)
}

#[test]
#[should_panic(expected = "SET_STABLE must leave the entry Stable with no ARMED and no DISCARDED")]
fn mutation_a_set_stable_that_keeps_the_armed_mark() {
    free_then_set_stable(Steps {
        set_stable: set_stable_keeping_armed,
        ..REAL
    });
}
