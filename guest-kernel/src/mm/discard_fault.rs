//! The discard fault (#VE) and what it does to the memory-management
//! state: the VMM dropped a volatile page-cache frame that a user access
//! reached, so the frame leaves the page cache and every address space,
//! and goes on the discard list (`phys::discard`) for a grace period.
//!
//! Nothing here may free a discarded frame straight to the allocator:
//! another CPU may still be reaching it until the grace period is over.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use guest_logic::frame_table::{flag, Mapping};
use guest_logic::paging::Mapper;
use pagehint_abi::hypercall::DiscardFaultInfo;
use pagehint_abi::PAGE_SIZE;

use super::MmState;
use crate::percpu;
use crate::phys::discard::{defer_free, FAULTS, KERNEL_FAULTS, STALE_FAULTS};
use crate::phys::pages::KernelPhys;
use crate::phys::tlb;

/// The discard fault (#VE). `from_user`: the access came from user mode.
pub fn fault(from_user: bool) {
    let info: DiscardFaultInfo = percpu::this().read_fault_info();
    if !from_user {
        // The kernel must never touch a volatile page; the VMM breaks the
        // loop by backing the page. Count it and let the access retry.
        KERNEL_FAULTS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    FAULTS.fetch_add(1, Ordering::Relaxed);
    let pfn = info.gpa / PAGE_SIZE;
    super::with(|st| st.discard_fault_run(pfn));
}

impl MmState {
    /// Drops a discarded frame from the page cache and every address space.
    pub(super) fn discard(&mut self, pfn: u64) {
        self.discard_many(&[pfn]);
    }

    /// Drops discarded frames from the page cache and every address space,
    /// paying the other CPUs' TLBs with one shootdown for all of them.
    pub(super) fn discard_many(&mut self, pfns: &[u64]) {
        let mut held = Vec::with_capacity(pfns.len());
        let mut maps = Vec::new();
        for &pfn in pfns {
            if !self.frames.get_unless_zero(pfn) {
                // Freed meanwhile: nothing maps it; the access will fault
                // normally or find the frame reused and backed.
                STALE_FAULTS.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            maps.clear();
            self.frames.mappings(pfn, &mut maps);
            for &Mapping { asid, va } in &maps {
                if let Some(space) = self.spaces.get(&asid) {
                    let mut phys = KernelPhys;
                    if let Some((_, flush)) = Mapper::new(space.root(), &mut phys).unmap(va) {
                        flush.ignore(); // paid by the shootdown below
                    }
                }
                let _ = self.frames.rmap_remove(pfn, Mapping { asid, va });
            }
            held.push(pfn);
        }
        if held.is_empty() {
            return;
        }
        tlb::shootdown_all();
        self.stats.shootdowns += 1;
        for pfn in held {
            self.discarded_unmapped(pfn);
        }
    }

    /// The rest of a discard, once no mapping and no TLB holds the frame.
    fn discarded_unmapped(&mut self, pfn: u64) {
        if self.frames.flags(pfn) & flag::VOLATILE != 0 {
            self.frames
                .clear_flags(pfn, flag::VOLATILE | flag::POT_VOLATILE);
            self.volatile = self.volatile.saturating_sub(1);
        }
        if self.frames.flags(pfn) & flag::DIRTY != 0 {
            // Cannot happen by the protocol (the host never takes a page
            // its dirty log saw written); counted where it shows.
            self.frames.clear_flags(pfn, flag::DIRTY);
            self.stats.dirty_frames = self.stats.dirty_frames.saturating_sub(1);
            self.stats.hint_errors += 1;
        }
        if let Some(owner) = self.frames.owner(pfn) {
            self.wb.remove(&owner);
        }
        self.stats.volatile_discarded += 1;
        self.frames.remove(pfn);
        // Our reference is the last one now: the cache's and the mappings'
        // are gone, and nothing else holds a cache frame across a drop of
        // the memory lock.
        if self.frames.put(pfn) {
            defer_free(pfn);
        }
    }
}
