//! The hypercall's wire format: the operation and hint codes, the result
//! numbers, and the `#[repr(C)]` blocks the guest and the VMM share in
//! guest memory. Plain data only: it must never decide anything (the typed
//! views in `codes` and `request` do), and its layouts never change
//! without a new ABI version.

/// Operation codes.
pub mod op {
    /// Handshake: `args[0]` = the ABI version the guest speaks, `args[1]` =
    /// the guest's CPU index. Answers [`result::OK`] or
    /// [`result::BAD_VERSION`].
    pub const HELLO: u32 = 1;
    /// A batch of page-state hints: `args[0]` = guest-physical address of
    /// a [`HintBatch`] page (4 KiB aligned), `args[1]` = number of
    /// entries (1..=[`HINT_BATCH_MAX`]). Each entry gets its own
    /// result; the call answers `OK` when the batch itself was readable.
    pub const HINT_BATCH: u32 = 2;
    /// Registers this vCPU's discard-fault info area: `args[0]` = GPA of a
    /// [`DiscardFaultInfo`] (64-byte aligned), `args[1]` = the CPU
    /// (vCPU) index.
    pub const SET_FAULT_INFO: u32 = 3;
    /// Registers the shared page-state table (`crate::state_table`):
    /// `args[0]` = its GPA (4 KiB aligned, wholly in RAM), `args[1]` = its
    /// entries, one per frame from frame 0 to the top of RAM. Offered with
    /// CPUID `SHARED_STATES`; once per boot.
    pub const SET_STATE_TABLE: u32 = 4;
}

/// The vector of the discard fault: #VE, "virtualization exception". The
/// VMM injects it at the instruction that touched a volatile page it had
/// discarded; the instruction restarts when the handler returns.
pub const DISCARD_FAULT_VECTOR: u8 = 20;

/// Per-vCPU area where the VMM leaves the address of a discard fault
/// before injecting it.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardFaultInfo {
    /// Guest-physical address of the discarded page (page aligned).
    pub gpa: u64,
    /// Incremented by the VMM with every discard fault it injects.
    pub sequence: u64,
    pub _reserved: [u64; 6],
}

const _: () = assert!(core::mem::size_of::<DiscardFaultInfo>() == 64);

#[cfg(feature = "vmm")]
// SAFETY: `#[repr(C)]`, integers only, no padding, any bit pattern valid.
unsafe impl vm_memory::ByteValued for DiscardFaultInfo {}

/// Page-state hint operations, in [`HintEntry::op`]. `count` contiguous
/// frames from `pfn` (set_unused/set_stable), or exactly one (the others).
pub mod hint {
    /// The frames were freed: the host may drop their contents.
    pub const SET_UNUSED: u16 = 1;
    /// The frames are being allocated: the host must keep what the guest
    /// writes from now on. Result [`super::result::DISCARDED`] if the host
    /// had dropped them (they read as zeroes; no need to clear them).
    pub const SET_STABLE: u16 = 2;
    /// A clean page-cache page the guest can read again from disk: the host
    /// may drop it; the guest learns of it through `MAKE_STABLE`.
    pub const MAKE_VOLATILE: u16 = 3;
    /// The guest is about to use a volatile page. Result `OK` (contents
    /// intact, page stable again) or `DISCARDED` (contents lost; the page
    /// is stable and reads as zeroes).
    pub const MAKE_STABLE: u16 = 4;
    /// The first writable PTE of the page is about to be set (seed 000).
    /// The page becomes stable (or, with the VMM's potentially-volatile
    /// option, potentially volatile). Result as for `MAKE_STABLE`.
    pub const CHECK_WRITABLE: u16 = 5;
}

/// Values of `HypercallBlock::result`.
pub mod result {
    pub const OK: i32 = 0;
    /// For a hint: the frame's contents were discarded by the host.
    pub const DISCARDED: i32 = 1;
    /// The operation code is unknown.
    pub const UNKNOWN_OP: i32 = -1;
    /// An argument is out of range (a frame outside RAM, a count too big).
    pub const BAD_ARGUMENT: i32 = -2;
    /// The block itself is not in guest RAM or is misaligned.
    pub const BAD_BLOCK: i32 = -3;
    /// The guest speaks another ABI version.
    pub const BAD_VERSION: i32 = -4;
    /// A hint asked for a transition the state machine forbids (making a
    /// free page volatile, say).
    pub const ILLEGAL_TRANSITION: i32 = -5;
    /// The VMM has hinting turned off.
    pub const HINTS_DISABLED: i32 = -6;
}

/// One hint of a batch: 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintEntry {
    /// First guest frame number.
    pub pfn: u64,
    /// Frames (1 for the single-page operations).
    pub count: u32,
    /// One of [`hint`].
    pub op: u16,
    /// Written by the VMM: a [`result`] code (fits in 16 bits).
    pub result: i16,
}

/// Entries in one batch page: a 16-byte header and 255 entries fill 4 KiB.
pub const HINT_BATCH_MAX: usize = 255;

/// A page of hints.
#[repr(C, align(4096))]
#[derive(Clone, Copy, Debug)]
pub struct HintBatch {
    /// Entries in use (also passed in `args[1]`; the VMM uses the smaller).
    pub count: u32,
    pub _reserved: [u32; 3],
    pub entries: [HintEntry; HINT_BATCH_MAX],
}

const _: () = assert!(core::mem::size_of::<HintEntry>() == 16);
const _: () = assert!(core::mem::size_of::<HintBatch>() == 4096);

#[cfg(feature = "vmm")]
// SAFETY: `#[repr(C)]`, integers only, no padding (16 = 8 + 4 + 2 + 2),
// any bit pattern is a valid value.
unsafe impl vm_memory::ByteValued for HintEntry {}

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
