//! The hinting logic against a fake VMM and allocator that record, in
//! order, every batch sent and every frame handed over.

use std::collections::{BTreeSet, VecDeque};
use std::vec::Vec;

use pagehint_abi::hypercall::{HintBatch, HintEntry, HintOp, HINT_BATCH_MAX};
use pagehint_abi::state_table::{state_of, ARMED, DISCARDED};
use pagehint_abi::PAGE_SIZE;

use super::*;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    /// A batch reached the VMM: (op, first frame, frames) per entry.
    Sent(Vec<(HintOp, u64, u32)>),
    /// The pool took this many frames from the allocator.
    Took(usize, usize),
    /// Frames went back to the allocator.
    GaveBack(Vec<u64>),
}

struct Fake {
    enabled: bool,
    unbatched: bool,
    page: Option<Box<HintBatch>>,
    /// The allocator: (pfn, fresh), handed out from the front.
    free: VecDeque<(u64, bool)>,
    /// Frames the fake VMM believes unused.
    unused: BTreeSet<u64>,
    /// Frames the fake VMM has dropped: `SET_STABLE` answers `DISCARDED`.
    dropped: BTreeSet<u64>,
    events: Vec<Event>,
    counters: Counters,
    /// The shared page-state table, when the guest registered one.
    shared: Option<Vec<AtomicU8>>,
    /// Where shared-table changes are counted when the host keeps its own
    /// count (as the kernel does, per CPU) instead of `counters.shared`.
    own_shared_count: Option<AtomicU64>,
}

impl Fake {
    fn new(frames: u64) -> Self {
        let page = Box::new(HintBatch {
            count: 0,
            _reserved: [0; 3],
            entries: [HintEntry::default(); HINT_BATCH_MAX],
        });
        Self {
            enabled: true,
            unbatched: false,
            page: Some(page),
            free: (100..100 + frames).map(|p| (p, true)).collect(),
            unused: BTreeSet::new(),
            dropped: BTreeSet::new(),
            events: Vec::new(),
            counters: Counters::new(),
            shared: None,
            own_shared_count: None,
        }
    }

    /// A fake whose guest registered a shared table covering its frames.
    fn with_shared(frames: u64) -> Self {
        let mut m = Self::new(frames);
        m.shared = Some((0..100 + frames).map(|_| AtomicU8::new(0)).collect());
        m
    }

    fn entry(&self, pfn: u64) -> u8 {
        self.shared.as_ref().unwrap()[pfn as usize].load(Ordering::Relaxed)
    }

    fn batches(&self) -> Vec<&Vec<(HintOp, u64, u32)>> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Sent(b) => Some(b),
                _ => None,
            })
            .collect()
    }
}

impl HintHost for Fake {
    fn enabled(&self) -> bool {
        self.enabled
    }
    fn unbatched(&self) -> bool {
        self.unbatched
    }
    fn has_page(&self) -> bool {
        self.page.is_some()
    }
    fn page(&mut self) -> &mut HintBatch {
        self.page.as_mut().expect("page() without has_page()")
    }
    fn send_batch(&mut self, count: usize) -> Option<Result<CallResult, i32>> {
        assert!((1..=HINT_BATCH_MAX).contains(&count), "batch of {count}");
        let page = self.page.as_mut().unwrap();
        assert_eq!(page.count as usize, count, "header and argument agree");
        let mut sent = Vec::new();
        for e in &mut page.entries[..count] {
            let op = e.op().expect("the guest sends known hints only");
            sent.push((op, e.pfn, e.count));
            let frames = e.pfn..e.pfn + u64::from(e.count);
            e.result = match op {
                HintOp::SetUnused => {
                    self.unused.extend(frames);
                    i16::from(HintResult::Ok)
                }
                HintOp::SetStable => {
                    if let Some(t) = &self.shared {
                        // The host disarms the frames: ARMED goes.
                        for p in frames.clone() {
                            t[p as usize].fetch_and(!ARMED, Ordering::Relaxed);
                        }
                    }
                    let lost = frames.clone().any(|p| self.dropped.contains(&p));
                    for p in frames {
                        self.unused.remove(&p);
                        self.dropped.remove(&p);
                    }
                    if lost {
                        i16::from(HintResult::Discarded)
                    } else {
                        i16::from(HintResult::Ok)
                    }
                }
                _ => i16::from(HintResult::Ok),
            };
        }
        self.events.push(Event::Sent(sent));
        Some(Ok(CallResult::Ok))
    }
    fn take_frames(&mut self, n: usize, mut f: impl FnMut(usize, Pfn, bool)) -> usize {
        let mut got = 0;
        while got < n {
            let Some((pfn, fresh)) = self.free.pop_front() else {
                break;
            };
            f(got, Pfn(pfn), fresh);
            got += 1;
        }
        self.events.push(Event::Took(n, got));
        got
    }
    fn give_back_frames(&mut self, frames: &[GuestPhys]) {
        let pfns: Vec<u64> = frames.iter().map(|a| a.pfn().0).collect();
        if let Some(t) = &self.shared {
            for &p in &pfns {
                let v = t[p as usize].load(Ordering::Relaxed);
                assert_eq!(
                    state_of(v),
                    PageState::Unused,
                    "frame {p} back while its entry says {v:#x}"
                );
            }
        } else if self.enabled {
            for p in &pfns {
                assert!(
                    self.unused.contains(p),
                    "frame {p} back in the allocator before the VMM heard SET_UNUSED"
                );
            }
        }
        self.free.extend(pfns.iter().map(|&p| (p, false)));
        self.events.push(Event::GaveBack(pfns));
    }
    fn fresh_frames_are_zero(&self) -> bool {
        true
    }
    fn counters(&self) -> &Counters {
        &self.counters
    }
    fn count_shared(&self) {
        match &self.own_shared_count {
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            None => self.counters.shared.fetch_add(1, Ordering::Relaxed),
        };
    }
    fn shared_entry(&self, pfn: Pfn) -> Option<&AtomicU8> {
        self.shared.as_ref()?.get(pfn.0 as usize)
    }
}

/// Frees `frames` through the pool and drains it (the whole pool goes
/// back).
fn free_all(h: &mut HintState, m: &mut Fake, frames: &[Pooled]) {
    for f in frames {
        h.pool_free(m, f.addr);
    }
    h.drain_local(m);
}

/// Takes `n` frames through the pool, checking each is stable in the
/// fake VMM's view when handed out.
fn alloc(h: &mut HintState, m: &mut Fake, n: usize) -> Vec<Pooled> {
    (0..n)
        .map(|_| {
            let f = h.pool_alloc(m).expect("a frame");
            assert!(
                !m.unused.contains(&f.addr.pfn().0),
                "frame {:?} handed out while the VMM thinks it unused",
                f.addr
            );
            f
        })
        .collect()
}

#[test]
fn the_pool_refills_and_frees_in_batches_of_pool_batch() {
    let mut m = Fake::new(1000);
    let mut h = HintState::new();
    let got = alloc(&mut h, &mut m, POOL_BATCH + 1);
    let took: Vec<_> = m
        .events
        .iter()
        .filter(|e| matches!(e, Event::Took(..)))
        .cloned()
        .collect();
    assert_eq!(
        took,
        [
            Event::Took(POOL_BATCH, POOL_BATCH),
            Event::Took(POOL_BATCH, POOL_BATCH)
        ]
    );
    assert!(m.batches().is_empty(), "fresh frames need no SET_STABLE");
    assert!(got.iter().all(|f| f.known_zero), "fresh frames are zero");
    for f in &got[..POOL_BATCH] {
        h.pool_free(&mut m, f.addr);
    }
    assert_eq!(
        m.batches().len(),
        0,
        "the free pool holds POOL_BATCH frames"
    );
    h.pool_free(&mut m, got[POOL_BATCH].addr);
    let back: Vec<_> = m
        .events
        .iter()
        .filter_map(|e| match e {
            Event::GaveBack(v) => Some(v.len()),
            _ => None,
        })
        .collect();
    assert_eq!(back, [POOL_BATCH]);
    assert_eq!(h.nfreed, 1);
}

#[test]
fn set_unused_is_committed_before_frames_go_back_and_runs_coalesce() {
    let mut m = Fake::new(1000);
    let mut h = HintState::new();
    let got = alloc(&mut h, &mut m, 5);
    free_all(&mut h, &mut m, &got);
    let n = m.events.len();
    assert!(matches!(&m.events[n - 1], Event::GaveBack(v) if v.len() == 5));
    // The pool hands out from the top: 163, 162, ... so no run is
    // contiguous upwards except as freed; whatever the order, every frame
    // was covered by the batch just before the hand-back.
    let Event::Sent(batch) = &m.events[n - 2] else {
        panic!("no batch before the hand-back: {:?}", m.events);
    };
    let covered: u32 = batch.iter().map(|&(_, _, c)| c).sum();
    assert_eq!(covered, 5);
    assert!(batch.iter().all(|&(op, _, _)| op == HintOp::SetUnused));
    // Ascending addresses make one entry.
    let mut h = HintState::new();
    for p in 500..508u64 {
        h.pool_free(&mut m, Pfn(p).addr());
    }
    h.drain_local(&mut m);
    assert_eq!(
        m.batches().last().unwrap(),
        &&vec![(HintOp::SetUnused, 500, 8)]
    );
}

#[test]
fn reused_frames_are_made_stable_before_they_are_handed_out() {
    // Exactly one pool's worth of frames, so the second refill reuses them.
    let mut m = Fake::new(POOL_BATCH as u64);
    let mut h = HintState::new();
    let first = alloc(&mut h, &mut m, POOL_BATCH);
    free_all(&mut h, &mut m, &first);
    assert_eq!(m.unused.len(), POOL_BATCH);
    // The host drops two of them.
    let lost = [first[3].addr.pfn().0, first[10].addr.pfn().0];
    m.dropped.extend(lost);
    let before = m.batches().len();
    let again = alloc(&mut h, &mut m, POOL_BATCH);
    let batches = m.batches();
    assert_eq!(
        batches.len(),
        before + 1,
        "one SET_STABLE batch for the refill"
    );
    let stable = batches.last().unwrap();
    assert_eq!(stable.len(), POOL_BATCH);
    assert!(stable
        .iter()
        .all(|&(op, _, c)| op == HintOp::SetStable && c == 1));
    assert!(m.unused.is_empty());
    for f in &again {
        let discarded = lost.contains(&f.addr.pfn().0);
        assert_eq!(
            f.known_zero, discarded,
            "{f:?}: only DISCARDED skips zeroing"
        );
    }
}

#[test]
fn batches_never_exceed_the_page() {
    let mut m = Fake::new(0);
    let mut h = HintState::new();
    for p in 0..(2 * HINT_BATCH_MAX as u64 + 10) {
        h.queue_one(&mut m, HintOp::MakeVolatile, Pfn(p));
    }
    assert_eq!(h.pending(), 10);
    h.commit(&mut m);
    let sizes: Vec<usize> = m.batches().iter().map(|b| b.len()).collect();
    assert_eq!(sizes, [HINT_BATCH_MAX, HINT_BATCH_MAX, 10]);
    assert_eq!(h.pending(), 0);
    let c = &m.counters;
    assert_eq!(
        c.hints.load(Ordering::Relaxed),
        2 * HINT_BATCH_MAX as u64 + 10
    );
    assert_eq!(c.batches.load(Ordering::Relaxed), 3);
    assert_eq!(c.errors.load(Ordering::Relaxed), 0);
}

#[test]
fn now_many_makes_room_and_answers_each_frame() {
    let mut m = Fake::new(0);
    let mut h = HintState::new();
    for p in 0..(HINT_BATCH_MAX as u64 - 3) {
        h.queue_one(&mut m, HintOp::MakeVolatile, Pfn(p));
    }
    m.dropped.insert(7);
    let mut answers = Vec::new();
    h.now_many(&mut m, HintOp::SetStable, &[6, 7, 8, 9], |p, r| {
        answers.push((p, r))
    });
    let sizes: Vec<usize> = m.batches().iter().map(|b| b.len()).collect();
    assert_eq!(
        sizes,
        [HINT_BATCH_MAX - 3, 4],
        "committed early to make room"
    );
    assert_eq!(
        answers,
        [
            (6, Ok(HintResult::Ok)),
            (7, Ok(HintResult::Discarded)),
            (8, Ok(HintResult::Ok)),
            (9, Ok(HintResult::Ok))
        ]
    );
}

#[test]
fn unbatched_mode_sends_every_hint_alone_and_keeps_answers() {
    let mut m = Fake::new(0);
    m.unbatched = true;
    let mut h = HintState::new();
    m.dropped.insert(2);
    let mut answers = Vec::new();
    h.now_many(&mut m, HintOp::SetStable, &[1, 2, 3], |p, r| {
        answers.push((p, r))
    });
    let sizes: Vec<usize> = m.batches().iter().map(|b| b.len()).collect();
    assert_eq!(sizes, [1, 1, 1]);
    assert_eq!(answers[1], (2, Ok(HintResult::Discarded)));
    assert_eq!(h.pending(), 0);
}

#[test]
fn without_hinting_nothing_is_sent_and_frames_still_flow() {
    let mut m = Fake::new(POOL_BATCH as u64);
    m.enabled = false;
    let mut h = HintState::new();
    h.queue_one(&mut m, HintOp::MakeVolatile, Pfn(1));
    let mut answers = Vec::new();
    h.now_many(&mut m, HintOp::MakeStable, &[1, 2], |p, r| {
        answers.push((p, r))
    });
    assert_eq!(answers, [(1, Ok(HintResult::Ok)), (2, Ok(HintResult::Ok))]);
    let got = alloc(&mut h, &mut m, POOL_BATCH);
    free_all(&mut h, &mut m, &got);
    let again = alloc(&mut h, &mut m, 1);
    assert!(!again[0].known_zero, "a reused frame is not known zero");
    assert!(m.batches().is_empty());
    // No page yet (early boot): the same.
    let mut m = Fake::new(4);
    m.page = None;
    let mut h = HintState::new();
    h.queue_one(&mut m, HintOp::MakeVolatile, Pfn(1));
    h.commit(&mut m);
    assert_eq!(h.pending(), 0);
    assert!(m.batches().is_empty());
}

#[test]
fn refused_batches_and_entries_are_counted() {
    struct Refusing(Fake);
    impl HintHost for Refusing {
        fn enabled(&self) -> bool {
            true
        }
        fn unbatched(&self) -> bool {
            false
        }
        fn has_page(&self) -> bool {
            true
        }
        fn page(&mut self) -> &mut HintBatch {
            self.0.page()
        }
        fn send_batch(&mut self, _count: usize) -> Option<Result<CallResult, i32>> {
            Some(Ok(CallResult::HintsDisabled))
        }
        fn take_frames(&mut self, n: usize, f: impl FnMut(usize, Pfn, bool)) -> usize {
            self.0.take_frames(n, f)
        }
        fn give_back_frames(&mut self, frames: &[GuestPhys]) {
            self.0
                .free
                .extend(frames.iter().map(|a| (a.pfn().0, false)));
        }
        fn fresh_frames_are_zero(&self) -> bool {
            true
        }
        fn counters(&self) -> &Counters {
            &self.0.counters
        }
        fn shared_entry(&self, _: Pfn) -> Option<&AtomicU8> {
            None
        }
    }
    let mut m = Refusing(Fake::new(0));
    let mut h = HintState::new();
    for p in 0..3 {
        h.queue_one(&mut m, HintOp::MakeVolatile, Pfn(p));
    }
    h.commit(&mut m);
    assert_eq!(m.0.counters.errors.load(Ordering::Relaxed), 3);
    // The frames are given back even so.
    h.pool_free(&mut m, GuestPhys(PAGE_SIZE * 9));
    h.drain_local(&mut m);
    assert_eq!(m.0.free.len(), 1);
}

#[test]
fn with_a_shared_table_only_armed_frames_cost_an_exit() {
    let mut m = Fake::with_shared(POOL_BATCH as u64);
    let mut h = HintState::new();
    let got = alloc(&mut h, &mut m, POOL_BATCH);
    free_all(&mut h, &mut m, &got);
    assert!(m.batches().is_empty(), "frees went through the table");
    for f in &got {
        assert_eq!(state_of(m.entry(f.addr.pfn().0)), PageState::Unused);
    }
    // The host dropped two of them; it armed one for discard faults (it
    // was volatile when dropped).
    let (plain, armed) = (got[3].addr.pfn().0, got[5].addr.pfn().0);
    let t = m.shared.as_ref().unwrap();
    t[plain as usize].fetch_or(DISCARDED, Ordering::Relaxed);
    t[armed as usize].fetch_or(DISCARDED | ARMED, Ordering::Relaxed);
    let again = alloc(&mut h, &mut m, POOL_BATCH);
    // One exit, carrying the armed frame alone.
    assert_eq!(m.batches(), [&vec![(HintOp::SetStable, armed, 1)]]);
    for f in &again {
        let p = f.addr.pfn().0;
        assert_eq!(
            m.entry(p),
            PageState::Stable as u8,
            "frame {p}: stable, marks gone"
        );
        assert_eq!(f.known_zero, p == plain || p == armed, "frame {p}");
    }
    // Every change counted once: the armed frame's with its SET_STABLE.
    assert_eq!(
        m.counters.shared.load(Ordering::Relaxed),
        2 * POOL_BATCH as u64 - 1
    );
    assert_eq!(
        m.counters.hints.load(Ordering::Relaxed),
        1,
        "the one hypercall hint"
    );
}

#[test]
fn a_host_counting_shared_changes_itself_gets_every_one() {
    // The kernel counts them per CPU: none may reach `counters.shared`.
    let mut m = Fake::with_shared(POOL_BATCH as u64);
    m.own_shared_count = Some(AtomicU64::new(0));
    let mut h = HintState::new();
    let got = alloc(&mut h, &mut m, POOL_BATCH);
    free_all(&mut h, &mut m, &got);
    let armed = got[5].addr.pfn().0;
    m.shared.as_ref().unwrap()[armed as usize].fetch_or(DISCARDED | ARMED, Ordering::Relaxed);
    alloc(&mut h, &mut m, POOL_BATCH);
    let own = m.own_shared_count.as_ref().unwrap().load(Ordering::Relaxed);
    assert_eq!(
        own,
        2 * POOL_BATCH as u64 - 1,
        "the armed one went by hypercall"
    );
    assert_eq!(m.counters.shared.load(Ordering::Relaxed), 0);
    assert_eq!(m.counters.hints.load(Ordering::Relaxed), 1);
}
