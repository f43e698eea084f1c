//! Tests of residency measurement (`resident.rs`) on real anonymous
//! mappings: both ways of reading pagemap (`PAGEMAP_SCAN`, with a buffer
//! large and small, and `pread`) against each other and against what the
//! test touched and dropped, the map's bit operations, and the rolling
//! re-read of `Residency`.

use super::pagemap_scan::DEFAULT_REGIONS;
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

    /// Asks for transparent huge pages on the mapping (a touch may then
    /// make a whole 2 MiB present).
    fn hugepage(&self) {
        // SAFETY: the range is the mapping this value owns; MADV_HUGEPAGE
        // only changes how the kernel backs it.
        let r = unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_HUGEPAGE) };
        assert_eq!(r, 0);
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

/// Whether this kernel must answer `PAGEMAP_SCAN` (6.7 and later).
fn kernel_has_scan() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (6, 7)
}

/// Every way of reading pagemap this kernel offers: `pread`, then (6.7+)
/// `PAGEMAP_SCAN` with the default buffer and with one of 3 regions,
/// which makes the walk stop and go on from `walk_end` many times.
fn readers() -> Vec<Pagemap> {
    let mut v = vec![Pagemap::open_pread().unwrap()];
    match Pagemap::open_scan(DEFAULT_REGIONS) {
        Ok(pm) => v.push(pm),
        Err(e) => {
            assert!(!kernel_has_scan(), "{e}");
            eprintln!("no PAGEMAP_SCAN on this kernel ({e}); pread only");
        }
    }
    if let Ok(pm) = Pagemap::open_scan(3) {
        v.push(pm);
    }
    v
}

#[test]
fn open_scans_where_the_kernel_can() {
    let pm = Pagemap::open().unwrap();
    let want = if kernel_has_scan() {
        Reader::Scan
    } else {
        Reader::Pread
    };
    assert_eq!(pm.reader(), want);
    assert_eq!(Pagemap::open_pread().unwrap().reader(), Reader::Pread);
}

#[test]
fn measures_touched_and_dropped_pages() {
    // More than one pread chunk.
    let pages = 9000usize;
    let a = Anon::new(pages);
    let base = a.ptr as u64;
    for mut pm in readers() {
        let reader = pm.reader();
        let mut map = ResidentMap::default();
        a.dontneed(0, pages);
        assert_eq!(pm.measure(base, pages as u64, &mut map).unwrap(), 0);
        for p in (0..pages).step_by(3) {
            a.touch(p);
        }
        let touched = pages.div_ceil(3) as u64;
        let n = pm.measure(base, pages as u64, &mut map).unwrap();
        assert_eq!(n, touched, "{reader:?}");
        assert!(map.get(0) && !map.get(1) && map.get(8193) && !map.get(8194));
        a.dontneed(0, 8200);
        let measured = pm.measure(base, pages as u64, &mut map).unwrap();
        assert_eq!(
            measured,
            (8200..pages).filter(|p| p % 3 == 0).count() as u64,
            "{reader:?}"
        );
        assert!(!map.get(0) && map.get(8202));
    }
}

#[test]
fn scan_and_pread_agree_on_a_pattern_of_touched_and_dropped_pages() {
    // Not a multiple of 64 pages, and more than one pread chunk.
    let pages = 9037usize;
    let a = Anon::new(pages);
    let base = a.ptr as u64;
    for p in (0..3000).step_by(3) {
        a.touch(p);
    }
    // A run across several words of the map, then a sparser pattern and
    // the very last page.
    (3000..3100).for_each(|p| a.touch(p));
    (3100..pages)
        .filter(|p| p % 7 == 1)
        .for_each(|p| a.touch(p));
    a.touch(pages - 1);
    a.dontneed(50, 200);
    a.dontneed(3050, 13);
    a.touch(3055);
    let expect = |p: usize| {
        let touched = match p {
            0..3000 => p.is_multiple_of(3),
            3000..3100 => true,
            _ => p % 7 == 1 || p == pages - 1,
        };
        touched && !(50..250).contains(&p) && (!(3050..3063).contains(&p) || p == 3055)
    };
    let want = (0..pages).filter(|&p| expect(p)).count() as u64;

    let mut readers = readers();
    let mut maps = Vec::new();
    for pm in &mut readers {
        let mut map = ResidentMap::default();
        let n = pm.measure(base, pages as u64, &mut map).unwrap();
        assert_eq!(n, want, "{:?}", pm.reader());
        for p in 0..pages {
            assert_eq!(map.get(p as u64), expect(p), "{:?} page {p}", pm.reader());
        }
        maps.push(map);
    }
    // Re-reading a slice that starts and ends inside words, after a
    // change inside it and one outside it (which the slice must not see).
    a.dontneed(40, 10);
    a.touch(1000);
    a.touch(2);
    a.dontneed(6000, 1);
    for (pm, map) in readers.iter_mut().zip(&mut maps) {
        let n = pm.refresh(base, 37, 1001, map).unwrap();
        // 42, 45 and 48 gone, 1000 new; 2 and 6000 lie outside the slice.
        assert_eq!(n, want - 3 + 1, "{:?}", pm.reader());
        assert!(!map.get(42) && map.get(1000) && !map.get(2) && map.get(6000));
    }
    // A range that starts inside the mapping, at a page that is not the
    // first of a map word, and ends before the mapping does.
    let (off, len) = (5u64, 4001u64);
    let mut sub = Vec::new();
    for pm in &mut readers {
        let mut map = ResidentMap::default();
        pm.measure(base + off * PAGE, len, &mut map).unwrap();
        sub.push(map);
    }
    assert!(
        maps.windows(2).all(|w| w[0] == w[1]),
        "refreshed maps differ"
    );
    assert!(
        sub.windows(2).all(|w| w[0] == w[1]),
        "sub-range maps differ"
    );
    assert_eq!(sub[0].get(1000 - off), maps[0].get(1000));
    // The 3-region buffer walked in many calls (about 1,000), going on
    // from each stop; the default one in one call a measurement, although
    // the full reading's 1,785 regions made the kernel restart its own
    // walk inside the call (its bounce buffer holds 512), which is where
    // `walk_end` comes back stale.
    if let [_, big, small] = &readers[..] {
        assert!(small.scan_calls() > 500, "{}", small.scan_calls());
        assert_eq!(big.scan_calls(), 3, "one call per measurement");
    }
}

#[test]
fn a_scan_refused_midway_falls_back_to_pread_and_other_failures_are_errors() {
    let Ok(mut pm) = Pagemap::open_scan(2) else {
        assert!(!kernel_has_scan());
        return;
    };
    let pages = 1000usize;
    let a = Anon::new(pages);
    let base = a.ptr as u64;
    (0..pages).step_by(5).for_each(|p| a.touch(p));
    let mut map = ResidentMap::new(pages as u64);
    // Another failure (here EIO on the third call, after two calls marked
    // pages) is an error, as a failed pread is; the scan path stays.
    let mut calls = 0;
    let eio_on_third = || {
        calls += 1;
        match calls {
            3 => Err(std::io::Error::from_raw_os_error(libc::EIO)),
            _ => Ok(()),
        }
    };
    let e = pm
        .refresh_with(base, 0, pages as u64, &mut map, eio_on_third)
        .unwrap_err();
    assert!(matches!(e, ResidentError::Scan(_)), "{e}");
    assert_eq!(pm.reader(), Reader::Scan);
    // ENOTTY midway: this range is read again with pread, and so is every
    // later one.
    let mut calls = 0;
    let enotty_on_third = || {
        calls += 1;
        match calls {
            3 => Err(std::io::Error::from_raw_os_error(libc::ENOTTY)),
            _ => Ok(()),
        }
    };
    let n = pm
        .refresh_with(base, 0, pages as u64, &mut map, enotty_on_third)
        .unwrap();
    assert_eq!(n, pages.div_ceil(5) as u64);
    assert_eq!(pm.reader(), Reader::Pread);
    assert_eq!(pm.scan_calls(), 0);
    a.dontneed(0, 1);
    assert_eq!(pm.measure(base, pages as u64, &mut map).unwrap(), n - 1);
}

#[test]
fn scan_and_pread_agree_on_huge_pages() {
    // 8 MiB asking for THP: a touch may make 2 MiB present at once, which
    // the scan reports as one PMD-sized region, pread as 512 entries.
    let pages = 2048usize;
    let a = Anon::new(pages);
    a.hugepage();
    for p in [1, 700, 1500] {
        a.touch(p);
    }
    let base = a.ptr as u64;
    let maps: Vec<ResidentMap> = readers()
        .iter_mut()
        .map(|pm| {
            let mut map = ResidentMap::default();
            pm.measure(base, pages as u64, &mut map).unwrap();
            map
        })
        .collect();
    assert!(maps[0].resident() >= 3);
    assert!(maps.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn ranges_assign_as_bits_do() {
    let pages = 300u64;
    let mut by_range = ResidentMap::new(pages);
    let mut by_bit = ResidentMap::new(pages);
    let ops = [
        (0, 300, true),
        (5, 1, false),
        (60, 10, false),
        (63, 66, false),
        (64, 64, true),
        (250, 100, false),
        (299, 1, true),
        (128, 0, false),
        (1000, 5, true),
    ];
    for (from, count, resident) in ops {
        by_range.assign_range(from, count, resident);
        for p in from..(from + count).min(pages) {
            by_bit.assign(p, resident);
        }
        assert_eq!(by_range, by_bit, "after {from}+{count}={resident}");
    }
    assert_eq!(
        by_range.resident(),
        by_range
            .words()
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum::<u64>()
    );
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
