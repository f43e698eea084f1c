//! I/O ports the guest uses to talk to the VMM.
//!
//! Hypercalls travel over port I/O, never `vmcall`: on the nested software
//! KVM of our development machines `vmcall` never returns, and a port exit
//! costs about as much as ten emulated kernel instructions.

/// First port of the 16550 UART the guest uses as its console (COM1).
pub const COM1_BASE: u16 = 0x3f8;
/// Number of registers of the 16550 UART.
pub const COM1_LEN: u16 = 8;
/// Legacy interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;

/// The exit port, at the address and with the write semantics of QEMU's
/// `isa-debug-exit` device (`iobase=0xf4,iosize=0x04`): a 32-bit `out` of a
/// status ends the machine. QEMU then exits with `(status << 1) | 1`; this
/// VMM exits with the status itself (see [`crate::exit`]).
pub const EXIT_PORT: u16 = 0xf4;

/// Hypercall doorbell. The guest writes, with a 32-bit `out`, the
/// guest-physical address of a [`crate::hypercall::HypercallBlock`]; the VMM
/// handles the request and writes the result into the block before the
/// `out` instruction retires. Chosen in a range no PC device uses.
pub const HYPERCALL_PORT: u16 = 0x0510;

/// The instruction counter, a measurement port served only with
/// `vmm run --count-instructions`: a 32-bit `out` (any value) starts
/// counting this vCPU's guest instructions (the VMM single-steps it); a
/// 32-bit `in` stops and reads the count since the `out` (saturating at
/// `u32::MAX`; the `out` itself counts as one). Without the flag the port
/// is unclaimed and reads as all-ones.
pub const STEP_COUNTER_PORT: u16 = 0x0518;
