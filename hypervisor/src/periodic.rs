//! A thread that does one job every interval until it is stopped: the
//! shape of the reclaimer and of the stats writer. [`PeriodicThread`]
//! owns the thread; stopping it (or dropping it) wakes it at once, lets
//! the job finish, and joins it, so no such thread outlives its handle.
//!
//! This module knows no job: it must never do more than run, stop and
//! join.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a periodic thread does.
pub trait Periodic: Send + 'static {
    /// Once, on the thread, before the first interval.
    fn start(&mut self) {}
    /// Every interval.
    fn tick(&mut self);
    /// Once, on the thread, after the stop was asked for.
    fn finish(&mut self) {}
}

/// The running thread of one [`Periodic`] job.
#[derive(Debug)]
pub struct PeriodicThread {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl PeriodicThread {
    /// Starts `job` on a thread called `name`, ticking every `interval`
    /// (at least 1 ms).
    pub fn spawn(name: &str, interval: Duration, mut job: impl Periodic) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<()>();
        let interval = interval.max(Duration::from_millis(1));
        let thread_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Some(kind) = crate::seccomp::ThreadKind::from_name(&thread_name) {
                    crate::seccomp::enter_or_exit(kind);
                }
                job.start();
                // A message or a dropped sender both mean stop.
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                    job.tick();
                }
                job.finish();
            })?;
        Ok(Self {
            stop: Some(tx),
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it (its job's `finish` runs first).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            // The thread cannot have panicked: a panic aborts the process.
            let _ = h.join();
        }
    }
}

impl Drop for PeriodicThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

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
}
