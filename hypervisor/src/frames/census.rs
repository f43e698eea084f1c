//! Counting the shared page-state table's entries by state, sixteen at a
//! time: the `frames` figures of the stats document, the reclaimer's
//! "anything to drop?" test each round and the API's `GET /memory`.
//!
//! The table is guest memory the guest writes at any moment, one byte per
//! frame. A byte at a time the count took 5-12 ms at 16 GiB (4.4 Mi
//! entries); read as aligned 16-byte vectors and counted in byte lanes
//! with SSE2 (plain 64-bit words elsewhere) it takes about 0.25 ms
//! (`scripts/bench-api.sh`, which runs both). Memory is read with
//! volatile loads, as rust-vmm's `vm-memory` reads guest memory: aligned
//! loads on x86-64 are single-copy atomic per 8 bytes, so every byte comes
//! out whole, either before or after a concurrent single-byte store by the
//! guest or a host thread.
//! The result is a snapshot that may be off by the frames whose state
//! changed during the scan, as any unlocked count is.
//!
//! This module only reads: it must never write an entry or decide
//! anything from what it counts.

use std::ops::Range;
use std::sync::atomic::AtomicU8;

use pagehint_abi::state_table::DISCARDED;

use serde::Serialize;

/// A snapshot of the per-state counters (the stats' `frames` object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FrameCounts {
    pub stable: u64,
    pub unused: u64,
    pub volatile: u64,
    pub potentially_volatile: u64,
    /// Frames whose contents the host dropped and the guest has not yet
    /// been told of.
    pub discarded: u64,
}

/// One bit in every byte lane.
const ONES: u64 = 0x0101_0101_0101_0101;
/// Words a byte-lane accumulator takes before a lane could overflow (each
/// word adds at most 1 to each lane).
const LANE_WORDS: usize = 255;
/// How far the DISCARDED bit sits from bit 0 of its byte.
const DISCARDED_SHIFT: u32 = DISCARDED.trailing_zeros();

/// Counts of states 1..=3 and of DISCARDED, in byte lanes.
#[derive(Default)]
struct Lanes {
    unused: u64,
    volatile: u64,
    pv: u64,
    discarded: u64,
}

impl Lanes {
    /// Adds one word of eight entries.
    #[inline(always)]
    fn add(&mut self, w: u64) {
        let lo = w & ONES;
        let hi = (w >> 1) & ONES;
        self.unused += lo & !hi;
        self.volatile += hi & !lo;
        self.pv += lo & hi;
        self.discarded += (w >> DISCARDED_SHIFT) & ONES;
    }

    /// Adds the lanes' sums into `c` and empties them.
    fn drain_into(&mut self, c: &mut FrameCounts) {
        c.unused += lane_sum(self.unused);
        c.volatile += lane_sum(self.volatile);
        c.potentially_volatile += lane_sum(self.pv);
        c.discarded += lane_sum(self.discarded);
        *self = Lanes::default();
    }
}

/// The sum of a word's eight byte lanes.
fn lane_sum(x: u64) -> u64 {
    // Pairs of lanes into 16-bit lanes (each at most 510), then one
    // multiply gathers the four into the top 16 bits (at most 2040).
    let pairs = (x & 0x00ff_00ff_00ff_00ff) + ((x >> 8) & 0x00ff_00ff_00ff_00ff);
    pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48
}

/// Adds one entry to `c`.
fn add_byte(c: &mut FrameCounts, v: u8) {
    match v & 0x03 {
        1 => c.unused += 1,
        2 => c.volatile += 1,
        3 => c.potentially_volatile += 1,
        _ => {}
    }
    c.discarded += u64::from(v & DISCARDED != 0);
}

/// Counts `words` words of entries from `first` (16-byte aligned) into
/// `c` (states 1..=3 and DISCARDED), eight entries a word in byte lanes.
///
/// # Safety
/// `first` is 16-byte aligned and the `8 * words` bytes from it are live
/// table entries for the whole call.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn count_words(first: *const u64, words: usize, c: &mut FrameCounts) {
    let mut lanes = Lanes::default();
    for chunk in 0..words.div_ceil(LANE_WORDS) {
        let from = chunk * LANE_WORDS;
        for k in from..(from + LANE_WORDS).min(words) {
            // SAFETY: the function's contract: `first` is aligned and
            // `words` words from it are live entries; see `count_range`
            // for why a volatile load of guest memory is sound.
            let w = unsafe { std::ptr::read_volatile(first.add(k)) };
            lanes.add(w);
        }
        lanes.drain_into(c);
    }
}

/// [`count_words`] with SSE2 (every x86-64 CPU has it): sixteen entries an
/// instruction, pairs of words at a time, the odd last word in byte lanes.
///
/// # Safety
/// `first` is 16-byte aligned and the `8 * words` bytes from it are live
/// table entries for the whole call.
#[cfg(target_arch = "x86_64")]
unsafe fn count_words(first: *const u64, words: usize, c: &mut FrameCounts) {
    use std::arch::x86_64::*;
    let pairs = words / 2;
    let v = first as *const __m128i;
    // SAFETY: SSE2 is part of x86-64, so these intrinsics are always
    // available. Each load is of a pair of words inside the caller's range
    // (`2 * k + 1 < words`); a 16-byte load of 8-byte-aligned memory is
    // `loadu`. The bytes are guest memory others store to concurrently:
    // as for the word loads, each byte comes out whole (x86-64 loads are
    // single-copy atomic per aligned 8 bytes), and a volatile read of the
    // vector keeps the compiler from assuming the memory is ours.
    unsafe {
        let (m3, m40) = (_mm_set1_epi8(0x03), _mm_set1_epi8(DISCARDED as i8));
        let (one, two) = (_mm_set1_epi8(1), _mm_set1_epi8(2));
        let zero = _mm_setzero_si128();
        let sum = |acc: __m128i| -> u64 {
            let s = _mm_sad_epu8(acc, zero);
            (_mm_cvtsi128_si64(s) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(s, s))) as u64
        };
        for chunk in 0..pairs.div_ceil(LANE_WORDS) {
            let (mut u, mut vo, mut pv, mut d) = (zero, zero, zero, zero);
            let from = chunk * LANE_WORDS;
            for k in from..(from + LANE_WORDS).min(pairs) {
                let x = std::ptr::read_volatile(v.add(k));
                let s = _mm_and_si128(x, m3);
                u = _mm_sub_epi8(u, _mm_cmpeq_epi8(s, one));
                vo = _mm_sub_epi8(vo, _mm_cmpeq_epi8(s, two));
                pv = _mm_sub_epi8(pv, _mm_cmpeq_epi8(s, m3));
                d = _mm_sub_epi8(d, _mm_cmpeq_epi8(_mm_and_si128(x, m40), m40));
            }
            c.unused += sum(u);
            c.volatile += sum(vo);
            c.potentially_volatile += sum(pv);
            c.discarded += sum(d);
        }
        if words % 2 == 1 {
            let mut lanes = Lanes::default();
            lanes.add(std::ptr::read_volatile(first.add(words - 1)));
            lanes.drain_into(c);
        }
    }
}

/// Counts `entries[range]` by state into `c` (Stable is what is left).
fn count_range(entries: &[AtomicU8], range: Range<usize>, c: &mut FrameCounts) {
    let range = range.start.min(entries.len())..range.end.min(entries.len());
    if range.is_empty() {
        return;
    }
    let stable_before = c.unused + c.volatile + c.potentially_volatile;
    let base = entries.as_ptr() as usize;
    // The first index whose address is 16-byte aligned (a vector's
    // alignment), and the words from there.
    let head_end = range
        .start
        .saturating_add((16 - (base + range.start) % 16) % 16)
        .min(range.end);
    let words = (range.end - head_end) / 8;
    let tail_start = head_end + words * 8;
    let load = |i: usize| entries[i].load(std::sync::atomic::Ordering::Relaxed);
    for i in range.start..head_end {
        add_byte(c, load(i));
    }
    // SAFETY: `entries[head_end..tail_start]` is a live slice of
    // `8 * words` entries whose first is 16-byte aligned (`head_end` was
    // chosen so). The bytes are guest memory that the guest (and host
    // threads, with single-byte atomics) store to concurrently; like
    // rust-vmm's vm-memory we read guest memory with volatile loads, and an
    // aligned load on x86-64 is single-copy atomic per 8 bytes, so each
    // byte read is one whole stored value, from before or after a store.
    unsafe { count_words(entries[head_end..].as_ptr() as *const u64, words, c) };
    for i in tail_start..range.end {
        add_byte(c, load(i));
    }
    let others = c.unused + c.volatile + c.potentially_volatile - stable_before;
    c.stable += range.len() as u64 - others;
}

/// The counts of every entry of `entries` outside `hole` (frame numbers
/// that are not RAM).
pub fn count(entries: &[AtomicU8], hole: &Range<u64>) -> FrameCounts {
    let mut c = FrameCounts::default();
    let len = entries.len();
    let at = |pfn: u64| usize::try_from(pfn).unwrap_or(usize::MAX).min(len);
    let (hs, he) = (at(hole.start), at(hole.end.max(hole.start)));
    count_range(entries, 0..hs, &mut c);
    count_range(entries, he..len, &mut c);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain count, one entry at a time.
    fn naive(bytes: &[u8], hole: &Range<u64>) -> FrameCounts {
        let mut c = FrameCounts::default();
        for (i, &v) in bytes.iter().enumerate() {
            if hole.contains(&(i as u64)) {
                continue;
            }
            add_byte(&mut c, v);
            c.stable += u64::from(v & 0x03 == 0);
        }
        c
    }

    fn atomics(bytes: &[u8]) -> Vec<AtomicU8> {
        bytes.iter().map(|&b| AtomicU8::new(b)).collect()
    }

    #[test]
    fn the_word_count_equals_the_byte_count_at_every_offset_and_hole() {
        // Every byte value, in a pseudo-random order, over lengths that
        // cross the lane flush (255 words) and odd starts and ends.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let bytes: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let all = atomics(&bytes);
        for len in [0, 1, 7, 8, 9, 63, 2040, 2047, 2048, 2049, 4100, 5000] {
            for skip in [0usize, 1, 3, 7] {
                if skip > len {
                    continue;
                }
                // A slice starting at an odd address, as a table may not.
                let entries = &all[skip..len];
                let plain = &bytes[skip..len];
                #[allow(clippy::reversed_empty_ranges)] // a reversed hole is empty too
                let holes = [0..0, 3..3, 5..900, 0..17, 100..10_000, 9..8];
                for hole in holes {
                    assert_eq!(
                        count(entries, &hole),
                        naive(plain, &hole),
                        "len {len} skip {skip} hole {hole:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_full_lane_of_one_state_does_not_overflow() {
        // 255 words of eight Potentially volatile, discarded entries.
        let bytes = vec![0x03 | DISCARDED; 8 * LANE_WORDS + 8];
        let c = count(&atomics(&bytes), &(0..0));
        assert_eq!(c.potentially_volatile, bytes.len() as u64);
        assert_eq!(c.discarded, bytes.len() as u64);
        assert_eq!(c.stable, 0);
    }
}
