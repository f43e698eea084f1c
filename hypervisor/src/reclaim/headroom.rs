//! How much of a cgroup limit the reclaimer keeps free, measured rather
//! than fixed: the most the guest grew between two rounds lately, twice
//! over, plus a floor for the VMM's own memory, never more than the old
//! fixed reserve (a quarter of the limit, at most `cgroup::RESERVE`).
//!
//! Between two rounds the guest faults memory in (a disk read, a page it
//! touches first) and nothing takes it back; if the cgroup reaches its
//! limit meanwhile, the host kernel swaps the guest's memory out, stable
//! pages included. The reserve must hold that growth, and nothing more:
//! every page kept free is a page of cache the guest reads again. Growth
//! is the resident guest memory a round finds, less what the previous
//! round left (after its drops), over the last [`WINDOW`] rounds; a burst
//! is remembered for as long. Twice the largest, because a round may land
//! just after the growth began and the next one is an interval away.
//! Several VMMs in one cgroup keep that times their number: between two
//! rounds the cgroup grows by every guest, and each VMM sees only its own.
//!
//! This module only counts: it must never read a file or drop a frame.

use std::collections::VecDeque;

use super::cgroup::fixed_reserve;

/// Rounds whose growth is remembered (5 s at the default 50 ms).
pub const WINDOW: usize = 100;
/// Kept free whatever the guest does: the VMM's own heap and threads
/// grow too, and are not guest RAM (bytes).
pub const FLOOR: u64 = 512 << 10;

/// The measured growth of resident guest memory per round.
#[derive(Debug, Default)]
pub struct Headroom {
    /// Resident guest bytes the previous round left.
    last: Option<u64>,
    growth: VecDeque<u64>,
}

impl Headroom {
    /// A round found `resident` bytes of guest memory resident.
    pub fn observe(&mut self, resident: u64) {
        if let Some(last) = self.last {
            if self.growth.len() == WINDOW {
                self.growth.pop_front();
            }
            self.growth.push_back(resident.saturating_sub(last));
        }
        self.last = Some(resident);
    }

    /// The round dropped `bytes` of what it observed.
    pub fn dropped(&mut self, bytes: u64) {
        if let Some(last) = self.last.as_mut() {
            *last = last.saturating_sub(bytes);
        }
    }

    /// The largest growth between two rounds in the window (bytes).
    pub fn max_growth(&self) -> u64 {
        self.growth.iter().copied().max().unwrap_or(0)
    }

    /// Bytes to keep free below a cgroup `limit` that `sharers` processes
    /// share: `FLOOR + 2 x` the largest growth, times the sharers (at
    /// least one), at most the fixed reserve (a quarter of the limit and
    /// `cgroup::RESERVE`).
    pub fn reserve(&self, limit: u64, sharers: u64) -> u64 {
        FLOOR
            .saturating_add(self.max_growth().saturating_mul(2))
            .saturating_mul(sharers.max(1))
            .min(fixed_reserve(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_quiet_guest_keeps_only_the_floor() {
        let mut h = Headroom::default();
        assert_eq!(h.reserve(64 * MIB, 1), FLOOR, "nothing measured yet");
        for _ in 0..10 {
            h.observe(20 * MIB);
        }
        assert_eq!(h.reserve(64 * MIB, 1), FLOOR);
        // A tiny limit caps it.
        assert_eq!(h.reserve(MIB, 1), MIB / 4);
    }

    #[test]
    fn growth_after_the_drops_sizes_the_reserve_until_it_leaves_the_window() {
        let mut h = Headroom::default();
        h.observe(10 * MIB);
        h.dropped(2 * MIB); // the round left 8 MiB
        h.observe(9 * MIB); // grew 1 MiB in one interval
        assert_eq!(h.max_growth(), MIB);
        assert_eq!(h.reserve(64 * MIB, 1), FLOOR + 2 * MIB);
        // Three VMMs in the cgroup keep three times as much, capped alike.
        assert_eq!(h.reserve(64 * MIB, 3), 3 * (FLOOR + 2 * MIB));
        assert_eq!(h.reserve(16 * MIB, 3), 4 * MIB);
        // Never more than the fixed reserve of old.
        h.observe(40 * MIB);
        assert_eq!(h.reserve(64 * MIB, 1), 16 * MIB);
        assert_eq!(h.reserve(16 * MIB, 1), 4 * MIB);
        // Shrinking is no growth; a burst is forgotten after WINDOW rounds.
        for _ in 0..WINDOW {
            h.observe(30 * MIB);
        }
        assert_eq!(h.reserve(64 * MIB, 1), FLOOR);
    }
}
