//! What `GET /memory` costs at 16 GiB of guest RAM (or `BENCH_API_GIB`
//! GiB), and what it costs the vCPUs, measured in one run (`cargo bench -p
//! pagehint-hypervisor --bench api`, or `scripts/bench-api.sh`). Needs no
//! KVM: the frame table and the guest's shared page-state table are the
//! real ones, over real (lazily mapped) guest RAM; no guest runs.
//!
//! 1. The count of the shared table's 4 Mi entries by state (the bulk of
//!    the answer): the census (sixteen entries at a time) against the byte-at-a-time
//!    loop it replaced, same entries, same run.
//! 2. `MachineControl::memory()` (the whole answer, built), p50 and p99.
//! 3. `GET /memory` through the socket, from connect to the last byte of
//!    the answer, p50 and p99. Goal: under 1 ms.
//! 4. The vCPUs' cost: a thread storing page states into the shared table
//!    as a guest does (byte stores, no exits), alone and while a client
//!    polls `GET /memory` every 10 ms; the ratio of its store rates.

// A benchmark is a test program: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hypervisor::api::client::request;
use hypervisor::api::control::MachineControl;
use hypervisor::api::routes::VmControl;
use hypervisor::api::server::{bind, ApiServer};
use hypervisor::frames::{FrameCounts, FrameTable, SharedEntries};
use hypervisor::memory::GuestRam;
use hypervisor::metrics::Metrics;
use hypervisor::reclaim::budget::BudgetControl;
use hypervisor::stats::StatsSource;
use hypervisor::{Kernel, VmConfig};
use pagehint_abi::GuestPhys;
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM unless `BENCH_API_GIB` says otherwise.
const DEFAULT_GIB: u64 = 16;
/// Where the shared table sits in guest RAM (below the hole).
const TABLE: u64 = 16 << 20;
const SAMPLES: usize = 200;

/// The byte-at-a-time count `FrameTable::counts` made before the census.
fn bytewise(entries: &[AtomicU8], hole: &std::ops::Range<u64>) -> FrameCounts {
    let mut c = FrameCounts::default();
    for (pfn, e) in entries.iter().enumerate() {
        if hole.contains(&(pfn as u64)) {
            continue;
        }
        let v = e.load(Ordering::Relaxed);
        match v & 0x03 {
            0 => c.stable += 1,
            1 => c.unused += 1,
            2 => c.volatile += 1,
            _ => c.potentially_volatile += 1,
        }
        c.discarded += u64::from(v & 0x40 != 0);
    }
    c
}

/// p50 and p99 of `f`'s duration over [`SAMPLES`] calls, in microseconds.
fn percentiles(mut f: impl FnMut()) -> (f64, f64) {
    let mut t: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(t[SAMPLES / 2]), us(t[SAMPLES * 99 / 100]))
}

/// Stores page states into the table as a vCPU would for `for_how_long`;
/// returns stores per second.
fn store_rate(base: usize, frames: u64, for_how_long: Duration) -> f64 {
    let entries = base as *const AtomicU8;
    let end = Instant::now() + for_how_long;
    let mut n = 0u64;
    let mut pfn = 0u64;
    while Instant::now() < end {
        for _ in 0..4096 {
            // SAFETY: `pfn < frames`, and the table's `frames` bytes from
            // `base` lie inside the guest RAM mapping, alive for the run.
            let e = unsafe { &*entries.add(pfn as usize) };
            e.store(((n & 1) as u8) | 0x08, Ordering::Relaxed);
            pfn = (pfn + 4099) % frames;
            n += 1;
        }
    }
    n as f64 / for_how_long.as_secs_f64()
}

fn main() {
    let gib = std::env::var("BENCH_API_GIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&g| g > 0)
        .unwrap_or(DEFAULT_GIB);
    let ram_bytes = gib << 30;
    let ram = GuestRam::new(ram_bytes).unwrap();
    let frames = ram.frames();
    let hole = ram.hole_frames();
    // A mix of states, as a busy guest's table might hold.
    let pattern: Vec<u8> = (0..frames)
        .map(|i| match i % 7 {
            0..=2 => 0x00,
            3 => 0x01,
            4 => 0x41,
            5 => 0x02,
            _ => 0x03,
        })
        .collect();
    ram.mem()
        .write_slice(&pattern, GuestAddress(TABLE))
        .unwrap();
    drop(pattern);
    let table = Arc::new(FrameTable::with_hole(frames as usize, hole.clone(), false));
    let shared = SharedEntries::new(&ram, GuestPhys(TABLE), frames, frames).unwrap();
    table.share(shared).unwrap();
    let entries = {
        let base = ram.host_base() + TABLE;
        // SAFETY: the `frames` bytes at `base` are the table just written,
        // inside the guest RAM mapping `ram` keeps alive until main ends.
        unsafe { std::slice::from_raw_parts(base as *const AtomicU8, frames as usize) }
    };

    println!("GET /memory at {gib} GiB of guest RAM ({frames} frames)");
    let census = table.counts();
    assert_eq!(census, bytewise(entries, &hole), "the two counts agree");
    let (old50, old99) = percentiles(|| {
        std::hint::black_box(bytewise(entries, &hole));
    });
    let (new50, new99) = percentiles(|| {
        std::hint::black_box(table.counts());
    });
    println!("  count by state, byte at a time (before): p50 {old50:8.1} us  p99 {old99:8.1} us");
    println!(
        "  count by state, 16 at a time (now):      p50 {new50:8.1} us  p99 {new99:8.1} us  ({:.1}x faster at p50)",
        old50 / new50
    );

    let metrics = Arc::new(Metrics::default());
    let budget = Arc::new(BudgetControl::new(None).unwrap());
    let stats = StatsSource::new(metrics.clone(), table.clone(), ram_bytes, budget.clone());
    let mut config = VmConfig::new(Kernel::Image(Vec::new().into()));
    config.mem = ram_bytes;
    let control = Arc::new(MachineControl::new(
        &config,
        2,
        stats,
        table.clone(),
        metrics,
        budget,
    ));
    let (doc50, doc99) = percentiles(|| {
        std::hint::black_box(control.memory().to_string());
    });
    println!("  MachineControl::memory(), whole answer:  p50 {doc50:8.1} us  p99 {doc99:8.1} us");

    let sock = std::env::temp_dir().join(format!("vmm-bench-api-{}.sock", std::process::id()));
    let server = ApiServer::spawn(bind(&sock).unwrap(), sock.clone(), control).unwrap();
    let (get50, get99) = percentiles(|| {
        let a = request(&sock, "GET", "/memory", "").unwrap();
        assert_eq!(a.status, 200);
    });
    let goal = if get99 < 1000.0 { "met" } else { "MISSED" };
    println!(
        "  GET /memory over the socket (round trip): p50 {get50:8.1} us  p99 {get99:8.1} us  goal < 1000 us: {goal} (p99)"
    );

    // The vCPUs' cost: a guest's store loop alone, then beside a poller.
    let base = (ram.host_base() + TABLE) as usize;
    let span = Duration::from_secs(2);
    let alone = store_rate(base, frames, span);
    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let (sock, polling) = (sock.clone(), polling.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while polling.load(Ordering::Relaxed) {
                let _ = request(&sock, "GET", "/memory", "");
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    let beside = store_rate(base, frames, span);
    polling.store(false, Ordering::Relaxed);
    let polls = poller.join().unwrap();
    println!(
        "  a vCPU's table stores: alone {:.0} M/s, beside {polls} GET /memory (every 10 ms) {:.0} M/s: ratio {:.3}",
        alone / 1e6,
        beside / 1e6,
        beside / alone
    );
    server.stop();
}
