//! Tasks and the preemptive scheduler: a run queue per CPU, round robin,
//! a time slice of one timer tick, and an idle task per CPU.
//!
//! A task is switched out only at a trap boundary (timer tick from user
//! mode, `yield`, `exit`), with interrupts off, so kernel code is never
//! preempted. A task that leaves the CPU is requeued or freed by the *next*
//! task, after the switch (`finish_switch`), so no other CPU can pick it up
//! while its registers are still being saved.
//!
//! The context switch (CR3, the stack switch, handing task ownership
//! between CPUs) is this module's job, so it holds that unsafe code, each
//! block with its reason.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::arch::idt::TrapFrame;
use crate::arch::vectors::RESCHEDULE_VECTOR;
use crate::arch::{apic, cpu, gdt, switch};
use crate::mm;
use crate::percpu;
use crate::phys;
use crate::task::{Pending, Task, TaskPtr};

/// Why the current task leaves the CPU.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Preempt,
    Yield,
    Exit,
}

static LIVE: AtomicU32 = AtomicU32::new(0);
static STARTED: AtomicU32 = AtomicU32::new(0);
static WORST_STATUS: AtomicU32 = AtomicU32::new(0);

/// Puts a new task on CPU `cpu`'s run queue and wakes that CPU.
pub fn spawn(task: Box<Task>, cpu: usize) {
    LIVE.fetch_add(1, Ordering::AcqRel);
    STARTED.fetch_add(1, Ordering::Relaxed);
    let target = percpu::get(cpu);
    target
        .run_queue
        .lock()
        .push_back(TaskPtr(Box::into_raw(task)));
    if cpu != percpu::this().index.get() as usize {
        apic::send_ipi(target.apic_id.get(), RESCHEDULE_VECTOR);
    }
}

/// The task running on this CPU, `None` in the idle task.
pub fn current() -> Option<&'static mut Task> {
    let c = percpu::this();
    let t = c.current.get();
    if t.is_null() || t == c.idle.get() {
        None
    } else {
        // SAFETY: the current task is owned by this CPU while it runs, and
        // interrupts are off in the kernel.
        Some(unsafe { &mut *t })
    }
}

/// Makes the boot context of this CPU its idle task.
pub fn init_cpu() {
    let c = percpu::this();
    let idle = Box::into_raw(Task::idle());
    c.idle.set(idle);
    c.current.set(idle);
}

/// Picks the next task and switches to it. Called with interrupts off.
pub fn schedule(reason: Reason) {
    let c = percpu::this();
    let prev = c.current.get();
    let idle = c.idle.get();
    let next = c.run_queue.lock().pop_front().map(|t| t.0);
    let next = match next {
        Some(n) => n,
        None if reason == Reason::Exit => idle,
        None => return,
    };
    if prev != idle {
        c.pending.set(match reason {
            Reason::Exit => Pending::Reap(prev),
            _ => Pending::Requeue(prev),
        });
    }
    // SAFETY: `next` came off our run queue (or is our idle task), so this
    // CPU owns it now.
    let n = unsafe { &*next };
    let root = n.root;
    if n.pid != 0 {
        gdt::set_kernel_stack(c.index.get() as usize, n.stack_top());
    }
    // SAFETY: every address space shares the kernel half, so the kernel
    // stack and code stay mapped across the switch.
    unsafe { cpu::write_cr3(root) };
    c.current.set(next);
    // SAFETY: `prev` is the running task (its slot outlives the switch);
    // `next` holds a stack pointer saved by `switch` or built by
    // `initial_stack`.
    unsafe { switch::switch(core::ptr::addr_of_mut!((*prev).saved_rsp), n.saved_rsp) };
    finish_switch();
}

/// Runs on the new task's stack right after every switch.
#[no_mangle]
extern "C" fn finish_switch() {
    let c = percpu::this();
    match c.pending.replace(Pending::None) {
        Pending::None => {}
        Pending::Requeue(t) => c.run_queue.lock().push_back(TaskPtr(t)),
        Pending::Reap(t) => {
            // SAFETY: the exited task is off every queue and no CPU runs
            // it; its address space is no longer loaded (CR3 was switched).
            let task = unsafe { Box::from_raw(t) };
            if let Some(asid) = task.asid {
                mm::with(|st| st.destroy_space(asid));
            }
        }
    }
}

/// The timer tick: preempts a task that was running in user mode.
pub fn tick(frame: &TrapFrame) {
    let me = percpu::this();
    let ticks = me.ticks.fetch_add(1, Ordering::Relaxed);
    if me.index.get() == 0 && ticks % phys::report::PERIOD_TICKS == phys::report::PERIOD_TICKS - 1 {
        // Free page reporting's delayed work (a no-op unless it is on).
        phys::allocator::report_free_pages();
    }
    phys::scribble::tick();
    phys::noise::tick(ticks);
    if frame.came_from_user() {
        // Hints must not wait for ever behind a busy user program, nor
        // discarded frames whose grace period is over.
        if ticks.is_multiple_of(10) {
            // Frames freed a while ago go back (and are announced unused).
            phys::hints::drain_local();
            if phys::hints::pending() > 0 {
                phys::hints::commit();
            }
            phys::discard::flush_local();
            phys::discard::drain();
        }
        schedule(Reason::Preempt);
    }
}

/// Ends the current task with `status`; ends the machine after the last.
pub fn exit_current(status: u32) -> ! {
    WORST_STATUS.fetch_max(status, Ordering::AcqRel);
    if LIVE.fetch_sub(1, Ordering::AcqRel) == 1 {
        let worst = WORST_STATUS.load(Ordering::Acquire);
        // As a clean shutdown syncs: nothing written may stay in the cache.
        if mm::with(|st| st.sync_all()).is_err() {
            crate::console::println!("guest: write-back before the stop failed");
        }
        if phys::noise::SENT.load(Ordering::Relaxed) > 0 {
            crate::console::println!(
                "guest: hcnoise: {} garbage hypercalls sent, {} refused, {} odd doorbell writes",
                phys::noise::SENT.load(Ordering::Relaxed),
                phys::noise::REFUSED.load(Ordering::Relaxed),
                phys::noise::ODD_WRITES.load(Ordering::Relaxed)
            );
        }
        crate::console::println!(
            "guest: all {} processes exited, status {}",
            STARTED.load(Ordering::Relaxed),
            worst
        );
        crate::hv::exit(worst);
    }
    schedule(Reason::Exit);
    unreachable!("an exited task was scheduled again");
}

/// The idle loop of every CPU: run queued tasks, otherwise halt until an
/// interrupt (timer tick or reschedule IPI).
pub fn idle_loop() -> ! {
    loop {
        cpu::interrupts_off();
        if !percpu::this().run_queue.lock().is_empty() {
            schedule(Reason::Yield);
        }
        // Tell the host what this CPU learned before it sleeps, and let
        // discarded frames whose grace period is over go.
        phys::hints::drain_local();
        phys::hints::commit();
        phys::discard::flush_local();
        phys::discard::quiescent();
        phys::discard::drain();
        // The flusher: dirty pages reach the disk while nothing else runs.
        mm::writeback::background();
        cpu::wait_for_interrupt();
    }
}
