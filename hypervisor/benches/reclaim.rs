//! Reclaim throughput: the reclaimer's discard path (state-table claims,
//! run coalescing, madvise / process_madvise, settling the claims) against
//! raw `madvise(MADV_DONTNEED)` over exactly the same pages, in one run.
//!
//! Two shapes over 256 MiB of guest RAM (anonymous, MAP_NORESERVE, no THP):
//! every other 64-page run (contiguous runs: one madvise per run), and every
//! 4th page (scattered: process_madvise batches against one madvise per
//! page). Each figure is the median of 5 rounds; every page is touched
//! again before each round. Prints pages/s and the ratio (goal >= 0.8),
//! plus the cost of measuring residency through /proc/self/pagemap.
//!
//! Then what one reclaimer round costs at 256 MiB, 3 GiB and 16 GiB of
//! guest RAM (one page in 64 touched, spread over all of it): reading all of
//! pagemap, the round when nothing changed (`Residency` finds the anonymous
//! page count unchanged, keeps its reading and re-reads one twentieth of
//! it), and the state scan of a
//! discard pass over the resident frames. Goal: a round at 16 GiB costs no
//! more than 10 ms when nothing changed.

// A benchmark is a test program: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hypervisor::frames::{Discarder, FrameTable, Method, Run};
use hypervisor::memory::GuestRam;
use hypervisor::reclaim::age::{Ages, VictimOrder};
use hypervisor::reclaim::policy::discard_pass;
use hypervisor::reclaim::resident::{Pagemap, Residency, ResidentMap, FULL_MEASURE_EVERY};
use pagehint_abi::hypercall::HintOp;
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 256 << 20;
use pagehint_abi::PAGE_SIZE as PAGE;
const ROUNDS: usize = 5;

fn touch(ram: &GuestRam, pages: impl Iterator<Item = u64>) {
    for p in pages {
        ram.mem()
            .write_obj(1u8, GuestAddress(p * PAGE))
            .expect("touch");
    }
}

fn raw_madvise(ram: &GuestRam, runs: &[Run]) {
    for r in runs {
        let addr = ram.host_base() + r.pfn * PAGE;
        // SAFETY: every run lies inside the guest RAM mapping `ram` owns;
        // nothing holds a reference into it; MADV_DONTNEED only zeroes it.
        let rc = unsafe {
            libc::madvise(
                addr as *mut libc::c_void,
                (r.count * PAGE) as usize,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0, "madvise");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One shape: returns (reclaimer time, raw time, pages, calls of the
/// reclaimer as "madvise+process_madvise").
fn shape(ram: &GuestRam, runs: &[Run], method: Method) -> (Duration, Duration, u64, String) {
    let frames = ram.frames();
    let pages: u64 = runs.iter().map(|r| r.count).sum();
    let all = ResidentMap::all(frames);
    let mut d = Discarder::new(ram).expect("discarder");
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    let mut calls = String::new();
    for _ in 0..ROUNDS {
        let table = FrameTable::new(frames as usize, false);
        for r in runs {
            table
                .apply_range(r.pfn, r.count, HintOp::SetUnused)
                .expect("hint");
        }
        touch(ram, runs.iter().flat_map(|r| r.pfn..r.pfn + r.count));
        let t = Instant::now();
        let rep = discard_pass(&table, &mut d, &all, u64::MAX, method);
        ours.push(t.elapsed());
        assert_eq!(rep.pages, pages, "every marked page dropped");
        calls = format!("{}+{}", rep.madvise_calls, rep.process_madvise_calls);
        let v: u8 = ram
            .mem()
            .read_obj(GuestAddress(runs[0].pfn * PAGE))
            .expect("read");
        assert_eq!(v, 0, "a dropped page reads as zero");

        touch(ram, runs.iter().flat_map(|r| r.pfn..r.pfn + r.count));
        let t = Instant::now();
        raw_madvise(ram, runs);
        raw.push(t.elapsed());
    }
    (median(ours), median(raw), pages, calls)
}

fn rate(pages: u64, d: Duration) -> f64 {
    pages as f64 / d.as_secs_f64().max(1e-9)
}

fn row(name: &str, ram: &GuestRam, runs: &[Run], method: Method) -> f64 {
    let (ours, raw, pages, calls) = shape(ram, runs, method);
    let (a, b) = (rate(pages, ours), rate(pages, raw));
    println!(
        "| {name} | {pages} | {:.2} ms | {:.0} | {calls} | {:.2} ms | {:.0} | {} | {:.2} |",
        ours.as_secs_f64() * 1e3,
        a,
        raw.as_secs_f64() * 1e3,
        b,
        runs.len(),
        a / b
    );
    a / b
}

/// One row of the round-cost table: RAM of `size` bytes, one page in 64
/// touched. Returns the median round with nothing changed, in ms.
fn round_cost(label: &str, size: u64) -> f64 {
    let ram = GuestRam::new(size).expect("guest RAM");
    let frames = ram.frames();
    let ram_frames = (0..frames).filter(|&p| ram.is_ram_frame(p));
    touch(&ram, ram_frames.step_by(64));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    let mut pm = Pagemap::open().expect("pagemap");
    let mut map = ResidentMap::default();
    let full = median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                pm.measure(ram.host_base(), frames, &mut map)
                    .expect("measure");
                t.elapsed()
            })
            .collect(),
    );

    let mut r = Residency::open().expect("residency");
    let first = r.measure(ram.host_base(), frames).expect("measure");
    assert!(first.read_pagemap);
    let (mut quiet, mut reads) = (Vec::new(), 0);
    let table = FrameTable::with_hole(frames as usize, ram.hole_frames(), false);
    for _ in 0..FULL_MEASURE_EVERY * 2 {
        let t = Instant::now();
        let m = r.measure(ram.host_base(), frames).expect("measure");
        // What the round does next when nothing is over budget.
        let _ = std::hint::black_box(table.counts());
        if m.read_pagemap {
            reads += 1;
        } else {
            quiet.push(t.elapsed());
        }
        assert_eq!(m.pages, first.pages, "nothing changed");
    }
    let quiet_n = quiet.len();
    let nothing = median(quiet);

    // The state scan of a pass that finds nothing it may take (every frame
    // stable): it visits the resident frames only.
    let mut d = Discarder::new(&ram).expect("discarder");
    let scan = median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                let rep = discard_pass(&table, &mut d, r.map(), u64::MAX, Method::Auto);
                assert_eq!(rep.pages, 0);
                t.elapsed()
            })
            .collect(),
    );
    // The victim order's look at every resident entry, each round where
    // a budget may make the reclaimer choose (`reclaim::age`).
    let mut ages = Ages::new(frames, VictimOrder::GuestAge);
    let look = median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                ages.observe(&table, r.map());
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "| {label} | {} | {:.2} ms | {:.3} ms ({quiet_n} of {} rounds; {reads} read pagemap) | {:.2} ms | {:.3} ms |",
        first.pages,
        ms(full),
        ms(nothing),
        FULL_MEASURE_EVERY * 2,
        ms(scan),
        ms(look),
    );
    ms(nothing).max(0.0)
}

fn main() {
    println!("Reclaimer round cost (one page in 64 touched; medians):");
    println!();
    println!("| guest RAM | resident pages | full pagemap read | round, nothing changed | state scan, nothing claimable | victim order's look (host age) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    round_cost("256 MiB", 256 << 20);
    round_cost("3 GiB", 3 << 30);
    let at16 = round_cost("16 GiB", 16 << 30);
    println!();
    println!(
        "round at 16 GiB with nothing changed: {at16:.3} ms (goal <= 10 ms: {}); it re-reads 1/{FULL_MEASURE_EVERY} of pagemap; a round after a change reads all of it",
        if at16 <= 10.0 { "met" } else { "MISSED" }
    );
    // The victim order's worst case: all 16 GiB resident, every entry
    // looked at each round (the table alone; no RAM is needed for it).
    let frames16 = (16u64 << 30) / PAGE;
    let table = FrameTable::new(frames16 as usize, false);
    let all = ResidentMap::all(frames16);
    let mut ages = Ages::new(frames16, VictimOrder::GuestAge);
    let look = median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                ages.observe(&table, &all);
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "victim order's look with all 16 GiB resident: {:.2} ms a round (against the 10 ms goal of a whole round: {})",
        look.as_secs_f64() * 1e3,
        if look.as_secs_f64() * 1e3 <= 10.0 { "within" } else { "OVER" }
    );
    println!();

    let ram = GuestRam::new(RAM).expect("guest RAM");
    let frames = RAM / PAGE;
    touch(&ram, 0..frames);

    let mut pm = Pagemap::open().expect("pagemap");
    let mut map = ResidentMap::default();
    let t = Instant::now();
    let resident = pm
        .measure(ram.host_base(), frames, &mut map)
        .expect("measure");
    let dt = t.elapsed();
    println!(
        "pagemap: {resident} of {frames} pages resident, measured in {:.2} ms ({:.3} us/page)",
        dt.as_secs_f64() * 1e3,
        dt.as_secs_f64() * 1e6 / frames as f64
    );

    let contiguous: Vec<Run> = (0..frames / 128)
        .map(|k| Run {
            pfn: k * 128,
            count: 64,
        })
        .collect();
    let scattered: Vec<Run> = (0..frames / 4)
        .map(|k| Run {
            pfn: k * 4,
            count: 1,
        })
        .collect();
    println!();
    println!("| shape | pages | reclaimer | pages/s | calls (madvise+pm) | raw madvise | pages/s | raw calls | ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let r1 = row("64-page runs, every other", &ram, &contiguous, Method::Auto);
    let r2 = row(
        "every 4th page (process_madvise)",
        &ram,
        &scattered,
        Method::Auto,
    );
    let r3 = row(
        "every 4th page (madvise per page)",
        &ram,
        &scattered,
        Method::Madvise,
    );
    println!();
    println!(
        "ratios (reclaimer / raw madvise, goal >= 0.8): contiguous {r1:.2}, scattered {r2:.2} (process_madvise), {r3:.2} (madvise)"
    );
}
