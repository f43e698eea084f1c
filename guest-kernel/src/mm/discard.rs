//! Discard faults and the delayed-free discard list (seed 001).
//!
//! When a user access touches a volatile page the host has discarded, the
//! VMM injects vector 20 (#VE) at that instruction and leaves the page's
//! guest-physical address in this CPU's info area. The handler takes a
//! reference only if the frame's count is not zero (it may have been freed
//! and reused meanwhile, so nothing else in it is trusted), drops it from
//! the page cache and tears it out of every address space through the
//! reverse map; the restarted access then faults normally and reads the
//! data again.
//!
//! A discarded frame must not be reused while a discard fault for it may
//! still be in flight on another CPU. So it is not freed directly: it goes
//! on this CPU's batch, batches are spliced into a global list stamped with
//! every CPU's quiescent count, and a batch returns to the allocator only
//! after every CPU has since passed through a state with interrupts
//! enabled (user mode, or idle). The list is drained when memory runs
//! short and whenever a CPU goes idle.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guest_kernel::frame_table::{flag, Mapping};
use guest_kernel::paging::Mapper;
use pagehint_abi::hypercall::{CallResult, DiscardFaultInfo, Request};
use pagehint_abi::GuestPhys;
use pagehint_abi::PAGE_SIZE;

use super::{tlb, KernelPhys, MmState};
use crate::arch::gdt::MAX_CPUS;
use crate::percpu;
use crate::sync::SpinLock;

/// Whether the VMM delivers discard faults (CPUID `DISCARD_FAULTS`) and
/// every CPU registered its info area.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub static FAULTS: AtomicU64 = AtomicU64::new(0);
pub static STALE_FAULTS: AtomicU64 = AtomicU64::new(0);
pub static KERNEL_FAULTS: AtomicU64 = AtomicU64::new(0);
pub static LISTED: AtomicU64 = AtomicU64::new(0);
pub static RELEASED: AtomicU64 = AtomicU64::new(0);

/// Frames per CPU batch before it is spliced into the global list.
const CPU_BATCH: usize = 16;

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Registers this CPU's info area with the VMM; discard faults are on once
/// the bootstrap CPU's registration succeeds (APs register as they come).
pub fn init_cpu(advertised: bool) {
    if !advertised {
        return;
    }
    let me = percpu::this();
    let info = me.fault_info.get() as u64;
    let r = crate::hv::call(Request::SetFaultInfo {
        info: GuestPhys(crate::arch::boot::virt_to_phys(info)),
        cpu: me.index.get() as u64,
    });
    if r == Some(Ok(CallResult::Ok)) && me.index.get() == 0 {
        ENABLED.store(true, Ordering::Release);
    }
}

/// This CPU passed through a state with interrupts enabled (entered the
/// kernel from user mode, or is about to idle).
pub fn quiescent() {
    percpu::this().quiescent.fetch_add(1, Ordering::Release);
}

/// A batch on the global list: frames, and every CPU's quiescent count at
/// the time it was listed.
struct Listed {
    frames: Vec<u64>,
    stamp: [u64; MAX_CPUS],
}

static LIST: SpinLock<Vec<Listed>> = SpinLock::new(Vec::new());

fn stamp() -> [u64; MAX_CPUS] {
    let mut s = [0; MAX_CPUS];
    for (i, slot) in s.iter_mut().enumerate().take(percpu::online() as usize) {
        *slot = percpu::get(i).quiescent.load(Ordering::Acquire);
    }
    s
}

/// True once every online CPU has passed a quiescent state since `stamp`.
fn grace_over(stamp: &[u64; MAX_CPUS]) -> bool {
    (0..percpu::online() as usize)
        .all(|i| percpu::get(i).quiescent.load(Ordering::Acquire) > stamp[i])
}

/// Puts a discarded frame that is being freed on this CPU's batch.
pub fn defer_free(pfn: u64) {
    LISTED.fetch_add(1, Ordering::Relaxed);
    let full = percpu::this().with_discard_batch(|b| {
        b.push(pfn);
        (b.len() >= CPU_BATCH).then(|| core::mem::take(b))
    });
    if let Some(frames) = full {
        splice(frames);
    }
}

fn splice(frames: Vec<u64>) {
    let l = Listed {
        frames,
        stamp: stamp(),
    };
    LIST.lock().push(l);
}

/// Moves this CPU's batch to the global list (before idling, so that the
/// frames can be released once the others pass a quiescent state).
pub fn flush_local() {
    let frames = percpu::this().with_discard_batch(core::mem::take);
    if !frames.is_empty() {
        splice(frames);
    }
}

/// Gives back to the allocator every listed batch whose grace period is
/// over; returns how many frames.
pub fn drain() -> usize {
    let mut ready: Vec<u64> = Vec::new();
    {
        let mut list = LIST.lock();
        list.retain_mut(|b| {
            if grace_over(&b.stamp) {
                ready.append(&mut b.frames);
                false
            } else {
                true
            }
        });
    }
    for &pfn in &ready {
        super::free_frame(pfn * PAGE_SIZE);
    }
    RELEASED.fetch_add(ready.len() as u64, Ordering::Relaxed);
    ready.len()
}

/// Whether `pfn` is on the global list now (for the self-test).
pub fn is_listed(pfn: u64) -> bool {
    LIST.lock().iter().any(|b| b.frames.contains(&pfn))
}

/// Splices `frames` as one batch stamped now (for the self-test).
pub fn list_for_test(frames: Vec<u64>) {
    LISTED.fetch_add(frames.len() as u64, Ordering::Relaxed);
    splice(frames);
}

/// The discard fault (#VE). `from_user`: the access came from user mode.
pub fn fault(from_user: bool) {
    let info: DiscardFaultInfo = {
        let p = percpu::this().fault_info.get();
        // SAFETY: this CPU's info area, written by the VMM before it injected
        // the fault; read once, by value.
        unsafe { p.read_volatile() }
    };
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
