//! The block device's worker thread: waits on the queue-notification
//! eventfd (KVM's ioeventfd on QueueNotify) and a stop eventfd, and serves
//! the queue each time the guest notifies.
//!
//! The guest's store to QueueNotify completes inside KVM without a VM exit;
//! the eventfd counter makes sure no notification is lost between two
//! rounds (it is drained before the queue is read). The thread is a
//! [`Worker`], stopped through its stop's eventfd and joined by
//! [`BlockWorker::stop`] or when the handle is dropped, so every way out of
//! `run` ends it. This module must never leave the thread
//! running after its handle is gone, and never let a panic in request
//! handling escape the thread.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio_mmio::VirtioBlock;
use crate::worker::{Stop, Worker};

const TOKEN_NOTIFY: u64 = 1;
const TOKEN_STOP: u64 = 2;

/// Why the worker could not be started: `what` failed (its stop eventfd,
/// its epoll set, or the thread).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the block worker: {what}: {source}")]
pub struct WorkerError {
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// `map_err` of the step `what` of starting the worker.
fn failed(what: &'static str) -> impl FnOnce(std::io::Error) -> WorkerError {
    move |source| WorkerError { what, source }
}

/// A running worker; stopping it (or dropping it) joins the thread.
#[derive(Debug)]
pub struct BlockWorker(Worker);

/// Locks the device even if a previous holder panicked.
fn lock(dev: &Mutex<VirtioBlock>) -> std::sync::MutexGuard<'_, VirtioBlock> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

/// The thread's loop: returns when the stop eventfd fires or epoll fails.
fn work(dev: &Mutex<VirtioBlock>, notify: &EventFd, epoll: &Epoll) {
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("virtio-blk worker: epoll_wait failed: {e}; the disk stops serving");
                return;
            }
        };
        let mut serve = false;
        for ev in events.iter().take(n) {
            match ev.data() {
                TOKEN_STOP => return,
                TOKEN_NOTIFY => serve = true,
                _ => {}
            }
        }
        if serve {
            // Drain first: a notify after this read wakes us again.
            let _ = notify.read();
            lock(dev).process_queue();
        }
    }
}

impl BlockWorker {
    /// Starts the worker on `dev`, woken by `notify`.
    pub fn spawn(dev: Arc<Mutex<VirtioBlock>>, notify: EventFd) -> Result<Self, WorkerError> {
        let stop = Stop::new().map_err(failed("stop eventfd"))?;
        let epoll = Epoll::new().map_err(failed("epoll"))?;
        for (fd, token) in [
            (notify.as_raw_fd(), TOKEN_NOTIFY),
            (stop.fd().as_raw_fd(), TOKEN_STOP),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(failed("epoll"))?;
        }
        let worker = Worker::spawn_with("virtio-blk", stop, move |_: &Stop| {
            crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::BlockWorker);
            work(&dev, &notify, &epoll);
            log::debug!("virtio-blk worker: stopped");
        })
        .map_err(failed("thread"))?;
        Ok(Self(worker))
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::mmio::MmioDevice;
    use crate::devices::virtio_mmio::tests::{device, image, make_live, mem, queue_read, QUEUE};
    use std::time::{Duration, Instant};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    #[test]
    fn serves_a_notified_request_and_stops_on_drop() {
        let (mem, img) = (mem(), image("worker"));
        let (mut dev, irq, notify) = device(&mem, &img, false);
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE), 16);
        make_live(&mut dev, &vq);
        let dev = Arc::new(Mutex::new(dev));
        let worker = BlockWorker::spawn(dev.clone(), notify).unwrap();
        queue_read(&mem, &vq);
        // What KVM's ioeventfd would do: the notify goes to the eventfd.
        lock(&dev).write(0x50, &0u32.to_le_bytes());
        let start = Instant::now();
        while vq.used().idx().load() != 1 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "worker never served"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // The interrupt follows the used-ring update under the same lock.
        let _ = lock(&dev).status();
        assert_eq!(irq.read().unwrap(), 1);
        worker.stop();
        // A stopped worker no longer serves.
        queue_read(&mem, &vq);
        lock(&dev).write(0x50, &0u32.to_le_bytes());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(vq.used().idx().load(), 1);
    }

    #[test]
    fn dropping_the_handle_joins_the_thread() {
        let (mem, img) = (mem(), image("drop"));
        let (dev, _, notify) = device(&mem, &img, false);
        let worker = BlockWorker::spawn(Arc::new(Mutex::new(dev)), notify).unwrap();
        drop(worker);
    }
}
