//! The delayed-free discard list (seed 001), and the registration of each
//! CPU's discard-fault info area. The fault itself, which drops the frame
//! from the page cache and every address space, is `mm::discard_fault`.
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

use pagehint_abi::hypercall::{CallResult, Request};
use pagehint_abi::GuestPhys;
use pagehint_abi::PAGE_SIZE;

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
        info: GuestPhys(crate::arch::direct_map::virt_to_phys(info)),
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
        super::hints::pool_free(pfn * PAGE_SIZE);
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
