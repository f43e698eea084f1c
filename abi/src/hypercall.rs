//! The hypercall transport: a parameter block in guest memory, announced by
//! writing its guest-physical address to [`crate::ports::HYPERCALL_PORT`].
//!
//! The block is 64 bytes, 64-byte aligned so that it never straddles a page.
//! The guest fills `op` and `args`, writes the address, and finds `result`
//! (and any output arguments) filled when the `out` retires. The VMM reads
//! the block with `read_obj` and checks every field before acting on it; a
//! bad block gets an error result, a counter and a log line, never a panic.

/// Operation codes.
pub mod op {
    /// Handshake: `args[0]` = the ABI version the guest speaks, `args[1]` =
    /// the guest's CPU index. Answers [`super::result::OK`] or
    /// [`super::result::BAD_VERSION`].
    pub const HELLO: u32 = 1;
}

/// Values of `HypercallBlock::result`.
pub mod result {
    pub const OK: i32 = 0;
    /// The operation code is unknown.
    pub const UNKNOWN_OP: i32 = -1;
    /// An argument is out of range (a frame outside RAM, a count too big).
    pub const BAD_ARGUMENT: i32 = -2;
    /// The block itself is not in guest RAM or is misaligned.
    pub const BAD_BLOCK: i32 = -3;
    /// The guest speaks another ABI version.
    pub const BAD_VERSION: i32 = -4;
}

/// Alignment the guest must give a [`HypercallBlock`].
pub const BLOCK_ALIGN: u64 = 64;

/// The parameter block of one hypercall.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallBlock {
    /// One of [`op`].
    pub op: u32,
    /// Written by the VMM: one of [`result`].
    pub result: i32,
    /// Operation-specific arguments (in and out).
    pub args: [u64; 7],
}

const _: () = assert!(core::mem::size_of::<HypercallBlock>() == 64);

#[cfg(feature = "vmm")]
// SAFETY: `#[repr(C)]`, integers only, no padding (64 = 4 + 4 + 7 * 8), any
// bit pattern is a valid value.
unsafe impl vm_memory::ByteValued for HypercallBlock {}
