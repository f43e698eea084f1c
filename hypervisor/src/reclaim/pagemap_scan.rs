//! Residency through the `PAGEMAP_SCAN` ioctl of `/proc/self/pagemap`
//! (Linux 6.7+): the kernel walks the page tables of a range and returns
//! only the runs of pages that match, as `struct page_region`s, instead of
//! 8 bytes for every page as `pread` does. A sparse 16 GiB guest is then a
//! few thousand regions rather than 32 MiB of entries.
//!
//! The ABI is written out by hand over `libc` (no generated bindings), from
//! the kernel's `include/uapi/linux/fs.h`:
//!
//! ```text
//! #define PAGEMAP_SCAN  _IOWR('f', 16, struct pm_scan_arg)
//! #define PAGE_IS_PRESENT (1 << 3)
//! #define PAGE_IS_SWAPPED (1 << 4)
//! struct page_region { __u64 start; __u64 end; __u64 categories; };
//! struct pm_scan_arg { __u64 size, flags, start, end, walk_end, vec,
//!     vec_len, max_pages, category_inverted, category_mask,
//!     category_anyof_mask, return_mask; };
//! ```
//!
//! and its behaviour from `fs/proc/task_mmu.c` (`do_pagemap_scan`): the
//! return value is the number of regions written; when `vec` fills, the
//! walk stops and `walk_end` says where, so the caller calls again from
//! there (but `walk_end` is stale after a walk the kernel restarted
//! inside one call; [`Scanner::refresh`] says how that is handled). A
//! kernel without the ioctl answers `ENOTTY` (no `unlocked_ioctl` on
//! pagemap), and one that does not know a field or flag `EINVAL`.
//!
//! [`Scanner`] asks for pages that are present and not swapped (the same
//! test as `resident::is_resident` on a pagemap entry) with a bounded
//! region buffer, looping on `walk_end`, and marks them in a
//! `ResidentMap`. `resident::Pagemap` decides once, when it opens, whether
//! this path or `pread` is used.
//!
//! This module must never change memory or page tables: it never passes
//! `PM_SCAN_WP_MATCHING` (the flag that write-protects what it finds), only
//! reads. It must never trust an answer it cannot check (a region outside
//! the range asked for, out of order or not page-aligned, or a walk said
//! to end past the range is an error, not a reading), and never panic on
//! anything the kernel returns. Every layout
//! and number here is checked by the tests at the end.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::resident::ResidentMap;

/// Category: the page is present in RAM (`PAGE_IS_PRESENT`).
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// Category: the page is swapped out (`PAGE_IS_SWAPPED`).
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `struct page_region`: pages `start..end` (addresses, end exclusive)
/// share `categories` (masked by the `return_mask` asked for).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg`, the ioctl's argument.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PmScanArg {
    /// `size_of::<PmScanArg>()`: the kernel refuses any other (`EINVAL`).
    pub size: u64,
    /// `PM_SCAN_*` flags; always 0 here (no write-protection).
    pub flags: u64,
    /// First address of the range (page-aligned).
    pub start: u64,
    /// End of the range (exclusive).
    pub end: u64,
    /// Out: where the walk stopped (`end` when it walked all of it).
    pub walk_end: u64,
    /// Address of the `PageRegion` array the kernel fills.
    pub vec: u64,
    /// Regions the array holds.
    pub vec_len: u64,
    /// Stop after this many matching pages (0: no limit).
    pub max_pages: u64,
    /// Categories that match when clear instead of set.
    pub category_inverted: u64,
    /// A page is reported only if it has every one of these (after
    /// `category_inverted`).
    pub category_mask: u64,
    /// ... and at least one of these, when not 0.
    pub category_anyof_mask: u64,
    /// Categories copied into each region's `categories`.
    pub return_mask: u64,
}

/// `_IOWR` direction (read and write), and the field positions of an ioctl
/// number on x86-64 (the generic Linux encoding: nr 8 bits, type 8, size
/// 14, direction 2).
const IOC_READ_WRITE: u32 = 3;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = 30;

/// `_IOWR(ty, nr, size)`.
const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < (1 << 14), "ioctl argument too large");
    (IOC_READ_WRITE << IOC_DIRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | nr as u32
}

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u32 = iowr(b'f', 16, size_of::<PmScanArg>());

/// Host page size (guest RAM uses 4 KiB pages).
const PAGE: u64 = 4096;

/// Regions asked for per ioctl by default (24 bytes each: 96 KiB). One page
/// in 64 touched over 16 GiB is 65,536 regions, so 16 calls.
pub const DEFAULT_REGIONS: usize = 4096;

/// The errors a kernel without a usable `PAGEMAP_SCAN` answers: `ENOTTY`
/// (before 6.7 pagemap has no ioctl at all), `EINVAL` (an ioctl number,
/// argument size or field it does not know), `EOPNOTSUPP`.
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP)
    )
}

/// One `PAGEMAP_SCAN` call: the pages of `start..end` that are present and
/// not swapped, as regions written to the front of `vec`. Returns how many
/// regions were written and where the walk stopped.
pub fn scan_resident(
    fd: BorrowedFd<'_>,
    start: u64,
    end: u64,
    vec: &mut [PageRegion],
) -> io::Result<(usize, u64)> {
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: vec.as_mut_ptr() as u64,
        vec_len: vec.len() as u64,
        category_inverted: PAGE_IS_SWAPPED,
        category_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        return_mask: PAGE_IS_PRESENT,
        ..PmScanArg::default()
    };
    // SAFETY: PAGEMAP_SCAN's argument is a `struct pm_scan_arg`, which
    // `arg` is (layout checked by the tests), live and exclusive for the
    // call; the kernel writes back only its `walk_end`. `arg.vec` points to
    // `vec`, borrowed exclusively for the call, and `arg.vec_len` is its
    // length, so the kernel writes at most that many `PageRegion`s inside
    // it. With `flags` 0 the kernel only reads the page tables of
    // `start..end`. `fd` is open while borrowed.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            PAGEMAP_SCAN as libc::Ioctl,
            &mut arg as *mut PmScanArg,
        )
    };
    let n = usize::try_from(r).map_err(|_| io::Error::last_os_error())?;
    if n > vec.len() {
        return Err(io::Error::other(format!(
            "PAGEMAP_SCAN returned {n} regions into {}",
            vec.len()
        )));
    }
    Ok((n, arg.walk_end))
}

/// Whether `fd` (an open pagemap) answers `PAGEMAP_SCAN`: one call over
/// one page of our own heap. `Err` is the kernel's answer.
pub fn probe(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut vec = [PageRegion::default(); 1];
    let start = vec.as_ptr() as u64 & !(PAGE - 1);
    scan_resident(fd, start, start + PAGE, &mut vec).map(|_| ())
}

/// The region buffer of the scan path, reused from call to call.
#[derive(Debug)]
pub struct Scanner {
    vec: Vec<PageRegion>,
    /// Ioctls made (for tests and the bench: more than one a reading means
    /// the buffer filled).
    calls: u64,
}

impl Scanner {
    /// A scanner asking for at most `regions` (at least 1) per call.
    pub fn new(regions: usize) -> Self {
        Self {
            vec: vec![PageRegion::default(); regions.max(1)],
            calls: 0,
        }
    }

    /// Ioctls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Measures again pages `from..from + count` of `map`, whose page 0 is
    /// at host-virtual address `base` (page-aligned; the caller checked the
    /// range against the map). Their bits are cleared, then set for every
    /// page the kernel reports resident. `before_call` runs before each
    /// ioctl (the fault-injection hook) and fails it as the kernel would.
    pub fn refresh(
        &mut self,
        fd: BorrowedFd<'_>,
        base: u64,
        from: u64,
        count: u64,
        map: &mut ResidentMap,
        mut before_call: impl FnMut() -> io::Result<()>,
    ) -> Result<(), ScanError> {
        let addr = |page: u64| page.checked_mul(PAGE).and_then(|o| base.checked_add(o));
        let (Some(start), Some(end)) = (addr(from), from.checked_add(count).and_then(addr)) else {
            return Err(ScanError::Range { base, from, count });
        };
        map.assign_range(from, count, false);
        let mut at = start;
        while at < end {
            self.calls += 1;
            let (n, walk_end) = before_call()
                .and_then(|()| scan_resident(fd, at, end, &mut self.vec))
                .map_err(|source| ScanError::Call { addr: at, source })?;
            let mut last = at;
            for r in &self.vec[..n] {
                let ok = r.start >= last
                    && r.start < r.end
                    && r.end <= end
                    && (r.start - base).is_multiple_of(PAGE)
                    && (r.end - base).is_multiple_of(PAGE);
                if !ok {
                    return Err(ScanError::answer(
                        at,
                        format!("region {:#x}..{:#x} outside the walk", r.start, r.end),
                    ));
                }
                map.assign_range((r.start - base) / PAGE, (r.end - r.start) / PAGE, true);
                last = r.end;
            }
            // Fewer regions than the buffer holds: the walk reached `end`
            // (the kernel stops early only when the buffer is full, or at
            // `max_pages`, never asked for). `walk_end` cannot be trusted
            // then: `do_pagemap_scan` restarts its walk each time its own
            // 512-region bounce buffer fills, records `walk_end` at each
            // such stop and replaces it with `end` only while it is still
            // 0, so a call that stopped inside and then finished reports
            // the inner stop (seen on 6.18). A full buffer goes on from
            // the later of `walk_end` and the last region's end: every
            // resident page before either was reported (the walk is in
            // address order, and a page next to the last region would have
            // widened it rather than failed).
            if n < self.vec.len() {
                break;
            }
            if walk_end > end {
                return Err(ScanError::answer(
                    at,
                    format!("walk ended at {walk_end:#x}, past {end:#x}"),
                ));
            }
            // `last > at`: the buffer is full, so `n >= 1`, and regions
            // are not empty.
            at = walk_end.max(last);
        }
        Ok(())
    }
}

/// Why a scan gave no reading.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The pages asked for do not fit the address space (the caller
    /// checks its ranges first, so this is never the kernel's doing).
    #[error("pages {from}+{count} from {base:#x} overflow the address space")]
    Range { base: u64, from: u64, count: u64 },
    /// The ioctl failed.
    #[error("PAGEMAP_SCAN from {addr:#x} failed: {source}")]
    Call {
        addr: u64,
        #[source]
        source: io::Error,
    },
    /// It answered something this module cannot check.
    #[error("PAGEMAP_SCAN from {addr:#x} answered badly: {what}")]
    Answer { addr: u64, what: String },
}

impl ScanError {
    fn answer(addr: u64, what: impl Into<String>) -> Self {
        Self::Answer {
            addr,
            what: what.into(),
        }
    }

    /// True if the kernel said it has no usable `PAGEMAP_SCAN` (the caller
    /// falls back to `pread`).
    pub fn unsupported(&self) -> bool {
        matches!(self, Self::Call { source, .. } if is_unsupported(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use std::os::fd::AsFd;

    #[test]
    fn ioctl_number_and_layouts_match_the_kernel() {
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        // The encoding on another `_IOWR('f', ...)` of fs.h:
        // FS_IOC_FIEMAP is `_IOWR('f', 11, struct fiemap)`, 32 bytes.
        assert_eq!(iowr(b'f', 11, 32), 0xc020_660b);
        assert_eq!(size_of::<PageRegion>(), 24);
        assert_eq!(offset_of!(PageRegion, start), 0);
        assert_eq!(offset_of!(PageRegion, end), 8);
        assert_eq!(offset_of!(PageRegion, categories), 16);
        assert_eq!(size_of::<PmScanArg>(), 96);
        let fields = [
            offset_of!(PmScanArg, size),
            offset_of!(PmScanArg, flags),
            offset_of!(PmScanArg, start),
            offset_of!(PmScanArg, end),
            offset_of!(PmScanArg, walk_end),
            offset_of!(PmScanArg, vec),
            offset_of!(PmScanArg, vec_len),
            offset_of!(PmScanArg, max_pages),
            offset_of!(PmScanArg, category_inverted),
            offset_of!(PmScanArg, category_mask),
            offset_of!(PmScanArg, category_anyof_mask),
            offset_of!(PmScanArg, return_mask),
        ];
        assert_eq!(fields, core::array::from_fn(|i| i * 8));
    }

    #[test]
    fn a_file_without_the_ioctl_reads_as_unsupported_and_bad_ranges_make_no_call() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let e = probe(null.as_fd()).unwrap_err();
        assert!(is_unsupported(&e), "{e}");
        let e = ScanError::Call {
            addr: 0,
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        assert!(!e.unsupported());
        // A range past the end of the address space is refused before any
        // call.
        let mut map = ResidentMap::new(4);
        let mut scanner = Scanner::new(1);
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let r = scanner.refresh(pagemap.as_fd(), u64::MAX - 4095, 0, 4, &mut map, || Ok(()));
        assert!(matches!(r, Err(ScanError::Range { .. })));
        assert_eq!(scanner.calls(), 0);
    }
}
