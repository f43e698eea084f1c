//! `build PHASES FILES_PER_PHASE ANON_MIB [IDLE_MS]`: a build-like workload
//! (the user program, not the crate's build script `../build.rs`). As a
//! compiler does per translation unit, each phase reads FILES_PER_PHASE
//! small files whole through `read()` (cycling through the disk's files,
//! every block verified), then works in ANON_MIB MiB of fresh anonymous
//! memory (every word checked zero, written with a pattern of the phase,
//! read back) and unmaps it. After the last phase it frees its read buffer
//! too and idles IDLE_MS ms (default 0), like `churn-idle`, so the host can
//! be seen taking back the freed memory; `freed_at_ms` (guest clock since
//! boot, as `churn-idle`'s) says when everything was freed.
//!
//! It must never keep a phase's anonymous memory past the phase (the
//! give-back measurement relies on it), read a file in pieces smaller than
//! the file when one `read()` can take it, or hold a descriptor past the
//! file's read.

use pagehint_abi::disk::{DirEntry, BLOCK_SIZE};
use pagehint_abi::exit::guest;
use pagehint_abi::syscall::nr;

use crate::say;
use crate::sys::{clock_ns, syscall3};
use crate::workloads::{check_block, dirent, mmap_anon, open, sleep_ms, Counters, Span};

/// The read buffer: the kernel's largest single `read()`. Only the pages
/// the biggest file fills are ever touched.
const READ_BUF: u64 = 1 << 20;

/// The word at `i` of phase `phase`'s anonymous memory.
fn pattern(phase: u64, i: usize) -> u64 {
    (i as u64 ^ phase << 40).wrapping_mul(0xd6e8_feb8_6659_fd93) ^ phase
}

/// Reads file `e` whole into `buf` and verifies it: (bytes, errors).
fn read_file(e: &DirEntry, buf: *mut u8) -> (u64, u64) {
    let Some(fd) = open(e) else {
        return (0, 1);
    };
    let (mut pos, mut errors) = (0u64, 0u64);
    while pos < e.size {
        let n = syscall3(nr::READ, fd, buf as u64, READ_BUF);
        if n <= 0 {
            errors += 1;
            break;
        }
        // SAFETY: the kernel wrote `n` bytes into our READ_BUF-byte buffer.
        let data = unsafe { core::slice::from_raw_parts(buf, n as usize) };
        // `pos` stays block-aligned: every read but the last is READ_BUF long.
        for (k, block) in data.chunks(BLOCK_SIZE).enumerate() {
            errors += check_block(e.file_id, pos / BLOCK_SIZE as u64 + k as u64, e.size, block);
        }
        pos += n as u64;
    }
    syscall3(nr::CLOSE, fd, 0, 0);
    (pos, errors)
}

/// One phase's anonymous memory: map, check zero, write, verify, unmap;
/// the errors.
fn anon_phase(phase: u64, len: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let Some(p) = mmap_anon(len) else {
        return 1;
    };
    // SAFETY: a fresh read-write mapping of `len` bytes, unmapped below
    // after the last use of `words`.
    let words = unsafe { core::slice::from_raw_parts_mut(p as *mut u64, (len / 8) as usize) };
    let mut errors = 0u64;
    for (i, w) in words.iter_mut().enumerate() {
        errors += (*w != 0) as u64;
        *w = pattern(phase, i);
    }
    for (i, w) in words.iter().enumerate() {
        errors += (*w != pattern(phase, i)) as u64;
    }
    errors + (syscall3(nr::MUNMAP, p as u64, len, 0) != 0) as u64
}

/// `build PHASES FILES_PER_PHASE ANON_MIB [IDLE_MS]`.
pub fn build(rest: &str) -> u32 {
    let mut words = rest.split_whitespace();
    let mut arg = |default: u64| words.next().and_then(|w| w.parse().ok()).unwrap_or(default);
    let (phases, per_phase, mib, idle) = (arg(8), arg(32), arg(4), arg(0));
    let Some(buf) = mmap_anon(READ_BUF) else {
        say!("result: program=build phases=0 files=0 bytes=0 ms=0 errors=1 reason=no-memory");
        return guest::FAILURE;
    };
    let span = Span::start();
    let (mut files, mut file_bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut next = 0u64; // the next file, cycling through the directory
    for phase in 0..phases {
        for _ in 0..per_phase {
            let e = match dirent(next) {
                Some(e) => e,
                None if next > 0 => {
                    next = 0;
                    match dirent(0) {
                        Some(e) => e,
                        None => break,
                    }
                }
                None => break, // an empty disk: anonymous work only
            };
            next += 1;
            let (b, err) = read_file(&e, buf);
            files += 1;
            file_bytes += b;
            errors += err;
        }
        errors += anon_phase(phase, mib << 20);
        if phase + 1 == phases.div_ceil(2) && phases > 1 {
            say!(
                "build: phase {}/{phases} done in {} ms, {files} files, errors {errors}",
                phase + 1,
                span.ms()
            );
        }
    }
    errors += (syscall3(nr::MUNMAP, buf as u64, READ_BUF, 0) != 0) as u64;
    let freed_at_ms = clock_ns() / 1_000_000;
    let ms = span.ms();
    sleep_ms(idle);
    let k = span.counters();
    let anon_bytes = phases * (mib << 20);
    say!(
        "result: program=build phases={phases} files={files} bytes={} ms={ms} errors={errors} freed_at_ms={freed_at_ms} idle_ms={idle} file_bytes={file_bytes} anon_bytes={anon_bytes} {}",
        file_bytes + anon_bytes,
        Counters(k)
    );
    if errors == 0 {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}
