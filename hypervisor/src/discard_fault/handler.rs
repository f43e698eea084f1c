//! The discard-fault handler thread: waits on the guest RAM userfaultfd and
//! a stop eventfd, and answers every missing-page fault.
//!
//! A fault by a vCPU thread on a frame that is still Volatile and discarded
//! is a discard fault: it is published in the vCPU's slot and the thread is
//! kicked with [`super::fault_kick_signal`], so `KVM_RUN` returns `EINTR`
//! with RIP at the faulting instruction; the fault itself stays unresolved
//! (the vCPU thread injects #VE, the guest unmaps the frame and never
//! touches it again until it is made stable, which unregisters it and wakes
//! any waiter). Every other fault (a frame no longer volatile, a thread that
//! runs no vCPU) is backed with the zero page and counted, and so is a fault
//! the livelock detector calls stuck; a zero fill never hides the drop
//! (the frame's entry keeps or gets DISCARDED unless the guest already
//! made it stable). Every answer is timed, stage by stage, into
//! `metrics::DiscardStages` (a few clock reads a fault). The thread is a
//! [`Worker`], stopped through its stop's eventfd. This module must never
//! leave a fault unanswered that no discard fault will resolve, and never
//! outlive its handle.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use super::livelock::{LivelockDetector, Verdict};
use super::uffd::{EventBuffer, Fault, GuestUffd};
use super::{fault_kick_signal, DiscardFaultError, DiscardFaults};
use crate::worker::{Stop, Worker};
use pagehint_abi::Pfn;

/// What the handler did with one fault (returned for tests and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Published for vCPU `0` and kicked.
    Kicked(u64),
    /// Backed with zeroes: the frame is no longer volatile.
    ZeroNotVolatile,
    /// Backed with zeroes: the faulting thread runs no vCPU.
    ZeroOtherThread,
    /// Backed with zeroes, the entry still discarded: a livelock was broken.
    BrokeLivelock,
    /// Not a guest RAM address (cannot happen: only RAM is registered).
    Ignored,
}

/// When the handler thread got to a batch of faults, in nanoseconds of
/// `VcpuSlots::now_ns`: `poll` returned, then the events were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub woken_ns: u64,
    pub read_ns: u64,
}

/// Sends the fault kick to thread `tid` of this process.
fn kick(tid: i32) -> std::io::Result<()> {
    // SAFETY: tgkill(2) with our own pid, a thread id of ours and a signal
    // whose handler is installed (register_fault_kick_signal) only delivers
    // that signal; it touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, fault_kick_signal()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl DiscardFaults {
    /// Answers one fault read from the userfaultfd at `now`.
    pub fn handle_fault(&self, det: &mut LivelockDetector, fault: Fault, now: Instant) -> Action {
        let at = self.slots.ns_at(now);
        let arrival = Arrival {
            woken_ns: at,
            read_ns: at,
        };
        self.answer(det, fault, now, arrival)
    }

    /// Backs `pfn` with zeroes for a fault that is no discard fault, timed
    /// as the `zero_fill` stage.
    fn zero_fill_timed(&self, pfn: u64) {
        let start = self.slots.now_ns();
        self.zero_fill(pfn);
        let stages = &self.metrics.discard_faults.stages;
        stages.zero_fill.record_span(start, self.slots.now_ns());
    }

    /// Answers one fault of a batch that arrived as `arrival` says.
    fn answer(
        &self,
        det: &mut LivelockDetector,
        fault: Fault,
        now: Instant,
        arrival: Arrival,
    ) -> Action {
        let m = &self.metrics.discard_faults;
        m.events.inc();
        let Some(pfn) = fault.pfn else {
            if self.log_limit.allow() {
                log::warn!(
                    "discard faults: fault at host {:#x}, outside guest RAM",
                    fault.host_addr
                );
            }
            return Action::Ignored;
        };
        let gpa = Pfn(pfn).addr();
        let Some(index) = self.slots.index_of(fault.tid) else {
            if log::log_enabled!(log::Level::Debug) {
                // A kernel worker here is KVM's async page fault work.
                let comm = std::fs::read_to_string(format!("/proc/{}/comm", fault.tid))
                    .unwrap_or_default();
                log::debug!(
                    "discard faults: frame {gpa:#x} touched by thread {} ({}), no vCPU; zero page",
                    fault.tid,
                    comm.trim()
                );
            }
            m.zero_fills_other_thread.inc();
            self.zero_fill_timed(pfn);
            return Action::ZeroOtherThread;
        };
        if !self.table.discard_fault_due(pfn) {
            m.zero_fills_not_volatile.inc();
            self.zero_fill_timed(pfn);
            return Action::ZeroNotVolatile;
        }
        let (last, injections) = self.slots.last_injected(index);
        match det.observe(fault.tid, gpa, now, last, injections) {
            Verdict::Deliver => {
                let published = self.slots.publish(index, gpa, arrival.woken_ns);
                let kicked = kick(fault.tid);
                let sent = self.slots.now_ns();
                if let Err(e) = kicked {
                    // The thread is gone (the VM is stopping): let it go.
                    log::debug!("discard faults: kicking thread {}: {e}", fault.tid);
                    self.slots.clear_pending_if(index, gpa);
                    self.zero_fill(pfn);
                    return Action::Kicked(index);
                }
                let st = &m.stages;
                st.handler_read
                    .record_span(arrival.woken_ns, arrival.read_ns);
                st.handler_decide.record_span(arrival.read_ns, published);
                st.kick_send.record_span(published, sent);
                Action::Kicked(index)
            }
            Verdict::Livelock => {
                det.forget(fault.tid);
                self.break_livelock(index, pfn);
                Action::BrokeLivelock
            }
        }
    }

    /// Backs a frame some vCPU is stuck on with zeroes. Its entry keeps
    /// saying that the contents are gone (`FrameTable::mark_zero_filled`):
    /// the guest learns of the drop when it makes the frame stable, as it
    /// would have from a discard fault.
    fn break_livelock(&self, index: u64, pfn: u64) {
        let gpa = Pfn(pfn).addr();
        self.slots.clear_pending_if(index, gpa);
        self.metrics.discard_faults.livelocks_broken.inc();
        self.zero_fill_timed(pfn);
        self.violation(format_args!(
            "vCPU {index} keeps faulting on discarded frame {gpa:#x} \
             (a kernel access, or a discard fault not handled); backed with zeroes, \
             the entry still says discarded"
        ));
    }

    /// One batch of events, `poll` having returned at `woken`: reads what
    /// is pending and answers each fault.
    fn serve(
        &self,
        det: &mut LivelockDetector,
        buf: &mut EventBuffer,
        faults: &mut Vec<Fault>,
        woken: Instant,
    ) -> Result<(), DiscardFaultError> {
        self.uffd.read_faults(buf, faults)?;
        let now = Instant::now();
        let arrival = Arrival {
            woken_ns: self.slots.ns_at(woken),
            read_ns: self.slots.ns_at(now),
        };
        for &f in faults.iter() {
            self.answer(det, f, now, arrival);
        }
        Ok(())
    }
}

/// The running handler thread; stopping it (or dropping it) joins it.
#[derive(Debug)]
pub struct FaultHandler(Worker);

impl FaultHandler {
    /// Starts the thread serving `faults`.
    pub fn spawn(faults: Arc<DiscardFaults>) -> Result<Self, DiscardFaultError> {
        let stop = Stop::new().map_err(DiscardFaultError::EventFd)?;
        let worker = Worker::spawn_with("discard-faults", stop, move |stop: &Stop| {
            crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::DiscardFaults);
            // A panic aborts the process (the workspace's panic
            // strategy): no handler state can be left half-updated.
            run(&faults, stop);
        })
        .map_err(DiscardFaultError::Spawn)?;
        Ok(Self(worker))
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.0.stop();
    }
}

/// The thread's loop: poll the userfaultfd and the stop eventfd.
fn run(faults: &DiscardFaults, stop: &Stop) {
    let mut det = LivelockDetector::default();
    let mut buf = GuestUffd::event_buffer();
    let mut batch = Vec::new();
    let mut fds = [
        libc::pollfd {
            fd: faults.uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds that outlives the
        // call; both descriptors stay open (owned by `faults` and `stop`).
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        let woken = Instant::now();
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            crate::fatal::record(format!(
                "discard faults: poll failed: {e}; no fault can be answered"
            ));
            return;
        }
        if fds[1].revents != 0 {
            log::debug!("discard faults: handler stopped");
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            crate::fatal::record(
                "discard faults: the userfaultfd failed; no fault can be answered".into(),
            );
            return;
        }
        if let Err(e) = faults.serve(&mut det, &mut buf, &mut batch, woken) {
            if matches!(&e, DiscardFaultError::Uffd(u) if u.errno() == Some(libc::EINTR)) {
                continue;
            }
            // Without the handler a thread that faults waits for ever: the
            // run stops instead (status 85).
            faults.metrics.host_failures.uffd_read.inc();
            crate::fatal::record(format!("discard faults: {e}; no fault can be answered"));
            return;
        }
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
