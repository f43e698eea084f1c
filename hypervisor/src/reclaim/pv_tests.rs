//! Unit tests of the Potentially volatile pass, with a fake pauser, a fake
//! dirty log and a fake arming over a real `FrameTable` and guest RAM.

use super::*;
use crate::frames::Run;
use crate::memory::GuestRam;
use crate::vstate::dirty_log::slot_spans;
use pagehint_abi::hypercall::HintOp;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Pauses at once (`ok`) or times out; records whether `f` ran paused.
struct FakePauser {
    ok: bool,
    paused: AtomicBool,
    ran_paused: AtomicBool,
}

impl VcpuPauser for FakePauser {
    fn while_paused(&self, timeout: Duration, f: &mut dyn FnMut()) -> Result<(), PauseError> {
        if !self.ok {
            return Err(PauseError::Timeout {
                parked: 0,
                seated: 1,
                timeout,
            });
        }
        self.paused.store(true, Ordering::SeqCst);
        f();
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// A dirty log that reads `written` (or fails), noting whether it was read
/// with the vCPUs paused.
struct FakeLog {
    bits: Option<DirtyBitmap>,
    pauser: Arc<FakePauser>,
}

impl DirtySource for FakeLog {
    fn read(&self) -> Result<DirtyBitmap, DirtyLogError> {
        let p = self.pauser.paused.load(Ordering::SeqCst);
        self.pauser.ran_paused.store(p, Ordering::SeqCst);
        self.bits.clone().ok_or(DirtyLogError::TooLarge(0))
    }
}

#[derive(Default)]
struct FakeArming(Mutex<Vec<Run>>);

impl Arming for FakeArming {
    fn arm(&self, run: Run) -> bool {
        self.0.lock().unwrap().push(run);
        true
    }
    fn disarm(&self, _run: Run) {}
}

struct Setup {
    ram: GuestRam,
    table: FrameTable,
    resident: ResidentMap,
}

/// 16 MiB of RAM, every frame resident; frames 10..20 Potentially
/// volatile, 30 Volatile.
fn setup() -> Setup {
    let ram = GuestRam::new(16 << 20).unwrap();
    let frames = ram.frames();
    let table = FrameTable::new(frames as usize, true);
    table.apply_range(10, 10, HintOp::MakeVolatile).unwrap();
    table.apply_range(10, 10, HintOp::CheckWritable).unwrap();
    table.apply(30, HintOp::MakeVolatile).unwrap();
    Setup {
        ram,
        table,
        resident: ResidentMap::all(frames),
    }
}

fn inputs<'a>(s: &'a Setup, want: u64, arming: Option<&'a dyn Arming>) -> PvInputs<'a> {
    PvInputs {
        table: &s.table,
        resident: &s.resident,
        want,
        method: Method::Auto,
        arming,
    }
}

fn reclaim(ok: bool, written: Option<&[u64]>, ram: &GuestRam) -> (PvReclaim, Arc<FakePauser>) {
    let pauser = Arc::new(FakePauser {
        ok,
        paused: AtomicBool::new(false),
        ran_paused: AtomicBool::new(false),
    });
    let spans = slot_spans(&ram.ranges());
    let log = FakeLog {
        bits: written.map(|w| DirtyBitmap::with_written(&spans, w)),
        pauser: pauser.clone(),
    };
    let pv = PvReclaim {
        pauser: pauser.clone(),
        dirty: Arc::new(log),
        timeout: PAUSE_TIMEOUT,
    };
    (pv, pauser)
}

#[test]
fn written_frames_are_demoted_and_clean_ones_dropped_armed() {
    let s = setup();
    let mut d = Discarder::new(&s.ram).unwrap();
    let (pv, pauser) = reclaim(true, Some(&[12, 13, 17]), &s.ram);
    let arming = FakeArming::default();
    let m = PotentiallyVolatileMetrics::default();
    let r = pv_pass(inputs(&s, u64::MAX, Some(&arming)), &mut d, &pv, &m).unwrap();
    assert!(pauser.ran_paused.load(Ordering::SeqCst), "log read paused");
    assert_eq!((r.pages, r.failed), (7, 0));
    for p in [12, 13, 17] {
        assert_eq!(s.table.state(p), Some(PageState::Stable), "frame {p}");
        assert!(!s.table.is_discarded(p));
    }
    for p in [10, 11, 14, 15, 16, 18, 19] {
        assert!(s.table.is_discarded(p), "frame {p}");
        assert!(s.table.discard_fault_due(p), "a touch is a discard fault");
    }
    assert_eq!(
        *arming.0.lock().unwrap(),
        [
            Run { pfn: 10, count: 2 },
            Run { pfn: 14, count: 3 },
            Run { pfn: 18, count: 2 }
        ]
    );
    assert!(
        !s.table.is_discarded(30),
        "volatile frames are not this pass's"
    );
    let got = |c: &crate::metrics::Counter| c.get();
    assert_eq!(
        [&m.passes, &m.pauses, &m.pause_timeouts, &m.dirty_log_reads].map(got),
        [1, 1, 0, 1]
    );
    assert_eq!([&m.found_written, &m.discarded].map(got), [3, 7]);
    // Nothing left: a second pass finds nothing.
    let r = pv_pass(inputs(&s, u64::MAX, Some(&arming)), &mut d, &pv, &m).unwrap();
    assert_eq!(r, PassReport::default());
}

#[test]
fn the_budget_bounds_the_pass() {
    let s = setup();
    let mut d = Discarder::new(&s.ram).unwrap();
    let (pv, _) = reclaim(true, Some(&[]), &s.ram);
    let arming = FakeArming::default();
    let m = PotentiallyVolatileMetrics::default();
    let r = pv_pass(inputs(&s, 4, Some(&arming)), &mut d, &pv, &m).unwrap();
    assert_eq!(r.pages, 4);
    assert_eq!(s.table.counts().potentially_volatile, 10, "still PV");
    assert_eq!(s.table.counts().discarded, 4);
}

#[test]
fn nothing_is_claimed_without_a_pause_a_reading_or_arming() {
    let s = setup();
    let mut d = Discarder::new(&s.ram).unwrap();
    let arming = FakeArming::default();
    let m = PotentiallyVolatileMetrics::default();
    let run = |pv: &PvReclaim, d: &mut Discarder, arming: Option<&dyn Arming>| {
        pv_pass(inputs(&s, u64::MAX, arming), d, pv, &m)
    };
    let (timeout, _) = reclaim(false, Some(&[]), &s.ram);
    assert!(matches!(
        run(&timeout, &mut d, Some(&arming)),
        Err(PvError::Pause(_))
    ));
    assert_eq!(m.pause_timeouts.get(), 1);
    let (unreadable, _) = reclaim(true, None, &s.ram);
    assert!(matches!(
        run(&unreadable, &mut d, Some(&arming)),
        Err(PvError::DirtyLog(_))
    ));
    let (fine, _) = reclaim(true, Some(&[]), &s.ram);
    assert_eq!(run(&fine, &mut d, None).unwrap(), PassReport::default());
    assert!(arming.0.lock().unwrap().is_empty());
    let c = s.table.counts();
    assert_eq!((c.potentially_volatile, c.discarded), (10, 0));
    assert_eq!(
        (m.pauses.get(), m.passes.get(), m.discarded.get()),
        (2, 0, 0)
    );
}
