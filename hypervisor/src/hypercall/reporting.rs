//! The host side of free page reporting (`vmm run --free-page-reporting`),
//! the baseline the experiments compare hinting against: what QEMU,
//! Firecracker and Cloud Hypervisor do with virtio-balloon's free page
//! reporting queue, re-created on this VMM's hint batches.
//!
//! In this mode the guest (`hints=fpr`) sends no page-state hints; every
//! `SET_UNUSED` entry it sends is a *report* of a whole free block (Linux
//! reports order-9 blocks, 512 frames, at most 32 a pass, every 2 s). The
//! VMM drops the block's contents at once with `madvise(MADV_DONTNEED)`,
//! as those VMMs do when a report arrives, counts the frames under
//! `reclaim.reported_pages`, and forgets them: the frame table keeps them
//! Stable, because the guest reuses reported memory without telling the
//! host (the next touch finds zero pages). Nothing else is ever reclaimed
//! in this mode: free page reporting does not answer host pressure.
//!
//! This module must never drop a frame outside the reported run, never
//! change the frame table, and never take a lock on the hint path.

use crate::frames::discard::discard_run;
use crate::frames::{HostMap, Run};
use crate::memory::GuestRam;
use crate::metrics::Metrics;

/// Why a report could not be honoured.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// The run is empty or reaches past guest RAM.
    #[error("reported frames {pfn:#x}+{count} are outside guest RAM")]
    OutsideRam { pfn: u64, count: u64 },
    /// `madvise` refused (the contents stay; the report is ignored).
    #[error("madvise(MADV_DONTNEED) of reported frames {pfn:#x}+{count} failed: {errno}")]
    Madvise { pfn: u64, count: u64, errno: i32 },
}

/// Drops reported runs of one guest RAM mapping.
#[derive(Debug, Clone)]
pub struct FreePageReporter {
    map: Option<HostMap>,
}

impl FreePageReporter {
    /// A reporter for `ram`.
    pub fn new(ram: &GuestRam) -> Self {
        Self {
            map: HostMap::new(ram),
        }
    }

    /// Drops `count` frames from `pfn` at once and counts them.
    pub fn report(&self, pfn: u64, count: u64, metrics: &Metrics) -> Result<(), ReportError> {
        let run = Run { pfn, count };
        let outside = ReportError::OutsideRam { pfn, count };
        let map = self.map.as_ref().ok_or(outside)?;
        if map.range(run).is_none() {
            return Err(outside);
        }
        let r = &metrics.reclaim;
        r.madvise_calls.inc();
        if let Err(e) = discard_run(map, run) {
            // Nothing dropped, nothing counted as reported: the frames
            // keep their contents (the guest reuses them as it would).
            let f = &metrics.host_failures;
            f.madvise.inc();
            f.madvise_kept_pages.add(count);
            return Err(ReportError::Madvise {
                pfn,
                count,
                errno: e.raw_os_error().unwrap_or(0),
            });
        }
        r.reports.inc();
        r.reported_pages.add(count);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reclaim::resident::{Pagemap, ResidentMap};
    use pagehint_abi::PAGE_SIZE as PAGE;
    use vm_memory::{Bytes, GuestAddress};

    fn resident(ram: &GuestRam) -> Option<u64> {
        let mut pm = Pagemap::open().ok()?;
        let mut map = ResidentMap::default();
        pm.measure(ram.host_base(), ram.frames(), &mut map).ok()
    }

    #[test]
    fn a_report_drops_exactly_the_run_and_counts_it() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let frames = ram.frames();
        for p in 0..frames {
            ram.mem().write_obj(0xabu8, GuestAddress(p * PAGE)).unwrap();
        }
        let metrics = Metrics::default();
        let r = FreePageReporter::new(&ram);
        r.report(512, 512, &metrics).unwrap();
        let byte = |p: u64| ram.mem().read_obj::<u8>(GuestAddress(p * PAGE)).unwrap();
        assert_eq!(byte(511), 0xab, "the frame before the run is kept");
        assert_eq!(byte(512), 0, "reported frames read as zeroes");
        assert_eq!(byte(1023), 0);
        assert_eq!(byte(1024), 0xab, "the frame after the run is kept");
        assert_eq!(metrics.reclaim.reported_pages.get(), 512);
        assert_eq!(metrics.reclaim.reports.get(), 1);
        if let Some(pages) = resident(&ram) {
            // Reading frames 512 and 1023 back mapped the shared zero page,
            // which pagemap does not count as ours.
            assert!(pages <= frames - 510, "{pages} of {frames} resident");
        }
    }

    #[test]
    fn runs_outside_ram_are_refused_and_change_nothing() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let frames = ram.frames();
        let metrics = Metrics::default();
        let r = FreePageReporter::new(&ram);
        for (pfn, count) in [(frames, 1), (frames - 1, 2), (0, 0), (u64::MAX, 2)] {
            assert_eq!(
                r.report(pfn, count, &metrics),
                Err(ReportError::OutsideRam { pfn, count })
            );
        }
        assert_eq!(metrics.reclaim.reported_pages.get(), 0);
        assert!(r.report(frames - 1, 1, &metrics).is_ok());
    }
}
