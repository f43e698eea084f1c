//! Tests of the handler's decisions on a real userfaultfd over a plain
//! anonymous mapping (guest RAM without KVM): a thread touches a registered,
//! dropped frame, the event names that thread, and the handler answers.

use std::sync::mpsc;
use std::time::Duration;

use pagehint_abi::hypercall::HintOp;
use pagehint_abi::page_state::PageState;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::discard_fault::register_fault_kick_signal;
use crate::discard_fault::tests::hub;
use crate::discard_fault::PAGE;
use crate::frames::{Discarder, Method, Run};
use crate::memory::GuestRam;
use pagehint_abi::GuestPhys;

/// Makes frame `pfn` hold 0xab, then Volatile, registered and dropped, the
/// way the reclaimer does it.
fn discard_volatile(f: &DiscardFaults, ram: &GuestRam, pfn: u64) {
    ram.mem()
        .write_obj(0xabu8, GuestAddress(pfn * PAGE))
        .unwrap();
    let t = f.table();
    t.apply(pfn, HintOp::MakeVolatile).unwrap();
    assert!(t.try_claim(pfn, PageState::Volatile));
    assert!(f.register_volatile_run(pfn, 1));
    let r = Discarder::new(ram)
        .unwrap()
        .discard(&[Run { pfn, count: 1 }], Method::Madvise);
    assert_eq!(r.pages, 1);
    t.finish_discard(pfn);
}

/// Waits (up to 10 s) for the next fault event.
fn next_fault(f: &DiscardFaults) -> Fault {
    let mut buf = GuestUffd::event_buffer();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f.uffd.read_faults(&mut buf, &mut out).unwrap() > 0 {
            return out[0];
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    panic!("no userfaultfd event within 10 s");
}

/// A thread that (optionally as vCPU 0) reads the first byte of `pfn`.
fn toucher(
    f: &Arc<DiscardFaults>,
    ram: &GuestRam,
    pfn: u64,
    as_vcpu: bool,
) -> (i32, std::thread::JoinHandle<u8>) {
    let (f2, ram2) = (f.clone(), ram.clone());
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        if as_vcpu {
            f2.bind_current_thread(0).unwrap();
        }
        // SAFETY: gettid(2) has no arguments and cannot fail.
        tx.send(unsafe { libc::gettid() }).unwrap();
        ram2.mem().read_obj::<u8>(GuestAddress(pfn * PAGE)).unwrap()
    });
    (rx.recv().unwrap(), h)
}

/// The toucher's byte, once it is done: it must be within 10 s of the
/// step that should let it go on. A thread left waiting in the kernel
/// would otherwise hang the whole test run (one run here, under heavy
/// load, waited 20 minutes in `a_touch_after_make_stable_...`, not seen
/// again in the next 5 runs of the suite); this turns that into a failure
/// that says so.
fn joined(h: std::thread::JoinHandle<u8>) -> u8 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the touching thread is still waiting 10 s after it should have gone on"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    h.join().unwrap()
}

/// The fault kick's handler in place, frame `pfn` discarded, and a thread
/// bound as vCPU 0 touching it: the hub, its metrics, the thread's id and
/// handle.
fn vcpu_touches_discarded(
    pfn: u64,
) -> (
    Arc<DiscardFaults>,
    Arc<crate::metrics::Metrics>,
    i32,
    std::thread::JoinHandle<u8>,
) {
    register_fault_kick_signal().unwrap();
    let (f, ram, m) = hub(1);
    discard_volatile(&f, &ram, pfn);
    let (tid, h) = toucher(&f, &ram, pfn, true);
    (f, m, tid, h)
}

#[test]
fn a_vcpu_fault_is_published_and_kicked_until_the_guest_makes_the_frame_stable() {
    let (f, m, tid, h) = vcpu_touches_discarded(20);
    let fault = next_fault(&f);
    assert_eq!((fault.tid, fault.pfn, fault.write), (tid, Some(20), false));
    let mut det = LivelockDetector::default();
    assert_eq!(
        f.handle_fault(&mut det, fault, Instant::now()),
        Action::Kicked(0)
    );
    assert_eq!(f.slots().pending(0), Some(GuestPhys(20 * PAGE)));
    // The handler's stages are timed; the vCPU's wait for an injection.
    let st = &m.discard_faults.stages;
    for h in [&st.handler_read, &st.handler_decide, &st.kick_send] {
        assert_eq!(h.summary().count, 1);
    }
    assert_eq!(st.total.summary().count + st.zero_fill.summary().count, 0);
    // Unresolved: the thread is still waiting (a kicked user-space thread
    // retries the access and faults again).
    std::thread::sleep(Duration::from_millis(20));
    assert!(!h.is_finished());
    // The guest frees the frame and allocates it again: SET_STABLE's hint
    // path unregisters it, which wakes the thread; it reads as zeroes.
    f.table().apply(20, HintOp::SetUnused).unwrap();
    assert_eq!(
        f.table().apply(20, HintOp::SetStable),
        Ok(crate::frames::HintOutcome::Discarded)
    );
    f.unregister_marked(20, 1);
    assert_eq!(joined(h), 0);
    assert_eq!(m.discard_faults.uffd_registered_pages.get(), 0);
    assert!(m.discard_faults.events.get() >= 1);
    assert_eq!(m.discard_faults.protocol_violations.get(), 0);
}

#[test]
fn a_touch_after_make_stable_reported_the_discard_is_still_a_discard_fault() {
    // CPU 0's MAKE_STABLE learned the frame was discarded and the guest is
    // dropping it; CPU 1 still maps it and touches it before the shootdown.
    // That touch must be a discard fault, not a silent zero page.
    register_fault_kick_signal().unwrap();
    let (f, ram, m) = hub(1);
    discard_volatile(&f, &ram, 25);
    assert_eq!(
        f.table().apply(25, HintOp::MakeStable),
        Ok(crate::frames::HintOutcome::Discarded)
    );
    assert!(f.table().is_registered(25) && f.table().discard_fault_due(25));
    let (_tid, h) = toucher(&f, &ram, 25, true);
    let fault = next_fault(&f);
    let mut det = LivelockDetector::default();
    assert_eq!(
        f.handle_fault(&mut det, fault, Instant::now()),
        Action::Kicked(0)
    );
    assert_eq!(m.discard_faults.zero_fills_not_volatile.get(), 0);
    // Allocated again later (SET_STABLE): unregistered, the toucher goes on.
    f.table().apply(25, HintOp::SetUnused).unwrap();
    f.table().apply(25, HintOp::SetStable).unwrap();
    f.unregister_marked(25, 1);
    assert!(!f.table().discard_fault_due(25));
    assert_eq!(joined(h), 0);
}

#[test]
fn other_threads_and_frames_no_longer_volatile_get_zeroes() {
    let (f, ram, m) = hub(1);
    let mut det = LivelockDetector::default();
    discard_volatile(&f, &ram, 30);
    let (tid, h) = toucher(&f, &ram, 30, false);
    let fault = next_fault(&f);
    assert_eq!(fault.tid, tid);
    assert_eq!(
        f.handle_fault(&mut det, fault, Instant::now()),
        Action::ZeroOtherThread
    );
    assert_eq!(joined(h), 0);
    assert_eq!(m.discard_faults.zero_fills_other_thread.get(), 1);
    assert!(!f.table().is_registered(30));

    discard_volatile(&f, &ram, 31);
    f.table().apply(31, HintOp::SetUnused).unwrap();
    let (_, h) = toucher(&f, &ram, 31, true);
    let fault = next_fault(&f);
    assert_eq!(
        f.handle_fault(&mut det, fault, Instant::now()),
        Action::ZeroNotVolatile
    );
    assert_eq!(joined(h), 0);
    assert_eq!(m.discard_faults.zero_fills_not_volatile.get(), 1);
    assert!(f.table().is_discarded(31), "the zero fill keeps the drop");
    let st = &m.discard_faults.stages;
    assert_eq!(st.zero_fill.summary().count, 2, "both fills are timed");
    assert_eq!(st.kick_send.summary().count, 0);
    assert_eq!(m.discard_faults.uffd_registered_pages.get(), 0);
    assert_eq!(f.slots().pending(0), None);
}

#[test]
fn a_fault_that_keeps_repeating_is_broken() {
    let (f, m, _, h) = vcpu_touches_discarded(40);
    let mut det = LivelockDetector::default();
    let mut actions = Vec::new();
    // Nobody injects anything: every kick makes the thread fault again.
    while !h.is_finished() && actions.len() < 50 {
        let fault = next_fault(&f);
        let a = f.handle_fault(&mut det, fault, Instant::now());
        actions.push(a);
        if a == Action::BrokeLivelock {
            break;
        }
    }
    assert_eq!(joined(h), 0);
    assert_eq!(actions.last(), Some(&Action::BrokeLivelock), "{actions:?}");
    assert!(actions.len() > 3, "{actions:?}");
    assert_eq!(m.discard_faults.protocol_violations.get(), 1);
    assert_eq!(m.discard_faults.livelocks_broken.get(), 1);
    // The zero page is there now, but the entry still tells the guest so:
    // the next stable-making step reports the drop, never "intact".
    assert_eq!(f.table().state(40), Some(PageState::Volatile));
    assert!(f.table().is_discarded(40) && !f.table().is_registered(40));
    assert_eq!(
        f.table().apply(40, HintOp::MakeStable),
        Ok(crate::frames::HintOutcome::Discarded)
    );
    assert_eq!(f.slots().pending(0), None);
}

#[test]
fn the_thread_answers_faults_and_stops() {
    let (f, ram, m) = hub(1);
    discard_volatile(&f, &ram, 50);
    let handler = FaultHandler::spawn(f.clone()).unwrap();
    // A thread that runs no vCPU gets its zero page from the thread.
    let (_, h) = toucher(&f, &ram, 50, false);
    assert_eq!(joined(h), 0);
    handler.stop();
    assert_eq!(m.discard_faults.zero_fills_other_thread.get(), 1);
}
