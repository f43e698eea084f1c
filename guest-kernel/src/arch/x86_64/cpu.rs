//! Typed wrappers over single privileged instructions: port I/O, control
//! registers, MSRs, TLB invalidation, interrupt flag.
//!
//! Each wrapper is one instruction and one small `unsafe` block. They must
//! never grow policy: callers decide when and why.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the ports the
    // kernel uses are owned by the devices it drives.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 32-bit value to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`. A hypercall doorbell reads guest memory, so
    // this one is not `nomem`: the compiler must finish earlier stores.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    }
}

/// Reads a 32-bit value from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outl`: not `nomem`, so that the read is ordered
    // after the stores before it (the instruction counter's stop).
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nostack, preserves_flags))
    }
    value
}

pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Switches to the page tables at physical address `pml4`.
///
/// # Safety
/// `pml4` must map the kernel half exactly as the current tables do.
pub unsafe fn write_cr3(pml4: u64) {
    // SAFETY: the caller guarantees the kernel stays mapped.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) }
}

/// Invalidates the TLB entry of one page on this CPU.
pub fn invlpg(va: u64) {
    // SAFETY: dropping a TLB entry is always safe.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) }
}

/// # Safety
/// Writing an MSR can change the machine's behaviour arbitrarily; callers
/// name the MSR and value they mean.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: delegated to the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    }
}

pub const MSR_GS_BASE: u32 = 0xc000_0101;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// `cpuid` with a leaf and subleaf: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Enables interrupts and halts until one arrives, atomically (the `sti`
/// shadow covers the `hlt`), then disables them again.
pub fn wait_for_interrupt() {
    // SAFETY: the kernel is ready for interrupts whenever it idles.
    unsafe { asm!("sti; hlt; cli", options(nomem, nostack)) }
}

/// Disables interrupts; returns whether they were enabled.
pub fn interrupts_off() -> bool {
    let flags: u64;
    // SAFETY: reading RFLAGS and clearing IF only defers interrupts.
    unsafe { asm!("pushfq; pop {}; cli", out(reg) flags, options(nomem, preserves_flags)) }
    flags & (1 << 9) != 0
}

/// Re-enables interrupts.
pub fn interrupts_on() {
    // SAFETY: callers only re-enable what `interrupts_off` found enabled.
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Reads a non-canonical address: a #GP on purpose (`crash-kernel`), so
/// it never returns unless the fault is survived.
pub fn read_non_canonical() -> u64 {
    // SAFETY: none needed for memory: the access cannot reach memory, it
    // faults; the kernel's #GP handler ends the machine.
    unsafe { (0x8000_0000_0000_0000u64 as *const u64).read_volatile() }
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts off, `hlt` only ends on NMI or reset.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) }
    }
}

/// How many CPUs the firmware describes: CPUID.1 EBX[23:16] when HTT is
/// set, which both this VMM and QEMU fill in; 1 otherwise.
pub fn cpu_count() -> usize {
    let (_, ebx, _, edx) = cpuid(1, 0);
    if edx & (1 << 28) != 0 {
        (((ebx >> 16) & 0xff) as usize).clamp(1, super::gdt::MAX_CPUS)
    } else {
        1
    }
}
