//! A budget that changes while the guest runs: the target for resident
//! guest memory that `--host-budget` sets at start and the API's
//! `PATCH /memory` moves later. The reclaimer reads it at every round and
//! is woken by its eventfd when it changes, so a new target is acted on
//! at once rather than at the next interval.
//!
//! It also keeps how the reclaimer followed the last change ([`Progress`]:
//! rounds since, and the round and time at which resident memory first
//! fell under the target), which the API reports.
//!
//! It holds a number, a doorbell and that record, and nothing else: it
//! must never decide how many pages to drop (that is `policy`), nor block
//! the writer longer than one short lock no vCPU takes.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The stored value that means "no budget".
const NONE: u64 = u64::MAX;

/// How the reclaimer followed the last change of budget (or the start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Time since the budget was last set, in milliseconds.
    pub set_ms_ago: u64,
    /// Reclaimer rounds since then (every round, whether it dropped or not).
    pub rounds_since_set: u64,
    /// The round after the change in which resident memory was first at or
    /// under the budget (1: the first), and how long after the change that
    /// round ended; null while it has not been, or without a budget.
    pub reached_in_rounds: Option<u64>,
    pub reached_after_ms: Option<u64>,
}

/// What [`Progress`] is made from.
#[derive(Debug)]
struct Track {
    set_at: Instant,
    rounds: u64,
    reached: Option<(u64, Duration)>,
}

/// The current budget in bytes, the eventfd that rings when it changes,
/// and the reclaimer's progress toward it.
#[derive(Debug)]
pub struct BudgetControl {
    bytes: AtomicU64,
    changed: EventFd,
    track: Mutex<Track>,
}

impl BudgetControl {
    /// A control holding `bytes` (or none).
    pub fn new(bytes: Option<u64>) -> std::io::Result<Self> {
        Ok(Self {
            bytes: AtomicU64::new(bytes.unwrap_or(NONE)),
            changed: EventFd::new(EFD_NONBLOCK)?,
            track: Mutex::new(Track {
                set_at: Instant::now(),
                rounds: 0,
                reached: None,
            }),
        })
    }

    /// The record, even if a thread panicked holding it (it is only
    /// numbers; the workspace aborts on panic anyway).
    fn track(&self) -> std::sync::MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(|p| p.into_inner())
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
        *self.track() = Track {
            set_at: Instant::now(),
            rounds: 0,
            reached: None,
        };
        self.bytes.store(bytes.unwrap_or(NONE), Ordering::Release);
        let _ = self.changed.write(1);
    }

    /// The reclaimer ended a round with `resident` bytes resident.
    pub fn note_round(&self, resident: u64) {
        let budget = self.get();
        let mut t = self.track();
        t.rounds = t.rounds.saturating_add(1);
        if t.reached.is_none() && budget.is_some_and(|b| resident <= b) {
            t.reached = Some((t.rounds, t.set_at.elapsed()));
        }
    }

    /// How the reclaimer followed the last change.
    pub fn progress(&self) -> Progress {
        let t = self.track();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Progress {
            set_ms_ago: ms(t.set_at.elapsed()),
            rounds_since_set: t.rounds,
            reached_in_rounds: t.reached.map(|r| r.0),
            reached_after_ms: t.reached.map(|r| ms(r.1)),
        }
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

    #[test]
    fn progress_counts_rounds_from_the_change_to_the_first_under_the_budget() {
        let c = BudgetControl::new(None).unwrap();
        c.note_round(10 << 20);
        let p = c.progress();
        assert_eq!(
            (p.rounds_since_set, p.reached_in_rounds),
            (1, None),
            "no budget"
        );
        c.set(Some(8 << 20));
        assert_eq!(c.progress().rounds_since_set, 0, "a change starts again");
        c.note_round(9 << 20);
        c.note_round(8 << 20);
        c.note_round(12 << 20);
        let p = c.progress();
        assert_eq!(p.rounds_since_set, 3);
        assert_eq!(
            p.reached_in_rounds,
            Some(2),
            "the first round at the budget"
        );
        assert!(p.reached_after_ms.is_some_and(|ms| ms <= p.set_ms_ago));
    }
}
