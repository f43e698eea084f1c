//! Discard faults: telling the guest, at the very instruction, that it
//! touched a volatile page the host has discarded.
//!
//! The pieces: one userfaultfd for guest RAM ([`uffd`]), registered in
//! MISSING mode only on the runs of Volatile frames the reclaimer drops
//! (registered before the `madvise`, so no touch can see a silent zero page)
//! and unregistered as soon as the guest makes such a frame stable again;
//! a handler thread ([`handler`]) that reads the fault events, maps the
//! faulting thread to its vCPU ([`slots`]), publishes the fault and kicks the
//! vCPU thread out of `KVM_RUN` with [`fault_kick_signal`]; the vCPU thread
//! ([`inject`]) writes the guest-physical address into the vCPU's info area
//! and injects vector 20 (#VE). A fault that repeats without progress
//! ([`livelock`]) is broken by backing the page with zeroes and counting a
//! protocol violation, so the VMM never hangs on a misbehaving guest. Nor
//! on a failing host: a zero-page fill that fails is replaced by
//! unregistering the frame (which wakes the waiter), and if that fails too
//! the run stops (`crate::fatal`, status 85) rather than leave a thread
//! waiting for ever.
//!
//! The per-frame REGISTERED bit lives in the state table; whoever clears it
//! unregisters the frame, so every registration is undone exactly once. This
//! module must never register Unused or Stable frames, never resolve a fault
//! on a discarded Volatile frame with a zero page while the guest can still
//! be told of it, and never panic on anything the guest sends.

pub mod handler;
pub mod inject;
pub mod livelock;
pub mod slots;
pub mod uffd;
pub mod uffd_sys;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pagehint_abi::hypercall::DiscardFaultInfo;
use pagehint_abi::GuestPhys;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::frames::{Arming, FrameTable, Run, RunBuilder};
use crate::logger::RateLimit;
use crate::memory::GuestRam;
use crate::metrics::Metrics;
use slots::{SlotError, VcpuSlots};
use uffd::{GuestUffd, UffdError};

/// Bytes per frame.
const PAGE: u64 = pagehint_abi::PAGE_SIZE;
/// Size and alignment of a guest's `DiscardFaultInfo`.
const INFO_SIZE: u64 = core::mem::size_of::<DiscardFaultInfo>() as u64;
/// Tries of a fill that fails with `EAGAIN` before the run stops.
const FILL_TRIES: u32 = 100;
/// Log lines per second the guest can provoke here.
const LOG_LINES_PER_SECOND: u64 = 5;

/// The signal that kicks a vCPU thread out of a blocked fault: `SIGRTMIN+1`,
/// with a handler that does nothing (unlike the stop kick, it must not set
/// `immediate_exit`).
pub fn fault_kick_signal() -> i32 {
    SIGRTMIN() + 1
}

extern "C" fn fault_kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivering the signal is what makes KVM_RUN return.
}

/// Why discard faults could not be set up, or a guest request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DiscardFaultError {
    #[error(transparent)]
    Uffd(#[from] UffdError),
    #[error("cannot register the discard-fault kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    #[error("discard-fault info area {0:#x} is not 64-byte aligned or not inside guest RAM")]
    BadInfoArea(GuestPhys),
    #[error("discard-fault info area names CPU {0}, which does not exist")]
    BadCpu(u64),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("cannot spawn the discard-fault handler thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot create the handler's stop eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("KVM_GET_VCPU_EVENTS failed: {0}")]
    GetEvents(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_VCPU_EVENTS failed: {0}")]
    SetEvents(#[source] kvm_ioctls::Error),
}

/// Installs the handler of [`fault_kick_signal`]. Call once before spawning
/// vCPU threads.
pub fn register_fault_kick_signal() -> Result<(), DiscardFaultError> {
    register_signal_handler(fault_kick_signal(), fault_kick_handler)
        .map_err(DiscardFaultError::Signal)
}

/// Everything the discard-fault machinery shares between the reclaimer, the
/// hint path, the handler thread and the vCPU threads.
#[derive(Debug)]
pub struct DiscardFaults {
    uffd: GuestUffd,
    ram: GuestRam,
    table: Arc<FrameTable>,
    slots: VcpuSlots,
    metrics: Arc<Metrics>,
    log_limit: RateLimit,
    warned_no_info: AtomicBool,
}

impl DiscardFaults {
    /// Creates the userfaultfd of `ram` for a VM of `vcpus` vCPUs.
    pub fn new(
        ram: &GuestRam,
        table: Arc<FrameTable>,
        metrics: Arc<Metrics>,
        vcpus: usize,
    ) -> Result<Self, DiscardFaultError> {
        Ok(Self {
            uffd: GuestUffd::new(ram)?,
            ram: ram.clone(),
            table,
            slots: VcpuSlots::new(vcpus),
            metrics,
            log_limit: RateLimit::new(LOG_LINES_PER_SECOND),
            warned_no_info: AtomicBool::new(false),
        })
    }

    /// The per-vCPU records.
    pub fn slots(&self) -> &VcpuSlots {
        &self.slots
    }

    /// The frame state table.
    pub fn table(&self) -> &FrameTable {
        &self.table
    }

    /// Records the calling thread as the one running vCPU `index`.
    pub fn bind_current_thread(&self, index: u64) -> Result<(), DiscardFaultError> {
        // SAFETY: gettid(2) has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        Ok(self.slots.bind(index, tid)?)
    }

    /// Forgets the thread of vCPU `index`.
    pub fn unbind(&self, index: u64) {
        self.slots.unbind(index);
    }

    /// Registers a run of Volatile frames the reclaimer has claimed and is
    /// about to drop. False if the kernel refused: the caller must then
    /// leave the run alone (a drop without registration reads as zeroes).
    pub fn register_volatile_run(&self, pfn: u64, count: u64) -> bool {
        match self.uffd.register(pfn, count) {
            Ok(()) => {
                for p in pfn..pfn.saturating_add(count) {
                    self.table.mark_registered(p);
                }
                self.metrics.discard_faults.uffd_registered_pages.add(count);
                true
            }
            Err(e) => {
                self.metrics.host_failures.uffd_register.inc();
                if self.log_limit.allow() {
                    log::warn!("discard faults: {e}; those frames are kept");
                }
                false
            }
        }
    }

    /// Unregisters every frame of `count` from `pfn` that carries the
    /// registered mark (coalesced into runs). Used by the hint path when
    /// the guest made discarded frames stable, and by the reclaimer when a
    /// drop failed.
    pub fn unregister_marked(&self, pfn: u64, count: u64) {
        let mut runs = RunBuilder::default();
        for p in pfn..pfn.saturating_add(count) {
            if self.table.take_registered(p) {
                runs.push(p);
            }
        }
        for run in runs.runs() {
            if let Err(e) = self.uffd.unregister(run.pfn, run.count) {
                // The kernel keeps them registered: a later touch of one
                // that is not present is answered with the zero page, as
                // for any frame that is no longer volatile.
                self.metrics.host_failures.uffd_unregister.inc();
                if self.log_limit.allow() {
                    log::warn!("discard faults: {e}; answered with the zero page if touched");
                }
            }
        }
        self.metrics
            .discard_faults
            .uffd_registered_pages
            .sub(runs.pages());
    }

    /// Backs one frame with the zero page (waking whoever waits on it) and
    /// unregisters it if it was registered; its entry keeps saying the
    /// contents are gone.
    fn zero_fill(&self, pfn: u64) {
        // Marked first, while the frame is still missing (see
        // `FrameTable::mark_zero_filled`: after the fill the guest could
        // have refilled it).
        if self.table.mark_zero_filled(pfn) {
            self.metrics.discard_faults.zero_fills_marked.inc();
        }
        self.fill(pfn);
        self.unregister_marked(pfn, 1);
    }

    /// Answers the fault on `pfn` with the zero page, or only a wake-up if
    /// a page is there. `EAGAIN` is retried (up to [`FILL_TRIES`] times);
    /// `ENOENT` means the frame is no longer registered, whose
    /// unregistration already woke its waiters. On any other failure the
    /// frame is unregistered instead, which wakes the waiters and lets the
    /// kernel back the page as it backs any first touch: with zeroes, what
    /// the fill would have given. If that fails too, nothing can answer the
    /// faulting thread: the run is stopped (`crate::fatal`, status
    /// `HOST_FAILURE`) rather than left hanging.
    fn fill(&self, pfn: u64) {
        let f = &self.metrics.host_failures;
        let mut tries = 0;
        let e = loop {
            let Err(e) = self.uffd.zero_fill(pfn) else {
                return;
            };
            match e.errno() {
                Some(libc::EAGAIN) if tries < FILL_TRIES => {
                    tries += 1;
                    f.uffd_retries.inc();
                    std::thread::yield_now();
                }
                Some(libc::ENOENT) => {
                    log::debug!("discard faults: {e} (already unregistered)");
                    return;
                }
                _ => break e,
            }
        };
        f.uffd_fill.inc();
        match self.uffd.unregister(pfn, 1) {
            Ok(()) => {
                if self.log_limit.allow() {
                    log::warn!("discard faults: {e}; frame unregistered instead (a zero page)");
                }
            }
            Err(u) => {
                f.uffd_unregister.inc();
                f.uffd_fill_stops.inc();
                crate::fatal::record(format!(
                    "discard faults: {e} after {tries} retries, and {u}; the thread that \
                     touched guest frame {:#x} cannot be answered",
                    pfn * PAGE
                ));
            }
        }
    }

    /// Unregisters all of guest RAM, waking every thread that waits on a
    /// fault; only when the run stops because a fault could not be
    /// answered (`crate::fatal`), once the vCPUs were asked to stop.
    pub fn release_all(&self) -> Result<(), UffdError> {
        self.uffd.release_all()
    }

    /// `SET_FAULT_INFO`: the info area of CPU `cpu` is at `info`.
    pub fn set_fault_info(&self, info: GuestPhys, cpu: u64) -> Result<(), DiscardFaultError> {
        if !info.is_aligned(INFO_SIZE) || !self.ram.contains(info, INFO_SIZE) {
            return Err(DiscardFaultError::BadInfoArea(info));
        }
        if cpu >= self.slots.len() as u64 {
            return Err(DiscardFaultError::BadCpu(cpu));
        }
        self.slots.set_info(cpu, info)?;
        self.metrics.discard_faults.info_areas.inc();
        log::debug!("discard faults: CPU {cpu} info area at {info:#x}");
        Ok(())
    }

    /// Counts a protocol violation and logs it within the rate limit.
    fn violation(&self, what: std::fmt::Arguments<'_>) {
        self.metrics.discard_faults.protocol_violations.inc();
        if self.log_limit.allow() {
            log::warn!("discard faults: guest protocol violation: {what}");
        }
    }
}

/// The reclaimer arms the runs of Volatile frames it drops through the
/// frame-state core, which knows this machinery only by this trait.
impl Arming for DiscardFaults {
    fn arm(&self, run: Run) -> bool {
        self.register_volatile_run(run.pfn, run.count)
    }

    fn disarm(&self, run: Run) {
        self.unregister_marked(run.pfn, run.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::hypercall::HintOp;
    use pagehint_abi::page_state::PageState;

    pub(crate) fn hub(vcpus: usize) -> (Arc<DiscardFaults>, GuestRam, Arc<Metrics>) {
        let ram = GuestRam::new(16 << 20).unwrap();
        let table = Arc::new(FrameTable::new(ram.frames() as usize, false));
        let metrics = Arc::new(Metrics::default());
        let f = DiscardFaults::new(&ram, table, metrics.clone(), vcpus).unwrap();
        (Arc::new(f), ram, metrics)
    }

    #[test]
    fn registration_is_undone_exactly_once() {
        let (f, _ram, m) = hub(1);
        let t = f.table();
        for p in 10..16 {
            t.apply(p, HintOp::MakeVolatile).unwrap();
            assert!(t.try_claim(p, PageState::Volatile));
        }
        assert!(f.register_volatile_run(10, 6));
        assert!(!f.register_volatile_run(4096, 1), "outside RAM");
        for p in 10..16 {
            t.finish_discard(p);
        }
        assert_eq!(m.discard_faults.uffd_registered_pages.get(), 6);
        // The guest makes two of them stable: they are unregistered there.
        t.apply_range(12, 2, HintOp::SetStable).unwrap();
        f.unregister_marked(12, 2);
        assert_eq!(m.discard_faults.uffd_registered_pages.get(), 4);
        f.unregister_marked(12, 2);
        assert_eq!(m.discard_faults.uffd_registered_pages.get(), 4, "once");
        assert!(t.is_registered(10) && !t.is_registered(12));
        f.unregister_marked(0, 4096);
        assert_eq!(m.discard_faults.uffd_registered_pages.get(), 0);
        assert!(!t.is_registered(15));
    }

    #[test]
    fn settled_volatile_runs_are_armed_before_they_are_dropped() {
        use crate::frames::{Discarder, Method, PassReport};
        let (f, ram, m) = hub(1);
        let t = f.table();
        let mut d = Discarder::new(&ram).unwrap();
        for p in [20, 21, 22, 30] {
            t.apply(p, HintOp::MakeVolatile).unwrap();
            assert!(t.try_claim(p, PageState::Volatile));
        }
        let mut chunk = RunBuilder::default();
        [20, 21, 22, 30].into_iter().for_each(|p| chunk.push(p));
        let mut report = PassReport::default();
        let arming: &dyn Arming = &*f;
        d.settle(t, &mut chunk, Method::Auto, Some(arming), &mut report);
        assert_eq!((report.pages, report.failed), (4, 0));
        for p in [20, 21, 22, 30] {
            assert!(t.is_registered(p) && t.discard_fault_due(p), "frame {p}");
        }
        assert_eq!(m.discard_faults.uffd_registered_pages.get(), 4);
        assert!(chunk.runs().is_empty());
        arming.disarm(Run { pfn: 20, count: 11 });
        assert_eq!(m.discard_faults.uffd_registered_pages.get(), 0);
    }

    #[test]
    fn info_areas_are_checked() {
        let (f, ram, m) = hub(2);
        f.set_fault_info(GuestPhys(0x9000), 1).unwrap();
        assert_eq!(f.slots().info(1), Some(GuestPhys(0x9000)));
        for (gpa, cpu) in [
            (0x9008, 0),
            (ram.size(), 0),
            (ram.size() - 32, 0),
            (u64::MAX - 63, 0),
        ] {
            assert!(matches!(
                f.set_fault_info(GuestPhys(gpa), cpu),
                Err(DiscardFaultError::BadInfoArea(_))
            ));
        }
        assert!(matches!(
            f.set_fault_info(GuestPhys(0x9000), 2),
            Err(DiscardFaultError::BadCpu(2))
        ));
        assert_eq!(m.discard_faults.info_areas.get(), 1);
        f.set_fault_info(GuestPhys(ram.size() - 64), 0).unwrap();
    }
}
