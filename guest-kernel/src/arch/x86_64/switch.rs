//! The context switch between two kernel stacks, and the first return of a
//! new task to user mode.
//!
//! Only callee-saved registers are switched: the caller-saved ones are
//! saved by the compiler around the call, and user registers sit in the
//! task's trap frame. Must never touch anything but the stack pointer.

core::arch::global_asm!(
    r#"
.section .text, "ax"
.global context_switch
context_switch:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, (%rdi)
    mov %rsi, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

.global new_task_entry
new_task_entry:
    call finish_switch
    jmp trap_return
"#,
    options(att_syntax)
);

extern "C" {
    fn context_switch(save_rsp: *mut u64, next_rsp: u64);
    static new_task_entry: u8;
}

/// Saves the current callee-saved state and stack pointer into `*save` and
/// resumes the task whose stack pointer is `next`.
///
/// # Safety
/// `next` must be a stack pointer saved by this function or built by
/// [`initial_stack`], on a stack that stays allocated while in use.
pub unsafe fn switch(save: *mut u64, next: u64) {
    // SAFETY: delegated to the caller.
    unsafe { context_switch(save, next) }
}

/// Words below a new task's trap frame: six callee-saved registers and the
/// return address.
pub const SWITCH_FRAME_WORDS: usize = 7;

/// Fills the switch frame below a new task's trap frame; returns the stack
/// pointer to hand to [`switch`]. `frame_start` is the trap frame's address.
pub fn initial_stack(frame_start: *mut u64) -> u64 {
    let entry = core::ptr::addr_of!(new_task_entry) as u64;
    // SAFETY: the caller's stack has room for the switch frame below the
    // trap frame.
    unsafe {
        let sp = frame_start.sub(SWITCH_FRAME_WORDS);
        for i in 0..6 {
            sp.add(i).write(0);
        }
        sp.add(6).write(entry);
        sp as u64
    }
}
