//! Free page reporting, re-created as the baseline the experiments compare
//! hinting against: Linux's `mm/page_reporting.c` with virtio-balloon's
//! free page reporting, as in QEMU, Firecracker and Cloud Hypervisor.
//!
//! Its policy, taken from Linux: only free memory is reported, only whole
//! aligned blocks of order `pageblock_order` (9: 2 MiB), at most one pass
//! every 2 seconds (`PAGE_REPORTING_DELAY`), up to 32 blocks a pass
//! (`PAGE_REPORTING_CAPACITY`), and a block is reported once until it is
//! used again. The host discards a reported block at once and forgets it;
//! the guest does not tell the host when it reuses one (the next touch
//! gets a zero page). Page-cache pages, however clean, are never reported.
//!
//! A pass counts the allocator's free frames per 2 MiB block (the free
//! list and the never-used remainder, as Linux's free lists hold both);
//! allocating a frame clears its block's "reported" mark. While a pass
//! reports, it holds the allocator's lock, as Linux isolates the pages it
//! reports.
//!
//! Filling its report batch page is part of its job: the page is handed
//! over for good by [`init`] (an `unsafe fn` for that reason) and written
//! only here, under this module's lock; the two writes are its unsafe
//! blocks.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pagehint_abi::hypercall::{CallResult, HintBatch, HintEntry, HintOp, Request};
use pagehint_abi::{GuestPhys, Pfn};

use crate::arch::direct_map;
use crate::sync::SpinLock;

/// Frames per reported block (order 9).
pub const BLOCK_FRAMES: u64 = 512;
/// Blocks reported in one pass at most.
pub const CAPACITY: usize = 32;
/// Timer ticks between passes (10 ms ticks: 2 s).
pub const PERIOD_TICKS: u64 = 200;

pub static REPORTED_BLOCKS: AtomicU64 = AtomicU64::new(0);
pub static PASSES: AtomicU64 = AtomicU64::new(0);

struct Blocks {
    /// Free frames per block, counted by each pass.
    free: Vec<u16>,
    /// Reported and untouched since.
    reported: Vec<bool>,
    /// Batch page for the reports (physical), 0 if there is none.
    page: u64,
}

static BLOCKS: SpinLock<Option<Blocks>> = SpinLock::new(None);
/// Set once reporting is on: the counters cost nothing otherwise.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Turns reporting on for `frames` frames of RAM, with `page` (a
/// physical address, 0 if none could be had) as the report batch.
///
/// # Safety
///
/// `page`, unless 0, is a page-aligned frame of RAM handed over for good:
/// never freed, never named again by the caller, and no Rust reference
/// points into it. Call once.
pub unsafe fn init(frames: u64, page: u64) {
    let n = frames.div_ceil(BLOCK_FRAMES) as usize;
    *BLOCKS.lock() = Some(Blocks {
        free: vec![0; n],
        reported: vec![false; n],
        page,
    });
    ACTIVE.store(true, Ordering::Release);
}

/// Whether free page reporting is on.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// A frame left the allocator: its block is in use again.
pub fn taken(pfn: u64) {
    if !active() {
        return;
    }
    if let Some(b) = BLOCKS.lock().as_mut() {
        if let Some(r) = b.reported.get_mut((pfn / BLOCK_FRAMES) as usize) {
            *r = false;
        }
    }
}

/// One reporting pass: reports up to `CAPACITY` wholly free blocks not
/// reported yet. `for_each_free` enumerates the allocator's free frames;
/// the caller holds the allocator's lock (taken before this module's, as
/// on every path), so no frame of a block is handed out while the host
/// discards it.
pub fn pass(for_each_free: impl FnOnce(&mut dyn FnMut(u64))) {
    let mut g = BLOCKS.lock();
    let Some(b) = g.as_mut() else { return };
    if b.page == 0 {
        return;
    }
    PASSES.fetch_add(1, Ordering::Relaxed);
    b.free.iter_mut().for_each(|f| *f = 0);
    let free = &mut b.free;
    for_each_free(&mut |pfn| {
        if let Some(f) = free.get_mut((pfn / BLOCK_FRAMES) as usize) {
            *f += 1;
        }
    });
    let picked: Vec<usize> = (0..b.free.len())
        .filter(|&i| b.free[i] as u64 == BLOCK_FRAMES && !b.reported[i])
        .take(CAPACITY)
        .collect();
    if picked.is_empty() {
        return;
    }
    // The report page (nonzero: checked above) is laid out as a
    // `HintBatch` and used only under this lock.
    let entries = b.page + offset_of!(HintBatch, entries) as u64;
    for (k, &i) in picked.iter().enumerate() {
        // SAFETY: `b.page` is the frame `init` was handed for good (its
        // # Safety); entry `k` < CAPACITY < HINT_BATCH_MAX lies inside
        // it, aligned; we hold the lock, so no other writer.
        unsafe {
            direct_map::write(
                entries + (k * size_of::<HintEntry>()) as u64,
                HintEntry::new(
                    HintOp::SetUnused,
                    Pfn(i as u64 * BLOCK_FRAMES),
                    BLOCK_FRAMES as u32,
                ),
            )
        };
    }
    // SAFETY: as above: the batch's count field of our own report page.
    unsafe {
        direct_map::write::<u32>(
            b.page + offset_of!(HintBatch, count) as u64,
            picked.len() as u32,
        )
    };
    let r = crate::hv::call(Request::HintBatch {
        batch: GuestPhys(b.page),
        count: picked.len() as u64,
    });
    if r == Some(Ok(CallResult::Ok)) {
        for &i in &picked {
            b.reported[i] = true;
        }
        REPORTED_BLOCKS.fetch_add(picked.len() as u64, Ordering::Relaxed);
    }
}
