//! Tests of the frame table: hints against the transition table, claims,
//! discards reported exactly once, the registered mark, waiting on a
//! discard in progress, the MMIO hole, and the counts of a shared table
//! against a plain count after every kind of write.

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use PageState::*;

#[test]
fn hints_follow_the_transition_table() {
    let t = FrameTable::new(8, false);
    assert_eq!(t.counts().stable, 8);
    assert_eq!(t.apply(1, HintOp::SetUnused), Ok(HintOutcome::Applied));
    assert_eq!(
        t.apply(1, HintOp::MakeVolatile),
        Err(StateError::Illegal {
            pfn: 1,
            op: HintOp::MakeVolatile,
            from: Unused
        })
    );
    assert_eq!(t.state(1), Some(Unused), "illegal leaves it unchanged");
    assert_eq!(t.apply(2, HintOp::MakeVolatile), Ok(HintOutcome::Applied));
    assert_eq!(
        t.apply(8, HintOp::SetStable),
        Err(StateError::OutOfRange(8))
    );
    assert_eq!(
        t.apply(u64::MAX, HintOp::SetStable),
        Err(StateError::OutOfRange(u64::MAX))
    );
    let c = t.counts();
    assert_eq!((c.stable, c.unused, c.volatile, c.discarded), (6, 1, 1, 0));
    assert_eq!(
        t.apply_range(6, 3, HintOp::SetUnused),
        Err(StateError::OutOfRange(6))
    );
    assert_eq!(
        t.apply_range(u64::MAX, 2, HintOp::SetUnused),
        Err(StateError::OutOfRange(u64::MAX))
    );
    assert_eq!(
        t.apply_range(4, 4, HintOp::SetUnused),
        Ok(HintOutcome::Applied)
    );
    assert_eq!(t.counts().unused, 5);
}

#[test]
fn discards_are_reported_once_by_the_next_stable_making_hint() {
    let t = FrameTable::new(4, false);
    t.apply_range(0, 4, HintOp::SetUnused).unwrap();
    t.apply(3, HintOp::SetStable).unwrap();
    t.apply(3, HintOp::MakeVolatile).unwrap();
    assert!(!t.try_claim(0, Volatile), "wrong class");
    assert!(t.try_claim(0, Unused));
    assert!(!t.try_claim(0, Unused), "already busy");
    t.finish_discard(0);
    assert!(!t.try_claim(0, Unused), "already discarded");
    assert!(t.try_claim(3, Volatile));
    t.finish_discard(3);
    assert!(t.try_claim(1, Unused));
    t.abort_discard(1);
    assert!(!t.is_discarded(1));
    assert_eq!(t.counts().discarded, 2);
    // Freeing again keeps the mark; allocating reports it.
    assert_eq!(t.apply(0, HintOp::SetUnused), Ok(HintOutcome::Applied));
    assert_eq!(
        t.apply_range(0, 2, HintOp::SetStable),
        Ok(HintOutcome::Discarded)
    );
    assert_eq!(t.apply(0, HintOp::SetStable), Ok(HintOutcome::Applied));
    assert_eq!(t.apply(3, HintOp::MakeVolatile), Ok(HintOutcome::Applied));
    assert_eq!(
        t.apply(3, HintOp::CheckWritable),
        Ok(HintOutcome::Discarded)
    );
    assert_eq!(t.apply(3, HintOp::MakeStable), Ok(HintOutcome::Applied));
    assert!(!t.try_claim(3, Stable), "stable is never claimed");
    assert_eq!(
        (t.total_discards(), t.zero_fills(), t.counts().discarded),
        (2, 2, 0)
    );
}

#[test]
fn the_registered_mark_survives_hints_and_is_taken_once() {
    let t = FrameTable::new(4, false);
    t.apply(1, HintOp::MakeVolatile).unwrap();
    assert!(t.try_claim(1, Volatile));
    t.mark_registered(1);
    assert!(t.discard_fault_due(1), "busy volatile: being dropped");
    t.finish_discard(1);
    assert!(t.discard_fault_due(1) && t.is_registered(1));
    assert_eq!(t.apply(1, HintOp::SetUnused), Ok(HintOutcome::Applied));
    assert!(t.is_registered(1) && !t.discard_fault_due(1));
    assert_eq!(t.apply(1, HintOp::SetStable), Ok(HintOutcome::Discarded));
    assert!(t.take_registered(1));
    assert!(!t.take_registered(1), "taken exactly once");
    assert!(!t.take_registered(9), "out of range");
    // A zero fill (the livelock breaker, say) never hides a drop.
    t.apply(2, HintOp::MakeVolatile).unwrap();
    assert!(!t.mark_zero_filled(2), "not registered: never dropped");
    assert!(t.try_claim(2, Volatile));
    t.mark_registered(2);
    assert!(
        !t.mark_zero_filled(2),
        "busy: the claimer's finish marks it"
    );
    t.finish_discard(2);
    assert!(!t.mark_zero_filled(2), "discarded already");
    assert_eq!(t.state(2), Some(Volatile));
    assert!(t.is_discarded(2) && t.is_registered(2));
    // Told of the drop, made volatile again, still registered (missing):
    // a zero fill marks it again.
    assert_eq!(t.apply(2, HintOp::MakeStable), Ok(HintOutcome::Discarded));
    assert!(!t.mark_zero_filled(2), "stable: the guest was told");
    t.apply(2, HintOp::MakeVolatile).unwrap();
    assert!(t.mark_zero_filled(2));
    assert!(t.is_discarded(2) && t.state(2) == Some(Volatile));
    assert_eq!(t.apply(2, HintOp::SetStable), Ok(HintOutcome::Discarded));
    assert!(t.take_registered(2));
    t.apply(2, HintOp::MakeVolatile).unwrap();
    assert!(!t.mark_zero_filled(2), "unregistered: the page may be back");
    assert_eq!(t.counts().discarded, 0);
    assert!(!t.mark_zero_filled(99));
    // A claim aborted on a frame still registered from an earlier drop
    // (its new arming refused) keeps ARMED for the guest to see.
    t.apply(3, HintOp::MakeVolatile).unwrap();
    assert!(t.try_claim(3, Volatile));
    t.mark_registered(3);
    t.finish_discard(3);
    assert_eq!(t.apply(3, HintOp::MakeStable), Ok(HintOutcome::Discarded));
    t.apply(3, HintOp::MakeVolatile).unwrap();
    assert!(t.try_claim(3, Volatile));
    t.abort_discard(3);
    assert!(t.is_registered(3));
    let armed = |t: &FrameTable| t.cell(3).unwrap().load(Ordering::Acquire) & ARMED != 0;
    assert!(armed(&t), "the registration stays visible");
    assert_eq!(t.apply(3, HintOp::MakeStable), Ok(HintOutcome::Applied));
    assert_eq!(t.apply(3, HintOp::SetStable), Ok(HintOutcome::Applied));
    assert!(!armed(&t));
    assert!(t.take_registered(3));
}

#[test]
fn a_hint_waits_for_a_discard_in_progress() {
    let t = Arc::new(FrameTable::new(1, false));
    t.apply(0, HintOp::MakeVolatile).unwrap();
    assert!(t.try_claim(0, Volatile));
    let t2 = t.clone();
    let h = std::thread::spawn(move || t2.apply(0, HintOp::MakeStable));
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(!h.is_finished(), "the hint must wait for BUSY to clear");
    t.finish_discard(0);
    assert_eq!(h.join().unwrap(), Ok(HintOutcome::Discarded));
    assert_eq!(t.state(0), Some(Stable));
}

/// Two threads hint frames back and forth while a third discards:
/// every discard is reported exactly once, counts stay consistent.
#[test]
fn hints_and_discards_race_without_losing_reports() {
    const FRAMES: u64 = 64;
    const ROUNDS: u64 = 3000;
    let t = Arc::new(FrameTable::new(FRAMES as usize, false));
    let stop = Arc::new(AtomicBool::new(false));
    let reclaimer = {
        let (t, stop) = (t.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for p in 0..FRAMES {
                    for class in [Unused, Volatile] {
                        if t.try_claim(p, class) {
                            std::hint::spin_loop();
                            t.finish_discard(p);
                            n += 1;
                        }
                    }
                }
            }
            n
        })
    };
    let hinters: Vec<_> = (0..2u64)
        .map(|k| {
            let t = t.clone();
            std::thread::spawn(move || {
                let mut reported = 0u64;
                for r in 0..ROUNDS {
                    // Each thread owns half the frames, as guest CPUs
                    // own the frames they allocate.
                    let p = k * (FRAMES / 2) + r % (FRAMES / 2);
                    if t.apply(p, HintOp::SetUnused).is_err() {
                        return None;
                    }
                    if t.apply(p, HintOp::SetStable).ok()? == HintOutcome::Discarded {
                        reported += 1;
                    }
                    t.apply(p, HintOp::MakeVolatile).ok()?;
                    if t.apply(p, HintOp::MakeStable).ok()? == HintOutcome::Discarded {
                        reported += 1;
                    }
                }
                Some(reported)
            })
        })
        .collect();
    let reported: u64 = hinters
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .sum();
    stop.store(true, Ordering::Relaxed);
    let discards = reclaimer.join().unwrap();
    // Every frame ends Stable: each discard was reported exactly once.
    let c = t.counts();
    assert_eq!(c.stable, FRAMES);
    assert_eq!((c.unused, c.volatile, c.discarded), (0, 0, 0));
    assert_eq!(discards, t.total_discards());
    assert_eq!(reported, discards);
    assert_eq!(reported, t.zero_fills());
    for p in 0..FRAMES {
        assert_eq!(t.state(p), Some(Stable));
        assert!(!t.is_discarded(p));
    }
}

#[test]
fn frames_in_the_hole_are_not_ram() {
    let t = FrameTable::with_hole(100, 40..60, false);
    assert_eq!(t.counts().stable, 80);
    assert_eq!(t.apply(39, HintOp::SetUnused), Ok(HintOutcome::Applied));
    assert_eq!(
        t.apply(40, HintOp::SetUnused),
        Err(StateError::OutOfRange(40))
    );
    assert_eq!(t.state(59), None);
    assert_eq!(t.state(60), Some(PageState::Stable));
    // A range into the hole changes nothing.
    assert_eq!(
        t.apply_range(35, 10, HintOp::SetUnused),
        Err(StateError::OutOfRange(40))
    );
    assert_eq!(t.state(36), Some(PageState::Stable));
    assert!(!t.try_claim(45, PageState::Unused));
}

/// A BUSY bit without the host's claim is the guest's: a hint takes
/// HINTING and acts on it, and while it does no claim starts, so the same
/// byte cannot turn into a real claim's under its compare-and-swap (an
/// aborted claim made again in between would leave exactly that byte).
#[test]
fn a_hint_on_a_guests_busy_bit_blocks_claims_until_it_is_done() {
    let t = FrameTable::new(4, false);
    t.apply(1, HintOp::MakeVolatile).unwrap();
    assert!(t.try_claim(1, Volatile));
    // The claim's mark gone, its BUSY left: as if the guest had written it.
    t.unclaim(1);
    let (cell, marks) = (t.cell(1).unwrap(), t.host_marks(1).unwrap());
    let (v, hold) = wait_not_busy(cell, marks);
    assert_eq!(v & BUSY, BUSY, "returned at once, not waiting");
    assert!(hold.is_some() && marks.load(Ordering::Acquire) & HINTING != 0);
    // The claim ends (abort), and another is tried under the hint.
    entry::host_abort(cell);
    assert!(
        !t.try_claim(1, Volatile),
        "no claim while a hint holds the frame"
    );
    drop(hold);
    assert_eq!(marks.load(Ordering::Acquire) & HINTING, 0);
    assert!(t.try_claim(1, Volatile));
    t.finish_discard(1);
    // A hint on a guest-written BUSY applies and clears it.
    t.unclaim(1);
    assert_eq!(t.apply(1, HintOp::MakeStable), Ok(HintOutcome::Discarded));
    assert_eq!(t.state(1), Some(Stable));
    assert_eq!(marks.load(Ordering::Acquire) & (HINTING | CLAIMED), 0);
}

#[test]
fn claimable_masks_agree_with_frame_by_frame_looks() {
    // 200 frames, 100..140 a hole: words that are plain, hit the hole, or
    // run past the end.
    let t = FrameTable::with_hole(200, 100..140, false);
    for p in (0..100).chain(140..200).filter(|p| p % 3 == 0) {
        t.apply(p, HintOp::SetUnused).unwrap();
    }
    t.apply(64, HintOp::MakeVolatile).unwrap();
    assert!(
        t.try_claim(3, Unused),
        "a claimed frame does not look claimable"
    );
    for first in [0, 64, 128, 192] {
        for among in [u64::MAX, 0x5555_5555_5555_5555, 0] {
            for class in [Unused, Volatile, Stable] {
                let want = (0..64)
                    .filter(|&i| among & (1 << i) != 0 && t.looks_claimable(first + i, class))
                    .fold(0u64, |m, i| m | 1 << i);
                assert_eq!(
                    t.looks_claimable_mask(first, among, class),
                    want,
                    "{first} {among:#x} {class:?}"
                );
            }
        }
    }
    assert_eq!(t.looks_claimable_mask(0, u64::MAX, Unused) & 0b1111, 0b0001);
    assert_eq!(t.looks_claimable_mask(64, 1, Volatile), 1);
}

/// The plain count of `entries` outside `hole`, one entry at a time.
fn naive_counts(entries: &[AtomicU8], hole: &std::ops::Range<u64>) -> FrameCounts {
    let mut c = FrameCounts::default();
    for (pfn, e) in entries.iter().enumerate() {
        if hole.contains(&(pfn as u64)) {
            continue;
        }
        let v = e.load(Ordering::Relaxed);
        match state_of(v) {
            Stable => c.stable += 1,
            Unused => c.unused += 1,
            Volatile => c.volatile += 1,
            PotentiallyVolatile => c.potentially_volatile += 1,
        }
        c.discarded += u64::from(v & DISCARDED != 0);
    }
    c
}

/// `counts()` of a shared table has no memory: whatever was written since
/// the last call, by the guest (any byte, anywhere, the hole included) or
/// by host steps, the next call equals the plain count. Randomized, with
/// a fixed seed; bursts of 1 to 2000 writes between calls.
#[test]
fn shared_counts_equal_the_plain_count_after_any_writes() {
    use crate::frames::shared::SharedEntries;
    use crate::memory::GuestRam;
    use pagehint_abi::GuestPhys;

    // 64 MiB: 16384 frames, the table in four pages at frame 0x100.
    let ram = GuestRam::new(64 << 20).unwrap();
    let frames = ram.frames();
    let hole = 5000..7003;
    let t = FrameTable::with_hole(frames as usize, hole.clone(), false);
    let shared = SharedEntries::new(&ram, GuestPhys(0x10_0000), frames, frames).unwrap();
    t.share(shared).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    assert_eq!(t.counts(), naive_counts(t.entries(), &hole));
    let ops = [
        HintOp::SetUnused,
        HintOp::SetStable,
        HintOp::MakeVolatile,
        HintOp::MakeStable,
    ];
    for round in 0..60 {
        let writes = [1, 7, 64, 2000][round % 4];
        for _ in 0..writes {
            let pfn = rand(frames);
            match rand(4) {
                // A guest's store: any byte, BUSY and reserved bits too.
                0 | 1 => t.entries()[pfn as usize].store(rand(256) as u8, Ordering::Relaxed),
                // A hint, legal or not.
                2 => {
                    let _ = t.apply(pfn, ops[rand(4) as usize]);
                }
                // A claim and its end, dropped or aborted.
                _ => {
                    if t.try_claim(pfn, Unused) || t.try_claim(pfn, Volatile) {
                        if rand(2) == 0 {
                            t.finish_discard(pfn);
                        } else {
                            t.abort_discard(pfn);
                        }
                    }
                }
            }
        }
        assert_eq!(
            t.counts(),
            naive_counts(t.entries(), &hole),
            "round {round}, after {writes} writes"
        );
    }
}
