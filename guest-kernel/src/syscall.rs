//! The system calls of user programs (`int 0x80`; numbers and errors in
//! `pagehint_abi::syscall`).
//!
//! Every argument comes from user mode and is checked before use; a bad one
//! gets a negative errno, never a kernel fault. User memory is reached only
//! through `AddressSpace::copy_from_user`.

use crate::arch::idt::TrapFrame;
use crate::mm::addr_space::AsError;
use crate::sched::{self, Reason};
use crate::{clock, console, percpu};
use pagehint_abi::syscall::{errno, nr, prot};

/// Longest single `write`.
const MAX_WRITE: usize = 4096;
/// Largest single `mmap`.
const MAX_MMAP: u64 = 1 << 32;

fn err(e: AsError) -> i64 {
    -match e {
        AsError::NoMemory => errno::ENOMEM,
        AsError::BadRange => errno::EINVAL,
        AsError::Fault => errno::EFAULT,
    }
}

pub fn dispatch(frame: &mut TrapFrame) {
    let (a0, a1, a2) = (frame.rdi, frame.rsi, frame.rdx);
    let result: i64 = match frame.rax {
        nr::WRITE => write(a0, a1),
        nr::EXIT => sched::exit_current(a0.min(u32::MAX as u64) as u32),
        nr::MMAP => with_space(|s| {
            if a0 == 0 || a0 > MAX_MMAP || a1 & !prot::ALL != 0 {
                return -errno::EINVAL;
            }
            s.mmap(a0, a1).map_or_else(err, |a| a as i64)
        }),
        nr::MUNMAP => with_space(|s| s.munmap(a0, a1).map_or_else(err, |_| 0)),
        nr::MPROTECT => with_space(|s| {
            if a2 & !prot::ALL != 0 {
                return -errno::EINVAL;
            }
            s.mprotect(a0, a1, a2).map_or_else(err, |_| 0)
        }),
        nr::YIELD => {
            sched::schedule(Reason::Yield);
            0
        }
        nr::GETPID => sched::current().map_or(0, |t| t.pid as i64),
        nr::CLOCK => clock::now_ns() as i64,
        nr::GETCPU => percpu::this().index.get() as i64,
        _ => -errno::ENOSYS,
    };
    frame.rax = result as u64;
}

fn with_space(f: impl FnOnce(&mut crate::mm::addr_space::AddressSpace) -> i64) -> i64 {
    match sched::current().and_then(|t| t.space.as_mut()) {
        Some(s) => f(s),
        None => -errno::EFAULT,
    }
}

fn write(ptr: u64, len: u64) -> i64 {
    let len = (len as usize).min(MAX_WRITE);
    let mut buf = [0u8; 256];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len());
        let r = with_space(|s| {
            s.copy_from_user(ptr + done as u64, &mut buf[..n])
                .map_or_else(err, |_| 0)
        });
        if r < 0 {
            return if done > 0 { done as i64 } else { r };
        }
        console::write_bytes(&buf[..n]);
        done += n;
    }
    done as i64
}
