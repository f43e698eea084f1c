//! Everything specific to x86-64: boot code, CPU tables, the APIC and the
//! instructions the rest of the kernel calls through typed wrappers.
//! Unsafe code of the kernel lives here, and otherwise only in the modules
//! whose job it is, each saying so in its comment. The direct map's
//! accessors (`direct_map`) are `unsafe fn`: whoever names a physical
//! address says, at the call, why the memory is its own. Those callers:
//! `crate::phys::{allocator, pages, hints, tlb, report, noise}` (frames,
//! page tables, the shared page-state table, CR3 reloads, report and
//! noise batch pages), `crate::mm::{addr_space, filemap}` (user copies,
//! disk reads into fresh cache frames), `crate::drivers::virtio_blk` (its
//! registers and queue page), `crate::fs` (a scratch block),
//! `crate::{process, syscall, smp, main}` (loading programs, file copies,
//! the AP trampoline, the command line) and `crate::diag` (its own test
//! frames). Beside them: `crate::{sched, task}` (the context switch),
//! `crate::percpu`, `crate::sync` and `crate::hv`.

pub mod apic;
pub mod boot;
pub mod cpu;
pub mod direct_map;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod switch;
pub mod vectors;
