//! `fwrite ROUNDS PAGES HOW [SEED [GAP_US]]`: rewrites file blocks in place and
//! checks that every write is kept, through the page cache while the host
//! reclaims and, with `fverify`, on the disk after a fresh boot.
//!
//! Every file of the disk is mapped shared (writable for `HOW` = `mmap` or
//! `mixed`). Each round rewrites PAGES whole blocks picked by a seeded
//! generator, block `k` becoming version `round` of itself
//! (`pagehint_abi::disk::fill_block_version`): with `pwrite` (never
//! synced with `pwrite-nosync`: the kernel's background write-back and its
//! sync at the stop must carry the writes), through the shared mapping
//! (`mmap`), or alternately (`mixed`), GAP_US microseconds
//! apart (default 0: a writer that races the host's reclaim spreads its
//! writes over several reclaim rounds); then syncs (`fsync`
//! per file or `msync` per mapping) and reads PAGES other blocks back
//! through the mapping, checking checksum and version. At the end every
//! block is checked through the mapping and again through `read`.
//!
//! `fverify` with the same arguments replays the schedule without writing
//! and checks every block through `read`: run it on the same disk image
//! after `fwrite` (a fresh boot) to prove the writes reached the disk.
//!
//! A write-back that lost a write, a host that dropped a written page, or a
//! stale page read back shows as a block whose version is not the one the
//! schedule says. The program must never write a block partially, or a
//! block past the last whole one of a file (files keep their size).

use pagehint_abi::disk::{block_version, fill_block_version, verify_block, BLOCK_SIZE};
use pagehint_abi::exit::guest;
use pagehint_abi::syscall::{nr, prot};

use crate::say;
use crate::sys::{clock_ns, kstats, syscall3, syscall5};
use crate::workloads::{counters_line, dirent, mmap_anon, open, sleep_us, Counters, CHUNK};
use guest_user::zipf::SplitMix64;

/// Most files used (a task has 64 descriptors).
const MAX_FILES: usize = 48;

/// How blocks are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    Pwrite,
    /// `pwrite` and never `fsync`: the kernel's background write-back and
    /// its sync before the machine stops must carry every write.
    PwriteNoSync,
    Mmap,
    Mixed,
}

#[derive(Clone, Copy, Default)]
struct File {
    fd: u64,
    id: u32,
    size: u64,
    /// Whole blocks, and the first key (keys are blocks laid end to end).
    blocks: u64,
    first_key: u64,
    base: u64,
}

/// The disk's files, opened and mapped shared; `keys` blocks in all.
struct Files {
    list: [File; MAX_FILES],
    n: usize,
    keys: u64,
}

impl Files {
    fn open(writable: bool) -> Result<Self, &'static str> {
        let mut f = Files {
            list: [File::default(); MAX_FILES],
            n: 0,
            keys: 0,
        };
        let p = if writable { prot::RW } else { prot::READ };
        let mut i = 0;
        while let Some(e) = dirent(i) {
            i += 1;
            let blocks = e.size / BLOCK_SIZE as u64;
            if blocks == 0 || e.file_id == 0 || f.n == MAX_FILES {
                continue;
            }
            let fd = open(&e).ok_or("open")?;
            let a = syscall5(nr::MMAP_FILE, e.size, p, fd, 0, 1);
            if a <= 0 {
                return Err("mmap-shared-writable");
            }
            f.list[f.n] = File {
                fd,
                id: e.file_id,
                size: e.size,
                blocks,
                first_key: f.keys,
                base: a as u64,
            };
            f.n += 1;
            f.keys += blocks;
        }
        if f.keys == 0 {
            return Err("no-files");
        }
        Ok(f)
    }

    /// The file holding key `k` and the block's index in it.
    fn locate(&self, k: u64) -> (&File, u64) {
        let i = self.list[..self.n].partition_point(|f| f.first_key + f.blocks <= k);
        let f = &self.list[i.min(self.n - 1)];
        (f, k - f.first_key)
    }

    /// Every file to the disk: `fsync` after `pwrite`, else `msync` of its
    /// mapping. Returns how many calls failed.
    fn sync(&self, how: How) -> u64 {
        if how == How::PwriteNoSync {
            return 0;
        }
        let mut failed = 0;
        for f in &self.list[..self.n] {
            let s = if how == How::Pwrite {
                syscall3(nr::FSYNC, f.fd, 0, 0)
            } else {
                syscall3(nr::MSYNC, f.base, f.size, 0)
            };
            failed += (s != 0) as u64;
        }
        failed
    }

    /// Block `index` of `f` through its mapping.
    fn mapped(f: &File, index: u64) -> &'static mut [u8; BLOCK_SIZE] {
        // SAFETY: `index` < `f.blocks`, so the block lies wholly inside the
        // shared mapping of the file, which stays mapped until exit.
        unsafe { &mut *((f.base + index * BLOCK_SIZE as u64) as *mut [u8; BLOCK_SIZE]) }
    }
}

/// The keys round `round` writes (or, with `salt`, reads back).
fn schedule(seed: u64, round: u64, salt: u64) -> SplitMix64 {
    SplitMix64::new(seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt)
}

/// The version every key must hold after `rounds` rounds.
fn expected(files: &Files, rounds: u64, pages: u64, seed: u64) -> Option<&'static mut [u64]> {
    let len = (files.keys * 8).next_multiple_of(4096);
    let p = mmap_anon(len)? as *mut u64;
    // SAFETY: a fresh zero-filled mapping of `keys` u64s, never unmapped.
    let ver = unsafe { core::slice::from_raw_parts_mut(p, files.keys as usize) };
    for r in 1..=rounds {
        let mut g = schedule(seed, r, 0);
        for _ in 0..pages {
            ver[(g.next_u64() % files.keys) as usize] = r;
        }
    }
    Some(ver)
}

/// Checks one block against the version it must hold: 0 or 1 error.
fn check(f: &File, index: u64, want: u64, block: &[u8; BLOCK_SIZE]) -> u64 {
    (verify_block(f.id, index, block).is_err() || block_version(f.id, index, block) != want) as u64
}

/// Reads every file with `read` and checks each block; errors found.
fn check_by_read(files: &Files, ver: &[u64]) -> Result<u64, &'static str> {
    let buf = mmap_anon(CHUNK).ok_or("no-memory")?;
    let mut errors = 0;
    for f in &files.list[..files.n] {
        let mut i = 0;
        while let Some(e) = dirent(i) {
            i += 1;
            if e.file_id != f.id {
                continue;
            }
            let fd = open(&e).ok_or("open")?;
            let mut index = 0;
            while index < f.blocks {
                let n = syscall3(nr::READ, fd, buf as u64, CHUNK);
                if n <= 0 {
                    return Err("read");
                }
                let got = n as usize / BLOCK_SIZE;
                for b in 0..got as u64 {
                    if index + b >= f.blocks {
                        break;
                    }
                    // SAFETY: block `b` lies inside the `n` bytes just read.
                    let block =
                        unsafe { &*(buf.add(b as usize * BLOCK_SIZE) as *const [u8; BLOCK_SIZE]) };
                    errors += check(f, index + b, ver[(f.first_key + index + b) as usize], block);
                }
                index += got.max(1) as u64;
            }
            syscall3(nr::CLOSE, fd, 0, 0);
            break;
        }
    }
    Ok(errors)
}

fn parse(rest: &str) -> (u64, u64, &str, u64, u64) {
    let mut w = rest.split_whitespace();
    let rounds = w.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let pages = w.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let how = w.next().unwrap_or("mixed");
    let seed = w.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let gap_us = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (rounds, pages, how, seed, gap_us)
}

/// `fwrite ROUNDS PAGES pwrite|mmap|mixed [SEED [GAP_US]]`.
pub fn fwrite(rest: &str) -> u32 {
    let (rounds, pages, how, seed, gap_us) = parse(rest);
    let how = match how {
        "pwrite" => How::Pwrite,
        "pwrite-nosync" => How::PwriteNoSync,
        "mmap" => How::Mmap,
        "mixed" => How::Mixed,
        other => {
            say!("result: program=fwrite errors=1 reason=unknown-way-of-writing-{other} (pwrite, mmap, mixed)");
            return guest::BAD_COMMAND_LINE;
        }
    };
    let files = match Files::open(matches!(how, How::Mmap | How::Mixed)) {
        Ok(f) => f,
        Err(e) => {
            say!("result: program=fwrite errors=1 reason={e}");
            return guest::FAILURE;
        }
    };
    let Some(ver) = expected(&files, 0, 0, seed) else {
        say!("result: program=fwrite errors=1 reason=no-memory");
        return guest::FAILURE;
    };
    let before = kstats();
    let t0 = clock_ns();
    let (mut errors, mut written, mut checked, mut sync_errors) = (0u64, 0u64, 0u64, 0u64);
    let mut block = [0u8; BLOCK_SIZE];
    for r in 1..=rounds {
        let mut g = schedule(seed, r, 0);
        for _ in 0..pages {
            let k = g.next_u64() % files.keys;
            let (f, index) = files.locate(k);
            let through_map = how == How::Mmap || (how == How::Mixed && k % 2 == 1);
            if through_map {
                fill_block_version(f.id, index, f.size, r, Files::mapped(f, index));
            } else {
                fill_block_version(f.id, index, f.size, r, &mut block);
                let n = syscall5(
                    nr::PWRITE,
                    f.fd,
                    block.as_ptr() as u64,
                    BLOCK_SIZE as u64,
                    index * BLOCK_SIZE as u64,
                    0,
                );
                if n != BLOCK_SIZE as i64 {
                    say!("result: program=fwrite errors=1 reason=pwrite-returned-{n} file={} block={index}", f.id);
                    return guest::FAILURE;
                }
            }
            ver[k as usize] = r;
            written += 1;
            sleep_us(gap_us);
        }
        sync_errors += files.sync(how);
        let mut g = schedule(seed, r, 0x5a5a);
        for _ in 0..pages {
            let k = g.next_u64() % files.keys;
            let (f, index) = files.locate(k);
            errors += check(f, index, ver[k as usize], Files::mapped(f, index));
            checked += 1;
        }
    }
    // Everything, through the mappings and through `read`.
    for k in 0..files.keys {
        let (f, index) = files.locate(k);
        errors += check(f, index, ver[k as usize], Files::mapped(f, index));
    }
    sync_errors += files.sync(how);
    let read_errors = match check_by_read(&files, ver) {
        Ok(e) => e,
        Err(e) => {
            say!("result: program=fwrite errors=1 reason={e}");
            return guest::FAILURE;
        }
    };
    let ms = (clock_ns() - t0) / 1_000_000;
    let k = counters_line(&before, &kstats());
    let all = errors + read_errors + sync_errors;
    let ok = all == 0;
    // `bytes` counts the blocks written and checked in the rounds, so that
    // bytes over ms is the workload's throughput.
    say!(
        "result: program=fwrite rounds={rounds} pages={pages} blocks={} written={written} checked={checked} bytes={} errors={all} map_errors={errors} read_errors={read_errors} sync_errors={sync_errors} ms={ms} {}",
        files.keys,
        (written + checked) * BLOCK_SIZE as u64,
        Counters(k)
    );
    if ok {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}

/// `fverify ROUNDS PAGES HOW [SEED]`: the versions `fwrite` with the same
/// arguments left, checked on the disk through `read`.
pub fn fverify(rest: &str) -> u32 {
    let (rounds, pages, _, seed, _) = parse(rest);
    let files = match Files::open(false) {
        Ok(f) => f,
        Err(e) => {
            say!("result: program=fverify errors=1 reason={e}");
            return guest::FAILURE;
        }
    };
    let Some(ver) = expected(&files, rounds, pages, seed) else {
        say!("result: program=fverify errors=1 reason=no-memory");
        return guest::FAILURE;
    };
    let rewritten = ver.iter().filter(|&&v| v != 0).count();
    match check_by_read(&files, ver) {
        Ok(errors) => {
            say!(
                "result: program=fverify blocks={} rewritten={rewritten} errors={errors}",
                files.keys
            );
            if errors == 0 {
                guest::SUCCESS
            } else {
                guest::FAILURE
            }
        }
        Err(e) => {
            say!("result: program=fverify errors=1 reason={e}");
            guest::FAILURE
        }
    }
}
