//! Fuzz target: the shared page-state table, `SET_STATE_TABLE`'s checks
//! (`SharedEntries::new`, `FrameTable::share`) and every step the host and
//! the guest take on an entry (`pagehint_abi::state_table`, `FrameTable`),
//! interleaved with the guest writing any byte into any entry.
//!
//! Asserts: a table is accepted exactly when it is page aligned, one entry
//! per frame and wholly inside one RAM range of the memory map, and the switch carries every frame's state
//! over; an entry's state decodes and encodes back to its two low bits; the
//! host claims only an entry the ABI calls claimable, never one of the
//! table's own frames, and never changes a Stable entry; finishing a claim
//! leaves DISCARDED and no BUSY, aborting it the entry as it was less ARMED;
//! a refused hint leaves its entry alone; the 64-frame claimable mask agrees
//! with the frame-by-frame answer; counts add up. A BUSY bit the guest
//! wrote must never hang a hint (libFuzzer's timeout would catch it). It
//! must never leave a claim open across steps: single-threaded, a hint on
//! it would wait forever.

#![no_main]

use std::sync::atomic::{AtomicU8, Ordering};

use hypervisor::frames::{FrameTable, HintOutcome, SharedEntries, StateError};
use libfuzzer_sys::fuzz_target;
use pagehint_abi::hypercall::HintOp;
use pagehint_abi::page_state::PageState;
use pagehint_abi::state_table::{self as st, ARMED, BUSY, DISCARDED, STATE_MASK};
use pagehint_abi::{GuestPhys, PAGE_SIZE};
use pagehint_fuzz::{ram, Input, RAM_SIZE};

const CLASSES: [PageState; 4] = [
    PageState::Stable,
    PageState::Unused,
    PageState::Volatile,
    PageState::PotentiallyVolatile,
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);

    // The ABI's decoding of any byte.
    for &v in input.bytes(4) {
        let s = st::state_of(v);
        assert_eq!(s as u8, v & STATE_MASK);
        assert_eq!(PageState::from_u8(v & STATE_MASK), Some(s));
        for class in CLASSES {
            let ok = st::claimable(v, class);
            assert!(
                !ok || (class != PageState::Stable && v & (BUSY | DISCARDED) == 0 && s == class)
            );
        }
    }

    let ram = ram();
    let frames = ram.frames();
    let pv = input.bool();
    let table = FrameTable::new(frames as usize, pv);
    for _ in 0..input.below(8) {
        let pfn = input.below(frames);
        let _ = table.apply(pfn, HintOp::ALL[input.below(5) as usize]);
    }
    let before: Vec<Option<PageState>> = (0..frames).map(|p| table.state(p)).collect();

    // SET_STATE_TABLE.
    let at = if input.u8() % 8 == 0 {
        input.gpa()
    } else {
        input.below(RAM_SIZE / PAGE_SIZE) * PAGE_SIZE
    };
    let entries = if input.u8() % 8 == 0 {
        input.u64()
    } else {
        frames
    };
    let pages = frames.div_ceil(PAGE_SIZE);
    // Wholly inside one range the memory map calls RAM: below the legacy
    // area (`LOW_RAM_END`), or from 1 MiB to the top.
    let fits = at % PAGE_SIZE == 0
        && entries == frames
        && at.checked_add(pages * PAGE_SIZE).is_some_and(|end| {
            end <= hypervisor::memory::LOW_RAM_END
                || (at >= pagehint_abi::boot::KERNEL_START && end <= RAM_SIZE)
        });
    // The guest's table may hold anything before it is registered.
    let junk = input.bytes(64);
    if at
        .checked_add(junk.len() as u64)
        .is_some_and(|e| e <= RAM_SIZE)
    {
        use vm_memory::{Bytes, GuestAddress};
        let _ = ram.mem().write_slice(junk, GuestAddress(at));
    }
    let shared = match SharedEntries::new(&ram, GuestPhys(at), entries, frames) {
        Ok(s) => {
            assert!(fits, "table at {at:#x} with {entries} entries accepted");
            assert_eq!(s.own_frames(), at / PAGE_SIZE..at / PAGE_SIZE + pages);
            assert!(s.entry(frames).is_none());
            assert!(table.share(s).is_ok());
            assert!(table.is_shared());
            for (p, s) in before.iter().enumerate() {
                assert_eq!(table.state(p as u64), *s, "frame {p} lost its state");
            }
            // A second registration is refused.
            let again = SharedEntries::new(&ram, GuestPhys(at), entries, frames);
            if let Ok(again) = again {
                assert!(table.share(again).is_err());
            }
            SharedEntries::new(&ram, GuestPhys(at), entries, frames).ok()
        }
        Err(_) => {
            assert!(!fits, "table at {at:#x} refused");
            None
        }
    };
    // The entries as the guest sees them (the same bytes of guest RAM);
    // none while the host keeps the states itself.
    let cell = |p: u64| -> Option<&AtomicU8> { shared.as_ref().and_then(|s| s.entry(p)) };
    let byte = |p: u64| cell(p).map(|c| c.load(Ordering::Acquire));
    let is_own_frame = |p: u64| shared.as_ref().is_some_and(|s| s.is_own_frame(p));

    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        // Mostly a few frames, so that steps meet.
        let pfn = match input.u8() % 8 {
            0 => input.u64(),
            1 => input.below(frames),
            _ => at / PAGE_SIZE + input.below(8),
        };
        let pre = byte(pfn);
        match input.u8() % 9 {
            // The guest writes any byte into its entry.
            0 => {
                if let Some(c) = cell(pfn) {
                    c.store(input.u8(), Ordering::Release);
                }
            }
            // The guest's own protocol steps (never on a BUSY bit: there
            // the guest waits for the host, which holds no claim here).
            1 => {
                if let (Some(c), Some(v)) = (cell(pfn), pre) {
                    if v & BUSY == 0 {
                        match input.below(4) {
                            0 => st::guest_release(c, PageState::Unused),
                            1 => st::guest_release(c, PageState::Volatile),
                            2 => {
                                let t = st::guest_make_stable(c);
                                assert_eq!(
                                    t.discarded,
                                    st::state_of(v) != PageState::Stable && v & DISCARDED != 0
                                );
                            }
                            _ => {
                                let _ = st::guest_check_writable(c, pv);
                            }
                        }
                        let now = c.load(Ordering::Acquire);
                        assert_eq!(now & BUSY, 0, "the guest set BUSY");
                    }
                }
            }
            // A hint through the table.
            2 => {
                let op = HintOp::ALL[input.below(5) as usize];
                match table.apply(pfn, op) {
                    Ok(outcome) => {
                        let now = byte(pfn);
                        if let Some(now) = now {
                            assert_eq!(now & BUSY, 0, "a hint left BUSY");
                            if outcome == HintOutcome::Discarded {
                                assert!(pre.is_some_and(|v| v & DISCARDED != 0));
                            }
                        }
                        assert!(pfn < frames);
                    }
                    Err(StateError::OutOfRange(p)) => {
                        assert_eq!(p, pfn);
                        assert!(pfn >= frames);
                    }
                    Err(StateError::Illegal { .. }) => {
                        assert_eq!(byte(pfn), pre, "a refused hint changed its entry");
                    }
                }
            }
            // A reclaimer claim, always closed in the same step.
            3 => {
                let class = CLASSES[input.below(4) as usize];
                let claimed = table.try_claim(pfn, class);
                if !claimed {
                    assert_eq!(byte(pfn), pre, "a failed claim wrote the entry");
                    continue;
                }
                let v = pre.unwrap_or(0);
                assert!(pfn < frames && class != PageState::Stable);
                assert!(
                    shared.is_none() || st::claimable(v, class),
                    "claimed {v:#x} as {class:?}"
                );
                assert!(!is_own_frame(pfn), "claimed the table's own frame {pfn:#x}");
                let arm = input.bool();
                if arm {
                    table.mark_registered(pfn);
                    assert!(table.is_registered(pfn));
                }
                match input.below(3) {
                    0 => {
                        table.finish_discard(pfn);
                        if let Some(now) = byte(pfn) {
                            assert_eq!(now & (BUSY | DISCARDED), DISCARDED);
                            assert_eq!(now & STATE_MASK, v & STATE_MASK);
                        }
                        assert!(table.is_discarded(pfn));
                    }
                    1 => {
                        // A failed drop is disarmed first (`Discarder::settle`);
                        // a refused arming leaves an earlier registration, whose
                        // ARMED mark the abort keeps.
                        if arm && input.bool() {
                            let _ = table.take_registered(pfn);
                        }
                        let registered = table.is_registered(pfn);
                        table.abort_discard(pfn);
                        if let Some(now) = byte(pfn) {
                            let want = if registered {
                                (v & !BUSY) | if arm { ARMED } else { v & ARMED }
                            } else {
                                v & !(BUSY | ARMED)
                            };
                            assert_eq!(now, want);
                        }
                    }
                    _ => {
                        let demoted = table.demote_written(pfn);
                        if demoted {
                            assert_eq!(table.state(pfn), Some(PageState::Stable));
                        } else {
                            // The claim must still end.
                            table.abort_discard(pfn);
                        }
                    }
                }
                if arm {
                    let _ = table.take_registered(pfn);
                }
            }
            4 => {
                if table.demote_written(pfn) {
                    let v = pre.unwrap_or(0);
                    assert!(shared.is_none() || st::state_of(v) == PageState::PotentiallyVolatile);
                    assert_eq!(table.state(pfn), Some(PageState::Stable));
                } else if shared.is_some() {
                    assert_eq!(byte(pfn), pre, "a refused demotion wrote the entry");
                }
            }
            5 => {
                // A zero fill never hides a drop: same state, DISCARDED
                // added, and only on a registered (so missing) frame whose
                // entry is neither stable, busy nor discarded.
                let before = table.state(pfn);
                let registered = table.is_registered(pfn);
                if table.mark_zero_filled(pfn) {
                    assert!(registered, "marked a frame that is not registered");
                    assert_eq!(table.state(pfn), before);
                    assert!(table.is_discarded(pfn));
                    if let Some(v) = pre {
                        assert_eq!(byte(pfn), Some(v | st::DISCARDED));
                    }
                } else if shared.is_some() {
                    assert_eq!(byte(pfn), pre, "a refused zero-fill mark wrote the entry");
                }
            }
            6 => {
                let _ = table.discard_fault_due(pfn);
                let s = table.state(pfn);
                assert_eq!(s.is_some(), pfn < frames);
                if let (Some(s), Some(v)) = (s, pre) {
                    assert_eq!(s, st::state_of(v));
                }
            }
            7 => {
                let class = CLASSES[input.below(4) as usize];
                let first = pfn.min(frames + 64);
                let among = input.u64();
                let mask = table.looks_claimable_mask(first, among, class);
                let mut want = 0u64;
                for i in 0..64 {
                    if among & (1 << i) != 0 && table.looks_claimable(first + i, class) {
                        want |= 1 << i;
                    }
                }
                assert_eq!(mask, want, "mask of {first:#x}");
            }
            _ => {
                let c = table.counts();
                let sum = c.stable + c.unused + c.volatile + c.potentially_volatile;
                assert_eq!(sum, frames, "{c:?}");
            }
        }
    }
});
