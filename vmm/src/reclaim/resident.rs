//! Measures which pages of a host-virtual range are resident, from
//! `/proc/self/pagemap` (seed 003): 8 bytes per page, bit 63 "present";
//! a swapped page (bit 62) is not resident.
//!
//! The file is read in large chunks with `pread` (64 KiB, 8192 pages at a
//! time) into a [`ResidentMap`], one bit per page, which the reclaimer then
//! uses to discard only pages that are actually resident. This module only
//! reads: it must never change memory or estimate what it can measure.

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

/// One bit per page of a range: set if the page was resident when measured.
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

    fn clear(&mut self) {
        self.words.fill(0);
        self.resident = 0;
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
        let bad = ResidentError::BadRange { base, pages };
        if !base.is_multiple_of(PAGE) {
            return Err(bad);
        }
        let first = base / PAGE;
        let start = first
            .checked_mul(ENTRY as u64)
            .filter(|_| first.checked_add(pages).is_some())
            .ok_or(bad)?;
        if map.pages() != pages {
            *map = ResidentMap::new(pages);
        } else {
            map.clear();
        }
        let per_chunk = (CHUNK_BYTES / ENTRY) as u64;
        let mut done = 0u64;
        while done < pages {
            let n = (pages - done).min(per_chunk);
            // n <= 8192, so the byte count fits everywhere.
            let bytes = (n as usize) * ENTRY;
            let offset = start + done * ENTRY as u64;
            let buf = &mut self.buf[..bytes];
            self.file
                .read_exact_at(buf, offset)
                .map_err(|source| match source.kind() {
                    std::io::ErrorKind::UnexpectedEof => ResidentError::Short(offset),
                    _ => ResidentError::Read { offset, source },
                })?;
            for (i, e) in buf.chunks_exact(ENTRY).enumerate() {
                let mut raw = [0u8; ENTRY];
                raw.copy_from_slice(e);
                if is_resident(u64::from_ne_bytes(raw)) {
                    map.set(done + i as u64);
                }
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
