//! The direct map: all of physical memory at [`PHYS_MAP`], and the one
//! place the kernel reaches a physical address through it. Frames, page
//! tables, device windows (LAPIC, I/O APIC, virtio) and pages shared with
//! the VMM are read and written here, through typed wrappers that the
//! compiler inlines to the same single load, store or `rep movs` as a raw
//! pointer access would be.
//!
//! The contract every caller keeps: the physical range it names is RAM it
//! owns (a frame it allocated or holds a reference on, a page shared with
//! the VMM for this purpose) or a device window, inside what the direct map
//! covers, and no Rust reference points into it meanwhile (kernel heap and
//! image memory is never named). Reads return plain integers only, so any
//! bit pattern is a valid result. This module must never decide what a
//! frame is for.

use core::sync::atomic::AtomicU8;

use super::boot::KERNEL_VMA;

/// Virtual address at which all of physical memory is mapped.
pub const PHYS_MAP: u64 = 0xffff_ff80_0000_0000;

/// Kernel-virtual address of physical address `pa` (through the direct
/// map).
#[inline]
pub const fn phys_to_virt(pa: u64) -> u64 {
    PHYS_MAP + pa
}

/// Physical address of a kernel-virtual address in the image or the
/// direct map.
#[inline]
pub fn virt_to_phys(va: u64) -> u64 {
    if va >= KERNEL_VMA {
        va - KERNEL_VMA
    } else {
        va - PHYS_MAP
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Plain integers: every bit pattern is a valid value, so reading one
/// from any owned memory is sound.
pub trait Word: Copy + sealed::Sealed {}
macro_rules! words {
    ($($t:ty),*) => { $(impl sealed::Sealed for $t {} impl Word for $t {})* };
}
words!(u8, u16, u32, u64, i16);

/// One volatile read of a `T` at physical `pa` (naturally aligned).
#[inline]
pub fn read<T: Word>(pa: u64) -> T {
    // SAFETY: the module contract: `pa` is owned RAM or a device register
    // in the direct map, aligned for `T`; `T` is a plain integer.
    unsafe { (phys_to_virt(pa) as *const T).read_volatile() }
}

/// One volatile write of `value` at physical `pa` (naturally aligned).
#[inline]
pub fn write<T: Copy>(pa: u64, value: T) {
    // SAFETY: the module contract: `pa` is owned RAM or a device register
    // in the direct map, aligned for `T`, with no reference into it.
    unsafe { (phys_to_virt(pa) as *mut T).write_volatile(value) }
}

/// Copies `len` bytes from physical `src` to physical `dst` (one
/// `rep movs`); the ranges do not overlap.
#[inline]
pub fn copy(src: u64, dst: u64, len: usize) {
    // SAFETY: the module contract, for both ranges; distinct owned frames
    // do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(
            phys_to_virt(src) as *const u8,
            phys_to_virt(dst) as *mut u8,
            len,
        )
    }
}

/// Copies `out.len()` bytes at physical `src` into `out`.
#[inline]
pub fn read_into(src: u64, out: &mut [u8]) {
    // SAFETY: the module contract for the source; `out` is a live,
    // exclusive slice of that length, outside the named range.
    unsafe {
        core::ptr::copy_nonoverlapping(phys_to_virt(src) as *const u8, out.as_mut_ptr(), out.len())
    }
}

/// Copies `data` to physical `dst`.
#[inline]
pub fn write_from(dst: u64, data: &[u8]) {
    // SAFETY: the module contract for the destination; `data` is a live
    // slice, outside the named range.
    unsafe {
        core::ptr::copy_nonoverlapping(data.as_ptr(), phys_to_virt(dst) as *mut u8, data.len())
    }
}

/// Writes `len` zero bytes at physical `dst` (one `rep stos`).
#[inline]
pub fn zero(dst: u64, len: usize) {
    // SAFETY: the module contract for the destination.
    unsafe { core::ptr::write_bytes(phys_to_virt(dst) as *mut u8, 0, len) }
}

/// The `len` bytes at physical `pa`, for a caller that only reads them
/// (firmware data, a block the device filled) while it owns the range.
#[inline]
pub fn bytes(pa: u64, len: usize) -> &'static [u8] {
    // SAFETY: the module contract; nothing writes the range while the
    // caller reads it.
    unsafe { core::slice::from_raw_parts(phys_to_virt(pa) as *const u8, len) }
}

/// The `N` bytes at physical `pa`, as an array (see [`bytes`]).
#[inline]
pub fn array<const N: usize>(pa: u64) -> &'static [u8; N] {
    // SAFETY: as for `bytes`; a byte array has alignment 1.
    unsafe { &*(phys_to_virt(pa) as *const [u8; N]) }
}

/// The byte at physical `pa` as an atomic (a page-state table entry),
/// for memory that is only ever accessed atomically.
#[inline]
pub fn atomic_u8(pa: u64) -> &'static AtomicU8 {
    // SAFETY: the module contract; `AtomicU8` has the size and alignment
    // of a byte, and every access to the range is atomic.
    unsafe { &*(phys_to_virt(pa) as *const AtomicU8) }
}
