//! Notices a discard fault that repeats without progress.
//!
//! A thread that keeps faulting on the same guest frame is stuck: either the
//! guest kernel touched a discarded volatile page at CPL0 (on the nested
//! software KVM of the development machines that access is emulated and
//! retries for ever, signals or not), or the guest's discard-fault handler
//! returned without unmapping the frame. The detector keeps one record per
//! faulting thread (its last frame, when it first faulted there, how often)
//! and calls a fault a livelock when the same thread faults on the same
//! frame more than [`MAX_REPEATS`] times within [`WINDOW`], or more than
//! [`AFTER_INJECT_TOLERANCE`] times after a discard fault for that frame was
//! already injected. The decision is a pure function of its inputs (time is
//! passed in) and unit-tested; this module must never act on its verdict.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pagehint_abi::GuestPhys;

/// Time within which repeats count.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Faults on one frame by one thread tolerated within [`WINDOW`].
pub const MAX_REPEATS: u32 = 3;
/// Repeats tolerated after a discard fault for the frame was injected: one,
/// for an event the kernel may have queued just before the thread saw the
/// kick.
pub const AFTER_INJECT_TOLERANCE: u32 = 1;
/// Records kept at most (one per faulting thread; a VMM has few threads).
const MAX_RECORDS: usize = 256;

/// What the detector made of one fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A fault to deliver (first of its kind, or a tolerated repeat).
    Deliver,
    /// The thread is stuck on this frame: break the livelock.
    Livelock,
}

/// A configuration error (there is only one way to get it wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LivelockError {
    #[error("the livelock window must be longer than zero")]
    ZeroWindow,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    gpa: GuestPhys,
    first: Instant,
    count: u32,
    /// Injections into the thread's vCPU when the record started.
    injections_at_start: u64,
    /// Faults seen after an injection for this frame.
    after_inject: u32,
}

/// Per-thread records of recent faults.
#[derive(Debug)]
pub struct LivelockDetector {
    records: HashMap<i32, Record>,
    window: Duration,
    max_repeats: u32,
}

impl Default for LivelockDetector {
    fn default() -> Self {
        Self {
            records: HashMap::new(),
            window: WINDOW,
            max_repeats: MAX_REPEATS,
        }
    }
}

impl LivelockDetector {
    /// A detector with its own window and repeat limit.
    pub fn new(window: Duration, max_repeats: u32) -> Result<Self, LivelockError> {
        if window.is_zero() {
            return Err(LivelockError::ZeroWindow);
        }
        Ok(Self {
            records: HashMap::new(),
            window,
            max_repeats,
        })
    }

    /// Judges a fault by thread `tid` on the frame at `gpa` at `now`.
    /// `last_injected` and `injections` describe the thread's vCPU: the
    /// address of the last discard fault injected into it and how many were.
    pub fn observe(
        &mut self,
        tid: i32,
        gpa: GuestPhys,
        now: Instant,
        last_injected: Option<GuestPhys>,
        injections: u64,
    ) -> Verdict {
        let fresh = Record {
            gpa,
            first: now,
            count: 1,
            injections_at_start: injections,
            after_inject: 0,
        };
        let window = self.window;
        let Some(r) = self.records.get_mut(&tid) else {
            if self.records.len() >= MAX_RECORDS {
                self.records.clear();
            }
            self.records.insert(tid, fresh);
            return Verdict::Deliver;
        };
        if r.gpa != gpa || now.saturating_duration_since(r.first) > window {
            *r = fresh;
            return Verdict::Deliver;
        }
        r.count = r.count.saturating_add(1);
        if last_injected == Some(gpa) && injections > r.injections_at_start {
            r.after_inject = r.after_inject.saturating_add(1);
        }
        if r.count > self.max_repeats || r.after_inject > AFTER_INJECT_TOLERANCE {
            Verdict::Livelock
        } else {
            Verdict::Deliver
        }
    }

    /// Forgets thread `tid` (after its livelock was broken).
    pub fn forget(&mut self, tid: i32) {
        self.records.remove(&tid);
    }

    /// Threads with a record.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True if no thread has a record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn repeats_within_the_window_become_a_livelock() {
        let mut d = LivelockDetector::default();
        let t = Instant::now();
        // A CPL0 access that retries on every kick: 4th fault in 100 ms.
        for k in 0..3 {
            assert_eq!(
                d.observe(7, GuestPhys(0x5000), t + k * MS, None, 0),
                Verdict::Deliver
            );
        }
        assert_eq!(
            d.observe(7, GuestPhys(0x5000), t + 3 * MS, None, 0),
            Verdict::Livelock
        );
        d.forget(7);
        assert!(d.is_empty());
        assert_eq!(
            d.observe(7, GuestPhys(0x5000), t + 4 * MS, None, 0),
            Verdict::Deliver
        );
    }

    #[test]
    fn other_frames_threads_and_late_repeats_start_afresh() {
        let mut d = LivelockDetector::default();
        let t = Instant::now();
        for k in 0..3 {
            assert_eq!(
                d.observe(1, GuestPhys(0x1000), t + k * MS, None, 0),
                Verdict::Deliver
            );
        }
        // Another thread on the same frame has its own record.
        assert_eq!(
            d.observe(2, GuestPhys(0x1000), t + 3 * MS, None, 0),
            Verdict::Deliver
        );
        // Another frame resets the thread's record.
        assert_eq!(
            d.observe(1, GuestPhys(0x2000), t + 4 * MS, None, 0),
            Verdict::Deliver
        );
        assert_eq!(
            d.observe(1, GuestPhys(0x1000), t + 5 * MS, None, 0),
            Verdict::Deliver
        );
        // Repeats spread beyond the window never add up.
        for k in 1..10u32 {
            let at = t + 5 * MS + k * (WINDOW + MS);
            assert_eq!(
                d.observe(1, GuestPhys(0x1000), at, None, 0),
                Verdict::Deliver
            );
        }
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn a_fault_that_survives_its_discard_fault_is_a_livelock() {
        let t = Instant::now();
        // Thread 3's faults on 0x9000: (ms after t, the address last
        // injected into its vCPU, injections so far, the verdict).
        type Fault = (u32, Option<u64>, u64, Verdict);
        let scenarios: [[Fault; 3]; 2] = [
            // Injected once (count 4 -> 5); one repeat is tolerated, the
            // second after the injection is not.
            [
                (0, None, 4, Verdict::Deliver),
                (1, Some(0x9000), 5, Verdict::Deliver),
                (2, Some(0x9000), 6, Verdict::Livelock),
            ],
            // An injection for another frame does not count against this one.
            [
                (0, None, 0, Verdict::Deliver),
                (1, Some(0x8000), 1, Verdict::Deliver),
                (2, Some(0x8000), 2, Verdict::Deliver),
            ],
        ];
        for faults in scenarios {
            let mut d = LivelockDetector::default();
            for (ms, last, injections, verdict) in faults {
                let at = t + ms * MS;
                assert_eq!(
                    d.observe(3, GuestPhys(0x9000), at, last.map(GuestPhys), injections),
                    verdict,
                    "{ms} ms"
                );
            }
        }
    }

    #[test]
    fn configuration_is_checked() {
        assert_eq!(
            LivelockDetector::new(Duration::ZERO, 3).unwrap_err(),
            LivelockError::ZeroWindow
        );
        let mut d = LivelockDetector::new(MS * 10, 0).unwrap();
        let t = Instant::now();
        assert_eq!(d.observe(1, GuestPhys(0), t, None, 0), Verdict::Deliver);
        assert_eq!(d.observe(1, GuestPhys(0), t, None, 0), Verdict::Livelock);
    }
}
