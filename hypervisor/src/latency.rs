//! Fine latency histograms: lock-free, nanosecond values in log-linear
//! buckets (16 per power of two, so a reported percentile is at most one
//! sixteenth above the true value), summarised in microseconds with two
//! decimals. They time the stages of a discard fault
//! (`metrics::DiscardStages`, `discard_faults.stages` in the stats), whose
//! stages run from a fraction of a microsecond to milliseconds: the
//! power-of-two buckets of `metrics::Histogram` would put most of them in
//! one bucket.
//!
//! This module only records and summarises: recording must never block,
//! allocate or fail, whatever the value, and a summary never panics.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, Serializer};

/// Sub-buckets per power of two, as a shift (16).
const SUB_BITS: u32 = 4;
/// Sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// The largest power of two with buckets of its own: values of 2^40 ns
/// (18 minutes) and more share the last bucket.
const MAX_EXP: u32 = 39;
/// Buckets: one per value below [`SUB`], then [`SUB`] per power of two
/// from 2^4 to 2^[`MAX_EXP`].
pub const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;

/// The bucket of `ns`.
fn index(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let exp = u64::BITS - 1 - ns.leading_zeros();
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let mantissa = (ns >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(exp - SUB_BITS) * SUB + mantissa) as usize
}

/// The largest value bucket `i` holds.
fn upper_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let mantissa = (i - SUB) % SUB;
    ((SUB + mantissa) << shift) + (1u64 << shift) - 1
}

/// Nanoseconds as microseconds, rounded to two decimals.
fn us(ns: u64) -> f64 {
    (ns as f64 / 10.0).round() / 100.0
}

/// A histogram of durations in nanoseconds.
#[derive(Debug)]
pub struct FineHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for FineHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

/// What a [`FineHistogram`] serialises as (microseconds, two decimals;
/// each percentile is the upper bound of the bucket that holds it, capped
/// at the maximum; all 0 with no sample).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FineSummary {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl FineHistogram {
    /// Records one duration.
    pub fn record(&self, ns: u64) {
        if let Some(b) = self.buckets.get(index(ns)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Records the time from `from_ns` to `to_ns` (0 if `to_ns` is earlier,
    /// as it can be between two threads' clock reads).
    pub fn record_span(&self, from_ns: u64, to_ns: u64) {
        self.record(to_ns.saturating_sub(from_ns));
    }

    /// The value below which `percent` of the samples lie, in nanoseconds
    /// (a bucket's upper bound, capped at the maximum); 0 with no sample.
    pub fn percentile_ns(&self, percent: u64) -> u64 {
        let count = self.count.load(Ordering::Relaxed);
        let max = self.max_ns.load(Ordering::Relaxed);
        if count == 0 {
            return 0;
        }
        let want = count.saturating_mul(percent.min(100)).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(b.load(Ordering::Relaxed));
            if seen >= want {
                // The last bucket holds everything above its range.
                return if i + 1 == BUCKETS {
                    max
                } else {
                    upper_bound(i).min(max)
                };
            }
        }
        max
    }

    /// The summary as of now.
    pub fn summary(&self) -> FineSummary {
        FineSummary {
            count: self.count.load(Ordering::Relaxed),
            p50_us: us(self.percentile_ns(50)),
            p99_us: us(self.percentile_ns(99)),
            max_us: us(self.max_ns.load(Ordering::Relaxed)),
        }
    }
}

impl Serialize for FineHistogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.summary().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        assert_eq!(BUCKETS, 16 + 36 * 16);
        let mut last = 0;
        for i in 0..BUCKETS {
            let hi = upper_bound(i);
            assert_eq!(index(hi), i, "bucket {i} holds its upper bound");
            if i > 0 {
                assert_eq!(index(last + 1), i, "bucket {i} starts after {last}");
                assert!(hi > last);
            }
            last = hi;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(index(1 << 45), BUCKETS - 1);
        // Never more than a sixteenth wide.
        for v in [16u64, 17, 100, 1_000, 7_200, 65_535, 1 << 30] {
            let hi = upper_bound(index(v));
            assert!(hi >= v && (hi - v) * 16 <= v, "{v} -> {hi}");
        }
    }

    #[test]
    fn percentiles_are_within_a_sixteenth() {
        let h = FineHistogram::default();
        assert_eq!(h.summary(), FineSummary::default());
        // 1..=1000 us.
        for k in 1..=1000u64 {
            h.record(k * 1000);
        }
        let p50 = h.percentile_ns(50);
        assert!((500_000..=531_250).contains(&p50), "{p50}");
        let p99 = h.percentile_ns(99);
        assert!((990_000..=1_000_000).contains(&p99), "{p99}");
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.max_us - 1000.0).abs() < 1e-9);
        assert_eq!(h.percentile_ns(100), 1_000_000, "capped at the maximum");
    }

    #[test]
    fn odd_values_are_recorded_not_refused() {
        let h = FineHistogram::default();
        h.record(0);
        h.record(u64::MAX);
        h.record_span(10, 3);
        assert_eq!(h.summary().count, 3);
        assert_eq!(h.percentile_ns(50), 0);
        assert_eq!(h.percentile_ns(99), u64::MAX);
        assert!((us(1234) - 1.23).abs() < 1e-9);
        assert!((us(7_205) - 7.21).abs() < 1e-9);
    }
}
