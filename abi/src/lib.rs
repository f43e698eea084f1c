//! The ABI shared by the VMM and the guest kernel.
//!
//! Everything both sides must agree on lives here exactly once: I/O port
//! numbers, the hypervisor CPUID leaves, exit-status conventions, the PVH boot
//! structures and the hypercall parameter block. The crate is `no_std` and has
//! no dependencies except, for the VMM side only (`vmm` feature), `vm-memory`,
//! whose `ByteValued` marks these `#[repr(C)]` types as safe to copy in and
//! out of guest memory.
//!
//! This crate must never contain behaviour: only layouts, numbers and the
//! small pure helpers that encode or decode them. One exception, said
//! where it stands: [`state_table`], the few compare-and-swap steps each
//! side takes on a shared page-state entry, which both must run identically.

#![no_std]

pub mod addr;
pub mod boot;
pub mod cpuid;
pub mod disk;
pub mod exit;
pub mod hypercall;
pub mod page_state;
pub mod ports;
pub mod state_table;
pub mod syscall;

/// Version of the hinting ABI. The VMM advertises it through CPUID
/// ([`cpuid::LEAF_FEATURES`]); the guest reports the version it speaks in
/// its `Hello` hypercall and the VMM refuses a mismatch.
pub const ABI_VERSION: u32 = 1;

pub use addr::{GuestPhys, Pfn, PAGE_SIZE};
