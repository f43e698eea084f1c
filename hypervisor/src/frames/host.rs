//! Where a guest frame lives on the host: the one calculation from a run
//! of guest frames to a range of the VMM's own address space.
//!
//! Guest RAM is one host mapping from guest-physical 0 to the top of RAM
//! (`crate::memory`), so frame `pfn` is at `host_base + pfn * PAGE_SIZE`;
//! what this module adds is the checking: a run maps only if it is
//! non-empty and lies wholly inside one RAM range (never the MMIO hole of a
//! large guest, never past the end). Every host-side user of a frame's
//! address (the discarder, free page reporting, the userfaultfd) goes
//! through [`HostMap`]. This module must never touch the memory it maps.

use pagehint_abi::{GuestPhys, PAGE_SIZE};

use crate::frames::run::Run;
use crate::memory::GuestRam;

/// A checked host range: `len` bytes from host virtual address `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRange {
    pub addr: u64,
    pub len: u64,
}

/// Maps runs of frames of one guest RAM to host ranges.
#[derive(Clone)]
pub struct HostMap {
    /// Keeps the mapping alive while anyone holds an address into it.
    ram: GuestRam,
    base: u64,
}

impl std::fmt::Debug for HostMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMap")
            .field("base", &format_args!("{:#x}", self.base))
            .field("frames", &self.ram.frames())
            .finish()
    }
}

impl HostMap {
    /// The map of `ram`; `None` if it has no host mapping (cannot happen
    /// with `GuestRam::new`).
    pub fn new(ram: &GuestRam) -> Option<Self> {
        let base = ram.host_base();
        (base != 0).then(|| Self {
            ram: ram.clone(),
            base,
        })
    }

    /// The host range of `run`, if the run is non-empty and inside one RAM
    /// range.
    pub fn range(&self, run: Run) -> Option<HostRange> {
        let gpa = run.pfn.checked_mul(PAGE_SIZE)?;
        let len = run.count.checked_mul(PAGE_SIZE)?;
        if run.count == 0 || !self.ram.contains(GuestPhys(gpa), len) {
            return None;
        }
        Some(HostRange {
            addr: self.base.checked_add(gpa)?,
            len,
        })
    }

    /// Every RAM range as a run of frames, in address order.
    pub fn runs(&self) -> Vec<Run> {
        self.ram
            .ranges()
            .into_iter()
            .map(|(start, len)| Run {
                pfn: start / PAGE_SIZE,
                count: len / PAGE_SIZE,
            })
            .collect()
    }

    /// The guest frame holding host address `addr`, if it is guest RAM.
    pub fn pfn_of(&self, addr: u64) -> Option<u64> {
        let pfn = addr.checked_sub(self.base)? / PAGE_SIZE;
        self.ram.is_ram_frame(pfn).then_some(pfn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_map_inside_ram_only() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let map = HostMap::new(&ram).unwrap();
        let frames = ram.frames();
        let r = map.range(Run { pfn: 2, count: 3 }).unwrap();
        assert_eq!(
            (r.addr, r.len),
            (ram.host_base() + 2 * PAGE_SIZE, 3 * PAGE_SIZE)
        );
        assert_eq!(map.pfn_of(r.addr + 5), Some(2));
        assert_eq!(map.pfn_of(ram.host_base() - 1), None);
        assert_eq!(map.pfn_of(ram.host_base() + frames * PAGE_SIZE), None);
        for bad in Run::outside(frames) {
            assert_eq!(map.range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_mmio_hole_of_a_large_guest_never_maps() {
        let ram = GuestRam::new(4 << 30).unwrap();
        let map = HostMap::new(&ram).unwrap();
        let hole = ram.hole_frames();
        assert_eq!(
            map.range(Run {
                pfn: hole.start,
                count: 1
            }),
            None
        );
        assert_eq!(
            map.range(Run {
                pfn: hole.start - 1,
                count: 2
            }),
            None
        );
        assert!(map
            .range(Run {
                pfn: hole.end,
                count: 1
            })
            .is_some());
        assert_eq!(map.pfn_of(ram.host_base() + hole.start * PAGE_SIZE), None);
    }
}
