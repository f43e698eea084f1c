//! Per-CPU data, reached through the GS base while in the kernel.
//!
//! Fields that only the owning CPU touches are `Cell`s and are accessed
//! with interrupts off; the run queue, which other CPUs push to, is behind
//! a lock. Nothing here may be touched by another CPU except through
//! [`PerCpu::run_queue`] and the identity fields; the counters that only
//! their own CPU adds to ([`count_shared_change`]) others may only read.
//!
//! Reaching this CPU's slot through GS and its CPU-private cells is this
//! module's job, so it holds that unsafe code, each block with its reason.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::arch::cpu::{wrmsr, MSR_GS_BASE, MSR_KERNEL_GS_BASE};
use crate::arch::gdt::MAX_CPUS;
use crate::sync::SpinLock;
use crate::task::{Pending, Task, TaskPtr};
use guest_logic::hint_state::HintState;
use pagehint_abi::hypercall::DiscardFaultInfo;

/// A CPU's hint state: the library's, plus the batch page it works on
/// (`phys::hints` works on it, with interrupts off).
pub struct CpuHints {
    /// The batch page (kernel-virtual address; 0 until `phys::hints::init_cpu`).
    pub batch: u64,
    pub state: HintState,
}

impl CpuHints {
    pub const fn new() -> Self {
        Self {
            batch: 0,
            state: HintState::new(),
        }
    }
}

impl Default for CpuHints {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter on a cache line of its own: its CPU adds to it without a
/// lock prefix and no other CPU's stores share the line; any CPU reads it.
#[repr(C, align(64))]
pub struct LineCounter(AtomicU64);

impl LineCounter {
    const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// The count as it reads now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[repr(C)]
pub struct PerCpu {
    /// Must stay the first field: `this()` reads it at GS:0.
    self_ptr: Cell<u64>,

    pub index: Cell<u32>,
    pub apic_id: Cell<u32>,
    pub current: Cell<*mut Task>,
    pub idle: Cell<*mut Task>,
    pub pending: Cell<Pending>,
    pub run_queue: SpinLock<VecDeque<TaskPtr>>,
    pub ticks: AtomicU64,
    /// Latest TLB shootdown this CPU has carried out (`phys::tlb`).
    pub tlb_ack: AtomicU64,
    /// Page-hint batch and frame pools (`phys::hints`), this CPU's only.
    pub hints: UnsafeCell<CpuHints>,
    /// Where the VMM leaves the address of a discard fault (`phys::discard`, `mm::discard_fault`).
    pub fault_info: UnsafeCell<DiscardFaultInfo>,
    /// State changes this CPU made in the shared page-state table
    /// (`phys::hints`), added to only by [`count_shared_change`].
    pub shared_changes: LineCounter,
    /// Times this CPU passed a state with interrupts enabled.
    pub quiescent: AtomicU64,
    /// Discarded frames freed on this CPU, not yet on the global list.
    discard_batch: UnsafeCell<Vec<u64>>,
}

impl PerCpu {
    /// This CPU's discard-fault info area as the VMM left it before it
    /// injected the fault; read once, by value.
    #[inline]
    pub fn read_fault_info(&self) -> DiscardFaultInfo {
        // SAFETY: the area is this CPU's, written only by the VMM (before
        // the fault it injects on this CPU); a volatile read by value.
        unsafe { self.fault_info.get().read_volatile() }
    }

    /// Runs `f` on this CPU's discard batch with interrupts off.
    pub fn with_discard_batch<R>(&self, f: impl FnOnce(&mut Vec<u64>) -> R) -> R {
        let irq = crate::arch::cpu::interrupts_off();
        // SAFETY: only the owning CPU calls this (through `this()`), with
        // interrupts off, so the reference is unique for its duration.
        let r = f(unsafe { &mut *self.discard_batch.get() });
        if irq {
            crate::arch::cpu::interrupts_on();
        }
        r
    }
}

// SAFETY: the `Cell` fields are only used by the owning CPU with interrupts
// off; the shared fields are a lock and atomics.
unsafe impl Sync for PerCpu {}

#[allow(clippy::declare_interior_mutable_const)]
const INIT: PerCpu = PerCpu {
    self_ptr: Cell::new(0),
    index: Cell::new(0),
    apic_id: Cell::new(0),
    current: Cell::new(core::ptr::null_mut()),
    idle: Cell::new(core::ptr::null_mut()),
    pending: Cell::new(Pending::None),
    run_queue: SpinLock::new(VecDeque::new()),
    ticks: AtomicU64::new(0),
    tlb_ack: AtomicU64::new(0),
    hints: UnsafeCell::new(CpuHints::new()),
    fault_info: UnsafeCell::new(DiscardFaultInfo {
        gpa: 0,
        sequence: 0,
        _reserved: [0; 6],
    }),
    shared_changes: LineCounter::new(),
    quiescent: AtomicU64::new(0),
    discard_batch: UnsafeCell::new(Vec::new()),
};

static CPUS: [PerCpu; MAX_CPUS] = [INIT; MAX_CPUS];

/// CPUs that finished bring-up.
pub static ONLINE: AtomicU32 = AtomicU32::new(0);

/// Points this CPU's GS base at its slot.
pub fn init_this(index: usize, apic_id: u32) {
    let c = &CPUS[index];
    c.self_ptr.set(c as *const PerCpu as u64);
    c.index.set(index as u32);
    c.apic_id.set(apic_id);
    // SAFETY: GS base is the kernel's per-CPU pointer by design; the user
    // half of the swap starts at 0.
    unsafe {
        wrmsr(MSR_GS_BASE, c as *const PerCpu as u64);
        wrmsr(MSR_KERNEL_GS_BASE, 0);
    }
}

/// This CPU's data.
pub fn this() -> &'static PerCpu {
    let p: u64;
    // SAFETY: in the kernel, GS:0 holds this CPU's slot address
    // (`init_this`, and the trap entry swaps GS on every user transition).
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(readonly, nostack, preserves_flags))
    };
    // SAFETY: the slot is a static.
    unsafe { &*(p as *const PerCpu) }
}

/// Where [`PerCpu::shared_changes`]'s count sits from GS:0.
const SHARED_CHANGES: usize = core::mem::offset_of!(PerCpu, shared_changes);

/// Counts one state change in the shared page-state table on this CPU's
/// own counter: one `inc` through GS, as the global counter's `lock inc`
/// was one instruction, but with no lock and no cache line that other
/// CPUs write. Sound wherever [`this`] is (GS holds this CPU's slot).
#[inline(always)]
pub fn count_shared_change() {
    // SAFETY: in the kernel GS:0 is this CPU's slot (as for `this()`), so
    // GS:SHARED_CHANGES is its `shared_changes` count, 8 aligned bytes
    // that nothing else in Rust holds a `&mut` to. Only this CPU writes
    // them, in this one instruction, which no interrupt can split (an
    // interrupt handler that counts runs before or after it); other CPUs
    // only load the count, and an aligned 8-byte store is seen whole.
    unsafe {
        core::arch::asm!(
            "inc qword ptr gs:[{off}]",
            off = const SHARED_CHANGES,
            options(nostack)
        )
    };
}

/// CPU `index`'s data (for pushing work to it).
pub fn get(index: usize) -> &'static PerCpu {
    &CPUS[index]
}

/// Number of CPUs online.
pub fn online() -> u32 {
    ONLINE.load(Ordering::Acquire)
}
