//! Measures which pages of a host-virtual range are resident, from
//! `/proc/self/pagemap` (seed 003): a page is resident if present and not
//! swapped.
//!
//! Two ways to read it, chosen once when [`Pagemap`] opens: the
//! `PAGEMAP_SCAN` ioctl (Linux 6.7+, `super::pagemap_scan`), which returns
//! only the runs of resident pages, and, where the kernel lacks it, `pread`
//! of 8 bytes per page (bit 63 "present", bit 62 "swapped") in large
//! chunks (64 KiB, 8192 pages at a time). Either fills a [`ResidentMap`],
//! one bit per page, which the reclaimer then uses to discard only pages
//! that are actually resident.
//!
//! Reading all of pagemap with `pread` costs about 20 ms for a 16 GiB
//! guest that touched one page in 64, more as it touches more; the scan
//! a third to a half of that, still too much for every round of a 50 ms
//! reclaim interval. [`Residency`] therefore reads all of it again only
//! when something may have changed: the process's anonymous resident pages
//! (`/proc/self/statm`, a counter the kernel keeps, read in microseconds)
//! moved since the last reading, or the reclaimer discarded since. Rounds
//! that find nothing changed re-read one twentieth of the range each, so
//! the reading is whole again within 20 rounds even if pages came and went
//! in equal numbers. This module only reads: it must never change memory
//! or estimate what it can measure.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use super::pagemap_scan::{self, ScanError, Scanner};

/// Bit 63 of a pagemap entry: the page is present in RAM.
pub const PM_PRESENT: u64 = 1 << 63;
/// Bit 62: the page is swapped out.
pub const PM_SWAPPED: u64 = 1 << 62;
/// Bytes per pagemap entry.
const ENTRY: usize = 8;
/// Bytes read per `pread`.
const CHUNK_BYTES: usize = 64 << 10;
/// Host page size this module assumes (guest RAM uses 4 KiB pages).
const PAGE: u64 = 4096;

/// Why residency could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum ResidentError {
    #[error("cannot open /proc/self/pagemap: {0}")]
    Open(#[source] std::io::Error),
    #[error("cannot read /proc/self/pagemap at {offset:#x}: {source}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/self/pagemap ended early at {0:#x}")]
    Short(u64),
    #[error("range {base:#x}+{pages} pages is not page-aligned or overflows")]
    BadRange { base: u64, pages: u64 },
    #[error("{0}")]
    Scan(#[source] ScanError),
}

/// One bit per page of a range: set if the page was resident when measured
/// (the eager policy keeps its per-frame marks in the same kind of map).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResidentMap {
    words: Vec<u64>,
    pages: u64,
    resident: u64,
}

impl ResidentMap {
    /// An empty map of `pages` pages, none resident.
    pub fn new(pages: u64) -> Self {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        Self {
            words: vec![0; words],
            pages,
            resident: 0,
        }
    }

    /// A map with every page resident (for callers that do not measure).
    pub fn all(pages: u64) -> Self {
        let mut m = Self::new(pages);
        for p in 0..pages {
            m.set(p);
        }
        m
    }

    /// Records whether page `i` is resident.
    pub fn assign(&mut self, i: u64, resident: bool) {
        if resident {
            self.set(i);
        } else if let Some(w) = usize::try_from(i / 64)
            .ok()
            .and_then(|k| self.words.get_mut(k))
        {
            let bit = 1u64 << (i % 64);
            if *w & bit != 0 {
                *w &= !bit;
                self.resident -= 1;
            }
        }
    }

    /// Records pages `from..from + count` (clipped to the map) as
    /// resident or not, a word at a time.
    pub fn assign_range(&mut self, from: u64, count: u64, resident: bool) {
        let end = from.saturating_add(count).min(self.pages);
        let mut i = from;
        while i < end {
            let lo = i % 64;
            let n = (end - i).min(64 - lo);
            let mask = (u64::MAX >> (64 - n)) << lo;
            let Some(w) = usize::try_from(i / 64)
                .ok()
                .and_then(|k| self.words.get_mut(k))
            else {
                return;
            };
            let before = u64::from(w.count_ones());
            if resident {
                *w |= mask;
            } else {
                *w &= !mask;
            }
            // `resident` counts the set bits, so it never goes below what
            // a word held.
            self.resident = self.resident - before + u64::from(w.count_ones());
            i += n;
        }
    }

    /// Marks page `i` resident.
    pub fn set(&mut self, i: u64) {
        if let Some(w) = usize::try_from(i / 64)
            .ok()
            .and_then(|k| self.words.get_mut(k))
        {
            let bit = 1u64 << (i % 64);
            if *w & bit == 0 {
                *w |= bit;
                self.resident += 1;
            }
        }
    }

    /// True if page `i` was resident.
    pub fn get(&self, i: u64) -> bool {
        usize::try_from(i / 64)
            .ok()
            .and_then(|k| self.words.get(k))
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// Pages covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Pages resident.
    pub fn resident(&self) -> u64 {
        self.resident
    }

    /// The map, 64 pages a word (bit `i` of word `k`: page `64 * k + i`).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The first resident page at or after `from`, skipping 64 absent
    /// pages per word (a sparse map is scanned at memory speed).
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut k = usize::try_from(from / 64).ok()?;
        let mut w = *self.words.get(k)? & (!0u64 << (from % 64));
        loop {
            if w != 0 {
                let i = k as u64 * 64 + u64::from(w.trailing_zeros());
                return (i < self.pages).then_some(i);
            }
            k += 1;
            w = *self.words.get(k)?;
        }
    }

    /// The resident pages below `limit`, in order (the rest skipped 64 at
    /// a time).
    pub fn resident_below(&self, limit: u64) -> impl Iterator<Item = u64> + '_ {
        let mut next = self.next_set(0);
        std::iter::from_fn(move || {
            let pfn = next.filter(|&p| p < limit)?;
            next = pfn.checked_add(1).and_then(|p| self.next_set(p));
            Some(pfn)
        })
    }

    /// Marks every page not resident.
    pub fn clear(&mut self) {
        self.words.fill(0);
        self.resident = 0;
    }
}

/// Quiet rounds over which [`Residency`] re-reads the whole range, a slice
/// per round (an equal number of pages in and out of one interval would
/// otherwise go unseen).
pub const FULL_MEASURE_EVERY: u32 = 20;

/// This process's anonymous resident pages (`statm` resident minus
/// shared: the kernel's MM_ANONPAGES counter), guest RAM included.
#[derive(Debug)]
pub struct AnonRss {
    file: File,
}

impl AnonRss {
    /// Opens `/proc/self/statm`.
    pub fn open() -> std::io::Result<Self> {
        File::open("/proc/self/statm").map(|file| Self { file })
    }

    /// Reads the counter now.
    pub fn pages(&self) -> std::io::Result<u64> {
        let mut buf = [0u8; 128];
        let n = self.file.read_at(&mut buf, 0)?;
        parse_statm_anon(&buf[..n])
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "unparsable statm"))
    }
}

/// Anonymous resident pages from the text of `/proc/PID/statm`
/// ("size resident shared text lib data dirty", in pages).
pub fn parse_statm_anon(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split_ascii_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    resident.checked_sub(shared)
}

/// One reading of [`Residency::measure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// Resident pages of the range.
    pub pages: u64,
    /// All of pagemap was read this time (else the last reading held and
    /// one slice of it was read again).
    pub read_pagemap: bool,
}

/// Residency of one range, kept current at the cost of a pagemap read only
/// when it may have changed.
#[derive(Debug)]
pub struct Residency {
    pagemap: Pagemap,
    anon: Option<AnonRss>,
    map: ResidentMap,
    /// Anonymous pages when pagemap was last read, if that reading holds.
    anon_at_read: Option<u64>,
    /// Next page of the rolling re-read.
    cursor: u64,
}

impl Residency {
    /// Opens pagemap (required) and statm (without it, every measurement
    /// reads pagemap).
    pub fn open() -> Result<Self, ResidentError> {
        let anon = match AnonRss::open() {
            Ok(a) => Some(a),
            Err(e) => {
                log::warn!(
                    "reclaim: cannot open /proc/self/statm ({e}); pagemap is read every round"
                );
                None
            }
        };
        Ok(Self {
            pagemap: Pagemap::open()?,
            anon,
            map: ResidentMap::default(),
            anon_at_read: None,
            cursor: 0,
        })
    }

    /// Resident pages of `pages` pages from `base`: from the last reading,
    /// with one slice read again, when nothing can have changed since;
    /// else from all of pagemap.
    pub fn measure(&mut self, base: u64, pages: u64) -> Result<Measured, ResidentError> {
        let anon = self.anon.as_ref().and_then(|a| a.pages().ok());
        let unchanged = anon.is_some() && anon == self.anon_at_read && self.map.pages() == pages;
        if unchanged {
            let slice = pages.div_ceil(u64::from(FULL_MEASURE_EVERY)).max(1);
            let from = if self.cursor >= pages { 0 } else { self.cursor };
            let count = slice.min(pages - from);
            let n = self.pagemap.refresh(base, from, count, &mut self.map)?;
            self.cursor = from + count;
            return Ok(Measured {
                pages: n,
                read_pagemap: false,
            });
        }
        // The counter is read before pagemap: a page that arrives during
        // the read changes it, so the next round reads again.
        self.anon_at_read = None;
        let n = self.pagemap.measure(base, pages, &mut self.map)?;
        self.anon_at_read = anon;
        self.cursor = 0;
        Ok(Measured {
            pages: n,
            read_pagemap: true,
        })
    }

    /// The last reading, page by page.
    pub fn map(&self) -> &ResidentMap {
        &self.map
    }

    /// Forgets the last reading (the caller dropped pages): the next
    /// measurement reads pagemap.
    pub fn invalidate(&mut self) {
        self.anon_at_read = None;
    }
}

/// How a [`Pagemap`] reads residency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// The `PAGEMAP_SCAN` ioctl (Linux 6.7+): only the runs of resident
    /// pages come back (`pagemap_scan`).
    Scan,
    /// `pread` of 8 bytes per page, 64 KiB at a time.
    Pread,
}

impl Reader {
    /// The name in logs and the bench.
    pub fn name(self) -> &'static str {
        match self {
            Reader::Scan => "PAGEMAP_SCAN",
            Reader::Pread => "pread",
        }
    }
}

/// An open `/proc/self/pagemap` and how it is read: `PAGEMAP_SCAN` where
/// the kernel has it, else `pread`, decided when it opens.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    /// The scan path's region buffer; `None` reads with `pread`.
    scan: Option<Scanner>,
    /// The `pread` buffer (allocated on first use).
    buf: Vec<u8>,
}

impl Pagemap {
    /// Opens this process's pagemap and probes `PAGEMAP_SCAN` once: used
    /// where it answers, else `pread` (logged once, at info).
    pub fn open() -> Result<Self, ResidentError> {
        let mut pm = Self::open_pread()?;
        match pagemap_scan::probe(pm.file.as_fd()) {
            Ok(()) => {
                log::info!("reclaim: residency read with PAGEMAP_SCAN");
                pm.scan = Some(Scanner::new(pagemap_scan::DEFAULT_REGIONS));
            }
            Err(e) if pagemap_scan::is_unsupported(&e) => {
                log::info!("reclaim: no PAGEMAP_SCAN here ({e}); residency read with pread");
            }
            Err(e) => {
                log::warn!("reclaim: PAGEMAP_SCAN failed ({e}); residency read with pread");
            }
        }
        Ok(pm)
    }

    /// Opens pagemap to be read with `pread` only.
    pub fn open_pread() -> Result<Self, ResidentError> {
        let file = File::open("/proc/self/pagemap").map_err(ResidentError::Open)?;
        Ok(Self {
            file,
            scan: None,
            buf: Vec::new(),
        })
    }

    /// Opens pagemap to be read with `PAGEMAP_SCAN` only, asking for at
    /// most `regions` regions a call (the bench and tests); fails where the
    /// kernel does not answer it.
    pub fn open_scan(regions: usize) -> Result<Self, ResidentError> {
        let mut pm = Self::open_pread()?;
        pagemap_scan::probe(pm.file.as_fd())
            .map_err(|source| ResidentError::Scan(ScanError::Call { addr: 0, source }))?;
        pm.scan = Some(Scanner::new(regions));
        Ok(pm)
    }

    /// How this pagemap is read now.
    pub fn reader(&self) -> Reader {
        if self.scan.is_some() {
            Reader::Scan
        } else {
            Reader::Pread
        }
    }

    /// `PAGEMAP_SCAN` calls made so far (0 when reading with `pread`).
    pub fn scan_calls(&self) -> u64 {
        self.scan.as_ref().map_or(0, Scanner::calls)
    }

    /// Measures `pages` pages from host-virtual address `base` into `map`
    /// (resized to fit); returns the number resident.
    pub fn measure(
        &mut self,
        base: u64,
        pages: u64,
        map: &mut ResidentMap,
    ) -> Result<u64, ResidentError> {
        if map.pages() != pages {
            *map = ResidentMap::new(pages);
        } else {
            map.clear();
        }
        self.refresh(base, 0, pages, map)
    }

    /// Measures again pages `from..from + count` of the range of `map`
    /// (which starts at host-virtual address `base`), updating their bits;
    /// returns the number resident in the whole map.
    ///
    /// A scan the kernel refuses as unsupported (it answered the probe, so
    /// this should not happen) turns this pagemap to `pread` for good,
    /// logged once, and the range is read again that way; any other
    /// failure is an error, as a failed `pread` is.
    pub fn refresh(
        &mut self,
        base: u64,
        from: u64,
        count: u64,
        map: &mut ResidentMap,
    ) -> Result<u64, ResidentError> {
        let injected = || crate::fault_inject::check_io(crate::fault_inject::Point::Pagemap);
        self.refresh_with(base, from, count, map, injected)
    }

    /// [`Pagemap::refresh`], with `before_scan` run before each ioctl and
    /// failing it as the kernel would (the fault-injection hook; tests).
    fn refresh_with(
        &mut self,
        base: u64,
        from: u64,
        count: u64,
        map: &mut ResidentMap,
        before_scan: impl FnMut() -> std::io::Result<()>,
    ) -> Result<u64, ResidentError> {
        let pages = map.pages();
        let bad = ResidentError::BadRange { base, pages };
        if !base.is_multiple_of(PAGE) || from.checked_add(count).is_none_or(|e| e > pages) {
            return Err(bad);
        }
        let first = base / PAGE;
        let start = first
            .checked_add(from)
            .and_then(|f| f.checked_mul(ENTRY as u64))
            .filter(|_| first.checked_add(pages).is_some())
            .ok_or(bad)?;
        if let Some(scan) = self.scan.as_mut() {
            match scan.refresh(self.file.as_fd(), base, from, count, map, before_scan) {
                Ok(()) => return Ok(map.resident()),
                Err(e) if e.unsupported() => {
                    log::warn!("reclaim: {e}; residency read with pread from now on");
                    self.scan = None;
                }
                Err(e) => return Err(ResidentError::Scan(e)),
            }
        }
        self.pread(start, from, count, map)?;
        Ok(map.resident())
    }

    /// The `pread` path of [`Pagemap::refresh`]: pages `from..from + count`
    /// of `map`, whose entries start at byte `start` of pagemap.
    fn pread(
        &mut self,
        start: u64,
        from: u64,
        count: u64,
        map: &mut ResidentMap,
    ) -> Result<(), ResidentError> {
        if self.buf.len() < CHUNK_BYTES {
            self.buf = vec![0; CHUNK_BYTES];
        }
        let per_chunk = (CHUNK_BYTES / ENTRY) as u64;
        let mut done = 0u64;
        while done < count {
            let n = (count - done).min(per_chunk);
            // n <= 8192, so the byte count fits everywhere.
            let bytes = (n as usize) * ENTRY;
            let offset = start + done * ENTRY as u64;
            let buf = &mut self.buf[..bytes];
            crate::fault_inject::check_io(crate::fault_inject::Point::Pagemap)
                .and_then(|()| self.file.read_exact_at(buf, offset))
                .map_err(|source| match source.kind() {
                    std::io::ErrorKind::UnexpectedEof => ResidentError::Short(offset),
                    _ => ResidentError::Read { offset, source },
                })?;
            for (i, e) in buf.chunks_exact(ENTRY).enumerate() {
                let mut raw = [0u8; ENTRY];
                raw.copy_from_slice(e);
                map.assign(from + done + i as u64, is_resident(u64::from_ne_bytes(raw)));
            }
            done += n;
        }
        Ok(())
    }
}

/// Is a pagemap entry a resident page? Present and not swapped.
pub const fn is_resident(entry: u64) -> bool {
    entry & PM_PRESENT != 0 && entry & PM_SWAPPED == 0
}

#[cfg(test)]
#[path = "resident_tests.rs"]
mod tests;
