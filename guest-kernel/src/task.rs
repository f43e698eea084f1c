//! The task record: a user or idle task's kernel stack, saved stack
//! pointer, address space and open files, and how a new one is laid out
//! so that its first switch returns to user mode. Kept below the per-CPU
//! data, which holds the current task and the run queue, and below the
//! scheduler, which moves tasks between them.
//!
//! Laying out a new task's first trap frame on its kernel stack is part
//! of the context switch, so this module holds that unsafe code, each
//! block with its reason. Nothing here may choose which task runs: that is
//! `crate::sched`.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::arch::idt::TrapFrame;
use crate::arch::{boot, gdt, switch};

/// Kernel stack per task.
const KSTACK_WORDS: usize = 2048;

pub struct Task {
    pub pid: u32,
    pub(crate) saved_rsp: u64,
    kstack: Vec<u64>,
    /// The address space (`mm::MmState::spaces`), `None` for idle tasks.
    pub asid: Option<u32>,
    /// Its page-table root, for CR3.
    pub(crate) root: u64,
    /// Open files: index into the file system's directory and position.
    pub files: Vec<Option<OpenFile>>,
}

/// An open file of a task.
#[derive(Clone, Copy, Debug)]
pub struct OpenFile {
    pub file: u32,
    pub pos: u64,
}

/// A task pointer that may cross CPUs (through a run queue).
pub struct TaskPtr(pub *mut Task);
// SAFETY: a task is owned by exactly one run queue or one CPU at a time.
unsafe impl Send for TaskPtr {}

/// What the next task must do for the one that just left the CPU.
#[derive(Clone, Copy)]
pub enum Pending {
    None,
    Requeue(*mut Task),
    Reap(*mut Task),
}

static NEXT_PID: AtomicU32 = AtomicU32::new(1);

impl Task {
    /// A user task that starts at `entry` with `rsp` and the three argument
    /// registers, in `space`.
    pub fn new_user(asid: u32, root: u64, entry: u64, rsp: u64, args: [u64; 3]) -> Box<Task> {
        let mut t = Box::new(Task {
            pid: NEXT_PID.fetch_add(1, Ordering::Relaxed),
            saved_rsp: 0,
            kstack: vec![0u64; KSTACK_WORDS],
            asid: Some(asid),
            root,
            files: Vec::new(),
        });
        let frame_words = core::mem::size_of::<TrapFrame>() / 8;
        let top = t.kstack.as_mut_ptr_range().end;
        // SAFETY: the stack is KSTACK_WORDS long, far more than a trap
        // frame plus a switch frame.
        let frame_ptr = unsafe { top.sub(frame_words) };
        let frame = TrapFrame {
            rip: entry,
            cs: gdt::USER_CODE as u64,
            rflags: 0x202,
            rsp,
            ss: gdt::USER_DATA as u64,
            rdi: args[0],
            rsi: args[1],
            rdx: args[2],
            ..TrapFrame::default()
        };
        // SAFETY: `frame_ptr` is aligned and inside the stack.
        unsafe { (frame_ptr as *mut TrapFrame).write(frame) };
        t.saved_rsp = switch::initial_stack(frame_ptr);
        t
    }

    pub fn idle() -> Box<Task> {
        Box::new(Task {
            pid: 0,
            saved_rsp: 0,
            kstack: Vec::new(),
            asid: None,
            root: boot::kernel_pml4_phys(),
            files: Vec::new(),
        })
    }

    pub fn stack_top(&self) -> u64 {
        self.kstack.as_ptr_range().end as u64
    }
}
