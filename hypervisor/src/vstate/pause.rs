//! Pausing every vCPU: the gate the reclaimer closes while it checks the
//! dirty log of potentially volatile frames and drops the clean ones, so
//! that no guest write lands between the check and the drop.
//!
//! Each vCPU thread takes a seat at the gate when its loop starts
//! ([`VcpuGate::seat`]) and, before every `KVM_RUN`, parks if a pause is
//! asked for ([`VcpuGate::park_if_asked`]). [`VcpuGate::pause`] asks,
//! kicks every seated thread with the vCPU kick signal (its handler sets
//! `kvm_run.immediate_exit`, so a `KVM_RUN` about to start returns at once
//! too; an AP still waiting for SIPI returns `EINTR` as well) and waits,
//! with a timeout, until every seated thread is parked; dropping the
//! [`Paused`] it returns lets them go. On timeout the pause is withdrawn
//! and nothing may rely on it. A parked thread also leaves when the
//! vCPU's stop flag is set, so stopping the machine never waits on a
//! pause. This module must never block a vCPU except while a pause is
//! held, and never send a signal to a thread that has left its seat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::signal::SIGRTMIN;

use crate::worker::Stop;

/// How often a parked thread looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(10);

/// Why the vCPUs could not be paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    #[error("only {parked} of {seated} vCPUs left KVM_RUN within {timeout:?}")]
    Timeout {
        parked: usize,
        seated: usize,
        timeout: Duration,
    },
}

#[derive(Debug, Default)]
struct GateState {
    /// Seated threads: vCPU index and pthread id.
    seated: Vec<(u8, libc::pthread_t)>,
    parked: usize,
}

/// The gate every vCPU thread of one VM passes before `KVM_RUN`.
#[derive(Debug, Default)]
pub struct VcpuGate {
    asked: AtomicBool,
    state: Mutex<GateState>,
    changed: Condvar,
    /// One pause at a time.
    pauser: Mutex<()>,
}

/// A vCPU thread's seat; dropping it leaves the gate.
#[derive(Debug)]
pub struct Seat {
    gate: Arc<VcpuGate>,
    index: u8,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.seated.retain(|&(i, _)| i != self.index);
        self.gate.changed.notify_all();
    }
}

/// Every seated vCPU is parked until this is dropped.
#[derive(Debug)]
pub struct Paused<'a> {
    gate: &'a VcpuGate,
    _one: MutexGuard<'a, ()>,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl VcpuGate {
    /// A gate with nobody seated.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self) {
        let _st = self.lock();
        self.asked.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Seats the calling thread as vCPU `index`. The thread must have the
    /// kick signal's handler in place (`vcpu::register_kick_signal`).
    pub fn seat(self: &Arc<Self>, index: u8) -> Seat {
        // SAFETY: pthread_self has no preconditions and cannot fail.
        let me = unsafe { libc::pthread_self() };
        let mut st = self.lock();
        st.seated.retain(|&(i, _)| i != index);
        st.seated.push((index, me));
        drop(st);
        Seat {
            gate: self.clone(),
            index,
        }
    }

    /// Called by a vCPU thread before each `KVM_RUN`: parks while a pause
    /// is held, or until `stop` is set.
    pub fn park_if_asked(&self, stop: &Stop) {
        if !self.asked.load(Ordering::SeqCst) {
            return;
        }
        let mut st = self.lock();
        st.parked += 1;
        self.changed.notify_all();
        while self.asked.load(Ordering::SeqCst) && !stop.is_set() {
            st = match self.changed.wait_timeout(st, STOP_POLL) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        st.parked = st.parked.saturating_sub(1);
    }

    /// Asks every seated vCPU to park, kicks it out of `KVM_RUN`, and waits
    /// up to `timeout` until all are parked. On timeout the vCPUs are let
    /// go again.
    pub fn pause(&self, timeout: Duration) -> Result<Paused<'_>, PauseError> {
        let one = self.pauser.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.lock();
        self.asked.store(true, Ordering::SeqCst);
        for &(index, thread) in &st.seated {
            // SAFETY: a seated thread is alive: it leaves its seat (under
            // this lock, which we hold) before it ends. The signal's
            // handler is installed process-wide before any vCPU runs.
            let r = unsafe { libc::pthread_kill(thread, SIGRTMIN()) };
            if r != 0 {
                log::debug!("pause: kicking vCPU {index} failed: errno {r}");
            }
        }
        let deadline = Instant::now() + timeout;
        while st.parked < st.seated.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let (parked, seated) = (st.parked, st.seated.len());
                self.asked.store(false, Ordering::SeqCst);
                self.changed.notify_all();
                return Err(PauseError::Timeout {
                    parked,
                    seated,
                    timeout,
                });
            }
            st = match self.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        drop(st);
        Ok(Paused {
            gate: self,
            _one: one,
        })
    }

    /// How many threads are seated now.
    pub fn seated(&self) -> usize {
        self.lock().seated.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::Worker;
    use std::sync::atomic::AtomicU64;

    /// A stand-in vCPU thread: counts loop turns, parks when asked.
    fn fake_vcpu(gate: &Arc<VcpuGate>, index: u8, turns: &Arc<AtomicU64>, park: bool) -> Worker {
        let (gate, turns) = (gate.clone(), turns.clone());
        Worker::spawn("fake-vcpu", move |stop: &Stop| {
            let _seat = gate.seat(index);
            while !stop.is_set() {
                if park {
                    gate.park_if_asked(stop);
                }
                turns.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
        .unwrap()
    }

    /// A gate, a turn counter, and `parking` fake vCPUs seated at it (plus
    /// one that never parks and counts no turns, if `stubborn`), the kick
    /// signal's handler installed.
    fn seated(parking: u8, stubborn: bool) -> (Arc<VcpuGate>, Arc<AtomicU64>, Vec<Worker>) {
        crate::vstate::vcpu::register_kick_signal().unwrap();
        let gate = VcpuGate::new();
        let turns = Arc::new(AtomicU64::new(0));
        let mut threads: Vec<_> = (0..parking)
            .map(|i| fake_vcpu(&gate, i, &turns, true))
            .collect();
        if stubborn {
            threads.push(fake_vcpu(
                &gate,
                parking,
                &Arc::new(AtomicU64::new(0)),
                false,
            ));
        }
        while gate.seated() < threads.len() {
            std::thread::yield_now();
        }
        (gate, turns, threads)
    }

    #[test]
    fn a_pause_parks_every_seated_thread_until_dropped() {
        let (gate, turns, threads) = seated(2, false);
        let paused = gate.pause(Duration::from_secs(5)).unwrap();
        let before = turns.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(turns.load(Ordering::SeqCst), before, "nobody ran");
        drop(paused);
        std::thread::sleep(Duration::from_millis(30));
        assert!(turns.load(Ordering::SeqCst) > before, "running again");
        // Stopping while paused does not wait for the pause.
        let paused = gate.pause(Duration::from_secs(5)).unwrap();
        for t in threads {
            assert_eq!(t.stop(), Some(()));
        }
        drop(paused);
        assert_eq!(gate.seated(), 0);
        // With nobody seated a pause holds at once.
        assert!(gate.pause(Duration::ZERO).is_ok());
    }

    #[test]
    fn a_thread_that_does_not_park_times_the_pause_out() {
        let (gate, turns, threads) = seated(1, true);
        let e = gate.pause(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, PauseError::Timeout { seated: 2, .. }), "{e}");
        // The withdrawn pause let the good thread go.
        let before = turns.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert!(turns.load(Ordering::SeqCst) > before);
        for t in threads {
            assert_eq!(t.stop(), Some(()));
        }
    }
}
