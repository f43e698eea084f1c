//! Frames for the kernel's own use, one at a time: zeroed or for
//! overwrite, through this CPU's pool (`phys::hints`), with the discard
//! list drained when the pool runs dry; and page tables as the kernel
//! reaches them through the direct map ([`KernelPhys`]).
//!
//! One of the modules whose job is unsafe code: page-table entries are
//! read and written through the direct map here, each block with its
//! reason. Nothing here may reclaim the page cache.

use super::{discard, hints};
use crate::arch::direct_map::phys_to_virt;
use guest_logic::paging::PhysMem;

/// A zeroed frame, by physical address. Zeroing a page is about 512
/// emulated iterations of `rep stos` (0.3 ms on the development machines),
/// so frames known to be zero (never used, or discarded by the host) are
/// not zeroed again.
pub fn alloc_zeroed_frame() -> Option<u64> {
    hints::pool_alloc(true).or_else(|| {
        short_of_memory();
        hints::pool_alloc(true)
    })
}

/// Frees what can be freed without reclaiming the cache: this CPU's freed
/// frames, and discarded frames whose grace period is over.
fn short_of_memory() {
    hints::drain_local();
    discard::drain();
    hints::drain_local();
}

/// A frame whose contents the caller will overwrite entirely (a disk read,
/// a copy), by physical address: never zeroed.
pub fn alloc_frame_for_overwrite() -> Option<u64> {
    hints::pool_alloc(false).or_else(|| {
        short_of_memory();
        hints::pool_alloc(false)
    })
}

/// Returns a frame from [`alloc_zeroed_frame`] (through this CPU's pool,
/// which announces frees to the VMM in batches).
pub fn free_frame(pa: u64) {
    hints::pool_free(pa);
}

/// Page tables as the kernel sees them: through the direct map.
pub struct KernelPhys;

impl PhysMem for KernelPhys {
    fn read_entry(&self, table: u64, index: usize) -> u64 {
        // SAFETY: `table` is a page-table frame the mapper walked to; the
        // direct map covers it; `index` < 512.
        unsafe {
            (phys_to_virt(table) as *const u64)
                .add(index)
                .read_volatile()
        }
    }
    fn write_entry(&mut self, table: u64, index: usize, value: u64) {
        // SAFETY: as above.
        unsafe {
            (phys_to_virt(table) as *mut u64)
                .add(index)
                .write_volatile(value)
        }
    }
    fn alloc_table(&mut self) -> Option<u64> {
        alloc_zeroed_frame()
    }
    fn free_table(&mut self, table: u64) {
        free_frame(table)
    }
    fn swap_entry(&mut self, table: u64, index: usize, value: u64) -> u64 {
        // SAFETY: as above; page-table entries are naturally aligned u64s,
        // which CPUs update atomically (the accessed and dirty bits).
        let e =
            unsafe { &*((phys_to_virt(table) as *const core::sync::atomic::AtomicU64).add(index)) };
        e.swap(value, core::sync::atomic::Ordering::AcqRel)
    }
    fn cas_entry(&mut self, table: u64, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        // SAFETY: as for `swap_entry`.
        let e =
            unsafe { &*((phys_to_virt(table) as *const core::sync::atomic::AtomicU64).add(index)) };
        e.compare_exchange(
            current,
            new,
            core::sync::atomic::Ordering::AcqRel,
            core::sync::atomic::Ordering::Acquire,
        )
    }
}
