//! TLB shootdown: make every other CPU drop its TLB entries before a frame
//! torn out of an address space is reused.
//!
//! Only the holder of the memory-management lock starts a shootdown, so
//! there is one at a time. A CPU answers from the shootdown IPI, or from
//! its spin loop while it waits for that lock with interrupts off; either
//! way it reloads CR3 and acknowledges. Also pays a batch's local TLB
//! debt ([`flush_local`]).
//!
//! Reloading CR3 is this module's job, so it holds the two unsafe blocks
//! that do it, each with its reason. It must never wait for a CPU that is
//! not online.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::vectors::SHOOTDOWN_VECTOR;
use crate::arch::{apic, cpu};
use crate::percpu;
use guest_logic::paging::{FlushBatch, ADDR_MASK};

/// Generation of the latest request.
static REQUEST: AtomicU64 = AtomicU64::new(0);

/// Flushes this CPU's TLB if a shootdown asks for it, and acknowledges.
pub fn answer() {
    let req = REQUEST.load(Ordering::Acquire);
    let me = percpu::this();
    if me.tlb_ack.load(Ordering::Relaxed) < req {
        // SAFETY: reloading the current CR3 only drops TLB entries.
        unsafe { cpu::write_cr3(cpu::read_cr3()) };
        me.tlb_ack.store(req, Ordering::Release);
    }
}

/// Flushes the TLB on every CPU (this one included) and waits until all
/// online CPUs have done so.
pub fn shootdown_all() {
    let req = REQUEST.fetch_add(1, Ordering::AcqRel) + 1;
    let me = percpu::this().index.get() as usize;
    let n = percpu::online() as usize;
    for i in (0..n).filter(|&i| i != me) {
        apic::send_ipi(percpu::get(i).apic_id.get(), SHOOTDOWN_VECTOR);
    }
    answer();
    for i in (0..n).filter(|&i| i != me) {
        while percpu::get(i).tlb_ack.load(Ordering::Acquire) < req {
            core::hint::spin_loop();
        }
    }
}

/// Pays the TLB debt of a batch on this CPU if `pml4` is loaded here.
/// Processes are single-threaded and pinned, so an address space is live on
/// at most this CPU; one that is not loaded has no TLB entries anywhere
/// (every switch reloads CR3).
pub fn flush_local(batch: FlushBatch, pml4: u64) {
    if cpu::read_cr3() & ADDR_MASK != pml4 {
        let _ = batch.finish();
        return;
    }
    match batch.finish() {
        Some((addrs, n)) => addrs[..n].iter().for_each(|&a| cpu::invlpg(a)),
        // SAFETY: reloading the same CR3 only drops TLB entries.
        None => unsafe { cpu::write_cr3(pml4) },
    }
}
