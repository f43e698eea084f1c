//! Writable file pages: mapping them writable (seed 000's
//! `check_writable`), what is dirty, and getting it to the disk.
//!
//! A cache page becomes dirty two ways: `pwrite` copies into it (the kernel
//! sets `DIRTY` itself), or a user writes through a shared writable
//! mapping (the CPU sets the PTE's dirty bit, which this module gathers
//! through the reverse map and clears, as Linux's `page_mkclean` does).
//! Write-back sends dirty pages to the disk in runs of up to
//! `virtio_blk::MAX_PAGES`; it runs on `fsync`, `msync`, `munmap`, before a
//! process exits, when too many pages are dirty (from `pwrite`, as Linux's
//! `balance_dirty_pages`), when reclaim picks a dirty page, on an idle CPU
//! every half second (64 pages of the write-back set a pass, round robin:
//! the flusher), and for everything before the machine stops.
//!
//! The order that keeps the host honest (`docs/reclaim.md`, "Potentially
//! volatile frames and the dirty log"): the dirty bits are cleared and
//! every CPU's TLB flushed *before* the write request is sent, so a write
//! after that sets a dirty bit again, and a page is made potentially
//! volatile (`filemap::age_cache`) only while no dirty bit is set since.
//! This module must never drop or free a page that is dirty, and never
//! send a page to the disk while the host may have taken it (a volatile
//! page is made stable first).

use alloc::vec::Vec;

use guest_logic::frame_table::{flag, Mapping};
use guest_logic::paging::{flags as pte_flags, Mapper, ADDR_MASK};
use guest_logic::vma::Backing;
use pagehint_abi::hypercall::{HintOp, HintResult};
use pagehint_abi::PAGE_SIZE;

use super::addr_space::{leaf_flags, AsError};
use super::MmState;
use crate::arch::cpu;
use crate::drivers::virtio_blk;
use crate::fs;
use crate::phys::pages::{free_frame, KernelPhys};
use crate::phys::{hints, tlb};

/// Dirty pages above which `pwrite` writes some back itself.
const DIRTY_LIMIT: u64 = 512;
/// Pages it writes back then.
const DIRTY_BATCH: usize = 128;
/// Pages of the write-back set an idle CPU looks at per pass.
const BACKGROUND_BATCH: usize = 64;
/// Time between two background passes.
pub const BACKGROUND_PERIOD_NS: u64 = 500_000_000;

/// When the next background pass may run (kernel clock, ns).
static NEXT_BACKGROUND: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Called by an idle CPU before it halts: at most every
/// [`BACKGROUND_PERIOD_NS`], one background pass (`MmState::
/// background_writeback`). Only one CPU wins each period.
pub fn background() {
    use core::sync::atomic::Ordering;
    let now = crate::clock::now_ns();
    let next = NEXT_BACKGROUND.load(Ordering::Relaxed);
    if now < next
        || NEXT_BACKGROUND
            .compare_exchange(
                next,
                now + BACKGROUND_PERIOD_NS,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
    {
        return;
    }
    super::with(|st| st.background_writeback());
}

impl MmState {
    /// Cache page `pfn` (stable) now differs from the disk.
    pub fn mark_dirty(&mut self, pfn: u64) {
        if self.frames.flags(pfn) & flag::DIRTY != 0 {
            return;
        }
        self.frames.set_flags(pfn, flag::DIRTY);
        self.stats.dirty_frames += 1;
        if let Some(owner) = self.frames.owner(pfn) {
            self.wb.insert(owner);
        }
    }

    /// A PTE that mapped cache page `pfn` went away (or was replaced) with
    /// value `old`: its dirty bit must not be lost.
    pub(super) fn unmapped_pte(&mut self, pfn: u64, old: u64) {
        if old & pte_flags::DIRTY != 0 && self.frames.flags(pfn) & flag::CACHED != 0 {
            self.stats.pte_dirty += 1;
            self.mark_dirty(pfn);
        }
    }

    /// Clears the dirty bit of every PTE that maps `pfn` and moves it to
    /// the frame (`page_mkclean`). True if any mapping is writable (the
    /// caller then owes a TLB shootdown before it trusts the bits again).
    fn mkclean(&mut self, pfn: u64, maps: &mut Vec<Mapping>) -> bool {
        let (mut dirty, mut writable) = (false, false);
        // The caller's shootdown pays for the flushes.
        self.update_ptes_of(pfn, maps, |pte| {
            dirty |= pte & pte_flags::DIRTY != 0;
            writable |= pte & pte_flags::WRITABLE != 0;
            pte & !pte_flags::DIRTY
        });
        if dirty {
            self.stats.pte_dirty += 1;
            self.mark_dirty(pfn);
        }
        writable
    }

    /// Whether any PTE mapping `pfn` has its dirty bit set (read only).
    pub(super) fn pte_dirty(&self, pfn: u64, maps: &mut Vec<Mapping>) -> bool {
        maps.clear();
        self.frames.mappings(pfn, maps);
        maps.iter().any(|&Mapping { asid, va }| {
            self.spaces.get(&asid).is_some_and(|s| {
                s.translate(va).is_some_and(|pte| {
                    (pte & ADDR_MASK) / PAGE_SIZE == pfn && pte & pte_flags::DIRTY != 0
                })
            })
        })
    }

    /// Writes back the dirty ones of cache pages `pages` ((file, page),
    /// sorted): dirty bits gathered and cleared, TLBs flushed, then one
    /// request per run of consecutive pages. Pages left clean and mapped
    /// read-only or not at all leave the write-back set.
    pub fn writeback(&mut self, pages: &[(u32, u64)]) -> Result<(), AsError> {
        let mut maps = Vec::new();
        let mut flush = false;
        let mut live: Vec<(u32, u64, u64)> = Vec::new();
        for &(file, index) in pages {
            match self.frames.peek(file, index) {
                Some(pfn) => {
                    if self.frames.flags(pfn) & flag::WRITABLE_MAPPED != 0 {
                        flush |= self.mkclean(pfn, &mut maps);
                    }
                    live.push((file, index, pfn));
                }
                None => {
                    self.wb.remove(&(file, index));
                }
            }
        }
        if flush {
            // From here on a write through any mapping sets a dirty bit.
            tlb::shootdown_all();
            self.stats.shootdowns += 1;
        }
        let dirty: Vec<(u32, u64, u64)> = live
            .iter()
            .copied()
            .filter(|&(_, _, pfn)| self.frames.flags(pfn) & flag::DIRTY != 0)
            .collect();
        let r = self.write_out(&dirty);
        for &(file, index, pfn) in &live {
            let f = self.frames.flags(pfn);
            if f & (flag::DIRTY | flag::WRITABLE_MAPPED) == 0 {
                self.wb.remove(&(file, index));
            }
            // Clean again, but off the active list: it would never be
            // looked at again until it is used.
            if f & (flag::DIRTY | flag::ACTIVE) == 0 {
                self.age_one(pfn, &mut maps);
            }
        }
        r
    }

    /// Sends dirty cache pages `pages` ((file, page, frame), sorted) to the
    /// disk. A page the host may hold (potentially volatile) is made
    /// stable first; `DIRTY` is cleared before its request goes out and set
    /// again if the request fails.
    pub(super) fn write_out(&mut self, pages: &[(u32, u64, u64)]) -> Result<(), AsError> {
        for &(_, _, pfn) in pages {
            if self.frames.flags(pfn) & flag::VOLATILE != 0 {
                self.stats.pv_written += 1;
                self.stable_for_writeback(pfn);
            }
        }
        let mut result = Ok(());
        let mut i = 0;
        while i < pages.len() {
            let (file, first, _) = pages[i];
            let mut run: Vec<u64> = Vec::new();
            let mut j = i;
            while j < pages.len()
                && run.len() < virtio_blk::MAX_PAGES
                && pages[j].0 == file
                && pages[j].1 == first + run.len() as u64
            {
                run.push(pages[j].2 * PAGE_SIZE);
                j += 1;
            }
            let Some(entry) = fs::entry(file) else {
                result = Err(AsError::Io);
                i = j;
                continue;
            };
            for &pa in &run {
                self.frames.clear_flags(pa / PAGE_SIZE, flag::DIRTY);
                self.frames.set_flags(pa / PAGE_SIZE, flag::LOCKED);
            }
            let r = virtio_blk::write_pages(entry.first_block + first, &run);
            self.stats.writeback_requests += 1;
            for &pa in &run {
                self.frames.clear_flags(pa / PAGE_SIZE, flag::LOCKED);
                if r.is_err() {
                    self.frames.set_flags(pa / PAGE_SIZE, flag::DIRTY);
                }
            }
            match r {
                Ok(()) => {
                    self.stats.writeback_pages += run.len() as u64;
                    self.stats.dirty_frames =
                        self.stats.dirty_frames.saturating_sub(run.len() as u64);
                }
                Err(e) => {
                    crate::console::println!(
                        "guest: write-back of file {file} page {first} failed: {e:?}"
                    );
                    result = Err(AsError::Io);
                }
            }
            i = j;
        }
        result
    }

    /// A potentially volatile page about to be written back: made stable
    /// (the host never drops one its dirty log saw written, so it must
    /// still be there; if it is not, the guest broke the protocol and the
    /// page is dropped like any lost clean page, counted as an error).
    fn stable_for_writeback(&mut self, pfn: u64) {
        let mut lost = false;
        match hints::make_stable_shared(pfn) {
            Some(l) => lost = l,
            None => hints::now_many(HintOp::MakeStable, &[pfn], |_, r| {
                lost = r == Ok(HintResult::Discarded);
            }),
        }
        self.frames
            .clear_flags(pfn, flag::VOLATILE | flag::POT_VOLATILE);
        self.volatile = self.volatile.saturating_sub(1);
        if lost {
            self.stats.hint_errors += 1;
        }
    }

    /// `fsync`: every dirty page of `file`, then a device flush.
    pub fn fsync_file(&mut self, file: u32) -> Result<(), AsError> {
        let pages: Vec<(u32, u64)> = self
            .wb
            .range((file, 0)..=(file, u64::MAX))
            .copied()
            .collect();
        self.writeback(&pages)?;
        virtio_blk::flush().map_err(|_| AsError::Io)
    }

    /// `msync`: the cache pages mapped shared in `[start, start + len)` of
    /// `asid`, then a device flush.
    pub fn msync(&mut self, asid: u32, start: u64, len: u64) -> Result<(), AsError> {
        let end = start.checked_add(len).ok_or(AsError::BadRange)?;
        let pages = self.shared_pages(asid, start, end)?;
        self.writeback(&pages)?;
        virtio_blk::flush().map_err(|_| AsError::Io)
    }

    /// Before a process exits: everything its shared file mappings
    /// dirtied reaches the disk.
    pub fn writeback_space(&mut self, asid: u32) -> Result<(), AsError> {
        let pages = self.shared_pages(asid, 0, pagehint_abi::syscall::USER_END)?;
        if pages.is_empty() {
            return Ok(());
        }
        self.writeback(&pages)?;
        virtio_blk::flush().map_err(|_| AsError::Io)
    }

    /// (file, page) of every cache page mapped writable and shared in
    /// `[start, end)` of `asid`, sorted.
    pub(super) fn shared_pages(
        &mut self,
        asid: u32,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u32, u64)>, AsError> {
        let space = self.spaces.get(&asid).ok_or(AsError::NoSpace)?;
        let mut out = Vec::new();
        // Every page this can find is in the write-back set (dirty or
        // mapped writable): without one, `munmap` and exit walk nothing.
        if self.wb.is_empty() {
            return Ok(out);
        }
        let shared_file =
            |v: &&guest_logic::vma::Vma| matches!(v.backing, Backing::File { shared: true, .. });
        for vma in space.vmas().filter(shared_file) {
            let (from, to) = (vma.start.max(start), vma.end.min(end));
            let mut va = from;
            while va < to {
                if let (Some((file, index, true)), Some(pte)) =
                    (vma.file_page(va), space.translate(va))
                {
                    let pfn = (pte & ADDR_MASK) / PAGE_SIZE;
                    if self.frames.peek(file, index) == Some(pfn)
                        && self.frames.flags(pfn) & (flag::WRITABLE_MAPPED | flag::DIRTY) != 0
                    {
                        out.push((file, index));
                    }
                }
                va += PAGE_SIZE;
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Before the machine stops (the last process exited): every page
    /// still dirty, `pwrite`'s included, reaches the disk, then a flush
    /// (as a clean shutdown syncs).
    pub fn sync_all(&mut self) -> Result<(), AsError> {
        if self.wb.is_empty() {
            return Ok(());
        }
        let pages: Vec<(u32, u64)> = self.wb.iter().copied().collect();
        self.writeback(&pages)?;
        virtio_blk::flush().map_err(|_| AsError::Io)
    }

    /// The background write-back of an idle CPU: the next
    /// [`BACKGROUND_BATCH`] pages of the write-back set after the last
    /// pass's (so every page comes round), dirty bits gathered and dirty
    /// ones written. Nothing is flushed: that is `fsync`'s promise.
    pub fn background_writeback(&mut self) {
        if self.wb.is_empty() {
            return;
        }
        let from = self.wb_cursor;
        let mut pages: Vec<(u32, u64)> = self
            .wb
            .range(from..)
            .take(BACKGROUND_BATCH)
            .copied()
            .collect();
        if pages.len() < BACKGROUND_BATCH {
            let more = BACKGROUND_BATCH - pages.len();
            pages.extend(self.wb.range(..from).take(more).copied());
            pages.sort_unstable();
            pages.dedup();
        }
        if let Some(&(f, i)) = pages.last() {
            self.wb_cursor = (f, i.saturating_add(1));
        }
        self.stats.background_passes += 1;
        let _ = self.writeback(&pages);
    }

    /// After `pwrite`: past [`DIRTY_LIMIT`] dirty pages the writer writes
    /// [`DIRTY_BATCH`] of them back itself (no page is dirty for long, and
    /// dirty pages, which the host can never take, stay bounded).
    pub fn balance_dirty(&mut self) {
        if self.stats.dirty_frames <= DIRTY_LIMIT {
            return;
        }
        let pages: Vec<(u32, u64)> = self
            .wb
            .iter()
            .copied()
            .filter(|&(f, i)| {
                self.frames
                    .peek(f, i)
                    .is_some_and(|p| self.frames.flags(p) & flag::DIRTY != 0)
            })
            .take(DIRTY_BATCH)
            .collect();
        let _ = self.writeback(&pages);
    }

    /// Before the first writable PTE of cache page `pfn`: `check_writable`,
    /// answered now when the page is volatile (the host may have taken
    /// it). A volatile page stays potentially volatile with the VMM's
    /// option, else becomes stable. False if the host had dropped it (the
    /// caller drops it from the cache and the access is retried).
    pub(super) fn writable_cache_page(&mut self, pfn: u64) -> bool {
        let f = self.frames.flags(pfn);
        if f & flag::WRITABLE_MAPPED != 0 {
            return true;
        }
        if f & flag::VOLATILE != 0 {
            if crate::phys::hints::check_writable_now(pfn) {
                return false;
            }
            if crate::phys::hints::potentially_volatile() {
                self.frames.set_flags(pfn, flag::POT_VOLATILE);
                self.stats.potentially_volatile += 1;
            } else {
                self.frames
                    .clear_flags(pfn, flag::VOLATILE | flag::POT_VOLATILE);
                self.volatile = self.volatile.saturating_sub(1);
            }
        } else {
            crate::phys::hints::queue(pagehint_abi::hypercall::HintOp::CheckWritable, pfn);
        }
        self.frames.set_flags(pfn, flag::WRITABLE_MAPPED);
        if let Some(owner) = self.frames.owner(pfn) {
            self.wb.insert(owner);
        }
        true
    }

    /// Maps cache page `pfn` writable at `page` (a write fault in a shared
    /// writable file area). Consumes the caller's reference.
    pub(super) fn map_shared_writable(
        &mut self,
        asid: u32,
        page: u64,
        pfn: u64,
        p: u64,
    ) -> Result<(), AsError> {
        if !self.writable_cache_page(pfn) {
            // The cache still holds it; `discard` drops it from there.
            self.frames.put(pfn);
            self.discard(pfn);
            return Ok(());
        }
        let r = self.map_frame(asid, page, pfn * PAGE_SIZE, leaf_flags(p));
        if self.frames.put(pfn) {
            free_frame(pfn * PAGE_SIZE);
        }
        r
    }

    /// A write to a shared file page mapped read-only in a writable area:
    /// the PTE becomes writable (Linux's `do_wp_page` with `page_mkwrite`).
    pub(super) fn upgrade_shared(&mut self, asid: u32, page: u64, old: u64) -> Result<(), AsError> {
        let pfn = (old & ADDR_MASK) / PAGE_SIZE;
        if self.frames.flags(pfn) & flag::CACHED == 0 {
            return Err(AsError::Fault);
        }
        self.frames.get(pfn);
        if !self.writable_cache_page(pfn) {
            self.frames.put(pfn);
            self.discard(pfn);
            return Ok(());
        }
        let pml4 = self.root(asid).ok_or(AsError::NoSpace)?;
        let changed = Mapper::new(pml4, &mut KernelPhys).update(page, |pte| {
            if (pte & ADDR_MASK) / PAGE_SIZE == pfn {
                pte | pte_flags::WRITABLE
            } else {
                pte
            }
        });
        if let Some(f) = changed {
            cpu::invlpg(f.addr());
        }
        if self.frames.put(pfn) {
            free_frame(pfn * PAGE_SIZE);
        }
        Ok(())
    }
}
