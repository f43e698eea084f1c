//! The guest side of the VMM interface: detecting this VMM through CPUID,
//! issuing hypercalls through the port doorbell, and leaving through the
//! exit port.
//!
//! Under another hypervisor (QEMU, say) detection fails and the kernel runs
//! without hypercalls; nothing here may assume the VMM is present unless
//! [`Hypervisor::detect`] said so.
//!
//! Handing the VMM this CPU's hypercall block is this module's job, so it
//! holds that unsafe code, with its reason.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::arch::cpu::{cpuid, halt_forever, outl};
use pagehint_abi::cpuid::{features, is_signature, LEAF_FEATURES, LEAF_SIGNATURE};
use pagehint_abi::hypercall::{CallResult, HypercallBlock, Request};
use pagehint_abi::ports::EXIT_PORT;
use pagehint_abi::ABI_VERSION;

/// What CPUID says about the VMM.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hypervisor {
    pub abi_version: u32,
    pub features: u32,
    pub port: u16,
    pub tsc_khz: u32,
}

/// The hypercall port, 0 when no VMM of ours answered.
static PORT: AtomicU32 = AtomicU32::new(0);

impl Hypervisor {
    /// Looks for this VMM's CPUID leaves.
    pub fn detect() -> Option<Self> {
        let (max, b, c, d) = cpuid(LEAF_SIGNATURE, 0);
        if !is_signature(b, c, d) || max < LEAF_FEATURES {
            return None;
        }
        let (abi_version, features, port, tsc_khz) = cpuid(LEAF_FEATURES, 0);
        let hv = Self {
            abi_version,
            features,
            port: port as u16,
            tsc_khz,
        };
        if hv.features & features::HYPERCALLS != 0 {
            PORT.store(port & 0xffff, Ordering::Relaxed);
        }
        Some(hv)
    }
}

/// Whether a VMM of ours answered CPUID with a hypercall port.
pub fn present() -> bool {
    PORT.load(Ordering::Relaxed) != 0
}

/// Issues one hypercall: the VMM's result (the unknown wire value as the
/// error), or `None` when no VMM of ours is present.
pub fn call(req: Request) -> Option<Result<CallResult, i32>> {
    // A local `HypercallBlock` is 64-byte aligned (its type says so).
    let mut block = req.encode();
    hypercall(&mut block).map(CallResult::try_from)
}

/// Issues one hypercall with `block`, which must be 64-byte aligned in
/// memory the kernel owns. Returns the VMM's result code, or `None` when
/// no VMM of ours is present. Everything but `bad-hints` (which sends
/// malformed blocks on purpose) goes through [`call`].
pub fn hypercall(block: &mut HypercallBlock) -> Option<i32> {
    let port = PORT.load(Ordering::Relaxed) as u16;
    if port == 0 {
        return None;
    }
    block.result = CallResult::BadBlock.into();
    let phys = crate::arch::direct_map::virt_to_phys(block as *mut HypercallBlock as u64);
    // The block lives in the first 4 GiB (all guest RAM does), so its
    // address fits the 32-bit doorbell write.
    outl(port, phys as u32);
    // SAFETY: the VMM wrote the result while the `out` was in flight; the
    // volatile read keeps the compiler from reusing the value stored above.
    Some(unsafe { core::ptr::addr_of!(block.result).read_volatile() })
}

/// The handshake: tells the VMM which ABI this kernel speaks.
pub fn hello(cpu: u32) -> Option<Result<CallResult, i32>> {
    call(Request::Hello {
        version: u64::from(ABI_VERSION),
        cpu: u64::from(cpu),
    })
}

/// The wire value of a [`call`]'s result, as the boot log prints it.
pub fn wire(r: Result<CallResult, i32>) -> i32 {
    r.map_or_else(|raw| raw, i32::from)
}

/// Ends the machine with `status` (the VMM exits with it; QEMU with
/// `status << 1 | 1`). Halts if nothing listens on the exit port.
pub fn exit(status: u32) -> ! {
    outl(EXIT_PORT, status);
    halt_forever()
}
