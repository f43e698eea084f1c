//! The experiment's progress line, one per run on stderr as the run
//! starts: which run of how many, its workload and mode, the time since
//! the experiment started, and an estimate of the time left (the ETA).
//!
//! The estimate is the mean time of the runs finished so far (disk images
//! made on the way included) times the runs still to go, this one
//! included; before any has finished, the plan's typical run time on the
//! development machine stands in. Runs that cannot run on this host (a
//! row saying why) cost nothing and count neither way.
//!
//! The line is plain text: logs of CI machines are not terminals, so it
//! carries no cursor movement; `child` adds the run's own live line after
//! it only when stderr is a terminal. Pure functions only: this module
//! must never read the clock or write anything itself.

use std::time::Duration;

/// Time left for `to_go` runs when `finished` runs took `spent` in all;
/// `typical` per run while none has finished.
pub fn eta(spent: Duration, finished: usize, to_go: usize, typical: Duration) -> Duration {
    let to_go = u128::try_from(to_go).unwrap_or(u128::MAX);
    let ms = match u128::try_from(finished) {
        Ok(0) | Err(_) => typical.as_millis().saturating_mul(to_go),
        Ok(n) => spent.as_millis().saturating_mul(to_go) / n,
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
    /// Runs finished so far, and the time they took in all.
    pub finished: usize,
    pub spent: Duration,
    /// Runs still to go that will run, this one included.
    pub to_go: usize,
    /// A run's time before any has finished.
    pub typical: Duration,
}

impl Progress {
    /// The progress line for the run named `name` (without a newline).
    pub fn line(&self, name: &str) -> String {
        let left = eta(self.spent, self.finished, self.to_go, self.typical);
        let basis = match self.finished {
            0 => format!("estimate: {} s a run", self.typical.as_secs()),
            n => {
                let mean = eta(self.spent, n, 1, self.typical);
                let runs = if n == 1 { "run" } else { "runs" };
                format!("mean of {n} finished {runs}: {} s", mean.as_secs())
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

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_eta_is_the_mean_of_finished_runs_times_the_runs_to_go() {
        // Three runs took 30 s: 10 s each; seven to go.
        assert_eq!(eta(S(30), 3, 7, S(99)), S(70));
        // Whole milliseconds, multiplied before the division: 10 s over 3
        // runs, 2 to go, is 6.666 s (not twice 3.333 s).
        assert_eq!(eta(S(10), 3, 2, S(99)), Duration::from_millis(6666));
        assert_eq!(eta(S(10), 3, 3, S(99)), S(10));
        // None finished: the typical run time stands in.
        assert_eq!(eta(Duration::ZERO, 0, 20, S(11)), S(220));
        // The last run finished: nothing left.
        assert_eq!(eta(S(200), 20, 0, S(11)), Duration::ZERO);
        // No overflow, whatever the inputs.
        assert_eq!(
            eta(Duration::MAX, 1, usize::MAX, S(1)).as_millis(),
            u128::from(u64::MAX)
        );
        assert_eq!(
            eta(S(1), 0, usize::MAX, Duration::MAX).as_millis(),
            u128::from(u64::MAX)
        );
    }

    #[test]
    fn clocks_are_minutes_and_seconds_or_hours_from_one() {
        assert_eq!(clock(Duration::ZERO), "0:00");
        assert_eq!(clock(Duration::from_millis(59_999)), "0:59");
        assert_eq!(clock(S(61)), "1:01");
        assert_eq!(clock(S(3599)), "59:59");
        assert_eq!(clock(S(3600 + 2 * 60 + 3)), "1:02:03");
    }

    #[test]
    fn the_line_names_the_run_its_place_elapsed_time_and_eta() {
        let mut p = Progress {
            run: 1,
            runs: 20,
            elapsed: S(4),
            finished: 0,
            spent: Duration::ZERO,
            to_go: 20,
            typical: S(11),
        };
        assert_eq!(
            p.line("page-cache baseline"),
            "run 1/20: page-cache baseline, elapsed 0:04, ETA 3:40 (estimate: 11 s a run)"
        );
        p = Progress {
            run: 3,
            finished: 2,
            spent: S(42),
            elapsed: S(46),
            to_go: 18,
            ..p
        };
        assert_eq!(
            p.line("kv host-swap"),
            "run 3/20: kv host-swap, elapsed 0:46, ETA 6:18 (mean of 2 finished runs: 21 s)"
        );
        p.finished = 1;
        assert!(
            p.line("x").ends_with("(mean of 1 finished run: 42 s)"),
            "{}",
            p.line("x")
        );
        assert!(!p.line("x").contains('\n') && !p.line("x").contains('\r'));
    }
}
