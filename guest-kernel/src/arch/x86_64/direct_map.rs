//! The direct map: all of physical memory at [`PHYS_MAP`], and the one
//! place the kernel reaches a physical address through it. Frames, page
//! tables, device windows (LAPIC, I/O APIC, virtio) and pages shared with
//! the VMM are read and written here, through typed wrappers that the
//! compiler inlines to the same single load, store or `rep movs` as a raw
//! pointer access would be.
//!
//! Every accessor that dereferences a physical address is an `unsafe fn`:
//! naming a physical address is naming memory, and only the caller knows
//! whether the range is its own. Each one's `# Safety` section says what
//! the caller promises; each call site says, in its `SAFETY` comment, why
//! it keeps that promise. The address arithmetic ([`phys_to_virt`],
//! [`virt_to_phys`]) touches nothing and stays safe. Reads return plain
//! integers only ([`Word`]), so any bit pattern is a valid result. This
//! module must never decide what a frame is for.

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

/// One volatile read of a `T` at physical `pa`.
///
/// # Safety
///
/// `pa..pa + size_of::<T>()` lies inside the direct map and is RAM the
/// caller owns (a frame it allocated or holds a reference on, a page shared
/// with the VMM for this purpose) or a device register the caller is
/// entitled to read; `pa` is aligned for `T`. No Rust reference to the
/// range is live in a way that a read would contradict (no `&mut`).
#[inline]
pub unsafe fn read<T: Word>(pa: u64) -> T {
    // SAFETY: the caller's contract, see # Safety: owned, mapped, aligned
    // for `T`; `T` is a plain integer, so any bit pattern is valid.
    unsafe { (phys_to_virt(pa) as *const T).read_volatile() }
}

/// One volatile write of `value` at physical `pa`.
///
/// # Safety
///
/// `pa..pa + size_of::<T>()` lies inside the direct map and is RAM the
/// caller owns or a device register it is entitled to write; `pa` is
/// aligned for `T`. No Rust reference (shared or exclusive) points into
/// the range while the write happens, and the range is not kernel heap or
/// image memory (which Rust code reaches by reference).
#[inline]
pub unsafe fn write<T: Copy>(pa: u64, value: T) {
    // SAFETY: the caller's contract, see # Safety: owned, mapped, aligned
    // for `T`, with no reference into it.
    unsafe { (phys_to_virt(pa) as *mut T).write_volatile(value) }
}

/// Copies `len` bytes from physical `src` to physical `dst` (one
/// `rep movs`).
///
/// # Safety
///
/// Both `src..src + len` and `dst..dst + len` lie inside the direct map
/// and are RAM the caller owns (or may read, for the source); the two
/// ranges do not overlap; no Rust reference points into the destination,
/// and no `&mut` into the source, while the copy runs.
#[inline]
pub unsafe fn copy(src: u64, dst: u64, len: usize) {
    // SAFETY: the caller's contract, see # Safety, for both ranges, which
    // do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(
            phys_to_virt(src) as *const u8,
            phys_to_virt(dst) as *mut u8,
            len,
        )
    }
}

/// Copies `len` bytes from physical `src` to physical `dst` where the
/// two ranges may overlap (`memmove`): the copy is as if through a
/// buffer. For the rare caller that cannot rule out overlap; [`copy`] is
/// the one for distinct frames.
///
/// # Safety
///
/// As for [`copy`], except that the ranges may overlap.
#[inline]
pub unsafe fn copy_overlapping(src: u64, dst: u64, len: usize) {
    // SAFETY: the caller's contract, see # Safety, for both ranges;
    // `ptr::copy` allows them to overlap.
    unsafe {
        core::ptr::copy(
            phys_to_virt(src) as *const u8,
            phys_to_virt(dst) as *mut u8,
            len,
        )
    }
}

/// Copies `out.len()` bytes at physical `src` into `out`.
///
/// # Safety
///
/// `src..src + out.len()` lies inside the direct map, is RAM the caller
/// owns or may read, and is not memory that `out` itself occupies; no
/// `&mut` points into it while the copy runs.
#[inline]
pub unsafe fn read_into(src: u64, out: &mut [u8]) {
    // SAFETY: the caller's contract, see # Safety, for the source; `out`
    // is a live, exclusive slice of that length, outside the named range.
    unsafe {
        core::ptr::copy_nonoverlapping(phys_to_virt(src) as *const u8, out.as_mut_ptr(), out.len())
    }
}

/// Copies `data` to physical `dst`.
///
/// # Safety
///
/// `dst..dst + data.len()` lies inside the direct map, is RAM the caller
/// owns, and does not overlap `data`; no Rust reference points into it
/// while the copy runs.
#[inline]
pub unsafe fn write_from(dst: u64, data: &[u8]) {
    // SAFETY: the caller's contract, see # Safety, for the destination;
    // `data` is a live slice, outside the named range.
    unsafe {
        core::ptr::copy_nonoverlapping(data.as_ptr(), phys_to_virt(dst) as *mut u8, data.len())
    }
}

/// Writes `len` zero bytes at physical `dst` (one `rep stos`).
///
/// # Safety
///
/// `dst..dst + len` lies inside the direct map and is RAM the caller owns;
/// no Rust reference points into it while the bytes are written.
#[inline]
pub unsafe fn zero(dst: u64, len: usize) {
    // SAFETY: the caller's contract, see # Safety, for the destination.
    unsafe { core::ptr::write_bytes(phys_to_virt(dst) as *mut u8, 0, len) }
}

/// The `len` bytes at physical `pa`, for a caller that only reads them
/// (firmware data, a block the device filled) while it owns the range.
///
/// # Safety
///
/// `pa..pa + len` lies inside the direct map and is RAM the caller owns.
/// The returned slice claims `'static` but is only valid while that
/// ownership lasts: the caller must drop it before it gives the range up
/// (frees the frame, hands it to a device or the VMM), and nothing may
/// write the range (not the kernel, a device or the VMM) while the slice
/// is alive.
#[inline]
pub unsafe fn bytes(pa: u64, len: usize) -> &'static [u8] {
    // SAFETY: the caller's contract, see # Safety: owned, mapped, and
    // unwritten for as long as the caller keeps the slice.
    unsafe { core::slice::from_raw_parts(phys_to_virt(pa) as *const u8, len) }
}

/// The `N` bytes at physical `pa`, as an array (see [`bytes`]).
///
/// # Safety
///
/// As for [`bytes`] with `len = N`: owned, inside the direct map, not
/// written by anyone while the reference lives, and the reference dropped
/// before the caller gives the range up.
#[inline]
pub unsafe fn array<const N: usize>(pa: u64) -> &'static [u8; N] {
    // SAFETY: the caller's contract, see # Safety (as for `bytes`); a byte
    // array has alignment 1.
    unsafe { &*(phys_to_virt(pa) as *const [u8; N]) }
}

/// The byte at physical `pa` as an atomic (a page-state table entry),
/// for memory that is only ever accessed atomically.
///
/// # Safety
///
/// `pa` lies inside the direct map in RAM the caller owns (or shares with
/// the VMM for this purpose); for as long as the reference lives, every
/// access to that byte by the kernel is atomic (no plain or volatile
/// accessor, no `&`/`&mut u8` to it), and the caller drops the reference
/// before it gives the range up.
#[inline]
pub unsafe fn atomic_u8(pa: u64) -> &'static AtomicU8 {
    // SAFETY: the caller's contract, see # Safety; `AtomicU8` has the size
    // and alignment of a byte, and every access to the byte is atomic.
    unsafe { &*(phys_to_virt(pa) as *const AtomicU8) }
}
