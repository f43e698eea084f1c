//! x86-64 policy: the register state a PVH guest starts in and the CPUID
//! table it sees. These modules compute and apply state; they must never
//! run a vCPU or own a file descriptor.

pub mod cpuid;
pub mod regs;
