//! Per-CPU GDT and TSS: kernel and user segments, the task-state segment
//! with the kernel stack for traps from user mode and the IST stacks for
//! faults that must not trust the current stack.
//!
//! Selector layout (shared with the boot GDT for the first three): must
//! never change without changing `boot.rs` and the trap entry code.

use core::arch::asm;
use core::cell::UnsafeCell;

pub const KERNEL_CODE: u16 = 0x08;
pub const KERNEL_DATA: u16 = 0x10;
pub const USER_DATA: u16 = 0x20 | 3;
pub const USER_CODE: u16 = 0x28 | 3;
pub const TSS_SELECTOR: u16 = 0x30;

/// IST slot (1-based, as the IDT encodes it) for double faults.
pub const IST_DOUBLE_FAULT: u8 = 1;
/// IST slot for NMI and machine checks.
pub const IST_NMI: u8 = 2;

/// The 64-bit task-state segment.
#[repr(C, packed)]
pub struct Tss {
    _reserved0: u32,
    pub rsp: [u64; 3],
    _reserved1: u64,
    pub ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    pub iomap_base: u16,
}

const _: () = assert!(core::mem::size_of::<Tss>() == 104);

#[repr(C, align(16))]
struct CpuTables {
    gdt: [u64; 8],
    tss: Tss,
}

/// Most CPUs the kernel supports.
pub const MAX_CPUS: usize = 64;

struct AllTables(UnsafeCell<[CpuTables; MAX_CPUS]>);
// SAFETY: each CPU only touches its own slot, and only with interrupts off.
unsafe impl Sync for AllTables {}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: CpuTables = CpuTables {
    gdt: [0; 8],
    tss: Tss {
        _reserved0: 0,
        rsp: [0; 3],
        _reserved1: 0,
        ist: [0; 7],
        _reserved2: 0,
        _reserved3: 0,
        iomap_base: 104,
    },
};

static TABLES: AllTables = AllTables(UnsafeCell::new([EMPTY; MAX_CPUS]));

fn tss_descriptor(base: u64) -> (u64, u64) {
    let limit = (core::mem::size_of::<Tss>() - 1) as u64;
    let low = (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | 0x89 << 40 // present, 64-bit available TSS
        | ((limit >> 16) & 0xf) << 48
        | ((base >> 24) & 0xff) << 56;
    (low, base >> 32)
}

/// Loads this CPU's GDT and TSS. `ist_stacks` are the tops of the double
/// fault and NMI stacks.
pub fn init(cpu: usize, ist_stacks: [u64; 2]) {
    // SAFETY: `cpu` is this CPU's own index, so no other CPU uses the slot,
    // and interrupts are off during bring-up.
    let t = unsafe { &mut (*TABLES.0.get())[cpu] };
    t.tss.ist[IST_DOUBLE_FAULT as usize - 1] = ist_stacks[0];
    t.tss.ist[IST_NMI as usize - 1] = ist_stacks[1];
    t.gdt[0] = 0;
    t.gdt[1] = 0x00af_9a00_0000_ffff; // kernel code, 64-bit
    t.gdt[2] = 0x00cf_9200_0000_ffff; // kernel data
    t.gdt[3] = 0x00cf_9a00_0000_ffff; // 32-bit code (boot only)
    t.gdt[4] = 0x00cf_f200_0000_ffff; // user data
    t.gdt[5] = 0x00af_fa00_0000_ffff; // user code, 64-bit
    let (lo, hi) = tss_descriptor(core::ptr::addr_of!(t.tss) as u64);
    t.gdt[6] = lo;
    t.gdt[7] = hi;
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let p = Pointer {
        limit: (core::mem::size_of_val(&t.gdt) - 1) as u16,
        base: t.gdt.as_ptr() as u64,
    };
    // SAFETY: the GDT lives in a static for ever; the selectors reloaded
    // right after point at descriptors equal to the boot GDT's.
    unsafe {
        asm!(
            "lgdt [{p}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            p = in(reg) &p,
            cs = const KERNEL_CODE as u64,
            tmp = out(reg) _,
            ds = in(reg) KERNEL_DATA as u64,
            tss = in(reg) TSS_SELECTOR as u64,
        );
    }
}

/// Sets the stack the CPU switches to on a trap from user mode.
pub fn set_kernel_stack(cpu: usize, top: u64) {
    // SAFETY: only this CPU writes its TSS, with interrupts off.
    unsafe { (*TABLES.0.get())[cpu].tss.rsp[0] = top };
}
