//! One VMM thread and the means to stop it. Every thread the VMM starts
//! besides the main one is a [`Worker`]: the vCPUs, the block worker, the
//! discard-fault handler and the periodic jobs (reclaimer, stats writer).
//!
//! A worker owns its `JoinHandle` and a [`Stop`]: a flag the thread may
//! test for free (a vCPU, before every `KVM_RUN`) and an eventfd that
//! becomes readable at the same time (for a thread that waits in `poll` or
//! `epoll`). [`Worker::stop`] sets both and joins the thread, returning
//! what the thread returned; dropping the worker does the same, so no
//! thread outlives its handle. A thread that the stop cannot reach by
//! itself (a vCPU inside `KVM_RUN`) is kicked with a signal by its owner
//! ([`Worker::kick`]) until [`Worker::is_finished`].
//!
//! This module knows no job: it must never do more than start, signal,
//! kick and join, and never make a system call on the worker's thread.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

/// The stop request of one or more workers: a flag and an eventfd, both
/// set once and never cleared.
#[derive(Debug)]
pub struct Stop {
    asked: AtomicBool,
    fd: EventFd,
}

impl Stop {
    /// A stop not yet asked for (its eventfd is non-blocking).
    pub fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            asked: AtomicBool::new(false),
            fd: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    /// Has the stop been asked for?
    pub fn is_set(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }

    /// The descriptor that polls readable once the stop is asked for.
    pub fn fd(&self) -> &EventFd {
        &self.fd
    }

    /// Asks for the stop: sets the flag, then (the first time only) makes
    /// the eventfd readable. The write cannot fail but on counter overflow,
    /// which one write cannot reach.
    pub fn set(&self) -> io::Result<()> {
        if self.asked.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.fd.write(1)
    }
}

/// A running thread; stopping (or dropping) it joins it.
#[derive(Debug)]
pub struct Worker<T: Send + 'static = ()> {
    stop: Arc<Stop>,
    handle: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts `job` on a thread called `name`, with a stop of its own.
    pub fn spawn(name: &str, job: impl FnOnce(&Stop) -> T + Send + 'static) -> io::Result<Self> {
        Self::spawn_with(name, Stop::new()?, job)
    }

    /// Starts `job` on a thread called `name`, stopped by `stop` (which
    /// other workers may share, or which the caller needed before the
    /// thread existed).
    pub fn spawn_with(
        name: &str,
        stop: Arc<Stop>,
        job: impl FnOnce(&Stop) -> T + Send + 'static,
    ) -> io::Result<Self> {
        let theirs = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || job(&theirs))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Has the thread ended?
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Sends `signal` to the thread (if it has not been joined).
    pub fn kick(&self, signal: i32) -> Result<(), vmm_sys_util::errno::Error> {
        match &self.handle {
            Some(h) => h.kill(signal),
            None => Ok(()),
        }
    }

    /// Asks the thread to stop and waits for it: what it returned, or
    /// `None` if it could not be asked (it is then left running, as
    /// joining it would wait for ever) or did not return.
    pub fn stop(mut self) -> Option<T> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Option<T> {
        let handle = self.handle.take()?;
        if let Err(e) = self.stop.set() {
            let name = handle.thread().name().unwrap_or("unnamed");
            log::error!("{name}: cannot signal the thread to stop: {e}; it is left running");
            return None;
        }
        // A panic aborts the process (the workspace's one panic strategy),
        // so a joined thread has returned.
        handle.join().ok()
    }
}

impl<T: Send + 'static> Drop for Worker<T> {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// Waits in `poll` on the stop's eventfd, as the device threads do.
    fn wait_readable(stop: &Stop) -> bool {
        let mut fds = [libc::pollfd {
            fd: stop.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 10_000) };
        n == 1 && stop.is_set()
    }

    #[test]
    fn stop_sets_flag_and_eventfd_joins_and_returns_the_result() {
        let w = Worker::spawn("test", |stop: &Stop| wait_readable(stop)).unwrap();
        assert!(!w.is_finished());
        assert_eq!(w.stop(), Some(true), "woken by the eventfd, flag set");
    }

    #[test]
    fn dropping_stops_and_joins_and_a_shared_stop_reaches_every_worker() {
        let stop = Stop::new().unwrap();
        let spin = |s: &Stop| {
            while !s.is_set() {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let a = Worker::spawn_with("a", stop.clone(), spin).unwrap();
        let b = Worker::spawn_with("b", stop.clone(), spin).unwrap();
        stop.set().unwrap();
        stop.set().unwrap();
        let start = Instant::now();
        while !(a.is_finished() && b.is_finished()) {
            assert!(start.elapsed() < Duration::from_secs(10), "never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(stop.fd().read().unwrap(), 1, "one write for two sets");
        drop(a);
        assert_eq!(b.stop(), Some(()));
        // Dropping a worker that waits for the stop ends it.
        let (tx, rx) = std::sync::mpsc::channel();
        drop(
            Worker::spawn("c", move |s: &Stop| {
                let woken = wait_readable(s);
                tx.send(woken).unwrap();
            })
            .unwrap(),
        );
        assert_eq!(rx.try_recv(), Ok(true), "joined before the drop returned");
    }
}
