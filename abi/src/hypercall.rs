//! The hypercall transport: a parameter block in guest memory, announced by
//! writing its guest-physical address to [`crate::ports::HYPERCALL_PORT`].
//!
//! The block is 64 bytes, 64-byte aligned so that it never straddles a page.
//! The guest fills `op` and `args`, writes the address, and finds `result`
//! (and any output arguments) filled when the `out` retires. The VMM reads
//! the block with `read_obj` and checks every field before acting on it; a
//! bad block gets an error result, a counter and a log line, never a panic.
//!
//! The numbers are the modules [`op`], [`hint`] and [`result`]; the typed
//! view of them is [`Request`] (encoded into and decoded from a
//! [`HypercallBlock`]), [`HintOp`], [`HintEntry::new`] and [`CallResult`].

mod codes;
mod request;
mod wire;

pub use codes::{CallResult, HintOp, HintResult};
pub use request::{DecodeError, Request};
pub use wire::{
    hint, op, result, DiscardFaultInfo, HintBatch, HintEntry, HypercallBlock, BLOCK_ALIGN,
    DISCARD_FAULT_VECTOR, HINT_BATCH_MAX,
};
