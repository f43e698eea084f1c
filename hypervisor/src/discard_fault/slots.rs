//! Per-vCPU records shared by the fault handler thread and the vCPU
//! threads: which host thread runs the vCPU (so a userfaultfd event's thread
//! id names a vCPU), where the guest wants its discard-fault info written,
//! the discard fault waiting to be injected, the last one injected, and
//! the timestamps of the fault in flight (when the handler woke for it, when
//! it was published, when it was injected), for the stage times.
//!
//! Every field is an atomic; the handler publishes a pending fault and
//! kicks, the vCPU thread takes it. This module only records: it must never
//! touch guest memory, signal a thread, or block.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Instant;

use pagehint_abi::GuestPhys;

/// "Nothing here" in the address fields.
const NONE: u64 = u64::MAX;
/// "No thread" in the thread-id field.
const NO_TID: i32 = 0;

/// A vCPU index the slots do not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("vCPU {0} does not exist")]
    NoSuchVcpu(u64),
}

/// A discard fault waiting for its vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Guest-physical address of the frame (page aligned).
    pub gpa: GuestPhys,
    /// When the handler woke for it, in nanoseconds of [`VcpuSlots::now_ns`].
    pub woken_ns: u64,
    /// When it was published, just before the kick (same clock).
    pub published_ns: u64,
}

/// A discard fault injected, waiting for its vCPU to enter `KVM_RUN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// When the handler woke for it, in nanoseconds of [`VcpuSlots::now_ns`].
    pub woken_ns: u64,
    /// When the injection was done (same clock).
    pub injected_ns: u64,
}

#[derive(Debug)]
struct Slot {
    tid: AtomicI32,
    info_gpa: AtomicU64,
    pending_gpa: AtomicU64,
    woken_ns: AtomicU64,
    published_ns: AtomicU64,
    injected_gpa: AtomicU64,
    injections: AtomicU64,
    /// The injection awaiting its re-entry (only the vCPU's thread).
    reentry_due: AtomicBool,
    reentry_woken_ns: AtomicU64,
    reentry_injected_ns: AtomicU64,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            tid: AtomicI32::new(NO_TID),
            info_gpa: AtomicU64::new(NONE),
            pending_gpa: AtomicU64::new(NONE),
            woken_ns: AtomicU64::new(0),
            published_ns: AtomicU64::new(0),
            injected_gpa: AtomicU64::new(NONE),
            injections: AtomicU64::new(0),
            reentry_due: AtomicBool::new(false),
            reentry_woken_ns: AtomicU64::new(0),
            reentry_injected_ns: AtomicU64::new(0),
        }
    }
}

fn some(v: u64) -> Option<GuestPhys> {
    (v != NONE).then_some(GuestPhys(v))
}

/// The records of every vCPU of one VM.
#[derive(Debug)]
pub struct VcpuSlots {
    slots: Box<[Slot]>,
    epoch: Instant,
}

impl VcpuSlots {
    /// Records for `count` vCPUs, none bound to a thread yet.
    pub fn new(count: usize) -> Self {
        Self {
            slots: (0..count).map(|_| Slot::default()).collect(),
            epoch: Instant::now(),
        }
    }

    /// Number of vCPUs.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True if there are no vCPUs.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn slot(&self, index: u64) -> Result<&Slot, SlotError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.slots.get(i))
            .ok_or(SlotError::NoSuchVcpu(index))
    }

    /// Nanoseconds since the slots were made (for round-trip times).
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// `at` in the clock of [`VcpuSlots::now_ns`] (0 before the epoch).
    pub fn ns_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records that thread `tid` runs vCPU `index`.
    pub fn bind(&self, index: u64, tid: i32) -> Result<(), SlotError> {
        self.slot(index)?.tid.store(tid, Ordering::Release);
        Ok(())
    }

    /// Forgets the thread of vCPU `index` (it stopped running it).
    pub fn unbind(&self, index: u64) {
        if let Ok(s) = self.slot(index) {
            s.tid.store(NO_TID, Ordering::Release);
        }
    }

    /// The vCPU that thread `tid` runs, if any.
    pub fn index_of(&self, tid: i32) -> Option<u64> {
        if tid == NO_TID {
            return None;
        }
        self.slots
            .iter()
            .position(|s| s.tid.load(Ordering::Acquire) == tid)
            .map(|i| i as u64)
    }

    /// Records the guest-physical address of vCPU `index`'s info area
    /// (already checked by the caller).
    pub fn set_info(&self, index: u64, gpa: GuestPhys) -> Result<(), SlotError> {
        self.slot(index)?
            .info_gpa
            .store(gpa.as_u64(), Ordering::Release);
        Ok(())
    }

    /// The info area of vCPU `index`, if the guest registered one.
    pub fn info(&self, index: u64) -> Option<GuestPhys> {
        self.slot(index)
            .ok()
            .and_then(|s| some(s.info_gpa.load(Ordering::Acquire)))
    }

    /// Publishes a discard fault at `gpa` for vCPU `index`, stamped now.
    pub fn set_pending(&self, index: u64, gpa: GuestPhys) {
        self.publish(index, gpa, self.now_ns());
    }

    /// Publishes a discard fault at `gpa` for vCPU `index`, which the
    /// handler woke for at `woken_ns`; returns the publication's stamp.
    pub fn publish(&self, index: u64, gpa: GuestPhys, woken_ns: u64) -> u64 {
        let now = self.now_ns();
        if let Ok(s) = self.slot(index) {
            s.woken_ns.store(woken_ns, Ordering::Relaxed);
            s.published_ns.store(now, Ordering::Relaxed);
            s.pending_gpa.store(gpa.as_u64(), Ordering::Release);
        }
        now
    }

    /// The discard fault waiting for vCPU `index`, if any (left in place).
    pub fn pending(&self, index: u64) -> Option<GuestPhys> {
        self.slot(index)
            .ok()
            .and_then(|s| some(s.pending_gpa.load(Ordering::Acquire)))
    }

    /// Takes the discard fault waiting for vCPU `index`.
    pub fn take_pending(&self, index: u64) -> Option<Pending> {
        let s = self.slot(index).ok()?;
        let gpa = some(s.pending_gpa.swap(NONE, Ordering::AcqRel))?;
        Some(Pending {
            gpa,
            woken_ns: s.woken_ns.load(Ordering::Relaxed),
            published_ns: s.published_ns.load(Ordering::Relaxed),
        })
    }

    /// Drops the pending fault of vCPU `index` if it is the one at `gpa`.
    pub fn clear_pending_if(&self, index: u64, gpa: GuestPhys) {
        if let Ok(s) = self.slot(index) {
            let _ = s.pending_gpa.compare_exchange(
                gpa.as_u64(),
                NONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Records that a discard fault at `gpa` was injected into vCPU `index`.
    pub fn note_injected(&self, index: u64, gpa: GuestPhys) {
        if let Ok(s) = self.slot(index) {
            s.injected_gpa.store(gpa.as_u64(), Ordering::Release);
            s.injections.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Records, on vCPU `index`'s thread, an injection whose re-entry into
    /// `KVM_RUN` is to be timed.
    pub fn await_reentry(&self, index: u64, injected: Injected) {
        if let Ok(s) = self.slot(index) {
            s.reentry_woken_ns
                .store(injected.woken_ns, Ordering::Relaxed);
            s.reentry_injected_ns
                .store(injected.injected_ns, Ordering::Relaxed);
            s.reentry_due.store(true, Ordering::Relaxed);
        }
    }

    /// Takes, on vCPU `index`'s thread, the injection awaiting its re-entry.
    pub fn take_reentry(&self, index: u64) -> Option<Injected> {
        let s = self.slot(index).ok()?;
        if !s.reentry_due.swap(false, Ordering::Relaxed) {
            return None;
        }
        Some(Injected {
            woken_ns: s.reentry_woken_ns.load(Ordering::Relaxed),
            injected_ns: s.reentry_injected_ns.load(Ordering::Relaxed),
        })
    }

    /// The address of the last discard fault injected into vCPU `index`
    /// and how many were injected so far.
    pub fn last_injected(&self, index: u64) -> (Option<GuestPhys>, u64) {
        match self.slot(index) {
            Ok(s) => (
                some(s.injected_gpa.load(Ordering::Acquire)),
                s.injections.load(Ordering::Acquire),
            ),
            Err(_) => (None, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_ids_map_to_vcpus() {
        let s = VcpuSlots::new(3);
        assert_eq!(s.index_of(100), None);
        s.bind(0, 100).unwrap();
        s.bind(2, 300).unwrap();
        assert_eq!(s.bind(3, 400), Err(SlotError::NoSuchVcpu(3)));
        assert_eq!(s.bind(u64::MAX, 1), Err(SlotError::NoSuchVcpu(u64::MAX)));
        assert_eq!(s.index_of(100), Some(0));
        assert_eq!(s.index_of(300), Some(2));
        assert_eq!(s.index_of(NO_TID), None, "unbound slots match nothing");
        s.unbind(2);
        s.unbind(9);
        assert_eq!(s.index_of(300), None);
        assert_eq!((s.len(), s.is_empty()), (3, false));
    }

    #[test]
    fn pending_faults_are_taken_once() {
        let s = VcpuSlots::new(2);
        assert_eq!(s.take_pending(0), None);
        s.set_pending(1, GuestPhys(0x5000));
        assert_eq!(s.pending(1), Some(GuestPhys(0x5000)));
        s.clear_pending_if(1, GuestPhys(0x6000));
        assert_eq!(
            s.pending(1),
            Some(GuestPhys(0x5000)),
            "another address stays"
        );
        let p = s.take_pending(1).unwrap();
        assert_eq!(p.gpa, GuestPhys(0x5000));
        assert!(p.woken_ns <= p.published_ns && p.published_ns <= s.now_ns());
        assert_eq!(s.take_pending(1), None);
        s.set_pending(1, GuestPhys(0x7000));
        s.clear_pending_if(1, GuestPhys(0x7000));
        assert_eq!(s.pending(1), None);
        s.set_pending(7, GuestPhys(0x1000));
        assert_eq!(s.take_pending(7), None);
        // The handler's wake-up stamp travels with the fault.
        let at = s.publish(0, GuestPhys(0x8000), 5);
        let p = s.take_pending(0).unwrap();
        assert_eq!((p.woken_ns, p.published_ns), (5, at));
        assert_eq!(s.ns_at(s.epoch), 0);
    }

    #[test]
    fn a_reentry_is_timed_once() {
        let s = VcpuSlots::new(1);
        assert_eq!(s.take_reentry(0), None);
        let i = Injected {
            woken_ns: 3,
            injected_ns: 9,
        };
        s.await_reentry(0, i);
        s.await_reentry(4, i);
        assert_eq!(s.take_reentry(0), Some(i));
        assert_eq!(s.take_reentry(0), None);
        assert_eq!(s.take_reentry(4), None);
    }

    #[test]
    fn info_areas_and_injections_are_per_vcpu() {
        let s = VcpuSlots::new(2);
        assert_eq!(s.info(0), None);
        s.set_info(0, GuestPhys(0x9000)).unwrap();
        assert_eq!(
            (s.info(0), s.info(1), s.info(5)),
            (Some(GuestPhys(0x9000)), None, None)
        );
        assert_eq!(s.set_info(2, GuestPhys(0)), Err(SlotError::NoSuchVcpu(2)));
        assert_eq!(s.last_injected(1), (None, 0));
        s.note_injected(1, GuestPhys(0x3000));
        s.note_injected(1, GuestPhys(0x4000));
        assert_eq!(s.last_injected(1), (Some(GuestPhys(0x4000)), 2));
        assert_eq!(s.last_injected(0), (None, 0));
        assert_eq!(s.last_injected(8), (None, 0));
    }
}
