//! The experiment's progress line, one per run on stderr as the run
//! starts: which run of how many, its workload and mode, the time since
//! the experiment started, and an estimate of the time left (the ETA).
//!
//! Each run has an estimate, what it took on the development machine
//! (`plan::typical_secs`: hinting runs that read files again take two to
//! four times what the others do, and the longest workload comes last, so
//! a plain mean of the finished runs said 1:33 left where 2:26 was, half
//! way through the short plan). The ETA is the estimates of the runs to
//! go, this one included, times the pace so far: the finished runs' time
//! (disk images made on the way included) over their estimates. With
//! equal estimates that is the mean of the finished runs times the runs
//! to go; before any has finished, the estimates as they are. Runs that
//! cannot run on this host (a row saying why) cost nothing and count
//! neither way.
//!
//! The line is plain text: logs of CI machines are not terminals, so it
//! carries no cursor movement; `child` adds the run's own live line after
//! it only when stderr is a terminal. Pure functions only: this module
//! must never read the clock or write anything itself.

use std::time::Duration;

/// Time left for runs estimated at `to_go` in all, when runs estimated at
/// `done` took `spent` (`done` zero: none finished, the estimate stands).
pub fn eta(spent: Duration, done: Duration, to_go: Duration) -> Duration {
    let ms = match done.as_millis() {
        0 => to_go.as_millis(),
        d => to_go.as_millis().saturating_mul(spent.as_millis()) / d,
    };
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// `m:ss`, or `h:mm:ss` from an hour on (whole seconds, rounded down).
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// Where the experiment stands as a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// This run's place (from 1) and the runs of the plan.
    pub run: usize,
    pub runs: usize,
    /// Since the experiment started.
    pub elapsed: Duration,
    /// Runs finished so far, the time they took in all, and what they
    /// were estimated at in all.
    pub finished: usize,
    pub spent: Duration,
    pub done_estimate: Duration,
    /// The estimates of the runs still to go that will run, this one
    /// included.
    pub to_go_estimate: Duration,
}

impl Progress {
    /// The progress line for the run named `name` (without a newline).
    pub fn line(&self, name: &str) -> String {
        let left = eta(self.spent, self.done_estimate, self.to_go_estimate);
        let basis = match (self.finished, self.done_estimate.as_millis()) {
            (0, _) | (_, 0) => "estimates for the development machine".to_string(),
            (n, done) => {
                let pace = self.spent.as_millis() as f64 / done as f64;
                let runs = if n == 1 { "run" } else { "runs" };
                format!("{n} {runs} done at {pace:.2}x the estimates")
            }
        };
        format!(
            "run {}/{}: {name}, elapsed {}, ETA {} ({basis})",
            self.run,
            self.runs,
            clock(self.elapsed),
            clock(left),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn the_eta_is_the_estimates_to_go_at_the_pace_so_far() {
        // Equal estimates: the mean of the finished runs times the runs
        // to go. Three runs of 10 s estimated at 11 s each, seven to go.
        assert_eq!(eta(s(30), s(33), s(77)), s(70));
        // Unequal: finished runs at twice their estimates double the rest.
        assert_eq!(eta(s(40), s(20), s(6 + 14 + 28)), s(96));
        // Whole milliseconds, multiplied before the division.
        assert_eq!(eta(s(10), s(3), s(2)), Duration::from_millis(6666));
        // None finished: the estimates stand.
        assert_eq!(eta(Duration::ZERO, Duration::ZERO, s(190)), s(190));
        // The last run finished: nothing left.
        assert_eq!(eta(s(200), s(190), Duration::ZERO), Duration::ZERO);
        // No overflow, whatever the inputs.
        let most = u128::from(u64::MAX);
        assert_eq!(eta(Duration::MAX, s(1), Duration::MAX).as_millis(), most);
        assert_eq!(eta(s(1), Duration::ZERO, Duration::MAX).as_millis(), most);
        assert_eq!(eta(s(1), Duration::from_nanos(1), s(1)).as_millis(), 1000);
    }

    #[test]
    fn clocks_are_minutes_and_seconds_or_hours_from_one() {
        assert_eq!(clock(Duration::ZERO), "0:00");
        assert_eq!(clock(Duration::from_millis(59_999)), "0:59");
        assert_eq!(clock(s(61)), "1:01");
        assert_eq!(clock(s(3599)), "59:59");
        assert_eq!(clock(s(3600 + 2 * 60 + 3)), "1:02:03");
    }

    #[test]
    fn the_line_names_the_run_its_place_elapsed_time_and_eta() {
        let mut p = Progress {
            run: 1,
            runs: 20,
            elapsed: s(4),
            finished: 0,
            spent: Duration::ZERO,
            done_estimate: Duration::ZERO,
            to_go_estimate: s(184),
        };
        assert_eq!(
            p.line("page-cache baseline"),
            "run 1/20: page-cache baseline, elapsed 0:04, ETA 3:04 \
             (estimates for the development machine)"
        );
        p = Progress {
            run: 3,
            finished: 2,
            spent: s(15),
            done_estimate: s(12),
            elapsed: s(19),
            to_go_estimate: s(160),
            ..p
        };
        assert_eq!(
            p.line("page-cache free-page-reporting"),
            "run 3/20: page-cache free-page-reporting, elapsed 0:19, ETA 3:20 \
             (2 runs done at 1.25x the estimates)"
        );
        p.finished = 1;
        let one = p.line("x");
        assert!(
            one.ends_with("(1 run done at 1.25x the estimates)"),
            "{one}"
        );
        assert!(!one.contains('\n') && !one.contains('\r'));
    }
}
