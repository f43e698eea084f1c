//! Runs of contiguous guest frames, and the builder that coalesces frame
//! numbers pushed in ascending order into them, so that one `madvise` or
//! one userfaultfd ioctl covers as much as it can.
//!
//! Pure bookkeeping: this module must never look at guest memory or at a
//! frame's state.

/// A run of contiguous guest frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub pfn: u64,
    pub count: u64,
}

impl Run {
    /// The frames of the run, first to last (empty if it would overflow).
    pub fn frames(&self) -> std::ops::Range<u64> {
        self.pfn..self.pfn.saturating_add(self.count)
    }

    /// Runs that RAM of `frames` frames cannot hold, whatever its layout:
    /// one past the top, one at the largest frame number, an empty one
    /// and one too long to count in bytes. What the tests of every run
    /// check offer.
    #[cfg(test)]
    pub fn outside(frames: u64) -> [Run; 4] {
        [
            Run {
                pfn: frames - 1,
                count: 2,
            },
            Run {
                pfn: u64::MAX,
                count: 1,
            },
            Run { pfn: 5, count: 0 },
            Run {
                pfn: 1,
                count: u64::MAX,
            },
        ]
    }
}

/// Collects frame numbers, pushed in ascending order, into runs.
#[derive(Debug, Default)]
pub struct RunBuilder {
    runs: Vec<Run>,
    pages: u64,
}

impl RunBuilder {
    /// Adds a frame: extends the last run if adjacent, else starts a run.
    pub fn push(&mut self, pfn: u64) {
        match self.runs.last_mut() {
            Some(last) if last.pfn.checked_add(last.count) == Some(pfn) => last.count += 1,
            _ => self.runs.push(Run { pfn, count: 1 }),
        }
        self.pages += 1;
    }

    /// Runs so far.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Frames so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Empties the builder.
    pub fn clear(&mut self) {
        self.runs.clear();
        self.pages = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_coalesce_into_runs() {
        let mut b = RunBuilder::default();
        for p in [3, 4, 5, 7, 9, 10, u64::MAX] {
            b.push(p);
        }
        assert_eq!(
            b.runs(),
            &[
                Run { pfn: 3, count: 3 },
                Run { pfn: 7, count: 1 },
                Run { pfn: 9, count: 2 },
                Run {
                    pfn: u64::MAX,
                    count: 1
                },
            ]
        );
        assert_eq!(b.pages(), 7);
        assert_eq!(b.runs()[0].frames().collect::<Vec<_>>(), [3, 4, 5]);
        b.clear();
        assert!(b.runs().is_empty());
    }
}
