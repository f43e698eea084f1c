//! Everything specific to x86-64: boot code, CPU tables, the APIC and the
//! instructions the rest of the kernel calls through typed wrappers.
//! Unsafe code of the kernel lives here (the direct map's accessors in
//! `direct_map`), and otherwise only in the modules whose job it is, each
//! saying so in its comment: `crate::phys::{allocator, pages, hints, tlb}`
//! (frames, page tables, the shared page-state table, CR3 reloads),
//! `crate::{sched, task}` (the context switch), `crate::percpu`,
//! `crate::sync`, `crate::hv` and `crate::syscall::copy_out`.

pub mod apic;
pub mod boot;
pub mod cpu;
pub mod direct_map;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod switch;
pub mod vectors;
