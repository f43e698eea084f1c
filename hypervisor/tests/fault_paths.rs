//! Fault injection on the paths a guest run reaches seldom or not at all
//! (issue 15): `process_madvise` (the reclaimer uses it only for many
//! short scattered runs), `madvise` failing inside a settle with the frame
//! table watching, and a userfaultfd fill that fails with a thread
//! waiting on it. These install the process-wide plan
//! (`hypervisor::fault_inject::install`), so they live in their own test
//! binary, one at a time behind a lock; `tests/faults.rs` covers every
//! point with the real guest.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hypervisor::discard_fault::handler::FaultHandler;
use hypervisor::discard_fault::DiscardFaults;
use hypervisor::fault_inject::{self, Plan, Rule};
use hypervisor::frames::{Discarder, FrameTable, Method, PassReport, Run, RunBuilder};
use hypervisor::memory::GuestRam;
use hypervisor::metrics::Metrics;
use pagehint_abi::hypercall::HintOp;
use pagehint_abi::page_state::PageState;
use pagehint_abi::PAGE_SIZE as PAGE;
use vm_memory::{Bytes, GuestAddress};

/// One plan at a time in this process.
static PLAN: Mutex<()> = Mutex::new(());

/// Installs `rules` until the guard drops (then no plan).
struct Installed<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

fn install(rules: &[&str]) -> Installed<'static> {
    let guard = PLAN.lock().unwrap_or_else(|e| e.into_inner());
    let rules: Vec<Rule> = rules.iter().map(|r| r.parse().unwrap()).collect();
    fault_inject::install(&Plan::new(rules).unwrap());
    Installed(guard)
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        fault_inject::install(&Plan::default());
    }
}

/// 16 MiB of RAM, every byte 0xa5.
fn filled_ram() -> GuestRam {
    let ram = GuestRam::new(16 << 20).unwrap();
    for p in 0..ram.frames() {
        ram.mem().write_obj(0xa5u8, GuestAddress(p * PAGE)).unwrap();
    }
    ram
}

fn byte(ram: &GuestRam, pfn: u64) -> u8 {
    ram.mem().read_obj(GuestAddress(pfn * PAGE)).unwrap()
}

/// 32 scattered one-frame runs: 0, 4, 8, ...
fn scattered() -> Vec<Run> {
    (0..32)
        .map(|i| Run {
            pfn: i * 4,
            count: 1,
        })
        .collect()
}

#[test]
fn process_madvise_that_fails_hands_its_runs_to_madvise() {
    let ram = filled_ram();
    let mut d = Discarder::new(&ram).unwrap();
    let _plan = install(&["process-madvise:EAGAIN:nth=1"]);
    let r = d.discard(&scattered(), Method::ProcessMadvise);
    // The batch failed as a whole; madvise dropped every run instead.
    assert_eq!(
        (r.process_madvise_calls, r.process_madvise_failures),
        (1, 1)
    );
    assert_eq!((r.madvise_calls, r.pages), (32, 32));
    assert!(r.failed.is_empty());
    assert!(scattered().iter().all(|run| byte(&ram, run.pfn) == 0));
    assert_eq!(byte(&ram, 1), 0xa5, "frames between the runs are kept");
    // EAGAIN passes: the next batch uses process_madvise again.
    let runs: Vec<Run> = (0..32)
        .map(|i| Run {
            pfn: 1 + i * 4,
            count: 1,
        })
        .collect();
    let r = d.discard(&runs, Method::ProcessMadvise);
    assert_eq!(
        (r.process_madvise_calls, r.madvise_calls, r.pages),
        (1, 0, 32)
    );
    assert_eq!(fault_inject::injected().process_madvise, 1);
}

#[test]
fn process_madvise_refused_for_good_is_not_tried_again() {
    let ram = filled_ram();
    let mut d = Discarder::new(&ram).unwrap();
    let _plan = install(&["process-madvise:EPERM:nth=1"]);
    let r = d.discard(&scattered(), Method::ProcessMadvise);
    assert_eq!(
        (r.process_madvise_failures, r.madvise_calls, r.pages),
        (1, 32, 32)
    );
    let runs: Vec<Run> = (0..32)
        .map(|i| Run {
            pfn: 2 + i * 4,
            count: 1,
        })
        .collect();
    let r = d.discard(&runs, Method::ProcessMadvise);
    assert_eq!(
        (r.process_madvise_calls, r.madvise_calls, r.pages),
        (0, 32, 32)
    );
}

#[test]
fn a_settle_whose_madvise_fails_keeps_the_frames_and_their_states() {
    let ram = filled_ram();
    let table = FrameTable::new(ram.frames() as usize, false);
    let mut d = Discarder::new(&ram).unwrap();
    table.apply_range(100, 64, HintOp::MakeVolatile).unwrap();
    // Four runs of 16 (gaps between them): the second and fourth fail.
    let mut chunk = RunBuilder::default();
    for p in (100..164).filter(|p| (p - 100) % 16 != 15) {
        assert!(table.try_claim(p, PageState::Volatile));
        chunk.push(p);
    }
    assert_eq!(chunk.runs().len(), 4);
    let _plan = install(&["madvise:ENOMEM:every=2"]);
    let mut report = PassReport::default();
    d.settle(&table, &mut chunk, Method::Madvise, None, &mut report);
    assert_eq!((report.pages, report.failed), (30, 30));
    assert_eq!((report.madvise_calls, report.madvise_failures), (4, 2));
    assert_eq!(report.madvise_kept_pages, 30);
    assert_eq!(table.total_discards(), 30, "only the frames really dropped");
    for run in 0..4u64 {
        let first = 100 + run * 16;
        let dropped = run % 2 == 0;
        for p in first..first + 15 {
            assert_eq!(table.is_discarded(p), dropped, "frame {p}");
            assert_eq!(byte(&ram, p), if dropped { 0 } else { 0xa5 }, "frame {p}");
        }
    }
    // The kept frames are volatile and claimable again: a later round
    // may drop them.
    assert!(table.try_claim(116, PageState::Volatile));
}

/// A thread that writes one byte into frame `pfn` of `ram`; returns when
/// the write is done.
fn toucher(ram: &GuestRam, pfn: u64) -> std::thread::JoinHandle<()> {
    let ram = ram.clone();
    std::thread::spawn(move || {
        ram.mem()
            .write_obj(0x77u8, GuestAddress(pfn * PAGE + 8))
            .unwrap();
    })
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A registered, dropped volatile frame 40 and the real handler thread.
fn armed() -> (GuestRam, Arc<DiscardFaults>, Arc<Metrics>, FaultHandler) {
    let ram = filled_ram();
    let table = Arc::new(FrameTable::new(ram.frames() as usize, false));
    let metrics = Arc::new(Metrics::default());
    let faults = Arc::new(DiscardFaults::new(&ram, table.clone(), metrics.clone(), 1).unwrap());
    table.apply(40, HintOp::MakeVolatile).unwrap();
    assert!(table.try_claim(40, PageState::Volatile));
    let mut chunk = RunBuilder::default();
    chunk.push(40);
    let mut report = PassReport::default();
    let arming: &dyn hypervisor::frames::Arming = &*faults;
    let mut d = Discarder::new(&ram).unwrap();
    d.settle(
        &table,
        &mut chunk,
        Method::Madvise,
        Some(arming),
        &mut report,
    );
    assert_eq!(report.pages, 1);
    let handler = FaultHandler::spawn(faults.clone()).unwrap();
    (ram, faults, metrics, handler)
}

/// Frame 40 armed with `rules` installed, written by a thread that runs no
/// vCPU until the write is done, the handler stopped: the RAM, the
/// metrics, and the rules (held until the test ends).
fn touched(rules: &[&str]) -> (GuestRam, Arc<Metrics>, Installed<'static>) {
    let plan = install(rules);
    let (ram, _faults, metrics, handler) = armed();
    let t = toucher(&ram, 40);
    wait_for("the write", Duration::from_secs(10), || t.is_finished());
    t.join().unwrap();
    handler.stop();
    (ram, metrics, plan)
}

#[test]
fn a_fill_that_answers_eagain_is_retried_and_the_thread_goes_on() {
    // A thread that runs no vCPU touches it: answered with the zero page.
    let (ram, metrics, _plan) = touched(&["uffd-zeropage:EAGAIN:nth=1"]);
    let f = &metrics.host_failures;
    assert_eq!((f.uffd_retries.get(), f.uffd_fill.get()), (1, 0));
    assert_eq!(f.uffd_fill_stops.get(), 0);
    assert_eq!(byte(&ram, 40), 0, "the zero page, then the write");
}

#[test]
fn a_fill_that_fails_unregisters_the_frame_and_the_thread_gets_a_zero_page() {
    let (_ram, metrics, _plan) = touched(&["uffd-zeropage:ENOMEM:nth=1"]);
    let f = &metrics.host_failures;
    assert_eq!((f.uffd_fill.get(), f.uffd_fill_stops.get()), (1, 0));
}

#[test]
fn a_fault_nothing_can_answer_is_recorded_and_release_frees_the_thread() {
    // The record is process-wide: no other test here reads it.
    let _plan = install(&["uffd-zeropage:ENOMEM:nth=1", "uffd-unregister:EIO"]);
    let (ram, faults, metrics, handler) = armed();
    let t = toucher(&ram, 40);
    wait_for("the failure", Duration::from_secs(10), || {
        metrics.host_failures.uffd_fill_stops.get() == 1
    });
    let what = hypervisor::fatal::first().unwrap();
    assert!(
        what.contains("UFFDIO_ZEROPAGE") && what.contains("UFFDIO_UNREGISTER"),
        "{what}"
    );
    // The thread still waits: nothing answered it.
    std::thread::sleep(Duration::from_millis(50));
    assert!(!t.is_finished());
    // What the machine does once the vCPUs are stopped.
    faults.release_all().unwrap();
    wait_for("the release", Duration::from_secs(10), || t.is_finished());
    t.join().unwrap();
    handler.stop();
    assert_eq!(fault_inject::injected().uffd_zeropage, 1);
}
