//! `kv LOOKUPS [THETA_PERCENT]`: a key-value read path in the manner of
//! memcached or RocksDB's block cache under YCSB: the values are the 4 KiB
//! blocks of every file on the disk (key k is block k of the files laid end
//! to end), the keys drawn from a scrambled Zipf distribution (exponent
//! THETA_PERCENT / 100, default 99 as YCSB's), and each value read from a
//! shared mapping of its file and verified byte for byte.
//!
//! Every file is mapped once up front; after that a lookup is user-mode
//! work only (a draw, a binary search, a 4 KiB checksum), so the kernel is
//! entered only for page faults: first touches, and pages the host took
//! back (discard faults). It must never make a system call per lookup,
//! write to the mappings (they are read-only, as the disk is), or keep
//! descriptors open (a task has 64; each file is closed once mapped).

use pagehint_abi::disk::{DirEntry, BLOCK_SIZE};
use pagehint_abi::exit::guest;
use pagehint_abi::syscall::{nr, prot};

use crate::say;
use crate::sys::{clock_ns, kstats, syscall3, syscall5};
use crate::workloads::{check_block, counters_line, dirent, mmap_anon, open, Counters};
use guest_user::zipf::{fill_cdf, rank_of, ranks_holding, scramble, SplitMix64};

/// One mapped file: where its blocks are, and its first key.
#[derive(Clone, Copy)]
pub(crate) struct Mapped {
    pub(crate) base: *const u8,
    pub(crate) size: u64,
    pub(crate) first_key: u64,
    pub(crate) id: u32,
}

/// Arrays in anonymous memory (user programs have no heap): zeroed
/// on first touch, never freed (the program exits).
pub(crate) fn alloc<T>(n: usize) -> Option<&'static mut [T]> {
    let len = (n.max(1) * core::mem::size_of::<T>()).next_multiple_of(4096) as u64;
    let p = mmap_anon(len)? as *mut T;
    // SAFETY: a fresh, zero-filled, read-write mapping big enough for `n`
    // values of `T`, which is only instantiated with integer types and
    // `Mapped` (a pointer and integers: all zeroes is a valid value), and
    // never unmapped while the program runs.
    Some(unsafe { core::slice::from_raw_parts_mut(p, n) })
}

/// Maps every file of the disk shared and read-only; the table and the
/// key count, or why not.
pub(crate) fn map_files() -> Result<(&'static [Mapped], u64), &'static str> {
    let mut count = 0;
    while dirent(count).is_some() {
        count += 1;
    }
    let files = alloc::<Mapped>(count as usize).ok_or("no-memory")?;
    let mut keys = 0;
    let mut n = 0;
    for i in 0..count {
        let e: DirEntry = dirent(i).ok_or("dirent")?;
        if e.size == 0 {
            continue;
        }
        let fd = open(&e).ok_or("open")?;
        let a = syscall5(nr::MMAP_FILE, e.size, prot::READ, fd, 0, 1);
        // The mapping outlives the descriptor.
        syscall3(nr::CLOSE, fd, 0, 0);
        if a <= 0 {
            return Err("mmap");
        }
        files[n] = Mapped {
            base: a as u64 as *const u8,
            size: e.size,
            first_key: keys,
            id: e.file_id,
        };
        keys += e.size.div_ceil(BLOCK_SIZE as u64);
        n += 1;
    }
    if keys == 0 {
        return Err("no-files");
    }
    Ok((&files[..n], keys))
}

/// Reads and verifies the value of `key`: its length and 0 or 1 error.
fn lookup(files: &[Mapped], key: u64) -> (u64, u64) {
    // The last file whose first key is not past `key`.
    let f = &files[files.partition_point(|m| m.first_key <= key) - 1];
    let index = key - f.first_key;
    let off = index * BLOCK_SIZE as u64;
    let len = (f.size - off).min(BLOCK_SIZE as u64);
    // SAFETY: `[off, off + len)` lies inside the file's live read-only
    // mapping (`index` < the file's block count, by `first_key`).
    let value = unsafe { core::slice::from_raw_parts(f.base.add(off as usize), len as usize) };
    (len, check_block(f.id, index, f.size, value))
}

/// `kv LOOKUPS [THETA_PERCENT]`; `instance` seeds the draws, so copies
/// of the program draw different (each reproducible) key sequences.
pub fn kv(rest: &str, instance: u64) -> u32 {
    let mut words = rest.split_whitespace();
    let lookups = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(100_000u64);
    let theta_pct = words.next().and_then(|w| w.parse().ok()).unwrap_or(99u64);
    let t_setup = clock_ns();
    let (files, keys) = match map_files() {
        Ok(m) => m,
        Err(why) => {
            say!("result: program=kv lookups=0 bytes=0 ms=0 errors=1 reason={why}");
            return guest::FAILURE;
        }
    };
    // One CDF entry per key (8 bytes a key: 10 KiB for 20 MiB of
    // files), and one bit per key for the keys actually read.
    let (Some(cdf), Some(seen)) = (
        alloc::<u64>(keys as usize),
        alloc::<u64>(keys.div_ceil(64) as usize),
    ) else {
        say!("result: program=kv lookups=0 bytes=0 ms=0 errors=1 reason=no-memory");
        return guest::FAILURE;
    };
    fill_cdf(cdf, theta_pct as f64 / 100.0);
    let hot_keys = ranks_holding(cdf, 50);
    let setup_ms = (clock_ns() - t_setup) / 1_000_000;
    say!(
        "kv: {} files, {keys} keys, theta {}.{:02}, half the lookups on {hot_keys} keys, set up in {setup_ms} ms",
        files.len(),
        theta_pct / 100,
        theta_pct % 100
    );

    let mut rng = SplitMix64::new(0x6b76_5eed ^ instance.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let before = kstats();
    let t0 = clock_ns();
    let (mut bytes, mut errors) = (0u64, 0u64);
    for i in 0..lookups {
        if i == lookups / 2 && i > 0 {
            say!(
                "kv: {i}/{lookups} lookups in {} ms, errors {errors}",
                (clock_ns() - t0) / 1_000_000
            );
        }
        let key = scramble(rank_of(cdf, rng.next_unit()), keys);
        seen[(key / 64) as usize] |= 1 << (key % 64);
        let (len, bad) = lookup(files, key);
        bytes += len;
        errors += bad;
    }
    let ms = (clock_ns() - t0) / 1_000_000;
    let k = counters_line(&before, &kstats());
    let distinct: u64 = seen.iter().map(|w| w.count_ones() as u64).sum();
    say!(
        "result: program=kv lookups={lookups} keys={keys} bytes={bytes} ms={ms} errors={errors} hot_keys={hot_keys} distinct_keys={distinct} theta_pct={theta_pct} files={} setup_ms={setup_ms} {}",
        files.len(),
        Counters(k)
    );
    if errors == 0 {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}
