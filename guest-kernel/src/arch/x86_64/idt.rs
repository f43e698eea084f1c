//! The interrupt descriptor table, the trap entry and exit paths, and the
//! saved register frame every trap handler receives.
//!
//! All 256 vectors enter through one stub each (fixed 16-byte slots), save
//! the full register set into a [`TrapFrame`] on the kernel stack, swap GS
//! when they come from user mode, and call `trap_dispatch`. This module
//! must never decide what a trap means: that is `crate::trap`.

use core::cell::UnsafeCell;

use super::gdt::{IST_DOUBLE_FAULT, IST_NMI, KERNEL_CODE};

/// The registers saved on entry, lowest address first.
#[repr(C)]
#[derive(Debug, Default, Clone)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl TrapFrame {
    /// True if the trap interrupted user mode.
    pub fn came_from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

core::arch::global_asm!(
    r#"
.section .text, "ax"
.p2align 4
.global trap_stubs
trap_stubs:
.set vec, 0
.rept 256
.p2align 4
.if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    pushq $vec
.else
    pushq $0
    pushq $vec
.endif
    jmp trap_common
.set vec, vec + 1
.endr

trap_common:
    testb $3, 24(%rsp)
    jz 1f
    swapgs
1:  push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    cld
    call trap_dispatch
.global trap_return
trap_return:
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    testb $3, 24(%rsp)
    jz 2f
    swapgs
2:  add $16, %rsp
    iretq
"#,
    options(att_syntax)
);

extern "C" {
    static trap_stubs: u8;
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    _zero: u32,
}

const _: () = assert!(core::mem::size_of::<Gate>() == 16);

struct Idt(UnsafeCell<[Gate; 256]>);
// SAFETY: written once by the bootstrap CPU before any other CPU loads it.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new(
    [Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        _zero: 0,
    }; 256],
));

/// Fills the IDT (bootstrap CPU, once): interrupt gates for every vector,
/// IST stacks for #DF, NMI and #MC, and a user-callable gate for
/// `user_vector` (the system-call trap).
pub fn build(user_vector: u8) {
    let base = core::ptr::addr_of!(trap_stubs) as u64;
    // SAFETY: single-threaded bring-up; no CPU has loaded the IDT yet.
    let idt = unsafe { &mut *IDT.0.get() };
    for (v, gate) in idt.iter_mut().enumerate() {
        let handler = base + 16 * v as u64;
        let ist = match v {
            8 => IST_DOUBLE_FAULT,
            2 | 18 => IST_NMI,
            _ => 0,
        };
        let dpl = if v == user_vector as usize { 3 } else { 0 };
        *gate = Gate {
            offset_low: handler as u16,
            selector: KERNEL_CODE,
            ist,
            attributes: 0x8e | dpl << 5,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            _zero: 0,
        };
    }
}

/// Loads the IDT on this CPU.
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let p = Pointer {
        limit: (256 * 16 - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is a static filled by `build` before any CPU loads it.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &p, options(readonly, nostack)) };
}

/// Loads an IDT with no entries, so that the next trap escalates to a
/// triple fault (for the `triple-fault` diagnostic program).
pub fn load_empty() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let p = Pointer { limit: 0, base: 0 };
    // SAFETY: deliberately breaks trap handling; only used to end the
    // machine.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &p, options(readonly, nostack)) };
}
