//! The memory workloads: file scans through `read()` and `mmap`, anonymous
//! churn, mprotect toggling and copy-on-write of a file mapping.
//!
//! Each checks every byte it reads against what the disk generator wrote
//! (`pagehint_abi::disk::fill_block`) or what it wrote itself, and ends with
//! one `result:` line of `key=value` pairs: bytes processed, time, kernel
//! counters, and integrity errors.

use core::fmt;

use pagehint_abi::disk::{fill_block, verify_block, DirEntry, BLOCK_SIZE};
use pagehint_abi::exit::guest;
use pagehint_abi::syscall::{nr, prot, FileStat, KernelStats};

use crate::say;
use crate::sys::{clock_ns, kstats, syscall3, syscall5};

/// How a scan reads files.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Mmap,
}

/// Bytes read per `read()` call.
pub(crate) const CHUNK: u64 = 64 * 1024;

pub(crate) fn mmap_anon(len: u64) -> Option<*mut u8> {
    let a = syscall3(nr::MMAP, len, prot::RW, 0);
    (a > 0).then_some(a as u64 as *mut u8)
}

pub(crate) fn dirent(i: u64) -> Option<DirEntry> {
    let mut e = DirEntry::default();
    (syscall3(nr::DIRENT, i, &mut e as *mut DirEntry as u64, 0) == 0).then_some(e)
}

pub(crate) fn open(e: &DirEntry) -> Option<u64> {
    let name = e.name()?;
    let fd = syscall3(nr::OPEN, name.as_ptr() as u64, name.len() as u64, 0);
    (fd >= 0).then_some(fd as u64)
}

/// Checks `data` (block `index` of a generated file of `size` bytes with
/// id `id`); returns the number of bad blocks (0 or 1).
pub(crate) fn check_block(id: u32, index: u64, size: u64, data: &[u8]) -> u64 {
    if id == 0 {
        return 0; // not a generated file: nothing to compare against
    }
    if data.len() == BLOCK_SIZE {
        let block: &[u8; BLOCK_SIZE] = data.try_into().expect("a full block");
        return verify_block(id, index, block).is_err() as u64;
    }
    let mut expect = [0u8; BLOCK_SIZE];
    fill_block(id, index, size, &mut expect);
    (data != &expect[..data.len()]) as u64
}

/// `KernelStats` with the cumulative counters taken as `$after - $before`
/// and the gauges as they are in `$after`: every field named once.
macro_rules! since {
    ($before:expr, $after:expr; counters: $($c:ident)*; gauges: $($g:ident)*) => {
        KernelStats {
            $($c: $after.$c - $before.$c,)*
            $($g: $after.$g,)*
        }
    };
}

/// The kernel's counters since `before` (the gauges, `free_frames`,
/// `cached_frames`, `volatile_frames` and `dirty_frames`, as they are now).
pub(crate) fn counters_line(before: &KernelStats, after: &KernelStats) -> KernelStats {
    since!(before, after;
        counters: page_faults file_faults cow_copies cache_hits cache_misses disk_requests
            disk_pages reclaimed shootdowns hints hint_batches hint_errors volatile_discarded
            zero_fill_skips discard_faults discard_listed discard_released shared_hints
            referenced writeback_pages writeback_requests potentially_volatile pv_written
            pte_dirty background_passes ages_published ages_young;
        gauges: free_frames cached_frames volatile_frames dirty_frames)
}

/// Where a workload's measured part began: the kernel's counters and the
/// clock then.
pub(crate) struct Span {
    before: KernelStats,
    t0: u64,
}

impl Span {
    pub(crate) fn start() -> Span {
        let before = kstats();
        Span {
            before,
            t0: clock_ns(),
        }
    }

    /// Milliseconds since the start.
    pub(crate) fn ms(&self) -> u64 {
        (clock_ns() - self.t0) / 1_000_000
    }

    /// The kernel's counters since the start (`counters_line`).
    pub(crate) fn counters(&self) -> KernelStats {
        counters_line(&self.before, &kstats())
    }
}

/// The kernel counters of a file workload's result line, as `key=value`
/// pairs (`faults=... shared_hints=...`): one format for every program.
pub(crate) struct Counters(pub KernelStats);

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.0;
        // The first key is not its field's name; every other one is.
        write!(f, "faults={}", k.page_faults)?;
        macro_rules! pairs {
            ($($field:ident)*) => {
                $(write!(f, concat!(" ", stringify!($field), "={}"), k.$field)?;)*
            };
        }
        pairs!(file_faults cache_hits cache_misses disk_requests disk_pages reclaimed shootdowns
            free_frames cached_frames hints hint_batches hint_errors volatile_discarded
            zero_fill_skips volatile_frames discard_faults discard_listed discard_released
            shared_hints referenced writeback_pages writeback_requests dirty_frames
            potentially_volatile pv_written pte_dirty background_passes ages_published ages_young);
        Ok(())
    }
}

/// `files`: the directory.
pub fn list_files() -> u32 {
    let mut i = 0;
    while let Some(e) = dirent(i) {
        say!(
            "file {} {} bytes id {}",
            e.name().unwrap_or("?"),
            e.size,
            e.file_id
        );
        i += 1;
    }
    say!("result: program=files files={i}");
    guest::SUCCESS
}

/// `scan-read N` / `scan-mmap N`: every file, N passes, every block checked.
pub fn scan(passes: u64, how: Access) -> u32 {
    let Some(buf) = mmap_anon(CHUNK) else {
        say!("result: program=scan errors=1 reason=no-memory");
        return guest::FAILURE;
    };
    let span = Span::start();
    let (mut bytes, mut errors, mut files) = (0u64, 0u64, 0u64);
    for _ in 0..passes {
        let mut i = 0;
        while let Some(e) = dirent(i) {
            i += 1;
            files += 1;
            let Some(fd) = open(&e) else {
                errors += 1;
                continue;
            };
            let mut st = FileStat::default();
            syscall3(nr::FSTAT, fd, &mut st as *mut FileStat as u64, 0);
            if st.size != e.size || st.file_id != e.file_id {
                errors += 1;
            }
            let (b, err) = match how {
                Access::Read => scan_read(fd, &e, buf),
                Access::Mmap => scan_mmap(fd, &e),
            };
            bytes += b;
            errors += err;
            syscall3(nr::CLOSE, fd, 0, 0);
        }
    }
    let ms = span.ms();
    let k = span.counters();
    let name = if how == Access::Read {
        "scan-read"
    } else {
        "scan-mmap"
    };
    say!(
        "result: program={name} passes={passes} files={files} bytes={bytes} ms={ms} errors={errors} {}",
        Counters(k)
    );
    if errors == 0 {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}

fn scan_read(fd: u64, e: &DirEntry, buf: *mut u8) -> (u64, u64) {
    let (mut pos, mut errors) = (0u64, 0u64);
    while pos < e.size {
        let n = syscall3(nr::READ, fd, buf as u64, CHUNK);
        if n <= 0 {
            return (pos, errors + 1);
        }
        // SAFETY: the kernel wrote `n` bytes into our `CHUNK`-byte buffer.
        let data = unsafe { core::slice::from_raw_parts(buf, n as usize) };
        // `pos` stays block-aligned: every read but the last is CHUNK long.
        for (k, block) in data.chunks(BLOCK_SIZE).enumerate() {
            errors += check_block(e.file_id, pos / BLOCK_SIZE as u64 + k as u64, e.size, block);
        }
        pos += n as u64;
    }
    (pos, errors)
}

fn scan_mmap(fd: u64, e: &DirEntry) -> (u64, u64) {
    if e.size == 0 {
        return (0, 0);
    }
    let a = syscall5(nr::MMAP_FILE, e.size, prot::READ, fd, 0, 1);
    if a <= 0 {
        return (0, 1);
    }
    // SAFETY: a fresh read-only mapping of the whole file.
    let data = unsafe { core::slice::from_raw_parts(a as u64 as *const u8, e.size as usize) };
    let mut errors = 0;
    for (k, block) in data.chunks(BLOCK_SIZE).enumerate() {
        errors += check_block(e.file_id, k as u64, e.size, block);
    }
    syscall3(nr::MUNMAP, a as u64, e.size.next_multiple_of(4096), 0);
    (e.size, errors)
}

fn pattern(wave: u64, i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ wave
}

/// Spins in user mode for `ms` milliseconds of the kernel's clock (the CPU
/// stays busy; the kernel's timer work, free page reporting included, goes
/// on underneath).
pub fn sleep_ms(ms: u64) {
    spin_until(clock_ns() + ms * 1_000_000, 1_000_000);
}

/// [`sleep_ms`] in microseconds, looking at the clock every ~20,000 TSC
/// cycles instead of every million.
pub fn sleep_us(us: u64) {
    if us > 0 {
        spin_until(clock_ns() + us * 1000, 20_000);
    }
}

/// Spins until the kernel's clock reaches `end_ns`, asking it once every
/// `step` TSC cycles (each look is a system call).
fn spin_until(end_ns: u64, step: u64) {
    while clock_ns() < end_ns {
        let t = crate::sys::rdtsc();
        while crate::sys::rdtsc() - t < step {
            core::hint::spin_loop();
        }
    }
}

/// `sleep MS`.
pub fn sleep(rest: &str) -> u32 {
    let ms = rest
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1000u64);
    sleep_ms(ms);
    say!("result: program=sleep ms={ms} errors=0");
    guest::SUCCESS
}

/// `churn-idle WAVES MIB IDLE_MS`: `churn`, then IDLE_MS with all of it
/// freed, so the host can take it back; the result line says when (guest
/// clock, `freed_at_ms`) the last wave was freed.
pub fn churn_idle(rest: &str) -> u32 {
    let mut words = rest.split_whitespace();
    let waves = words.next().and_then(|w| w.parse().ok()).unwrap_or(3u64);
    let mib = words.next().and_then(|w| w.parse().ok()).unwrap_or(8u64);
    let idle = words.next().and_then(|w| w.parse().ok()).unwrap_or(5000u64);
    let t0 = clock_ns();
    let errors = churn_waves(waves, mib);
    let freed_at_ms = clock_ns() / 1_000_000;
    let ms = (clock_ns() - t0) / 1_000_000;
    sleep_ms(idle);
    say!(
        "result: program=churn-idle waves={waves} bytes={} ms={ms} errors={errors} freed_at_ms={freed_at_ms} idle_ms={idle}",
        waves * (mib << 20)
    );
    if errors == 0 {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}

/// Maps, touches, verifies and unmaps `mib` MiB, `waves` times; returns the
/// integrity errors.
fn churn_waves(waves: u64, mib: u64) -> u64 {
    let len = mib << 20;
    let mut errors = 0u64;
    for wave in 0..waves {
        let Some(p) = mmap_anon(len) else {
            return errors + 1;
        };
        // SAFETY: a fresh read-write mapping of `len` bytes.
        let words = unsafe { core::slice::from_raw_parts_mut(p as *mut u64, (len / 8) as usize) };
        for (i, w) in words.iter_mut().enumerate().step_by(512) {
            errors += (*w != 0) as u64;
            *w = pattern(wave, i);
        }
        for (i, w) in words.iter().enumerate().step_by(512) {
            errors += (*w != pattern(wave, i)) as u64;
        }
        if syscall3(nr::MUNMAP, p as u64, len, 0) != 0 {
            errors += 1;
        }
    }
    errors
}

/// `churn WAVES MIB`: map, touch, verify and unmap MIB MiB, WAVES times.
pub fn churn(rest: &str) -> u32 {
    let mut words = rest.split_whitespace();
    let waves = words.next().and_then(|w| w.parse().ok()).unwrap_or(4u64);
    let mib = words.next().and_then(|w| w.parse().ok()).unwrap_or(16u64);
    let before = kstats();
    let t0 = clock_ns();
    let errors = churn_waves(waves, mib);
    let ms = (clock_ns() - t0) / 1_000_000;
    let k = counters_line(&before, &kstats());
    say!(
        "result: program=churn waves={waves} bytes={} ms={ms} errors={errors} faults={} free_frames={} hints={} hint_batches={} hint_errors={} zero_fill_skips={} shared_hints={}",
        waves * (mib << 20), k.page_faults, k.free_frames, k.hints, k.hint_batches, k.hint_errors, k.zero_fill_skips, k.shared_hints
    );
    if errors == 0 {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}

/// `mprotect PAGES ROUNDS`: toggle a populated range read-only and back,
/// checking the data survives every transaction.
pub fn mprotect_toggle(rest: &str) -> u32 {
    let mut words = rest.split_whitespace();
    let pages = words.next().and_then(|w| w.parse().ok()).unwrap_or(256u64);
    let rounds = words.next().and_then(|w| w.parse().ok()).unwrap_or(20u64);
    let len = pages * 4096;
    let Some(p) = mmap_anon(len) else {
        say!("result: program=mprotect errors=1 reason=no-memory");
        return guest::FAILURE;
    };
    // SAFETY: a fresh read-write mapping of `len` bytes.
    let words = unsafe { core::slice::from_raw_parts_mut(p as *mut u64, (len / 8) as usize) };
    let t0 = clock_ns();
    let mut errors = 0u64;
    for round in 0..rounds {
        for (i, w) in words.iter_mut().enumerate().step_by(512) {
            *w = pattern(round, i);
        }
        errors += (syscall3(nr::MPROTECT, p as u64, len, prot::READ) != 0) as u64;
        for (i, w) in words.iter().enumerate().step_by(512) {
            errors += (*w != pattern(round, i)) as u64;
        }
        errors += (syscall3(nr::MPROTECT, p as u64, len, prot::RW) != 0) as u64;
    }
    let ms = (clock_ns() - t0) / 1_000_000;
    say!(
        "result: program=mprotect pages={pages} rounds={rounds} calls={} ms={ms} errors={errors}",
        rounds * 2
    );
    if errors == 0 {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}

/// `cow [ROUNDS]`: a private writable mapping of the first file; written
/// pages hold what was written, untouched ones the file, and the file
/// itself (seen through a shared mapping afterwards) is unchanged. With
/// ROUNDS > 1, each round also reads every other file through `mmap`
/// between writing and checking, so the mapped file pages age, turn
/// volatile and may be discarded by the host meanwhile: the written data
/// must survive whatever the reclaimer does.
pub fn cow(rounds: u64) -> u32 {
    let Some(e) = dirent(0) else {
        say!("result: program=cow errors=1 reason=no-files");
        return guest::FAILURE;
    };
    let Some(fd) = open(&e) else {
        return guest::FAILURE;
    };
    let len = e.size.next_multiple_of(4096);
    let a = syscall5(nr::MMAP_FILE, len, prot::RW, fd, 0, 0);
    if a <= 0 {
        say!("result: program=cow errors=1 reason=mmap-{a}");
        return guest::FAILURE;
    }
    let base = a as u64 as *mut u8;
    let blocks = e.size.div_ceil(4096) as usize;
    let before = kstats();
    let mut errors = 0u64;
    for round in 0..rounds.max(1) {
        let marker = |b: usize| 0xc0ffee ^ b as u64 ^ round << 32;
        // Write a marker into every other page.
        for b in (0..blocks).step_by(2) {
            // SAFETY: inside our private mapping.
            unsafe { (base.add(b * 4096 + 100) as *mut u64).write_volatile(marker(b)) };
        }
        if rounds > 1 {
            // Push the cache: the untouched pages of our mapping age.
            let mut i = 1;
            while let Some(other) = dirent(i) {
                i += 1;
                if let Some(ofd) = open(&other) {
                    errors += scan_mmap(ofd, &other).1;
                    syscall3(nr::CLOSE, ofd, 0, 0);
                }
            }
        }
        for b in 0..blocks {
            // SAFETY: inside our private mapping.
            let page = unsafe { core::slice::from_raw_parts(base.add(b * 4096), 4096) };
            if b % 2 == 0 {
                // SAFETY: as above.
                let v = unsafe { (base.add(b * 4096 + 100) as *const u64).read_volatile() };
                errors += (v != marker(b)) as u64;
            } else {
                let n = (e.size as usize - b * 4096).min(4096);
                errors += check_block(e.file_id, b as u64, e.size, &page[..n]);
            }
        }
    }
    let k = counters_line(&before, &kstats());
    syscall3(nr::MUNMAP, a as u64, len, 0);
    // The file must be untouched.
    let (_, file_errors) = scan_mmap(fd, &e);
    let stray = syscall5(nr::MMAP_FILE, len, prot::RW, fd, 0, 1);
    errors += file_errors + (stray >= 0) as u64;
    say!(
        "result: program=cow rounds={rounds} pages={blocks} cow_copies={} discard_faults={} errors={errors} shared_writable_refused={}",
        k.cow_copies,
        k.discard_faults,
        stray < 0
    );
    if errors == 0 {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}
