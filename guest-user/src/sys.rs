//! System-call wrappers: the only place user programs enter the kernel.

use core::arch::asm;

use pagehint_abi::syscall::{nr, KernelStats};

/// A system call with up to five arguments (RDI, RSI, RDX, R10, R8).
pub fn syscall5(n: u64, a: u64, b: u64, c: u64, d: u64, e: u64) -> i64 {
    let ret: i64;
    // SAFETY: `int3` is the kernel's system-call trap (see
    // `pagehint_abi::syscall`); it preserves every register but RAX.
    unsafe {
        asm!("int3", inlateout("rax") n as i64 => ret,
             in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d, in("r8") e,
             options(nostack))
    };
    ret
}

pub fn syscall3(n: u64, a: u64, b: u64, c: u64) -> i64 {
    syscall5(n, a, b, c, 0, 0)
}

pub fn write(bytes: &[u8]) {
    syscall3(nr::WRITE, bytes.as_ptr() as u64, bytes.len() as u64, 0);
}

pub fn exit(status: u32) -> ! {
    syscall3(nr::EXIT, status as u64, 0, 0);
    unreachable!("exit returned")
}

pub fn pid() -> u64 {
    syscall3(nr::GETPID, 0, 0, 0) as u64
}

pub fn cpu() -> u64 {
    syscall3(nr::GETCPU, 0, 0, 0) as u64
}

pub fn clock_ns() -> u64 {
    syscall3(nr::CLOCK, 0, 0, 0) as u64
}

/// The kernel's counters.
pub fn kstats() -> KernelStats {
    let mut s = KernelStats::default();
    syscall3(nr::KSTATS, &mut s as *mut KernelStats as u64, 0, 0);
    s
}

/// The time-stamp counter (allowed at CPL3).
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects and CR4.TSD is clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}
