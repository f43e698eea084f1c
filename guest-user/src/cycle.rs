//! `cycle SECONDS [REPORT_SECONDS]`: the soak's workload, built to turn
//! pages over as fast as the host takes them: every file of the disk
//! mapped shared and read-only once, then pass after pass over every
//! block of every file, each block verified byte for byte, until SECONDS
//! of the kernel's clock have gone by.
//!
//! Between two passes a block is left alone for a whole pass, long enough
//! for the kernel's ageing to make it volatile and for the host to take
//! it under a tight budget; the next touch is then a discard fault and a
//! read from the disk, which the check proves came back intact. One such
//! turn is one discard-and-refault cycle; the kernel counts them
//! (`volatile_discarded`). A progress line every REPORT_SECONDS (default
//! 10) lets a long soak be followed and cut short without losing its
//! figures.
//!
//! It must never write to the mappings (they are read-only, as the disk
//! is) or make a system call per block: the kernel is entered for page
//! faults, discard faults and one clock read every few hundred blocks.

use pagehint_abi::disk::BLOCK_SIZE;
use pagehint_abi::exit::guest;

use crate::kv::{map_files, Mapped};
use crate::say;
use crate::sys::{clock_ns, kstats};
use crate::workloads::{check_block, counters_line, Counters};

/// Blocks verified between two looks at the clock.
const CLOCK_EVERY: u64 = 256;

/// Verifies every block of `f`; the errors, or `None` once `end_ns` has
/// passed (looked at every [`CLOCK_EVERY`] blocks).
fn verify_file(f: &Mapped, end_ns: u64, done: &mut u64) -> Option<u64> {
    let blocks = f.size.div_ceil(BLOCK_SIZE as u64);
    let mut errors = 0;
    for index in 0..blocks {
        if done.is_multiple_of(CLOCK_EVERY) && clock_ns() >= end_ns {
            return None;
        }
        let off = index * BLOCK_SIZE as u64;
        let len = (f.size - off).min(BLOCK_SIZE as u64);
        // SAFETY: `[off, off + len)` lies inside the file's live read-only
        // mapping (`index` < the file's block count).
        let block = unsafe { core::slice::from_raw_parts(f.base.add(off as usize), len as usize) };
        errors += check_block(f.id, index, f.size, block);
        *done += 1;
    }
    Some(errors)
}

/// `cycle SECONDS [REPORT_SECONDS]`.
pub fn cycle(rest: &str) -> u32 {
    let mut words = rest.split_whitespace();
    let seconds = words.next().and_then(|w| w.parse().ok()).unwrap_or(10u64);
    let report_s = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(10u64)
        .max(1);
    let (files, blocks) = match map_files() {
        Ok(m) => m,
        Err(why) => {
            say!("result: program=cycle passes=0 blocks=0 ms=0 errors=1 reason={why}");
            return guest::FAILURE;
        }
    };
    let before = kstats();
    let t0 = clock_ns();
    let end = t0 + seconds * 1_000_000_000;
    let mut next_report = t0 + report_s * 1_000_000_000;
    let (mut passes, mut verified, mut errors) = (0u64, 0u64, 0u64);
    'run: loop {
        for f in files {
            match verify_file(f, end, &mut verified) {
                Some(e) => errors += e,
                None => break 'run,
            }
        }
        passes += 1;
        let now = clock_ns();
        if now >= next_report {
            let k = counters_line(&before, &kstats());
            say!(
                "cycle: s={} passes={passes} blocks={verified} errors={errors} cycles={} discard_faults={} disk_pages={}",
                (now - t0) / 1_000_000_000,
                k.volatile_discarded,
                k.discard_faults,
                k.disk_pages
            );
            next_report = now + report_s * 1_000_000_000;
        }
    }
    let ms = (clock_ns() - t0) / 1_000_000;
    let k = counters_line(&before, &kstats());
    say!(
        "result: program=cycle passes={passes} files={} file_blocks={blocks} blocks={verified} ms={ms} errors={errors} cycles={} {}",
        files.len(),
        k.volatile_discarded,
        Counters(k)
    );
    if errors == 0 {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}
