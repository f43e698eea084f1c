//! PVH entry, the switch to long mode, the boot page tables and the
//! application-processor trampoline.
//!
//! Everything here runs before Rust can: in 32-bit protected mode (PVH
//! entry) or 16-bit real mode (an AP after SIPI), at physical addresses.
//! Boot must not loop over memory (kernel code is emulated and slow on the
//! development machines), so the page tables are assembled as data: zero
//! instructions build them. This file must never grow logic that could live
//! in Rust.

core::arch::global_asm!(
    r#"
.set KERNEL_VMA, 0xffffffff80000000
.set AP_MARKER, 0xffffffff

/* ---- PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY, alignment 4 ---- */
.section .note.pvh, "a", @note
.p2align 2
.long 4
.long 4
.long 18
.asciz "Xen"
.p2align 2
.long pvh_start32 - KERNEL_VMA
.p2align 2

/* ---- 32-bit entry: flat segments, paging off, %ebx = hvm_start_info ---- */
.section .text.boot, "ax"
.code32
.global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi
    mov $(__bss_start - KERNEL_VMA), %edi
    mov $(__bss_end - KERNEL_VMA), %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    jmp enter_long_mode32

/* An AP arrives here from the real-mode trampoline with the boot GDT. */
.global ap_start32
ap_start32:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $AP_MARKER, %esi

enter_long_mode32:
    lgdt (boot_gdtr - KERNEL_VMA)
    mov %cr4, %eax
    or $0x20, %eax                      /* PAE */
    mov %eax, %cr4
    mov $(boot_pml4 - KERNEL_VMA), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx               /* EFER */
    rdmsr
    or $0x900, %eax                     /* LME | NXE */
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax                /* PG | WP | PE */
    mov %eax, %cr0
    ljmp $0x08, $(long_mode_low - KERNEL_VMA)

.code64
long_mode_low:
    movabs $long_mode_high, %rax
    jmp *%rax

.section .text, "ax"
long_mode_high:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    xor %ebp, %ebp
    cmp $AP_MARKER, %esi
    je 1f
    lea boot_stack_top(%rip), %rsp
    mov %esi, %edi
    call kmain_bsp
    ud2
1:  mov AP_BOOT_STACK(%rip), %rsp
    mov AP_BOOT_CPU(%rip), %edi
    call kmain_ap
    ud2

/* ---- AP trampoline: copied below 1 MiB, entered in real mode at CS:0 ---- */
.code16
.global ap_trampoline_start
.global ap_trampoline_end
ap_trampoline_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (tramp_gdtr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $(ap_start32 - KERNEL_VMA)
.p2align 3
tramp_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt - KERNEL_VMA
ap_trampoline_end:
.code64

/* ---- boot GDT: null, code64, data, code32 ---- */
.section .rodata, "a"
.p2align 4
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf9a000000ffff
boot_gdt_end:
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt - KERNEL_VMA

/* ---- page tables as data ----
 * boot_pml4[0] and [511] share one PDPT: 0..4 GiB identity (for the switch
 * itself and for APs), 0xffffff80_00000000 + phys as the direct map, and
 * PDPT[510] maps the first GiB again at -2 GiB for the kernel image.
 * kernel_pml4 drops the identity half; every address space copies its
 * slot 511. 2 MiB pages; the 3..4 GiB MMIO hole is uncached. RAM above
 * 4 GiB gets PDPT slots 4.. at boot (`mm::map_high_memory`); since every
 * address space shares this PDPT, they all see it. */
.section .data.boot_pt, "aw"
.p2align 12
.global boot_pml4
boot_pml4:
    .quad boot_pdpt - KERNEL_VMA + 0x3
    .fill 510, 8, 0
    .quad boot_pdpt - KERNEL_VMA + 0x3
.global kernel_pml4
kernel_pml4:
    .fill 511, 8, 0
    .quad boot_pdpt - KERNEL_VMA + 0x3
.global boot_pdpt
boot_pdpt:
    .quad boot_pd - KERNEL_VMA + 0x0003
    .quad boot_pd - KERNEL_VMA + 0x1003
    .quad boot_pd - KERNEL_VMA + 0x2003
    .quad boot_pd - KERNEL_VMA + 0x3003
    .fill 506, 8, 0
    .quad boot_pd - KERNEL_VMA + 0x0003
    .quad 0
boot_pd:
    .set addr, 0
    .rept 2048
    .if addr >= 0xc0000000
    .quad addr + 0x93
    .else
    .quad addr + 0x83
    .endif
    .set addr, addr + 0x200000
    .endr

.section .bss.boot_stack, "aw", @nobits
.p2align 12
boot_stack:
    .skip 16384
boot_stack_top:
"#,
    options(att_syntax)
);

/// Virtual address of physical address 0 in the kernel image mapping.
pub const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;

/// PDPT slot of the kernel image mapping (-2 GiB); the direct map may use
/// the slots below it.
pub const KERNEL_PDPT_SLOT: usize = 510;

extern "C" {
    static kernel_pml4: [u64; 512];
    static mut boot_pdpt: [u64; 512];
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static __kernel_end: u8;
}

/// Physical address of the kernel's own PML4 (no identity half).
pub fn kernel_pml4_phys() -> u64 {
    let va = core::ptr::addr_of!(kernel_pml4) as u64;
    va - KERNEL_VMA
}

/// Switches this CPU from the boot page tables to the kernel's own PML4.
pub fn load_kernel_pml4() {
    // SAFETY: the kernel PML4 maps the kernel half exactly as the boot one.
    unsafe { super::cpu::write_cr3(kernel_pml4_phys()) };
}

/// Points direct-map PDPT slot `slot` (1 GiB of physical memory from
/// `slot << 30`) at `entry` (a page directory, or a 1 GiB page).
///
/// # Safety
/// Boot only, before any other CPU runs and before anything uses the
/// physical range; `slot` must be a direct-map slot (4 or above, below
/// [`KERNEL_PDPT_SLOT`]) whose entry was not present, so no TLB holds it.
pub unsafe fn set_direct_map_slot(slot: usize, entry: u64) {
    assert!((4..KERNEL_PDPT_SLOT).contains(&slot));
    // SAFETY: the PDPT is in the kernel's writable data; the caller
    // guarantees no other CPU is running, so this is the only access.
    unsafe {
        let pdpt = &raw mut boot_pdpt;
        (*pdpt)[slot] = entry;
    }
}

/// The real-mode AP start-up code, to be copied below 1 MiB.
pub fn ap_trampoline() -> &'static [u8] {
    // SAFETY: the two symbols delimit one contiguous range of `.text`.
    unsafe {
        let start = core::ptr::addr_of!(ap_trampoline_start);
        let end = core::ptr::addr_of!(ap_trampoline_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// First physical address after the kernel image (bss included).
pub fn kernel_end_phys() -> u64 {
    core::ptr::addr_of!(__kernel_end) as u64 - KERNEL_VMA
}
