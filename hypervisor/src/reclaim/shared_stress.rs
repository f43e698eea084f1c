//! Tests of the host's side of the guest's shared page-state table under an
//! untrusted guest: whatever bytes the guest writes into its entries, and
//! whenever, the VMM must not panic or hang, must claim (and so drop) only
//! frames whose entry was discardable (Unused or Volatile, neither BUSY nor
//! DISCARDED) at the instant of the claim, must never claim the table's own
//! frames nor frames in the hole, must count in `total_discards` exactly
//! what it dropped, and a guest that follows the protocol
//! (`pagehint_abi::state_table`) on its own frames never loses data: after
//! `guest_make_stable` says "not discarded" the contents are intact, after
//! "discarded" they read as zeroes.
//!
//! - [`guest_scribbles_while_the_reclaimer_drops_and_protocol_frames_survive`]
//!   runs for about two seconds, deterministically seeded: two "vCPU"
//!   threads cycle their own frames through the protocol and check their
//!   contents, a reclaimer runs `discard_pass_ordered` back to back with real
//!   `MADV_DONTNEED`, and a scribbler writes any byte into every other
//!   entry, the table's own frames' and the hole's included.
//! - [`every_entry_byte_is_handled_for_every_host_step`] writes each of the
//!   256 byte values into an ordinary, an own and a hole frame's entry of a
//!   4 GiB guest (which has a real MMIO hole) and runs every host step on
//!   it.
//! - [`a_guest_written_busy_bit_never_blocks_a_host_thread`]: a hint or
//!   a zero fill's mark (`mark_zero_filled`) never waits on a BUSY bit the
//!   guest wrote (a hint did, for ever, until the host kept its own
//!   CLAIMED mark).
//!
//! It lives beside the reclaimer because it drives the frame-state core
//! the way the reclaimer does (`policy::discard_pass_ordered`). It must
//! never use `unsafe`, depend on timing for its verdicts (only for how much
//! work gets done), or leave a thread behind when it passes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pagehint_abi::hypercall::HintOp;
use pagehint_abi::page_state::PageState;
use pagehint_abi::state_table::{self as st, state_of, ARMED, BUSY, DISCARDED};
use pagehint_abi::{GuestPhys, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress};

use crate::frames::transition::transition;
use crate::frames::{Discarder, FrameTable, HintOutcome, Method, SharedEntries, StateError};
use crate::memory::GuestRam;
use crate::reclaim::policy::{discard_pass, discard_pass_ordered};
use crate::reclaim::resident::ResidentMap;

use PageState::*;

/// Where the guest puts its table (frame 0x100).
const TABLE_GPA: u64 = 0x10_0000;
/// How long the stress test runs its threads.
const RUN_FOR: Duration = Duration::from_secs(2);
/// How long a stopped thread may take to end before the test calls it hung.
const JOIN_WITHIN: Duration = Duration::from_secs(20);
/// vCPU thread k owns every SPREAD-th frame from k.
const SPREAD: u64 = 32;
/// Words of one frame.
const WORDS: usize = (PAGE_SIZE / 8) as usize;

/// xorshift64: deterministic randomness without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The contents of frame `pfn` in generation `gen`: one non-zero word
/// naming both, repeated (a drop zeroes the whole frame; a frame holding
/// another frame's or generation's words is caught too).
fn pattern(pfn: u64, gen: u64) -> Vec<u8> {
    ((1 << 63) | (pfn << 32) | (gen & 0xffff_ffff))
        .to_le_bytes()
        .repeat(WORDS)
}

fn frame_addr(pfn: u64) -> GuestAddress {
    GuestAddress(pfn * PAGE_SIZE)
}

fn write_frame(ram: &GuestRam, pfn: u64, data: &[u8]) {
    ram.mem().write_slice(data, frame_addr(pfn)).unwrap();
}

/// Checks frame `pfn` holds `want` (the pattern of a generation), or
/// zeroes when `want` is `None`.
fn check_frame(ram: &GuestRam, pfn: u64, want: Option<u64>) -> Result<(), String> {
    const ZERO: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
    let mut got = vec![0u8; PAGE_SIZE as usize];
    ram.mem().read_slice(&mut got, frame_addr(pfn)).unwrap();
    match want {
        Some(gen) if got != pattern(pfn, gen) => {
            let zero = got == ZERO;
            Err(format!(
                "frame {pfn:#x}: contents of generation {gen} lost (all zero: {zero})"
            ))
        }
        None if got != ZERO => Err(format!("frame {pfn:#x}: reported discarded but not zero")),
        _ => Ok(()),
    }
}

/// Joins `h`, failing the test if it has not ended by `deadline` (a hang).
fn join_by<T>(h: JoinHandle<T>, deadline: Instant, what: &str) -> T {
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "{what} hung");
        std::thread::sleep(Duration::from_micros(100));
    }
    h.join().unwrap()
}

/// A 64 MiB guest whose frame table has a (made-up) hole and is switched
/// to a shared table at [`TABLE_GPA`]; also returns a second view of the
/// entries, the guest's.
fn shared_guest(hole: std::ops::Range<u64>) -> (GuestRam, Arc<FrameTable>, Arc<SharedEntries>) {
    let ram = GuestRam::new(64 << 20).unwrap();
    let frames = ram.frames();
    let table = Arc::new(FrameTable::with_hole(frames as usize, hole, false));
    let host = SharedEntries::new(&ram, GuestPhys(TABLE_GPA), frames, table.len()).unwrap();
    table.share(host).unwrap();
    let guest = SharedEntries::new(&ram, GuestPhys(TABLE_GPA), frames, frames).unwrap();
    (ram, table, Arc::new(guest))
}

/// One frame a vCPU thread owns.
struct Owned {
    pfn: u64,
    /// The generation of the pattern the frame holds while not discarded.
    gen: u64,
    /// `None` while Stable, else the state it was released to.
    released: Option<PageState>,
}

/// What a vCPU thread saw.
#[derive(Debug, Default)]
struct VcpuReport {
    cycles: u64,
    discards: u64,
    errors: u64,
    first_errors: Vec<String>,
}

impl VcpuReport {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_errors.len() < 8 {
            self.first_errors.push(e);
        }
    }
}

/// Makes an owned frame Stable and checks what the protocol reported
/// against its contents; rewrites the pattern (a new generation) when the
/// frame was discarded or when `rewrite` asks.
fn make_stable(
    ram: &GuestRam,
    entries: &SharedEntries,
    f: &mut Owned,
    rewrite: bool,
    r: &mut VcpuReport,
) {
    let entry = entries.entry(f.pfn).unwrap();
    let taken = st::guest_make_stable(entry);
    let after = entry.load(Ordering::Acquire);
    if taken.armed || after != Stable as u8 {
        r.error(format!(
            "frame {:#x}: made stable, {taken:?}, entry now {after:#x}",
            f.pfn
        ));
    }
    if taken.discarded {
        r.discards += 1;
        if let Err(e) = check_frame(ram, f.pfn, None) {
            r.error(e);
        }
    } else if let Err(e) = check_frame(ram, f.pfn, Some(f.gen)) {
        r.error(e);
    }
    if taken.discarded || rewrite {
        f.gen += 1;
        write_frame(ram, f.pfn, &pattern(f.pfn, f.gen));
    }
    f.released = None;
}

/// A guest CPU that follows the protocol on its own frames only.
fn vcpu(
    ram: GuestRam,
    entries: Arc<SharedEntries>,
    pfns: Vec<u64>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> VcpuReport {
    let mut rng = XorShift(seed);
    let mut r = VcpuReport::default();
    let mut frames: Vec<Owned> = pfns
        .into_iter()
        .map(|pfn| Owned {
            pfn,
            gen: 0,
            released: None,
        })
        .collect();
    for f in &frames {
        write_frame(&ram, f.pfn, &pattern(f.pfn, f.gen));
    }
    while !stop.load(Ordering::Relaxed) {
        r.cycles += 1;
        let i = rng.below(frames.len());
        let f = &mut frames[i];
        let entry = entries.entry(f.pfn).unwrap();
        let v = entry.load(Ordering::Acquire);
        match f.released {
            None => {
                // Only the guest writes a Stable entry: it must read as we
                // left it (a dropped table page would not), and so must the
                // frame.
                if v != Stable as u8 {
                    r.error(format!("frame {:#x}: Stable entry reads {v:#x}", f.pfn));
                }
                if let Err(e) = check_frame(&ram, f.pfn, Some(f.gen)) {
                    r.error(e);
                }
                let to = if rng.next() & 1 == 0 {
                    Unused
                } else {
                    Volatile
                };
                st::guest_release(entry, to);
                f.released = Some(to);
            }
            Some(s) => {
                // The host adds BUSY and DISCARDED only (ARMED never: no
                // arming); the state bits stay ours.
                if state_of(v) != s || v & !(BUSY | DISCARDED | 0x03) != 0 {
                    r.error(format!(
                        "frame {:#x}: released {s:?}, entry reads {v:#x}",
                        f.pfn
                    ));
                }
                let choice = rng.next();
                if s == Volatile && choice.is_multiple_of(4) {
                    // A cache page freed: Volatile to Unused.
                    st::guest_release(entry, Unused);
                    f.released = Some(Unused);
                } else {
                    make_stable(&ram, &entries, f, choice.is_multiple_of(3), &mut r);
                }
            }
        }
    }
    // Take every frame back and check it one last time.
    for f in &mut frames {
        if f.released.is_some() {
            make_stable(&ram, &entries, f, false, &mut r);
        } else if let Err(e) = check_frame(&ram, f.pfn, Some(f.gen)) {
            r.error(e);
        }
    }
    r
}

/// What the reclaimer thread did.
#[derive(Debug, Default)]
struct ReclaimReport {
    passes: u64,
    pages: u64,
    failed: u64,
    bad_counts: u64,
}

/// A byte the scribbler writes: often one the host may claim.
fn scribble_byte(rng: &mut XorShift) -> u8 {
    let r = rng.next();
    let byte = (r >> 8) as u8;
    match r % 8 {
        0 => Unused as u8,
        1 => Volatile as u8,
        2 => byte & (ARMED | 0x03),
        _ => byte,
    }
}

#[test]
fn guest_scribbles_while_the_reclaimer_drops_and_protocol_frames_survive() {
    let hole = 12288..12352;
    let (ram, table, entries) = shared_guest(hole.clone());
    let frames = ram.frames();
    let own = entries.own_frames();
    assert_eq!(own, 0x100..0x104, "16384 entries: four pages");
    // A canary in the hole's frames (RAM here; the table says it is not):
    // any drop of one zeroes it.
    for p in hole.clone() {
        write_frame(&ram, p, &pattern(p, 0xca7));
    }
    let usable = |p: &u64| !own.contains(p) && !hole.contains(p);
    // vCPU k owns the frames p % SPREAD == k: their entries lie in every
    // page of the table, so a dropped table page (all zeroes: Stable, no
    // marks) would show as a released frame's entry reading Stable, which
    // each vCPU checks before every step. The other frames are the
    // scribbler's; dropping those is allowed.
    let owned = |k: u64| {
        (0..frames)
            .filter(|p| p % SPREAD == k)
            .filter(usable)
            .collect::<Vec<_>>()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let vcpus: Vec<JoinHandle<VcpuReport>> = (0..2u64)
        .map(|k| {
            let (ram, entries, stop, pfns) = (ram.clone(), entries.clone(), stop.clone(), owned(k));
            std::thread::spawn(move || vcpu(ram, entries, pfns, 0x9e37_79b9_7f4a_7c15 ^ k, stop))
        })
        .collect();
    let reclaimer = {
        let (ram, table, stop) = (ram.clone(), table.clone(), stop.clone());
        let ram_frames = frames - (hole.end - hole.start);
        std::thread::spawn(move || {
            let mut d = Discarder::new(&ram).unwrap();
            let resident = ResidentMap::all(frames);
            let mut r = ReclaimReport::default();
            let methods = [Method::Auto, Method::Madvise, Method::ProcessMadvise];
            while !stop.load(Ordering::Relaxed) {
                let method = methods[(r.passes % 3) as usize];
                let p =
                    discard_pass_ordered(&table, &mut d, &resident, u64::MAX, method, None, None);
                r.passes += 1;
                r.pages += p.pages;
                r.failed += p.failed;
                // Counted from the guest's entries, garbage included.
                let c = table.counts();
                let sum = c.stable + c.unused + c.volatile + c.potentially_volatile;
                if sum != ram_frames || c.discarded > ram_frames {
                    r.bad_counts += 1;
                }
            }
            r
        })
    };
    let scribbler = {
        let (entries, stop) = (entries.clone(), stop.clone());
        let unowned = (0..frames)
            .filter(|p| p % SPREAD >= 2)
            .filter(usable)
            .collect::<Vec<_>>();
        let pinned: Vec<u64> = own.clone().chain(hole.clone()).collect();
        std::thread::spawn(move || {
            let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let pfn = if rng.next().is_multiple_of(4) {
                    pinned[rng.below(pinned.len())]
                } else {
                    unowned[rng.below(unowned.len())]
                };
                let b = scribble_byte(&mut rng);
                entries.entry(pfn).unwrap().store(b, Ordering::Relaxed);
                writes += 1;
            }
            writes
        })
    };
    std::thread::sleep(RUN_FOR);
    stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + JOIN_WITHIN;
    let writes = join_by(scribbler, deadline, "the scribbler");
    let vcpus: Vec<VcpuReport> = vcpus
        .into_iter()
        .map(|h| join_by(h, deadline, "a vCPU thread"))
        .collect();
    let rec = join_by(reclaimer, deadline, "the reclaimer");
    eprintln!("shared_stress: {rec:?}, {writes} scribbles, vCPUs {vcpus:?}");

    for (k, v) in vcpus.iter().enumerate() {
        assert_eq!(v.errors, 0, "vCPU {k}: {:?}", v.first_errors);
        assert!(v.discards > 0, "vCPU {k} never saw a discard: {v:?}");
    }
    assert!(writes > 0 && rec.passes > 0);
    assert!(table.total_discards() > 0, "the passes claimed nothing");
    assert_eq!(
        table.total_discards(),
        rec.pages,
        "the host's count is what its passes dropped"
    );
    assert_eq!(rec.failed, 0, "no drop of a claimed run failed");
    assert_eq!(
        rec.bad_counts, 0,
        "counts() of the entries were inconsistent"
    );
    // Each drop of a vCPU frame was reported to its vCPU exactly once; the
    // other drops were of frames the scribbler made claimable.
    let reported: u64 = vcpus.iter().map(|v| v.discards).sum();
    assert!(reported <= table.total_discards());
    for p in hole.clone() {
        check_frame(&ram, p, Some(0xca7)).unwrap();
    }
    // The table's own frames and the hole's stay unclaimable whatever their
    // entries say.
    for p in own.clone().chain(hole.clone()) {
        for class in [Unused, Volatile] {
            entries
                .entry(p)
                .unwrap()
                .store(class as u8, Ordering::Release);
            assert!(!table.try_claim(p, class), "frame {p:#x} claimed");
        }
    }
    // Every entry Stable again (the vCPU threads took theirs back): one
    // more pass finds nothing to claim.
    for p in (0..frames).filter(|p| p % SPREAD >= 2 || !usable(p)) {
        entries
            .entry(p)
            .unwrap()
            .store(Stable as u8, Ordering::Release);
    }
    let before = table.total_discards();
    let mut d = Discarder::new(&ram).unwrap();
    let last = discard_pass(
        &table,
        &mut d,
        &ResidentMap::all(frames),
        u64::MAX,
        Method::Auto,
    );
    assert_eq!(last.pages, 0, "every frame is Stable now");
    assert_eq!(table.total_discards(), before);
    let c = table.counts();
    assert_eq!((c.unused, c.volatile, c.potentially_volatile), (0, 0, 0));
}

/// The frames of the exhaustive test's 4 GiB guest.
struct Exhaustive {
    ram: GuestRam,
    table: Arc<FrameTable>,
    own: std::ops::Range<u64>,
    hole: std::ops::Range<u64>,
}

impl Exhaustive {
    fn new() -> Self {
        // 4 GiB: RAM to 3 GiB, the MMIO hole, RAM from 4 to 5 GiB; a table
        // of 320 pages. Only what is touched costs memory.
        let ram = GuestRam::new(4 << 30).unwrap();
        let frames = ram.frames();
        let hole = ram.hole_frames();
        assert!(!hole.is_empty());
        let table = Arc::new(FrameTable::with_hole(frames as usize, hole.clone(), false));
        let s = SharedEntries::new(&ram, GuestPhys(TABLE_GPA), frames, table.len()).unwrap();
        let own = s.own_frames();
        table.share(s).unwrap();
        Self {
            ram,
            table,
            own,
            hole,
        }
    }

    /// The guest writes `b` into frame `pfn`'s entry.
    fn write(&self, pfn: u64, b: u8) {
        self.ram
            .mem()
            .write_obj(b, GuestAddress(TABLE_GPA + pfn))
            .unwrap();
    }

    fn read(&self, pfn: u64) -> u8 {
        self.ram
            .mem()
            .read_obj(GuestAddress(TABLE_GPA + pfn))
            .unwrap()
    }
}

/// One call that may wait on BUSY.
#[derive(Clone, Copy, Debug)]
enum Waiting {
    Apply(HintOp),
    ZeroFilled,
}

const WAITING: [Waiting; 6] = [
    Waiting::Apply(HintOp::SetUnused),
    Waiting::Apply(HintOp::SetStable),
    Waiting::Apply(HintOp::MakeVolatile),
    Waiting::Apply(HintOp::MakeStable),
    Waiting::Apply(HintOp::CheckWritable),
    Waiting::ZeroFilled,
];

/// What a [`Waiting`] call returned.
#[derive(Debug, PartialEq, Eq)]
enum Returned {
    Apply(Result<HintOutcome, StateError>),
    ZeroFilled(bool),
}

fn call(table: &FrameTable, pfn: u64, w: Waiting) -> Returned {
    match w {
        Waiting::Apply(op) => Returned::Apply(table.apply(pfn, op)),
        Waiting::ZeroFilled => Returned::ZeroFilled(table.mark_zero_filled(pfn)),
    }
}

/// Checks what `w` did to an entry that read `b` (BUSY clear) before and
/// `after` after.
fn check_returned(pfn: u64, b: u8, w: Waiting, got: &Returned, after: u8) {
    assert_eq!(b & BUSY, 0);
    let from = state_of(b);
    match (w, got) {
        (Waiting::Apply(op), Returned::Apply(r)) => {
            let to = transition(from, op, false);
            match (to, r) {
                (Some(to), Ok(outcome)) => {
                    assert_eq!(state_of(after), to, "{pfn:#x} {b:#x} {op:?}");
                    assert_eq!(after & BUSY, 0);
                    if *outcome == HintOutcome::Discarded {
                        assert_ne!(b & DISCARDED, 0, "{pfn:#x} {b:#x} {op:?}");
                    }
                }
                (None, Err(StateError::Illegal { .. })) => assert_eq!(after, b),
                _ => panic!("frame {pfn:#x}, entry {b:#x}, {op:?}: {r:?}"),
            }
        }
        (Waiting::ZeroFilled, Returned::ZeroFilled(done)) => {
            // Nothing is registered in this test, so nothing is missing
            // for sure: a zero fill's mark writes nothing, whatever the
            // byte (`frames::table_tests` has the registered cases).
            assert!(!*done, "{pfn:#x} {b:#x}");
            assert_eq!(after, b, "{pfn:#x} {b:#x}");
        }
        _ => unreachable!(),
    }
}

#[test]
fn every_entry_byte_is_handled_for_every_host_step() {
    let g = Exhaustive::new();
    let t = &g.table;
    let frames = t.len();
    let (own, hole) = (g.own.clone(), g.hole.clone());
    assert_eq!(own.end - own.start, frames.div_ceil(PAGE_SIZE));
    let normal = 0x1000u64;
    // Where the six waiting calls of one byte go, one frame each.
    let normal_six: Vec<u64> = (0..6).map(|i| normal + 16 + i).collect();
    let own_six: Vec<u64> = (0..6).map(|i| own.start + 8 + i).collect();
    let mut finishes = 0u64;
    for b in 0..=255u8 {
        for (pfn, kind) in [
            (normal, "normal"),
            (own.start, "own"),
            (own.end - 1, "own"),
            (hole.start, "hole"),
            (hole.end - 1, "hole"),
        ] {
            let ours = kind == "own";
            let ram = kind != "hole";
            for class in [Stable, Unused, Volatile, PotentiallyVolatile] {
                g.write(pfn, b);
                // A hint for the scan only: it may say yes for an own frame.
                let looks = t.looks_claimable(pfn, class);
                assert_eq!(
                    looks,
                    ram && st::claimable(b, class),
                    "{kind} {b:#x} {class:?}"
                );
                let claimed = t.try_claim(pfn, class);
                assert_eq!(
                    claimed,
                    ram && !ours && st::claimable(b, class),
                    "{kind} frame {pfn:#x}, entry {b:#x}, {class:?}"
                );
                if !claimed {
                    assert_eq!(g.read(pfn), b, "a refused claim writes nothing");
                    continue;
                }
                assert_eq!(g.read(pfn), b | BUSY);
                assert!(t.discard_fault_due(pfn) || class != Volatile);
                if class == Volatile {
                    t.finish_discard(pfn);
                    finishes += 1;
                    assert_eq!(g.read(pfn), b | DISCARDED);
                    assert!(t.is_discarded(pfn) && t.discard_fault_due(pfn));
                } else {
                    t.abort_discard(pfn);
                    assert_eq!(g.read(pfn), b & !ARMED);
                }
            }
            // Every other step on the raw byte, claimed or not.
            g.write(pfn, b);
            let due = t.discard_fault_due(pfn);
            let want_due = ram
                && match state_of(b) {
                    Volatile | PotentiallyVolatile => b & (DISCARDED | BUSY) != 0,
                    // Nothing is registered in this test.
                    _ => false,
                };
            assert_eq!(due, want_due, "{kind} {b:#x}");
            assert_eq!(t.state(pfn), ram.then(|| state_of(b)));
            assert_eq!(t.is_discarded(pfn), ram && b & DISCARDED != 0);
            // The host's misuse (a finish without a claim) is counted all
            // the same; it must not panic either.
            t.finish_discard(pfn);
            finishes += u64::from(ram);
            g.write(pfn, b);
            t.abort_discard(pfn);
            assert_eq!(g.read(pfn), if ram { b & !(BUSY | ARMED) } else { b });
            if !ram {
                g.write(pfn, b);
                for w in WAITING {
                    match call(t, pfn, w) {
                        Returned::Apply(r) => assert_eq!(r, Err(StateError::OutOfRange(pfn))),
                        Returned::ZeroFilled(done) => assert!(!done),
                    }
                }
                assert_eq!(g.read(pfn), b, "nothing writes a hole frame's entry");
            } else if b & BUSY == 0 {
                for w in WAITING {
                    g.write(pfn, b);
                    let got = call(t, pfn, w);
                    check_returned(pfn, b, w, &got, g.read(pfn));
                }
            }
        }
        if b & BUSY != 0 {
            // A BUSY bit the host did not set (no claim holds the frame) is
            // the guest's garbage: no call waits on it, each acts as if it
            // were clear (and a change it makes drops it). Each runs on its
            // own thread so that a wait would show as a timeout.
            for six in [&normal_six, &own_six] {
                let calls: Vec<_> = six
                    .iter()
                    .zip(WAITING)
                    .map(|(&pfn, w)| {
                        g.write(pfn, b);
                        let t = g.table.clone();
                        (pfn, w, std::thread::spawn(move || call(&t, pfn, w)))
                    })
                    .collect();
                let deadline = Instant::now() + JOIN_WITHIN;
                for (pfn, w, h) in calls {
                    let got = join_by(h, deadline, "a call on a guest-written BUSY");
                    let after = g.read(pfn);
                    if let Returned::ZeroFilled(done) = got {
                        // A zero fill leaves a BUSY entry to its holder,
                        // here the guest: nothing to wait for, no write.
                        assert!(!done && after == b, "{pfn:#x} {b:#x} {after:#x}");
                        continue;
                    }
                    let unchanged = if after == b { b & !BUSY } else { after };
                    check_returned(pfn, b & !BUSY, w, &got, unchanged);
                }
            }
        }
    }
    for pfn in [frames, u64::MAX] {
        assert!(!t.try_claim(pfn, Unused) && !t.looks_claimable(pfn, Unused));
        assert!(!t.discard_fault_due(pfn) && !t.mark_zero_filled(pfn));
        t.finish_discard(pfn);
        t.abort_discard(pfn);
        assert_eq!(
            t.apply(pfn, HintOp::SetStable),
            Err(StateError::OutOfRange(pfn))
        );
    }
    assert_eq!(t.total_discards(), finishes);
    // Counting from entries that hold every byte value.
    for b in 0..=255u8 {
        g.write(normal + u64::from(b), b);
        g.write(own.start + u64::from(b), b);
        g.write(hole.start + u64::from(b), b);
    }
    let c = t.counts();
    let ram_frames = frames - (hole.end - hole.start);
    assert_eq!(
        c.stable + c.unused + c.volatile + c.potentially_volatile,
        ram_frames
    );
    assert!(c.discarded <= ram_frames);
}

/// A hint (`FrameTable::apply`) or `FrameTable::mark_zero_filled` on a frame
/// whose shared entry the guest wrote with BUSY set waits until BUSY
/// clears: with a shared table nothing of the host's will ever clear it,
/// so the calling thread spins (and yields) forever. A vCPU thread (its
/// own HINT_BATCH) or the discard-fault handler thread (a zero fill
/// when it breaks a livelock on a Volatile|BUSY entry) hangs on a byte
/// the guest chose.
#[test]
fn a_guest_written_busy_bit_never_blocks_a_host_thread() {
    let g = Exhaustive::new();
    let mut hung = Vec::new();
    for (i, w) in WAITING.into_iter().enumerate() {
        let pfn = 0x2000 + i as u64;
        g.write(pfn, Volatile as u8 | DISCARDED | BUSY);
        let t = g.table.clone();
        let h = std::thread::spawn(move || call(&t, pfn, w));
        let deadline = Instant::now() + Duration::from_secs(1);
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !h.is_finished() {
            hung.push(w);
        }
        // Release the thread so that the test leaves none behind.
        g.write(pfn, Volatile as u8 | DISCARDED);
        join_by(h, Instant::now() + JOIN_WITHIN, "a released call");
    }
    assert!(hung.is_empty(), "still waiting after 1 s: {hung:?}");
}
