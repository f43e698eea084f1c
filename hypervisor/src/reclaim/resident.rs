//! Measures which pages of a host-virtual range are resident, from
//! `/proc/self/pagemap` (seed 003): 8 bytes per page, bit 63 "present";
//! a swapped page (bit 62) is not resident.
//!
//! The file is read in large chunks with `pread` (64 KiB, 8192 pages at a
//! time) into a [`ResidentMap`], one bit per page, which the reclaimer then
//! uses to discard only pages that are actually resident.
//!
//! Reading all of pagemap costs about 7 ms for a 16 GiB guest that touched
//! little, more as it touches more, which a 50 ms reclaim interval cannot
//! pay. [`Residency`] therefore reads all of it again only when something
//! may have changed: the process's anonymous resident pages
//! (`/proc/self/statm`, a counter the kernel keeps, read in microseconds)
//! moved since the last reading, or the reclaimer discarded since. Rounds
//! that find nothing changed re-read one twentieth of the range each, so
//! the reading is whole again within 20 rounds even if pages came and went
//! in equal numbers. This module only reads: it must never change memory
//! or estimate what it can measure.

use std::fs::File;
use std::os::unix::fs::FileExt;

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

/// An open `/proc/self/pagemap` and a reusable read buffer.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    buf: Vec<u8>,
}

impl Pagemap {
    /// Opens this process's pagemap.
    pub fn open() -> Result<Self, ResidentError> {
        let file = File::open("/proc/self/pagemap").map_err(ResidentError::Open)?;
        Ok(Self {
            file,
            buf: vec![0; CHUNK_BYTES],
        })
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
    pub fn refresh(
        &mut self,
        base: u64,
        from: u64,
        count: u64,
        map: &mut ResidentMap,
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
        Ok(map.resident())
    }
}

/// Is a pagemap entry a resident page? Present and not swapped.
pub const fn is_resident(entry: u64) -> bool {
    entry & PM_PRESENT != 0 && entry & PM_SWAPPED == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An anonymous private mapping of `pages` pages, unmapped on drop.
    struct Anon {
        ptr: *mut u8,
        len: usize,
    }

    impl Anon {
        fn new(pages: usize) -> Self {
            let len = pages * PAGE as usize;
            // SAFETY: a fresh anonymous private mapping; the kernel picks
            // the address, nothing else refers to it.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            Self {
                ptr: ptr.cast(),
                len,
            }
        }

        fn touch(&self, page: usize) {
            // SAFETY: `page` is inside the mapping this value owns.
            unsafe { std::ptr::write_volatile(self.ptr.add(page * PAGE as usize), 1) };
        }

        fn dontneed(&self, page: usize, n: usize) {
            // SAFETY: the pages are inside the mapping this value owns and
            // no reference into them is held.
            let r = unsafe {
                libc::madvise(
                    self.ptr.add(page * PAGE as usize).cast(),
                    n * PAGE as usize,
                    libc::MADV_DONTNEED,
                )
            };
            assert_eq!(r, 0);
        }
    }

    impl Drop for Anon {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping created in `new`.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    #[test]
    fn measures_touched_and_dropped_pages() {
        // More than one pread chunk.
        let pages = 9000usize;
        let a = Anon::new(pages);
        let mut pm = Pagemap::open().unwrap();
        let mut map = ResidentMap::default();
        let base = a.ptr as u64;
        assert_eq!(pm.measure(base, pages as u64, &mut map).unwrap(), 0);
        for p in (0..pages).step_by(3) {
            a.touch(p);
        }
        let touched = pages.div_ceil(3) as u64;
        assert_eq!(pm.measure(base, pages as u64, &mut map).unwrap(), touched);
        assert!(map.get(0) && !map.get(1) && map.get(8193) && !map.get(8194));
        a.dontneed(0, 8200);
        let measured = pm.measure(base, pages as u64, &mut map).unwrap();
        assert_eq!(
            measured,
            (8200..pages).filter(|p| p % 3 == 0).count() as u64
        );
        assert!(!map.get(0) && map.get(8202));
    }

    #[test]
    fn residency_reads_pagemap_only_when_something_changed() {
        let pages = 4096usize;
        let a = Anon::new(pages);
        let base = a.ptr as u64;
        let mut r = Residency::open().unwrap();
        let first = r.measure(base, pages as u64).unwrap();
        assert_eq!(
            first,
            Measured {
                pages: 0,
                read_pagemap: true
            }
        );
        // Nothing touched: the reading holds (statm unchanged). Another
        // thread of the test binary may allocate meanwhile, which only
        // makes a round read pagemap again; so look for one quiet round
        // within two seconds (the other tests are over by then).
        let quiet = (0..2000).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            !r.measure(base, pages as u64).unwrap().read_pagemap
        });
        assert!(quiet, "statm never stood still");
        // New pages move the counter: the next round reads and sees them.
        for p in 0..100 {
            a.touch(p);
        }
        let m = r.measure(base, pages as u64).unwrap();
        assert_eq!(
            m,
            Measured {
                pages: 100,
                read_pagemap: true
            }
        );
        assert!(r.map().get(99) && !r.map().get(100));
        // After the caller drops pages it invalidates: read again.
        a.dontneed(0, 50);
        r.invalidate();
        assert_eq!(
            r.measure(base, pages as u64).unwrap(),
            Measured {
                pages: 50,
                read_pagemap: true
            }
        );
        // Pages that come and go in equal numbers leave the counter where
        // it was; the rolling re-read still finds them within
        // FULL_MEASURE_EVERY rounds.
        a.dontneed(50, 50);
        for p in 200..250 {
            a.touch(p);
        }
        let last = (0..FULL_MEASURE_EVERY + 1)
            .map(|_| r.measure(base, pages as u64).unwrap().pages)
            .last();
        assert_eq!(last, Some(50));
        assert_eq!(r.map().next_set(0), Some(200));
        assert_eq!(r.map().next_set(250), None);
    }

    #[test]
    fn refresh_rereads_only_its_slice() {
        let pages = 1000u64;
        let a = Anon::new(pages as usize);
        let base = a.ptr as u64;
        for p in 0..pages as usize {
            a.touch(p);
        }
        let mut pm = Pagemap::open().unwrap();
        let mut map = ResidentMap::default();
        assert_eq!(pm.measure(base, pages, &mut map).unwrap(), pages);
        a.dontneed(0, 1000);
        // Only pages 100..300 are read again.
        assert_eq!(pm.refresh(base, 100, 200, &mut map).unwrap(), 800);
        assert!(map.get(99) && !map.get(100) && !map.get(299) && map.get(300));
        a.touch(150);
        assert_eq!(pm.refresh(base, 150, 1, &mut map).unwrap(), 801);
        assert!(pm.refresh(base, 999, 2, &mut map).is_err());
    }

    #[test]
    fn statm_and_set_bit_search() {
        assert_eq!(
            parse_statm_anon(b"4195948 17794 344 1 0 4195418 0\n"),
            Some(17450)
        );
        assert_eq!(parse_statm_anon(b"1 2"), None);
        assert_eq!(parse_statm_anon(b"1 2 3 0"), None);
        assert_eq!(parse_statm_anon(b"x y z"), None);
        assert!(AnonRss::open().unwrap().pages().unwrap() > 0);
        let mut m = ResidentMap::new(200);
        assert_eq!(m.next_set(0), None);
        for i in [3, 64, 130, 199] {
            m.set(i);
        }
        assert_eq!(m.next_set(0), Some(3));
        assert_eq!(m.next_set(4), Some(64));
        assert_eq!(m.next_set(65), Some(130));
        assert_eq!(m.next_set(131), Some(199));
        assert_eq!(m.next_set(200), None);
        assert_eq!(m.next_set(u64::MAX), None);
    }

    #[test]
    fn bits_and_bad_ranges() {
        assert!(is_resident(PM_PRESENT | 5));
        assert!(!is_resident(PM_PRESENT | PM_SWAPPED));
        assert!(!is_resident(PM_SWAPPED));
        let mut m = ResidentMap::new(70);
        m.set(69);
        m.set(69);
        m.set(700);
        assert_eq!((m.resident(), m.get(69), m.get(700)), (1, true, false));
        assert_eq!(ResidentMap::all(65).resident(), 65);
        let mut pm = Pagemap::open().unwrap();
        assert!(matches!(
            pm.measure(4097, 1, &mut m),
            Err(ResidentError::BadRange { .. })
        ));
        assert!(pm.measure(u64::MAX - 4095, 2, &mut m).is_err());
    }
}
