//! The key distribution of the `kv` program, as pure functions the host's
//! unit tests check: a seeded PRNG (splitmix64), Zipf weights (without
//! `libm`: the guest target has no `powf`, so `ln` and `exp` are computed
//! here), a fixed-point CDF table sampled by binary search, and YCSB's
//! scrambling of a rank into a key.
//!
//! It must never allocate or touch the kernel: the caller owns the CDF
//! table (user programs have no heap) and the randomness is reproducible
//! from the seed alone, so two runs draw the same keys.

use pagehint_abi::disk::fnv1a;

/// A CDF entry's scale: draws are uniform in `0..ONE` (53 bits, what an
/// `f64` mantissa holds exactly).
pub const ONE: u64 = 1 << 53;

/// splitmix64: a 64-bit state, one add and three multiply-xorshift rounds
/// per draw; passes BigCrush and needs no warm-up.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..ONE`.
    pub fn next_unit(&mut self) -> u64 {
        self.next_u64() >> 11
    }
}

const LN2: f64 = core::f64::consts::LN_2;

/// Natural logarithm of a positive, finite, normal `x`.
pub fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    // The mantissa in [1, 2), then moved to [sqrt(1/2), sqrt(2)) so the
    // series argument below stays under 0.172.
    let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    if m > core::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    // ln m = 2 atanh(s), s = (m - 1) / (m + 1): 2 (s + s^3/3 + s^5/5 ...).
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let (mut term, mut sum) = (s, 0.0);
    for k in 0..12 {
        sum += term / (2 * k + 1) as f64;
        term *= s2;
    }
    e as f64 * LN2 + 2.0 * sum
}

/// `e^y` for `y <= 0` (what Zipf weights need); 0 below the normal range.
pub fn exp_neg(y: f64) -> f64 {
    if y < -700.0 {
        return 0.0;
    }
    // y = k ln2 + r with |r| <= ln2 / 2; e^y = 2^k e^r.
    let kf = y / LN2 - 0.5;
    let k = kf as i64; // toward zero, and kf < 0.5: this rounds y / ln2
    let r = y - k as f64 * LN2;
    let (mut term, mut sum) = (1.0, 1.0);
    for n in 1..20 {
        term *= r / n as f64;
        sum += term;
    }
    sum * f64::from_bits(((k + 1023) as u64) << 52)
}

/// The Zipf weight of 0-based `rank`: `(rank + 1)^-theta`.
pub fn weight(rank: u64, theta: f64) -> f64 {
    if rank == 0 || theta == 0.0 {
        return 1.0;
    }
    exp_neg(-theta * ln((rank + 1) as f64))
}

/// Fills `cdf` (one entry per rank) with the cumulative Zipf distribution
/// of exponent `theta`, scaled to [`ONE`]; the last entry is exactly `ONE`.
pub fn fill_cdf(cdf: &mut [u64], theta: f64) {
    let mut total = 0.0;
    for (r, c) in cdf.iter_mut().enumerate() {
        total += weight(r as u64, theta);
        // Partial sums first, as f64 bits, scaled in a second pass.
        *c = total.to_bits();
    }
    let scale = ONE as f64 / total;
    let mut last = 0;
    for c in cdf.iter_mut() {
        // Monotone despite rounding, and never past ONE.
        let v = ((f64::from_bits(*c) * scale) as u64).clamp(last, ONE);
        *c = v;
        last = v;
    }
    if let Some(c) = cdf.last_mut() {
        *c = ONE;
    }
}

/// The rank a uniform draw `u` (in `0..ONE`) falls on: the first entry
/// above `u`.
pub fn rank_of(cdf: &[u64], u: u64) -> u64 {
    (cdf.partition_point(|&c| c <= u) as u64).min(cdf.len().saturating_sub(1) as u64)
}

/// How many of the hottest ranks take `pct` percent of the draws.
pub fn ranks_holding(cdf: &[u64], pct: u64) -> u64 {
    let target = ONE / 100 * pct.min(100);
    (cdf.partition_point(|&c| c < target) as u64 + 1).min(cdf.len() as u64)
}

/// YCSB's scrambled Zipfian: the key of `rank` is the FNV-1a hash of the
/// rank modulo the key count, so the hot keys scatter over the key space
/// (and, as in YCSB, a few keys take two ranks while others take none).
pub fn scramble(rank: u64, keys: u64) -> u64 {
    fnv1a(&rank.to_le_bytes()) % keys.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_and_exp_match_std() {
        for x in [1.0, 1.5, 2.0, 3.0, 10.0, 1234.5, 1e6, 5e9] {
            let (a, b) = (ln(x), x.ln());
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "ln {x}: {a} {b}");
        }
        for y in [0.0, -0.1, -0.5, -1.0, -3.3, -20.0, -100.0, -600.0] {
            let (a, b) = (exp_neg(y), y.exp());
            assert!((a - b).abs() <= 1e-12 * b, "exp {y}: {a} {b}");
        }
        for (r, t) in [(1u64, 0.99), (99, 0.99), (4999, 1.2), (7, 0.5)] {
            let want = ((r + 1) as f64).powf(-t);
            assert!((weight(r, t) - want).abs() <= 1e-12 * want);
        }
    }

    #[test]
    fn cdf_is_monotone_ends_at_one_and_is_zipf() {
        let mut cdf = vec![0u64; 1000];
        fill_cdf(&mut cdf, 0.99);
        assert!(cdf.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*cdf.last().unwrap(), ONE);
        // Rank 0 against rank 1: 2^0.99 times as likely.
        let p0 = cdf[0] as f64;
        let p1 = (cdf[1] - cdf[0]) as f64;
        assert!((p0 / p1 - 2f64.powf(0.99)).abs() < 1e-9);
        assert_eq!(rank_of(&cdf, 0), 0);
        assert_eq!(rank_of(&cdf, cdf[0]), 1);
        assert_eq!(rank_of(&cdf, ONE - 1), 999);
        // Uniform when theta is 0.
        fill_cdf(&mut cdf, 0.0);
        assert_eq!(ranks_holding(&cdf, 50), 500);
    }

    #[test]
    fn draws_follow_the_distribution() {
        let mut cdf = vec![0u64; 5000];
        fill_cdf(&mut cdf, 0.99);
        let mut rng = SplitMix64::new(42);
        let mut hits = vec![0u32; 5000];
        let n = 200_000;
        for _ in 0..n {
            hits[rank_of(&cdf, rng.next_unit()) as usize] += 1;
        }
        let share0 = hits[0] as f64 / n as f64;
        let want0 = cdf[0] as f64 / ONE as f64;
        assert!((share0 - want0).abs() < 0.01, "{share0} vs {want0}");
        let h = ranks_holding(&cdf, 50) as usize;
        let top: u32 = hits[..h].iter().sum();
        assert!((top as f64 / n as f64 - 0.5).abs() < 0.02);
    }

    #[test]
    fn scrambling_spreads_and_stays_in_range() {
        let keys = 5120;
        let ks: Vec<u64> = (0..10).map(|r| scramble(r, keys)).collect();
        assert!(ks.iter().all(|&k| k < keys));
        let mut sorted = ks.clone();
        sorted.sort();
        sorted.dedup();
        assert!(sorted.len() >= 9, "{ks:?}");
        // Not clustered at the front (the unscrambled hot keys would be).
        assert!(ks.iter().filter(|&&k| k >= keys / 2).count() >= 2, "{ks:?}");
        assert_eq!(scramble(3, 1), 0);
    }
}
