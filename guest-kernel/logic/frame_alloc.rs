//! Physical frame allocator over the firmware memory map.
//!
//! Boot must not loop over every frame (kernel code is emulated and slow on
//! the development machines), so frames that were never handed out are
//! taken from a bump pointer per usable range, and freed frames go on a
//! LIFO list whose links live in a separate `u32` array indexed by frame
//! number. Single frames come from the highest range first and contiguous
//! boot blocks from the lowest (as Linux falls back from its high zones to
//! the low ones), so low memory stays for boot structures and RAM above
//! 4 GiB carries the workload. The free frames themselves are never written: a free frame
//! must stay untouched so that the host can reclaim it.

/// Marks the end of the free list.
const NIL: u32 = u32::MAX;
/// Most usable ranges the allocator tracks.
pub const MAX_RANGES: usize = 16;

/// A half-open range of frame numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PfnRange {
    pub start: u64,
    pub end: u64,
}

impl PfnRange {
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why the allocator refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// More usable ranges than [`MAX_RANGES`].
    TooManyRanges,
    /// A range reaches past the link array.
    RangeOutsideLinks,
    /// The frame was not handed out by this allocator, or is already free.
    NotAllocated,
}

/// Hands out 4 KiB frames.
pub struct FrameAllocator<'a> {
    ranges: [PfnRange; MAX_RANGES],
    nranges: usize,
    /// Next never-used frame of each range.
    bump: [u64; MAX_RANGES],
    free_head: u32,
    free_count: u64,
    total: u64,
    /// `links[pfn]`: next free frame after `pfn`, or [`NIL`]; for frames
    /// not on the free list, `IN_USE` or `NEVER_USED` in the kernel's eyes
    /// (the allocator keeps its own state, see [`Self::is_free`]).
    links: &'a mut [u32],
}

/// `links[pfn]` of a frame that is allocated.
const IN_USE: u32 = u32::MAX - 1;

impl<'a> FrameAllocator<'a> {
    /// An allocator over `ranges` (sorted, non-overlapping). `links` needs
    /// one entry per frame number up to the highest range end; its content
    /// is ignored until a frame is freed, so it need not be initialised.
    pub fn new(links: &'a mut [u32], ranges: &[PfnRange]) -> Result<Self, FrameError> {
        if ranges.len() > MAX_RANGES {
            return Err(FrameError::TooManyRanges);
        }
        let mut own = [PfnRange::default(); MAX_RANGES];
        let mut n = 0;
        let mut total = 0;
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            if r.end > links.len() as u64 {
                return Err(FrameError::RangeOutsideLinks);
            }
            own[n] = *r;
            n += 1;
            total += r.len();
        }
        let mut bump = [0; MAX_RANGES];
        for (b, r) in bump.iter_mut().zip(&own) {
            *b = r.start;
        }
        Ok(Self {
            ranges: own,
            nranges: n,
            bump,
            free_head: NIL,
            free_count: 0,
            total,
            links,
        })
    }

    /// One frame, or `None` when memory is exhausted.
    pub fn alloc(&mut self) -> Option<u64> {
        self.alloc_fresh().map(|(pfn, _)| pfn)
    }

    /// One frame, and whether it was never handed out before (so still
    /// holds what the machine started with: zeroes, in fresh VM memory).
    pub fn alloc_fresh(&mut self) -> Option<(u64, bool)> {
        if self.free_head != NIL {
            let pfn = self.free_head;
            self.free_head = self.links[pfn as usize];
            self.links[pfn as usize] = IN_USE;
            self.free_count -= 1;
            return Some((pfn as u64, false));
        }
        let i = (0..self.nranges)
            .rev()
            .find(|&i| self.bump[i] < self.ranges[i].end)?;
        let pfn = self.bump[i];
        self.bump[i] += 1;
        self.links[pfn as usize] = IN_USE;
        Some((pfn, true))
    }

    /// `n` physically contiguous frames, from never-used memory only (for
    /// boot-time structures: the heap, stacks), lowest range first.
    /// Returns the first frame.
    pub fn alloc_contiguous(&mut self, n: u64) -> Option<u64> {
        let i = (0..self.nranges).find(|&i| {
            self.bump[i]
                .checked_add(n)
                .is_some_and(|end| end <= self.ranges[i].end)
        })?;
        let first = self.bump[i];
        self.bump[i] += n;
        // Only the first frame is marked: the others of a contiguous block
        // are never freed one by one.
        self.links[first as usize] = IN_USE;
        Some(first)
    }

    /// Returns a frame that [`Self::alloc`] handed out.
    pub fn free(&mut self, pfn: u64) -> Result<(), FrameError> {
        if !self.is_managed(pfn) || !self.was_handed_out(pfn) {
            return Err(FrameError::NotAllocated);
        }
        if self.links[pfn as usize] != IN_USE {
            return Err(FrameError::NotAllocated);
        }
        self.links[pfn as usize] = self.free_head;
        self.free_head = pfn as u32;
        self.free_count += 1;
        Ok(())
    }

    fn is_managed(&self, pfn: u64) -> bool {
        self.ranges[..self.nranges]
            .iter()
            .any(|r| r.start <= pfn && pfn < r.end)
    }

    /// True if the bump pointer of `pfn`'s range has passed it.
    fn was_handed_out(&self, pfn: u64) -> bool {
        (0..self.nranges).any(|i| {
            let r = self.ranges[i];
            r.start <= pfn && pfn < r.end && pfn < self.bump[i]
        })
    }

    /// Calls `f` with every frame not handed out: the free list, then the
    /// never-used remainder of the ranges. O(free frames): for occasional
    /// passes (free page reporting), not for hot paths.
    pub fn for_each_free(&self, mut f: impl FnMut(u64)) {
        let mut p = self.free_head;
        while p != NIL {
            f(p as u64);
            p = self.links[p as usize];
        }
        for i in 0..self.nranges {
            (self.bump[i]..self.ranges[i].end).for_each(&mut f);
        }
    }

    /// Frames not handed out: the free list plus the untouched remainder.
    pub fn free_frames(&self) -> u64 {
        let untouched: u64 = (0..self.nranges)
            .map(|i| self.ranges[i].end - self.bump[i])
            .sum();
        untouched + self.free_count
    }

    /// Every frame the allocator manages.
    pub fn total_frames(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> [PfnRange; 2] {
        [
            PfnRange { start: 10, end: 13 },
            PfnRange { start: 20, end: 22 },
        ]
    }

    #[test]
    fn single_frames_come_from_the_highest_range_first_then_run_out() {
        let mut links = vec![0xdead_beef; 32];
        let mut a = FrameAllocator::new(&mut links, &ranges()).unwrap();
        assert_eq!(a.total_frames(), 5);
        let got: Vec<u64> = core::iter::from_fn(|| a.alloc()).collect();
        assert_eq!(got, vec![20, 21, 10, 11, 12]);
        assert_eq!(a.free_frames(), 0);
    }

    #[test]
    fn freed_frames_are_reused_last_in_first_out() {
        let mut links = vec![0; 32];
        let mut a = FrameAllocator::new(&mut links, &ranges()).unwrap();
        let x = a.alloc().unwrap();
        let y = a.alloc().unwrap();
        a.free(x).unwrap();
        a.free(y).unwrap();
        assert_eq!(a.free_frames(), 5);
        assert_eq!(a.alloc(), Some(y));
        assert_eq!(a.alloc(), Some(x));
        assert_eq!(a.alloc(), Some(10));
    }

    #[test]
    fn free_frames_are_enumerated_once() {
        let mut links = vec![0; 32];
        let mut a = FrameAllocator::new(&mut links, &ranges()).unwrap();
        let x = a.alloc().unwrap();
        let _y = a.alloc().unwrap();
        a.free(x).unwrap();
        let mut seen = Vec::new();
        a.for_each_free(|p| seen.push(p));
        seen.sort();
        assert_eq!(seen, vec![10, 11, 12, 20]);
        assert_eq!(seen.len() as u64, a.free_frames());
    }

    #[test]
    fn only_never_used_frames_are_fresh() {
        let mut links = vec![0; 32];
        let mut a = FrameAllocator::new(&mut links, &ranges()).unwrap();
        assert_eq!(a.alloc_fresh(), Some((20, true)));
        a.free(20).unwrap();
        assert_eq!(a.alloc_fresh(), Some((20, false)));
        assert_eq!(a.alloc_fresh(), Some((21, true)));
    }

    #[test]
    fn double_free_and_foreign_frames_are_refused() {
        let mut links = vec![0; 32];
        let mut a = FrameAllocator::new(&mut links, &ranges()).unwrap();
        let x = a.alloc().unwrap();
        assert_eq!(a.free(x), Ok(()));
        assert_eq!(a.free(x), Err(FrameError::NotAllocated));
        assert_eq!(a.free(5), Err(FrameError::NotAllocated));
        // Never handed out yet.
        assert_eq!(a.free(21), Err(FrameError::NotAllocated));
        assert_eq!(a.free(11), Err(FrameError::NotAllocated));
    }

    #[test]
    fn contiguous_blocks_skip_ranges_too_small_and_lose_nothing() {
        let mut links = vec![0; 32];
        let mut a = FrameAllocator::new(&mut links, &ranges()).unwrap();
        assert_eq!(a.alloc_contiguous(2), Some(10));
        assert_eq!(a.alloc_contiguous(2), Some(20));
        assert_eq!(a.alloc_contiguous(2), None);
        // The frame left in the first range is still there.
        assert_eq!(a.alloc_contiguous(1), Some(12));
        assert_eq!(a.alloc_contiguous(1), None);
        assert_eq!(a.free_frames(), 0);
    }

    #[test]
    fn ranges_must_fit_the_link_array() {
        let mut links = vec![0; 15];
        assert!(matches!(
            FrameAllocator::new(&mut links, &ranges()),
            Err(FrameError::RangeOutsideLinks)
        ));
    }
}
