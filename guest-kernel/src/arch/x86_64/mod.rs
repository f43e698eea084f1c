//! Everything specific to x86-64: boot code, CPU tables, the APIC and the
//! instructions the rest of the kernel calls through typed wrappers.
//! Unsafe code of the kernel lives here (and in `crate::hv`).

pub mod apic;
pub mod boot;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod switch;
pub mod vectors;
