//! The frame allocator and the kernel heap: reads the firmware memory map,
//! extends the direct map above 4 GiB, carves the per-frame records and
//! the heap out of never-used frames, and hands out frames to the per-CPU
//! pools (`phys::hints`), boot stacks and tables.
//!
//! Bring-up is O(number of memory-map entries), never O(frames): the frame
//! allocator initialises lazily, the per-frame records sit in one block of
//! never-used (zero) frames outside the heap, and the heap is one
//! contiguous block. RAM above 4 GiB costs one page-directory frame per GiB.
//!
//! This is one of the modules whose job is unsafe code (raw frames through
//! the direct map, the global allocator); each block says why it holds.
//! It must never write into a free frame.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use linked_list_allocator::Heap;

use super::report;
use crate::arch::boot::{kernel_end_phys, set_direct_map_slot, KERNEL_PDPT_SLOT};
use crate::arch::direct_map::phys_to_virt;
use crate::sync::SpinLock;
use guest_logic::frame_alloc::{FrameAllocator, PfnRange, MAX_RANGES};
use guest_logic::frame_table::FrameTable;
use pagehint_abi::boot::{MemmapEntry, StartInfo, E820_RAM, MMIO_HOLE_START, START_INFO_MAGIC};
use pagehint_abi::{GuestPhys, Pfn, PAGE_SIZE};

/// Why the memory map was refused.
#[derive(Debug, Clone, Copy)]
pub enum MemError {
    BadStartInfo,
    NoUsableMemory,
    TooManyRanges,
    HeapTooSmall,
    /// No room for the per-frame records.
    RecordsTooLarge,
    /// No frame for a page directory of the direct map.
    DirectMapFull,
}

/// One past the highest physical address the direct map can cover: the
/// PDPT slots below the kernel image's.
const DIRECT_MAP_LIMIT: u64 = (KERNEL_PDPT_SLOT as u64) << 30;
/// Physical memory the boot page tables already map (0..4 GiB).
const BOOT_MAPPED: u64 = 4 << 30;

/// What `init` found.
#[derive(Debug, Clone, Copy)]
pub struct MemInfo {
    pub total_frames: u64,
    /// Frames of RAM above 4 GiB.
    pub high_frames: u64,
    pub heap_bytes: u64,
}

static FRAMES: SpinLock<Option<FrameAllocator<'static>>> = SpinLock::new(None);
/// One past the highest frame number of RAM.
static MAX_PFN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// One past the highest frame number of RAM.
pub fn max_pfn() -> u64 {
    MAX_PFN.load(core::sync::atomic::Ordering::Relaxed)
}

struct KernelHeap(SpinLock<Heap>);

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(SpinLock::new(Heap::empty()));

// SAFETY: the heap hands out disjoint blocks under its lock.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate_first_fit(layout)
            .map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `ptr` came from `alloc` with the same layout.
            unsafe { self.0.lock().deallocate(p, layout) }
        }
    }
}

/// Reads the PVH start info at physical address `start_info`, returning it
/// and the RAM ranges of its memory map.
pub fn read_start_info(
    start_info: u64,
) -> Result<(StartInfo, [PfnRange; MAX_RANGES], usize), MemError> {
    if start_info == 0 || start_info >= MMIO_HOLE_START {
        return Err(MemError::BadStartInfo);
    }
    // SAFETY: the loader placed the start info in RAM below 4 GiB, which
    // the direct map covers; `read_unaligned` tolerates any placement.
    let info: StartInfo =
        unsafe { (phys_to_virt(start_info) as *const StartInfo).read_unaligned() };
    if info.magic != START_INFO_MAGIC
        || info.memmap_paddr == 0
        || info.memmap_paddr >= MMIO_HOLE_START
    {
        return Err(MemError::BadStartInfo);
    }
    let mut ranges = [PfnRange::default(); MAX_RANGES];
    let mut n = 0;
    for i in 0..info.memmap_entries.min(128) as u64 {
        let at = phys_to_virt(info.memmap_paddr + i * core::mem::size_of::<MemmapEntry>() as u64);
        // SAFETY: as above; the entry count is bounded.
        let e: MemmapEntry = unsafe { (at as *const MemmapEntry).read_unaligned() };
        if e.kind != E820_RAM {
            continue;
        }
        // RAM beyond what the direct map can reach is left unused.
        let start = e.addr.div_ceil(PAGE_SIZE);
        let end = e.addr.saturating_add(e.size).min(DIRECT_MAP_LIMIT) / PAGE_SIZE;
        if start < end {
            if n == MAX_RANGES {
                return Err(MemError::TooManyRanges);
            }
            ranges[n] = PfnRange { start, end };
            n += 1;
        }
    }
    Ok((info, ranges, n))
}

/// Sets up the frame allocator over `ranges` (frames below the end of the
/// kernel image excluded), the direct map above 4 GiB, the per-frame
/// records (returned, for `mm::init`) and the heap. Call [`trust_fresh_frames_are_zero`] first where
/// it holds: the records are then not cleared.
pub fn init(ranges: &[PfnRange]) -> Result<(MemInfo, FrameTable<'static>), MemError> {
    let max_pfn = ranges
        .iter()
        .map(|r| r.end)
        .max()
        .ok_or(MemError::NoUsableMemory)?;
    // The allocator's link array sits right after the kernel image.
    let links_start = kernel_end_phys().div_ceil(PAGE_SIZE);
    MAX_PFN.store(max_pfn, core::sync::atomic::Ordering::Relaxed);
    let links_pages = (max_pfn * 4).div_ceil(PAGE_SIZE);
    let first_free = links_start + links_pages;
    let mut usable = [PfnRange::default(); MAX_RANGES];
    let mut n = 0;
    for r in ranges {
        let start = r.start.max(first_free);
        if start < r.end {
            usable[n] = PfnRange { start, end: r.end };
            n += 1;
        }
    }
    // SAFETY: the frames of the link array are excluded from the ranges
    // above, so nothing else ever uses them; the direct map covers them.
    let links: &'static mut [u32] = unsafe {
        core::slice::from_raw_parts_mut(
            phys_to_virt(links_start * PAGE_SIZE) as *mut u32,
            max_pfn as usize,
        )
    };
    let mut frames =
        FrameAllocator::new(links, &usable[..n]).map_err(|_| MemError::TooManyRanges)?;
    map_high_memory(&mut frames, max_pfn * PAGE_SIZE)?;
    let records = frame_records(&mut frames, max_pfn as usize)?;
    let total = frames.total_frames();
    // The heap holds what grows with use (page-cache index, reverse-map
    // entries, processes): 1/16 of RAM up to 16 MiB, at least 1 MiB, and
    // 1/64 of larger guests up to 256 MiB. It is never-used memory until
    // allocated from, so a large heap costs the host nothing.
    let heap_pages = (total / 16).clamp(256, 4096).max((total / 64).min(65536));
    let heap_pfn = frames
        .alloc_contiguous(heap_pages)
        .ok_or(MemError::HeapTooSmall)?;
    let heap_bytes = heap_pages * PAGE_SIZE;
    // SAFETY: the block is ours alone, mapped by the direct map, and the
    // heap is initialised once, before any allocation.
    unsafe {
        HEAP.0.lock().init(
            phys_to_virt(heap_pfn * PAGE_SIZE) as *mut u8,
            heap_bytes as usize,
        )
    };
    *FRAMES.lock() = Some(frames);
    let high_frames = ranges
        .iter()
        .map(|r| r.end.saturating_sub(r.start.max(BOOT_MAPPED / PAGE_SIZE)))
        .sum();
    Ok((
        MemInfo {
            total_frames: total,
            high_frames,
            heap_bytes,
        },
        records,
    ))
}

/// Extends the direct map over physical memory from 4 GiB to `top`: one
/// page directory of 2 MiB pages per GiB, in a never-used frame below
/// 4 GiB (the boot map covers it). 1 GiB pages would need no frame, but
/// neither this host's KVM nor QEMU's default CPU offers them, so that
/// path could not be tested.
fn map_high_memory(frames: &mut FrameAllocator<'static>, top: u64) -> Result<(), MemError> {
    const PRESENT_WRITABLE_HUGE: u64 = 0x83;
    for slot in (BOOT_MAPPED >> 30) as usize..top.div_ceil(1 << 30) as usize {
        let base = (slot as u64) << 30;
        let pd = frames.alloc_contiguous(1).ok_or(MemError::DirectMapFull)? * PAGE_SIZE;
        // SAFETY: the frame was never used and is ours; contiguous blocks
        // come from the lowest range, which the boot map covers.
        let table = unsafe { &mut *(phys_to_virt(pd) as *mut [u64; 512]) };
        for (i, e) in table.iter_mut().enumerate() {
            *e = (base + ((i as u64) << 21)) | PRESENT_WRITABLE_HUGE;
        }
        // SAFETY: boot, on the only running CPU; the slot is a direct-map
        // slot above 4 GiB that was empty until now.
        unsafe { set_direct_map_slot(slot, pd | 0x3) };
    }
    Ok(())
}

/// The per-frame records for frames `0..max_pfn`, in contiguous
/// never-used frames (cleared only where fresh frames are not known to be
/// zero).
fn frame_records(
    frames: &mut FrameAllocator<'static>,
    max_pfn: usize,
) -> Result<FrameTable<'static>, MemError> {
    let words = FrameTable::words_for(max_pfn);
    let pages = (words as u64 * 8).div_ceil(PAGE_SIZE);
    let pfn = frames
        .alloc_contiguous(pages)
        .ok_or(MemError::RecordsTooLarge)?;
    let at = phys_to_virt(pfn * PAGE_SIZE) as *mut u64;
    if !fresh_frames_are_zero() {
        // SAFETY: the block was just taken from never-used frames and is
        // ours alone; the direct map covers it.
        unsafe { core::ptr::write_bytes(at, 0, words) };
    }
    // SAFETY: as above; the block lives for ever (it is never freed).
    let block: &'static mut [u64] = unsafe { core::slice::from_raw_parts_mut(at, words) };
    FrameTable::new_in(block, max_pfn).ok_or(MemError::RecordsTooLarge)
}

/// Whether never-used frames are known to hold zeroes: true under this
/// VMM, whose guest RAM is fresh anonymous memory. Elsewhere every frame
/// is zeroed on allocation.
static FRESH_IS_ZERO: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Declares that never-used frames hold zeroes (see [`FRESH_IS_ZERO`]).
pub fn trust_fresh_frames_are_zero() {
    FRESH_IS_ZERO.store(true, core::sync::atomic::Ordering::Relaxed);
}

/// Whether never-used frames may be trusted to hold zeroes.
pub fn fresh_frames_are_zero() -> bool {
    FRESH_IS_ZERO.load(core::sync::atomic::Ordering::Relaxed)
}

/// Takes up to `n` frames from the allocator for a per-CPU pool, calling
/// `f(i, pfn, fresh)` for each; returns how many.
pub fn take_frames(n: usize, mut f: impl FnMut(usize, Pfn, bool)) -> usize {
    let mut g = FRAMES.lock();
    let Some(a) = g.as_mut() else { return 0 };
    for i in 0..n {
        match a.alloc_fresh() {
            Some((pfn, fresh)) => {
                report::taken(pfn);
                f(i, Pfn(pfn), fresh)
            }
            None => return i,
        }
    }
    n
}

/// A free page reporting pass (`report`), with the allocator held while
/// the host discards what is reported.
pub fn report_free_pages() {
    if report::active() {
        let g = FRAMES.lock();
        if let Some(a) = g.as_ref() {
            report::pass(|f| a.for_each_free(f));
        }
    }
}

/// Gives frames back to the allocator (after their `SET_UNUSED` was sent).
pub fn give_back_frames(frames: &[GuestPhys]) {
    let mut g = FRAMES.lock();
    let Some(a) = g.as_mut() else { return };
    for &pa in frames {
        if a.free(pa.pfn().as_u64()).is_err() {
            crate::console::println!(
                "mm: refused to free frame {:#x} (not allocated)",
                pa.as_u64()
            );
        }
    }
}

/// `n` contiguous never-used frames (for stacks), by physical address.
pub fn alloc_contiguous(n: u64) -> Option<u64> {
    Some(FRAMES.lock().as_mut()?.alloc_contiguous(n)? * PAGE_SIZE)
}

/// Frames not in use.
pub fn free_frames() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |f| f.free_frames())
}
