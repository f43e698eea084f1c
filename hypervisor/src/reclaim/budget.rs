//! A budget that changes while the guest runs: the target for resident
//! guest memory that `--host-budget` sets at start and the API's
//! `PATCH /memory` moves later. The reclaimer reads it at every round and
//! is woken by its eventfd when it changes, so a new target is acted on
//! at once rather than at the next interval.
//!
//! It holds a number and a doorbell and nothing else: it must never
//! decide how many pages to drop (that is `policy`), nor block the
//! writer.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The stored value that means "no budget".
const NONE: u64 = u64::MAX;

/// The current budget in bytes, and the eventfd that rings when it changes.
#[derive(Debug)]
pub struct BudgetControl {
    bytes: AtomicU64,
    changed: EventFd,
}

impl BudgetControl {
    /// A control holding `bytes` (or none).
    pub fn new(bytes: Option<u64>) -> std::io::Result<Self> {
        Ok(Self {
            bytes: AtomicU64::new(bytes.unwrap_or(NONE)),
            changed: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The budget now, in bytes.
    pub fn get(&self) -> Option<u64> {
        let b = self.bytes.load(Ordering::Acquire);
        (b != NONE).then_some(b)
    }

    /// Sets a new budget (or none) and wakes the reclaimer. A failed wake
    /// (the eventfd's counter full, which a reader empties) only delays
    /// the change to the next interval.
    pub fn set(&self, bytes: Option<u64>) {
        self.bytes.store(bytes.unwrap_or(NONE), Ordering::Release);
        let _ = self.changed.write(1);
    }

    /// The descriptor the reclaimer polls, and its events.
    pub fn source(&self) -> (RawFd, i16) {
        (self.changed.as_raw_fd(), libc::POLLIN)
    }

    /// Empties the doorbell (the reclaimer, when it wakes).
    pub fn consume(&self) {
        let _ = self.changed.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_read_and_rings_once() {
        let c = BudgetControl::new(Some(8 << 20)).unwrap();
        assert_eq!(c.get(), Some(8 << 20));
        let mut fds = [libc::pollfd {
            fd: c.source().0,
            events: c.source().1,
            revents: 0,
        }];
        let ready = |fds: &mut [libc::pollfd; 1]| {
            // SAFETY: one valid pollfd; a zero timeout does not block.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) }
        };
        assert_eq!(ready(&mut fds), 0, "quiet until set");
        c.set(None);
        assert_eq!(c.get(), None);
        c.set(Some(4 << 20));
        assert_eq!(c.get(), Some(4 << 20));
        assert_eq!(ready(&mut fds), 1);
        c.consume();
        assert_eq!(ready(&mut fds), 0, "consumed");
    }
}
