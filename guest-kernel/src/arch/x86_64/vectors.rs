//! The kernel's interrupt vectors and timer period: the numbers every
//! floor agrees on, kept at the bottom so that the timer, the TLB
//! shootdown and the scheduler can name them without reaching up into
//! `crate::trap`, which decides what each vector means.
//!
//! Constants and the timer start only: nothing here may handle a trap.

use super::apic;

pub const TIMER_VECTOR: u8 = 0x20;
pub const RESCHEDULE_VECTOR: u8 = 0x21;
pub const SHOOTDOWN_VECTOR: u8 = 0x22;
/// Asks a CPU to spin in the kernel with interrupts off (discard-list
/// self-test).
pub const SPIN_VECTOR: u8 = 0x23;
/// The virtio block device's completion interrupt.
pub const VIRTIO_BLK_VECTOR: u8 = 0x30;
pub const SPURIOUS_VECTOR: u8 = 0xff;
pub use pagehint_abi::hypercall::DISCARD_FAULT_VECTOR;
pub use pagehint_abi::syscall::VECTOR as SYSCALL_VECTOR;

/// Starts this CPU's timer: a tick every 10 ms assuming the 1 GHz APIC
/// clock of KVM's in-kernel LAPIC (divided by 16).
pub fn start_timer() {
    apic::start_periodic_timer(TIMER_VECTOR, 625_000);
}

/// Length of one tick in nanoseconds (see [`start_timer`]).
pub const TICK_NS: u64 = 10_000_000;
