//! The built-in user programs, one static executable: the kernel passes
//! the command line's program name and arguments, and `_start` dispatches.
//!
//! They run at CPL3, natively even on the development machines, and talk
//! to the kernel only through the system calls of `pagehint_abi::syscall`.
//! Each ends with one machine-readable result line.

#![no_std]
#![no_main]

use guest_user::{arg_u64, split_program};
use pagehint_abi::exit::guest;
use pagehint_abi::syscall::{nr, prot};
use sys::{clock_ns, cpu, exit, pid, syscall3, write};

mod build;
mod cycle;
mod fwrite;
mod kv;
mod sys;
mod workloads;

macro_rules! say {
    ($($arg:tt)*) => {{
        let mut b = guest_user::LineBuf::<1024>::default();
        let _ = core::fmt::Write::write_fmt(&mut b, format_args!("{}\n", format_args!($($arg)*)));
        crate::sys::write(b.as_bytes());
    }};
}
pub(crate) use say;

#[no_mangle]
#[link_section = ".text._start"]
extern "C" fn _start(args_ptr: *const u8, args_len: usize, instance: u64) -> ! {
    // SAFETY: the kernel put `args_len` bytes of UTF-8 at `args_ptr` on our
    // stack.
    let args = unsafe { core::slice::from_raw_parts(args_ptr, args_len) };
    let args = core::str::from_utf8(args).unwrap_or("");
    let (program, rest) = split_program(args);
    let status = match program {
        "hello" => hello(instance),
        "preempt" => preempt(arg_u64(rest, 300)),
        "mm" => mm(arg_u64(rest, 64)),
        "segv" => segv(),
        "exit" => arg_u64(rest, 0) as u32,
        "files" => workloads::list_files(),
        "scan-read" => workloads::scan(arg_u64(rest, 1), workloads::Access::Read),
        "scan-mmap" => workloads::scan(arg_u64(rest, 1), workloads::Access::Mmap),
        "churn" => workloads::churn(rest),
        "churn-idle" => workloads::churn_idle(rest),
        "sleep" => workloads::sleep(rest),
        "mprotect" => workloads::mprotect_toggle(rest),
        "cow" => workloads::cow(arg_u64(rest, 1)),
        "kv" => kv::kv(rest, instance),
        "cycle" => cycle::cycle(rest),
        "flood" => flood(arg_u64(rest, 5)),
        "build" => build::build(rest),
        "fwrite" | "fverify" if instance > 0 => {
            say!("{program}: instance {instance} stands aside: one writer per disk (copies=1 runs one)");
            guest::SUCCESS
        }
        "fwrite" => fwrite::fwrite(rest),
        "fverify" => fwrite::fverify(rest),
        _ => {
            say!("unknown program '{program}' (known: hello preempt mm segv exit flood files scan-read scan-mmap churn churn-idle sleep mprotect cow kv cycle build fwrite fverify crash-kernel triple-fault portio kbench bad-hints discard-list-test)");
            guest::BAD_COMMAND_LINE
        }
    };
    exit(status)
}

/// Greets from whichever CPU runs it.
fn hello(instance: u64) -> u32 {
    say!(
        "hello from cpu {}, pid {}, instance {}",
        cpu(),
        pid(),
        instance
    );
    guest::SUCCESS
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc is allowed at CPL3 (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Spins for `ms` milliseconds of wall time and counts how often it was
/// descheduled (a gap of more than 5 ms between two TSC reads): proof of
/// preemption when several of these share a CPU.
fn preempt(ms: u64) -> u32 {
    // Calibrate the TSC against the kernel clock over ~20 ms.
    let (c0, t0) = (clock_ns(), rdtsc());
    while clock_ns() - c0 < 20_000_000 {}
    let (c1, t1) = (clock_ns(), rdtsc());
    let cycles_per_ms = ((t1 - t0) * 1_000_000 / (c1 - c0).max(1)).max(1);
    let gap = 5 * cycles_per_ms;
    let end = t1 + ms * cycles_per_ms;
    let (mut last, mut gaps) = (t1, 0u64);
    loop {
        let now = rdtsc();
        if now - last > gap {
            gaps += 1;
        }
        last = now;
        if now >= end {
            break;
        }
    }
    say!(
        "preempt: pid {} cpu {} ran {} ms, descheduled {} times",
        pid(),
        cpu(),
        ms,
        gaps
    );
    guest::SUCCESS
}

/// Anonymous memory: mmap, demand-zero, write and verify, mprotect both
/// ways, munmap and map again.
fn mm(pages: u64) -> u32 {
    let len = pages * 4096;
    let a = syscall3(nr::MMAP, len, prot::RW, 0);
    if a < 0 {
        say!("mm: FAIL mmap {a}");
        return guest::FAILURE;
    }
    let base = a as u64 as *mut u64;
    let words = (len / 8) as usize;
    // SAFETY: `[base, base + len)` is our fresh read-write mapping.
    let mem = unsafe { core::slice::from_raw_parts_mut(base, words) };
    let mut errors = 0u64;
    errors += mem.iter().filter(|&&w| w != 0).count() as u64;
    for (i, w) in mem.iter_mut().enumerate() {
        *w = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    let r1 = syscall3(nr::MPROTECT, a as u64, len, prot::READ);
    errors += mem
        .iter()
        .enumerate()
        .filter(|(i, &w)| w != (*i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .count() as u64;
    let r2 = syscall3(nr::MPROTECT, a as u64, len, prot::RW);
    mem[0] = 1;
    let r3 = syscall3(nr::MUNMAP, a as u64 + len / 2, len / 2, 0);
    let b = syscall3(nr::MMAP, len / 2, prot::RW, 0);
    let bad = syscall3(nr::MPROTECT, 0x1000, 4096, prot::READ);
    if b > 0 {
        // SAFETY: a fresh read-write mapping of `len / 2` bytes.
        let fresh = unsafe { core::slice::from_raw_parts(b as u64 as *const u64, words / 2) };
        errors += fresh.iter().filter(|&&w| w != 0).count() as u64;
    }
    let ok = errors == 0 && r1 == 0 && r2 == 0 && r3 == 0 && b > 0 && bad < 0 && mem[0] == 1;
    say!(
        "mm: {} pages={} errors={} mprotect={},{} munmap={} remap={} unmapped_mprotect={}",
        if ok { "ok" } else { "FAIL" },
        pages,
        errors,
        r1,
        r2,
        r3,
        b > 0,
        bad
    );
    if ok {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}

/// `flood SECONDS`: console output as fast as the kernel takes it, for
/// SECONDS of the kernel's clock (a guest that floods its console: the
/// VMM must neither buffer it without bound nor miss its `--timeout`).
fn flood(seconds: u64) -> u32 {
    let end = clock_ns() + seconds * 1_000_000_000;
    let mut lines = 0u64;
    while clock_ns() < end {
        for _ in 0..16 {
            say!("flood: line {lines:012} ................................................................");
            lines += 1;
        }
    }
    say!("result: program=flood lines={lines} errors=0");
    guest::SUCCESS
}

/// Writes to a read-only mapping: the kernel must end this process.
fn segv() -> u32 {
    let a = syscall3(nr::MMAP, 4096, prot::READ, 0);
    say!("segv: writing to read-only page {a:#x}");
    // SAFETY: none intended; this write must fault.
    unsafe { (a as u64 as *mut u64).write_volatile(1) };
    say!("segv: FAIL the write went through");
    guest::FAILURE
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    write(b"user program panicked\n");
    exit(guest::FAILURE)
}
