//! `hcnoise=N`'s plan of memory, kept apart from the kernel's sending code
//! (`mm::noise`) so that it is tested on the host: which frames a garbage
//! hint may name, and which batch page each CPU fills.
//!
//! The noise owns one contiguous block: [`FRAMES`] set-aside frames, the
//! only RAM its hints name, then one batch page per CPU. A CPU fills only
//! its own batch page, so the VMM always reads an entry exactly as one CPU
//! wrote it. (With one page for every CPU, the VMM read entries while
//! another CPU was rewriting them: the frame number of one entry with the
//! count of another, say a set-aside frame with a count of several hundred
//! meant for a frame past RAM, is a hint on frames in use, and a
//! `SET_UNUSED` of those had the host drop a page table under a running
//! CPU, which then triple-faulted.)

/// Frames set aside: the only RAM a hint of the noise names.
pub const FRAMES: u64 = 64;
/// No guest has RAM here (the VMM's limit is 64 GiB, 2^24 frames).
pub const PAST_RAM: u64 = 1 << 40;
/// Largest count of a hint on frames past RAM.
const PAST_RAM_MAX_COUNT: u32 = 1024;

/// Where the noise's block lies and how many CPUs it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoiseBlock {
    /// First set-aside frame (the block's first frame).
    pub first: u64,
    /// CPUs with a batch page of their own.
    pub cpus: u64,
}

impl NoiseBlock {
    /// Frames the block takes for `cpus` CPUs.
    pub const fn frames(cpus: u64) -> u64 {
        FRAMES + cpus
    }

    /// CPU `cpu`'s own batch page (a frame number), right after the
    /// set-aside frames; `None` for a CPU the block has no page for.
    pub fn batch_page(&self, cpu: u64) -> Option<u64> {
        (cpu < self.cpus).then(|| self.first + FRAMES + cpu)
    }

    /// A range of frames a hint may name, drawn from the random value `r`:
    /// set-aside frames with a count that stays inside the set-aside
    /// frames (zero now and then), or frames past RAM (any count).
    pub fn target(&self, r: u64) -> (u64, u32) {
        if r & 1 == 0 {
            let i = (r >> 8) % FRAMES;
            let room = FRAMES - i;
            let count = ((r >> 40) % room) as u32 + u32::from(r >> 60 == 0);
            (self.first + i, count)
        } else {
            (PAST_RAM + (r >> 24), (r >> 48) as u32 % PAST_RAM_MAX_COUNT)
        }
    }

    /// Whether a hint on `count` frames from `pfn` names only frames the
    /// noise may name: set-aside ones, or ones past RAM.
    pub fn may_name(&self, pfn: u64, count: u64) -> bool {
        if pfn >= PAST_RAM {
            return true;
        }
        pfn >= self.first
            && pfn
                .checked_add(count)
                .is_some_and(|end| end <= self.first + FRAMES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: NoiseBlock = NoiseBlock {
        first: 0x3fa,
        cpus: 4,
    };

    /// The xorshift64 the kernel draws from (`mm::scribble::xorshift`).
    fn randoms(n: usize) -> impl Iterator<Item = u64> {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        (0..n).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
    }

    #[test]
    fn every_target_names_only_set_aside_frames_or_frames_past_ram() {
        let mut set_aside = 0;
        for r in randoms(100_000) {
            let (pfn, count) = BLOCK.target(r);
            assert!(BLOCK.may_name(pfn, u64::from(count)), "{pfn:#x}+{count}");
            set_aside += u32::from(pfn < PAST_RAM);
        }
        assert!(set_aside > 40_000, "both kinds are drawn");
        // The largest range: the whole set-aside block, not one more.
        assert!(BLOCK.may_name(BLOCK.first, FRAMES));
        assert!(!BLOCK.may_name(BLOCK.first, FRAMES + 1));
        assert!(!BLOCK.may_name(BLOCK.first - 1, 1));
        assert!(!BLOCK.may_name(BLOCK.first + FRAMES, 1), "the batch pages");
        assert!(!BLOCK.may_name(BLOCK.first + 1, u64::MAX), "no overflow");
    }

    #[test]
    fn every_cpu_fills_a_batch_page_of_its_own_outside_the_set_aside_frames() {
        let pages: Vec<u64> = (0..BLOCK.cpus)
            .map(|cpu| BLOCK.batch_page(cpu).unwrap())
            .collect();
        for (i, &p) in pages.iter().enumerate() {
            assert!(!pages[..i].contains(&p), "cpu {i} shares page {p:#x}");
            assert!(!BLOCK.may_name(p, 1), "a hint may name page {p:#x}");
            assert!(p < BLOCK.first + NoiseBlock::frames(BLOCK.cpus), "{p:#x}");
        }
        assert_eq!(BLOCK.batch_page(BLOCK.cpus), None);
    }

    /// Why a batch page is never shared: two entries the noise wrote, each
    /// harmless, read as one (the frame number of one, the count of the
    /// other, as the VMM could while another CPU rewrote the entry) name
    /// frames right after the set-aside ones, which are in use.
    #[test]
    fn two_entries_mixed_name_frames_in_use() {
        let targets: Vec<(u64, u32)> = randoms(10_000).map(|r| BLOCK.target(r)).collect();
        let (pfn, _) = *targets
            .iter()
            .find(|&&(p, _)| (BLOCK.first + FRAMES / 2..PAST_RAM).contains(&p))
            .unwrap();
        let (_, count) = *targets
            .iter()
            .find(|&&(p, c)| p >= PAST_RAM && c >= FRAMES as u32)
            .unwrap();
        assert!(!BLOCK.may_name(pfn, u64::from(count)), "{pfn:#x}+{count}");
    }
}
