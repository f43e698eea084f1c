//! Tests of the eager unused policy (`eager.rs`) on real guest RAM: what
//! it drops and when, with the host's own table and with the guest's
//! shared one, and, under a guest that keeps changing its frames, that it
//! never takes anything but an Unused frame.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagehint_abi::hypercall::HintOp;
use pagehint_abi::state_table as st;
use pagehint_abi::{GuestPhys, PAGE_SIZE as PAGE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::frames::{HintOutcome, SharedEntries};
use crate::memory::GuestRam;

/// 16 MiB of guest RAM, every frame written (resident, non-zero), a
/// table of it and a discarder.
fn guest() -> (GuestRam, FrameTable, Discarder, ResidentMap) {
    let ram = GuestRam::new(16 << 20).unwrap();
    let frames = ram.frames();
    for p in 0..frames {
        ram.mem().write_obj(0xa5u8, GuestAddress(p * PAGE)).unwrap();
    }
    let table = FrameTable::new(frames as usize, false);
    let d = Discarder::new(&ram).unwrap();
    (ram, table, d, ResidentMap::all(frames))
}

fn byte(ram: &GuestRam, pfn: u64) -> u8 {
    ram.mem().read_obj(GuestAddress(pfn * PAGE)).unwrap()
}

#[test]
fn delays_become_rounds() {
    let ms = Duration::from_millis;
    assert_eq!(rounds_for(ms(0), ms(50)), 0);
    assert_eq!(rounds_for(ms(1), ms(50)), 1);
    assert_eq!(rounds_for(ms(50), ms(50)), 1);
    assert_eq!(rounds_for(ms(60), ms(50)), 2);
    assert_eq!(rounds_for(ms(100), ms(50)), 2);
    assert_eq!(rounds_for(ms(1000), ms(50)), 20);
    assert_eq!(
        rounds_for(ms(10), ms(0)),
        10,
        "an interval of at least 1 ms"
    );
    assert_eq!(rounds_for(Duration::from_secs(1 << 30), ms(1)), u16::MAX);
}

#[test]
fn unused_frames_go_after_the_delay_without_a_budget_and_not_before() {
    let (ram, table, mut d, resident) = guest();
    table.apply_range(10, 4, HintOp::SetUnused).unwrap();
    let mut e = EagerUnused::new(table.len(), 2);
    for round in 0..2 {
        let r = e.pass(&table, &mut d, &resident, Method::Auto);
        assert_eq!(r, EagerReport::default(), "round {round}: too young");
        assert_eq!(byte(&ram, 10), 0xa5);
    }
    let r = e.pass(&table, &mut d, &resident, Method::Auto);
    assert_eq!(
        (r.pass.pages, r.pass.failed, r.pass.madvise_calls),
        (4, 0, 1)
    );
    for p in 10..14 {
        assert!(table.is_discarded(p), "frame {p}");
        assert_eq!(byte(&ram, p), 0, "frame {p}");
    }
    assert_eq!(byte(&ram, 14), 0xa5);
    let r = e.pass(&table, &mut d, &resident, Method::Auto);
    assert_eq!(r, EagerReport::default(), "never dropped twice");
    assert_eq!(table.total_discards(), 4);
}

#[test]
fn no_delay_drops_every_resident_unused_frame_at_once() {
    let (_ram, table, mut d, mut resident) = guest();
    table.apply_range(0, 64, HintOp::SetUnused).unwrap();
    resident.assign(7, false);
    let mut e = EagerUnused::new(table.len(), 0);
    let r = e.pass(&table, &mut d, &resident, Method::Auto);
    assert_eq!(r.pass.pages, 63, "frame 7 is not resident");
    assert!(!table.is_discarded(7));
    assert_eq!(table.state(7), Some(PageState::Unused));
}

#[test]
fn a_frame_taken_back_before_the_delay_is_kept_and_starts_again() {
    let (ram, table, mut d, resident) = guest();
    table.apply_range(20, 2, HintOp::SetUnused).unwrap();
    let mut e = EagerUnused::new(table.len(), 2);
    e.pass(&table, &mut d, &resident, Method::Auto);
    e.pass(&table, &mut d, &resident, Method::Auto);
    // The guest reuses frame 21 and frees it again before the third look.
    assert_eq!(table.apply(21, HintOp::SetStable), Ok(HintOutcome::Applied));
    e.pass(&table, &mut d, &resident, Method::Auto);
    table.apply(21, HintOp::SetUnused).unwrap();
    let r = e.pass(&table, &mut d, &resident, Method::Auto);
    assert_eq!(r.pass.pages, 0, "frame 20 went the round before");
    assert!(table.is_discarded(20) && !table.is_discarded(21));
    assert_eq!(byte(&ram, 21), 0xa5, "its streak started again");
    e.pass(&table, &mut d, &resident, Method::Auto);
    let r = e.pass(&table, &mut d, &resident, Method::Auto);
    assert_eq!(r.pass.pages, 1);
    assert!(table.is_discarded(21));
}

#[test]
fn a_frame_that_leaves_the_resident_reading_starts_again() {
    let (_ram, table, mut d, mut resident) = guest();
    table.apply(30, HintOp::SetUnused).unwrap();
    let mut e = EagerUnused::new(table.len(), 1);
    e.pass(&table, &mut d, &resident, Method::Auto);
    resident.assign(30, false);
    e.pass(&table, &mut d, &resident, Method::Auto);
    resident.set(30);
    let r = e.pass(&table, &mut d, &resident, Method::Auto);
    assert_eq!(r.pass.pages, 0, "seen once since it came back");
    let r = e.pass(&table, &mut d, &resident, Method::Auto);
    assert_eq!(r.pass.pages, 1);
}

#[test]
fn volatile_and_stable_frames_are_never_taken_eagerly() {
    let (ram, table, mut d, resident) = guest();
    for p in [40, 41, 42] {
        table.apply(p, HintOp::MakeVolatile).unwrap();
    }
    table.apply(43, HintOp::SetUnused).unwrap();
    let mut e = EagerUnused::new(table.len(), 0);
    for _ in 0..3 {
        e.pass(&table, &mut d, &resident, Method::Auto);
    }
    assert_eq!(table.total_discards(), 1);
    assert!(table.is_discarded(43));
    for p in [0, 39, 40, 41, 42, 44] {
        assert!(!table.is_discarded(p), "frame {p}");
        assert_eq!(byte(&ram, p), 0xa5, "frame {p}");
    }
}

#[test]
fn frames_the_guest_takes_back_are_counted_as_refaults() {
    let (_ram, table, mut d, resident) = guest();
    table.apply_range(50, 3, HintOp::SetUnused).unwrap();
    let mut e = EagerUnused::new(table.len(), 0);
    assert_eq!(
        e.pass(&table, &mut d, &resident, Method::Auto).pass.pages,
        3
    );
    assert_eq!(e.sweep(&table), 0, "nothing taken back yet");
    // The guest allocates frame 50 (it learns it reads as zeroes)...
    assert_eq!(
        table.apply(50, HintOp::SetStable),
        Ok(HintOutcome::Discarded)
    );
    assert_eq!(e.sweep(&table), 1);
    assert_eq!(e.sweep(&table), 0, "counted once");
    // ... and frame 51, which it frees again before any sweep: its next
    // drop finds it was taken back.
    table.apply(51, HintOp::SetStable).unwrap();
    table.apply(51, HintOp::SetUnused).unwrap();
    let r = e.pass(&table, &mut d, &resident, Method::Auto);
    assert_eq!((r.pass.pages, r.refaults), (1, 1));
    assert_eq!(e.sweep(&table), 0);
    assert_eq!(table.zero_fills(), 2);
}

#[test]
fn the_shared_table_is_read_without_any_hint() {
    let ram = GuestRam::new(64 << 20).unwrap();
    let frames = ram.frames();
    for p in 0..frames {
        ram.mem().write_obj(0x5au8, GuestAddress(p * PAGE)).unwrap();
    }
    let table = FrameTable::new(frames as usize, false);
    let at = GuestPhys(0x10_0000);
    table
        .share(SharedEntries::new(&ram, at, frames, frames).unwrap())
        .unwrap();
    let guest = SharedEntries::new(&ram, at, frames, frames).unwrap();
    let mut d = Discarder::new(&ram).unwrap();
    let resident = ResidentMap::all(frames);
    let mut e = EagerUnused::new(frames, 1);
    // The guest frees frames 0x200.. with plain stores; one of them is
    // the table's own frame (never claimed, whatever it says).
    for p in (0x200..0x210).chain([0x100]) {
        st::guest_release(guest.entry(p).unwrap(), PageState::Unused);
    }
    assert_eq!(
        e.pass(&table, &mut d, &resident, Method::Auto).pass.pages,
        0
    );
    let taken = st::guest_make_stable(guest.entry(0x20f).unwrap());
    assert!(!taken.discarded);
    let r = e.pass(&table, &mut d, &resident, Method::Auto);
    assert_eq!(r.pass.pages, 15);
    assert!(!table.is_discarded(0x100), "the table's frame stays");
    assert_eq!(byte(&ram, 0x20f), 0x5a);
    let taken = st::guest_make_stable(guest.entry(0x200).unwrap());
    assert!(taken.discarded && byte(&ram, 0x200) == 0);
    assert_eq!(e.sweep(&table), 1);
}

/// A guest thread cycles its frames Stable -> Unused or Volatile ->
/// Stable through the shared table, writing each Stable frame and
/// checking it, while eager passes without delay run back to back: a
/// frame released Volatile is never reported dropped, one released Unused
/// is intact unless reported dropped, then zeroes.
#[test]
fn under_a_busy_guest_only_unused_frames_are_ever_dropped() {
    let ram = GuestRam::new(64 << 20).unwrap();
    let frames = ram.frames();
    let table = Arc::new(FrameTable::new(frames as usize, false));
    let at = GuestPhys(0x10_0000);
    table
        .share(SharedEntries::new(&ram, at, frames, frames).unwrap())
        .unwrap();
    let guest = SharedEntries::new(&ram, at, frames, frames).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reclaimer = {
        let (ram, table, stop) = (ram.clone(), table.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut d = Discarder::new(&ram).unwrap();
            let resident = ResidentMap::all(frames);
            let mut e = EagerUnused::new(frames, 0);
            let mut dropped = 0;
            while !stop.load(Ordering::Relaxed) {
                dropped += e.pass(&table, &mut d, &resident, Method::Auto).pass.pages;
            }
            dropped
        })
    };
    let pfns: Vec<u64> = (0x400..0x480).collect();
    let word = |pfn: u64, gen: u64| (1u64 << 63) | (pfn << 32) | gen;
    let mut gens = vec![0u64; pfns.len()];
    for (&p, &g) in pfns.iter().zip(&gens) {
        ram.mem()
            .write_obj(word(p, g), GuestAddress(p * PAGE))
            .unwrap();
    }
    let (mut errors, mut unused_drops, mut cycles) = (Vec::new(), 0u64, 0u64);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(500) {
        // Release every frame, wait a little (longer every other cycle),
        // take every frame back.
        let released: Vec<PageState> = (0..pfns.len())
            .map(|i| {
                if (cycles + i as u64).is_multiple_of(3) {
                    PageState::Volatile
                } else {
                    PageState::Unused
                }
            })
            .collect();
        for (&p, &to) in pfns.iter().zip(&released) {
            st::guest_release(guest.entry(p).unwrap(), to);
        }
        let pause = Instant::now();
        while pause.elapsed() < Duration::from_micros(50 * (cycles % 8)) {
            std::hint::spin_loop();
        }
        for (i, (&p, &to)) in pfns.iter().zip(&released).enumerate() {
            let taken = st::guest_make_stable(guest.entry(p).unwrap());
            let got: u64 = ram.mem().read_obj(GuestAddress(p * PAGE)).unwrap();
            match (to, taken.discarded) {
                (PageState::Volatile, true) => errors.push(format!("{p:#x}: volatile dropped")),
                (_, true) if got != 0 => errors.push(format!("{p:#x}: dropped, not zero")),
                (_, false) if got != word(p, gens[i]) => {
                    errors.push(format!("{p:#x}: contents lost"))
                }
                _ => {}
            }
            if taken.discarded {
                unused_drops += 1;
                gens[i] += 1;
                ram.mem()
                    .write_obj(word(p, gens[i]), GuestAddress(p * PAGE))
                    .unwrap();
            }
        }
        cycles += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let dropped = reclaimer.join().unwrap();
    assert!(errors.is_empty(), "{:?}", &errors[..errors.len().min(8)]);
    assert_eq!(dropped, unused_drops, "every drop reported exactly once");
    assert_eq!(table.total_discards(), dropped);
    eprintln!("{cycles} cycles, {dropped} eager drops");
}
