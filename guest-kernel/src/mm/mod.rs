//! Memory management above the frames: the memory-management lock and
//! the state it guards (frame records, address spaces, the page cache and
//! its write-back), and the `kstats` counters. The frames themselves, the
//! per-CPU pools and the hints come from `crate::phys`, below.
//!
//! This module must never write into a free frame, and holds no unsafe
//! code.

pub mod addr_space;
pub mod discard_fault;
pub mod filemap;
pub mod writeback;

use crate::phys::allocator::{self, free_frames, MemError, MemInfo};
use crate::phys::pages::KernelPhys;
use crate::phys::{discard, hints, tlb};
use crate::sync::SpinLock;
use alloc::collections::BTreeMap;

use addr_space::AddressSpace;
use alloc::vec::Vec;
use guest_logic::frame_alloc::PfnRange;
use guest_logic::frame_table::{FrameTable, Mapping};
use guest_logic::paging::{Mapper, ADDR_MASK};
use pagehint_abi::syscall::KernelStats;
use pagehint_abi::PAGE_SIZE;

/// Everything the memory-management lock protects: frame records (page
/// cache, LRU, reverse map), every user address space, and counters.
pub struct MmState {
    pub frames: FrameTable<'static>,
    pub spaces: BTreeMap<u32, AddressSpace>,
    next_asid: u32,
    /// The counters kept under the lock (the `kstats` structure itself;
    /// the other fields are filled in by [`kernel_stats`]).
    pub stats: KernelStats,
    /// Cache frames the VMM was told are volatile.
    pub volatile: u64,
    /// Hits on volatile pages left during which the shared-table hit path
    /// also takes back the pages after the hit one (`filemap`): renewed
    /// whenever a page is found dropped, so it runs only while the host is
    /// taking pages.
    pub ahead_credit: u32,
    /// Cache pages that are dirty or mapped writable, by (file, page): the
    /// ones `fsync`, `msync` and the write-back look at (`writeback`).
    pub wb: alloc::collections::BTreeSet<(u32, u64)>,
    /// Where the next background write-back pass starts in `wb`.
    pub wb_cursor: (u32, u64),
    /// Discard faults that walk forward through a file: (file, the page
    /// after the last run dropped), a few streams, oldest replaced first
    /// (`filemap::discard_fault_run`).
    pub fault_streams: [(u32, u64); FAULT_STREAMS],
    /// The stream `fault_streams` replaces next.
    pub fault_stream_next: usize,
}

/// Sequential discard-fault streams remembered (the soak runs one scan
/// per CPU over the same files).
pub const FAULT_STREAMS: usize = 4;

static MM: SpinLock<Option<MmState>> = SpinLock::new(None);

/// Runs `f` under the memory-management lock. While waiting for it, this
/// CPU answers TLB shootdowns (the holder may be waiting for them).
pub fn with<R>(f: impl FnOnce(&mut MmState) -> R) -> R {
    let mut g = MM.lock_answering(tlb::answer);
    let st = g.as_mut().expect("memory management used before mm::init");
    f(st)
}

/// The counters, as the `kstats` system call reports them.
pub fn kernel_stats() -> KernelStats {
    use core::sync::atomic::Ordering::Relaxed;
    let (s, cached, volatile) = with(|st| (st.stats, st.frames.cached(), st.volatile));
    // Counted per CPU (CPUs never brought up count 0); summed once, so
    // both fields agree.
    let shared = (0..crate::arch::gdt::MAX_CPUS).fold(0u64, |sum, i| {
        sum.wrapping_add(crate::percpu::get(i).shared_changes.get())
    });
    KernelStats {
        free_frames: free_frames(),
        cached_frames: cached,
        // Every state change, through the table or by hypercall.
        hints: hints::COUNTERS.hints.load(Relaxed) + shared,
        hint_batches: hints::COUNTERS.batches.load(Relaxed),
        hint_errors: hints::COUNTERS.errors.load(Relaxed),
        zero_fill_skips: hints::COUNTERS.zero_skips.load(Relaxed),
        shared_hints: shared,
        volatile_frames: volatile,
        discard_faults: discard::FAULTS.load(Relaxed),
        discard_listed: discard::LISTED.load(Relaxed),
        discard_released: discard::RELEASED.load(Relaxed),
        ..s
    }
}

impl MmState {
    /// Rewrites, with `f`, every PTE that maps `pfn` and still points at it
    /// (an entry changed to another frame meanwhile is left as it is); the
    /// TLB flushes are left to the caller's shootdown. `maps` is scratch
    /// space, kept by the caller across calls.
    #[inline]
    fn update_ptes_of(&mut self, pfn: u64, maps: &mut Vec<Mapping>, mut f: impl FnMut(u64) -> u64) {
        maps.clear();
        self.frames.mappings(pfn, maps);
        for &Mapping { asid, va } in maps.iter() {
            let Some(space) = self.spaces.get(&asid) else {
                continue;
            };
            let mut phys = KernelPhys;
            let changed = Mapper::new(space.root(), &mut phys).update(va, |pte| {
                if (pte & ADDR_MASK) / PAGE_SIZE != pfn {
                    return pte;
                }
                f(pte)
            });
            if let Some(flush) = changed {
                flush.ignore();
            }
        }
    }
}

/// Sets up the frames (`phys::allocator::init`) and then the state the
/// memory-management lock guards.
pub fn init(ranges: &[PfnRange]) -> Result<MemInfo, MemError> {
    let (info, records) = allocator::init(ranges)?;
    *MM.lock() = Some(MmState {
        frames: records,
        spaces: BTreeMap::new(),
        next_asid: 1,
        stats: KernelStats::default(),
        volatile: 0,
        ahead_credit: 0,
        wb: alloc::collections::BTreeSet::new(),
        wb_cursor: (0, 0),
        fault_streams: [(u32::MAX, 0); FAULT_STREAMS],
        fault_stream_next: 0,
    });
    Ok(info)
}
