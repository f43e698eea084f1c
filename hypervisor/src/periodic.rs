//! A thread that does one job every interval until it is stopped: the
//! shape of the reclaimer and of the stats writer. [`PeriodicThread`]
//! owns the thread (a [`Worker`]); stopping it (or dropping it) wakes it at
//! once through the stop's eventfd, lets the job finish, and joins it, so
//! no such thread outlives its handle.
//! A job may also name a descriptor to wake on between intervals (the
//! reclaimer's cgroup usage event): when it polls ready, the job runs
//! [`Periodic::woken`] at once, and the next tick is still an interval
//! after the previous one.
//!
//! This module knows no job: it must never do more than run, wake, stop
//! and join.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::worker::{Stop, Worker};

/// What a periodic thread does.
pub trait Periodic: Send + 'static {
    /// Once, on the thread, before the first interval.
    fn start(&mut self) {}
    /// Every interval.
    fn tick(&mut self);
    /// Once, on the thread, after the stop was asked for.
    fn finish(&mut self) {}
    /// Up to [`WAKE_SOURCES`] descriptors to wake on between ticks, each
    /// with the `poll` events that mean "wake" (asked again before every
    /// wait, so they may change).
    fn wake_sources(&self) -> [Option<(RawFd, i16)>; WAKE_SOURCES] {
        [None; WAKE_SOURCES]
    }
    /// Wake source `source` polled ready (or in error): the job must
    /// consume the event, or it is called again at once.
    fn woken(&mut self, _source: usize) {}
}

/// The running thread of one [`Periodic`] job.
#[derive(Debug)]
pub struct PeriodicThread(Worker);

/// The most wake sources one job has.
pub const WAKE_SOURCES: usize = 2;

/// What one wait ended with.
enum Waited {
    Stop,
    Tick,
    /// Wake source `n` was ready.
    Woken(usize),
}

/// Waits until `stop` is signalled, `deadline` passes, or `wake` polls
/// ready. A failed `poll` (only EINTR is possible with valid descriptors)
/// counts as a tick, so a signal storm cannot stall the job.
fn wait(stop: &EventFd, wake: [Option<(RawFd, i16)>; WAKE_SOURCES], deadline: Instant) -> Waited {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Waited::Tick;
    }
    let source = |w: Option<(RawFd, i16)>| libc::pollfd {
        fd: w.map_or(-1, |w| w.0),
        events: w.map_or(0, |w| w.1),
        revents: 0,
    };
    let mut fds = [
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        source(wake[0]),
        source(wake[1]),
    ];
    // Round up so a deadline less than a millisecond away is not a busy loop.
    let ms = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd for the call;
    // a negative fd is ignored by poll.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return Waited::Tick;
    }
    if fds[0].revents != 0 {
        return Waited::Stop;
    }
    match fds[1..].iter().position(|f| f.revents != 0) {
        Some(n) => Waited::Woken(n),
        None => Waited::Tick,
    }
}

impl PeriodicThread {
    /// Starts `job` on a thread called `name`, ticking every `interval`
    /// (at least 1 ms).
    pub fn spawn(name: &str, interval: Duration, mut job: impl Periodic) -> std::io::Result<Self> {
        let interval = interval.max(Duration::from_millis(1));
        let thread_name = name.to_string();
        let worker = Worker::spawn(name, move |stop: &Stop| {
            if let Some(kind) = crate::seccomp::ThreadKind::from_name(&thread_name) {
                crate::seccomp::enter_or_exit(kind);
            }
            job.start();
            let mut next = Instant::now() + interval;
            loop {
                match wait(stop.fd(), job.wake_sources(), next) {
                    Waited::Stop => break,
                    Waited::Woken(n) => job.woken(n),
                    Waited::Tick => {
                        job.tick();
                        next = Instant::now() + interval;
                    }
                }
            }
            job.finish();
        })?;
        Ok(Self(worker))
    }

    /// Stops the thread and waits for it (its job's `finish` runs first).
    pub fn stop(self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    struct Count(Arc<AtomicU32>, Arc<AtomicU32>);
    impl Periodic for Count {
        fn start(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
        fn tick(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn finish(&mut self) {
            self.1.fetch_add(10, Ordering::SeqCst);
        }
    }

    #[test]
    fn ticks_until_stopped_then_finishes_once() {
        let (ticks, ends) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let t = PeriodicThread::spawn(
            "test",
            Duration::from_millis(1),
            Count(ticks.clone(), ends.clone()),
        )
        .unwrap();
        while ticks.load(Ordering::SeqCst) < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        t.stop();
        let after = ticks.load(Ordering::SeqCst);
        assert_eq!(
            ends.load(Ordering::SeqCst),
            11,
            "start and finish once each"
        );
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(ticks.load(Ordering::SeqCst), after, "no tick after stop");
        // Dropping a handle stops its thread too.
        drop(
            PeriodicThread::spawn("test", Duration::from_secs(60), Count(ticks, ends.clone()))
                .unwrap(),
        );
        assert_eq!(ends.load(Ordering::SeqCst), 22);
    }

    struct Wakes {
        fd: EventFd,
        woken: Arc<AtomicU32>,
        ticks: Arc<AtomicU32>,
    }
    impl Periodic for Wakes {
        fn tick(&mut self) {
            self.ticks.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_sources(&self) -> [Option<(RawFd, i16)>; WAKE_SOURCES] {
            [None, Some((self.fd.as_raw_fd(), libc::POLLIN))]
        }
        fn woken(&mut self, source: usize) {
            assert_eq!(source, 1, "the second source is the one set");
            self.fd.read().unwrap();
            self.woken.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_source_runs_the_job_between_ticks() {
        let (woken, ticks) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let signal = fd.try_clone().unwrap();
        let t = PeriodicThread::spawn(
            "test",
            Duration::from_secs(60),
            Wakes {
                fd,
                woken: woken.clone(),
                ticks: ticks.clone(),
            },
        )
        .unwrap();
        for want in 1..=3 {
            signal.write(1).unwrap();
            let start = Instant::now();
            while woken.load(Ordering::SeqCst) < want {
                assert!(start.elapsed() < Duration::from_secs(10), "never woken");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        t.stop();
        assert_eq!(woken.load(Ordering::SeqCst), 3, "once per event");
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            0,
            "an hour-long interval never ticked"
        );
    }
}
