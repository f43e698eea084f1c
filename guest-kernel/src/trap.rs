//! What every trap means: CPU exceptions, the timer, the reschedule IPI and
//! the system-call gate.
//!
//! A fault in kernel mode is fatal: it prints vector, error code, RIP and
//! CR2 and ends the machine with `CPU_EXCEPTION`. A fault in user mode is
//! the process's problem: demand paging resolves what it can, anything
//! else ends that process only.

use crate::arch::apic;
use crate::arch::cpu;
use crate::arch::idt::TrapFrame;
use crate::arch::vectors::*;
use crate::sched::{self, Reason};
use crate::{console, hv, percpu, syscall};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use pagehint_abi::exit::guest;
use pagehint_abi::syscall::prot;

const PAGE_FAULT: u64 = 14;

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization exception",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

#[no_mangle]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    if frame.came_from_user() {
        // User mode runs with interrupts enabled: a quiescent state for the
        // discard list.
        crate::phys::discard::quiescent();
    }
    match frame.vector {
        v if v == DISCARD_FAULT_VECTOR as u64 => {
            crate::mm::discard_fault::fault(frame.came_from_user())
        }
        v if v == SYSCALL_VECTOR as u64 && frame.came_from_user() => syscall::dispatch(frame),
        v if v < 32 => exception(frame),
        v if v == TIMER_VECTOR as u64 => {
            apic::eoi();
            sched::tick(frame);
        }
        v if v == RESCHEDULE_VECTOR as u64 => {
            apic::eoi();
            if frame.came_from_user() {
                sched::schedule(Reason::Preempt);
            }
        }
        v if v == SHOOTDOWN_VECTOR as u64 => {
            crate::phys::tlb::answer();
            apic::eoi();
        }
        v if v == SPIN_VECTOR as u64 => {
            apic::eoi();
            spin_with_interrupts_off();
        }
        v if v == VIRTIO_BLK_VECTOR as u64 => {
            crate::drivers::virtio_blk::interrupt();
            apic::eoi();
        }
        v if v == SPURIOUS_VECTOR as u64 => {}
        _ => apic::eoi(),
    }
}

fn exception(frame: &mut TrapFrame) {
    let v = frame.vector as usize;
    if frame.came_from_user() {
        if frame.vector == PAGE_FAULT {
            let addr = cpu::read_cr2();
            // Error code bits: 1 = write, 4 = instruction fetch.
            let (need, what) = if frame.error & 2 != 0 {
                (prot::WRITE, "write")
            } else if frame.error & 16 != 0 {
                (prot::EXEC, "execute")
            } else {
                (prot::READ, "read")
            };
            if let Some(task) = sched::current() {
                if let Some(asid) = task.asid {
                    if crate::mm::with(|st| st.fault(asid, addr, need)).is_ok() {
                        return;
                    }
                }
                crate::console::println!(
                    "guest: pid {} killed: {} ({}) at rip {:#x}, address {:#x}",
                    task.pid,
                    NAMES[v],
                    what,
                    frame.rip,
                    addr
                );
            }
        } else if let Some(task) = sched::current() {
            crate::console::println!(
                "guest: pid {} killed: {} (vector {}) error {:#x} at rip {:#x}",
                task.pid,
                NAMES[v],
                v,
                frame.error,
                frame.rip
            );
        }
        sched::exit_current(guest::FAILURE);
    }
    // A kernel fault: report and end the machine. The console lock may be
    // held by this very CPU, so write past it.
    console::write_fmt_unlocked(format_args!(
        "\nKERNEL PANIC: CPU exception {} (vector {}) error {:#x} rip {:#x} cr2 {:#x} rsp {:#x} cpu {}\n",
        NAMES[v],
        v,
        frame.error,
        frame.rip,
        cpu::read_cr2(),
        frame.rsp,
        percpu::this().index.get()
    ));
    hv::exit(guest::CPU_EXCEPTION);
}

/// TSC deadline until which a CPU asked by `SPIN_VECTOR` spins.
pub static SPIN_UNTIL: AtomicU64 = AtomicU64::new(0);
/// True while that CPU spins.
pub static SPINNING: AtomicBool = AtomicBool::new(false);

/// The `SPIN_VECTOR` handler: busy in kernel code with interrupts off (an
/// interrupt gate cleared IF) until the deadline.
fn spin_with_interrupts_off() {
    SPINNING.store(true, Ordering::Release);
    while cpu::rdtsc() < SPIN_UNTIL.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    SPINNING.store(false, Ordering::Release);
}
