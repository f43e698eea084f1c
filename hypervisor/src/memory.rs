//! Guest RAM: one anonymous, lazily populated host mapping that covers
//! guest-physical addresses from 0 to the top of RAM, so that a guest frame
//! `pfn` always lives at host address `host_base() + pfn * 4096`.
//!
//! RAM up to 3 GiB is one region at guest-physical 0. A larger guest gets
//! the first 3 GiB there and the rest as a second region at 4 GiB, above
//! the 32-bit MMIO hole (devices, I/O APIC, LAPIC); the part of the host
//! mapping that shadows the hole is `PROT_NONE` and never populated, so it
//! costs the host nothing and any stray host access to it faults.
//!
//! The mapping is private, `MAP_NORESERVE` (pages are only allocated when
//! the guest touches them) and kept out of transparent huge pages, because
//! host-side reclaim discards single 4 KiB pages. This module must never
//! register the memory with KVM (that is `vstate::vm`) nor interpret its
//! contents.

use std::sync::Arc;

use pagehint_abi::boot::{HIGH_RAM_START, MMIO_HOLE_START};
use pagehint_abi::{GuestPhys, PAGE_SIZE};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Least guest RAM we accept.
pub const MIN_MEM_SIZE: u64 = 16 << 20;
/// Most guest RAM we accept. The guest kernel's direct map could cover far
/// more; 64 GiB bounds what the per-frame tables on both sides cost
/// (about 1% of RAM in the guest, one byte per frame in the VMM).
pub const MAX_MEM_SIZE: u64 = 64 << 30;

/// Why guest RAM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is outside [`MIN_MEM_SIZE`, `MAX_MEM_SIZE`].
    #[error("--mem {0} bytes is out of range: need at least 16 MiB and at most 64 GiB")]
    BadSize(u64),
    /// The size is not a multiple of the page size.
    #[error("--mem {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// `mmap` failed.
    #[error("cannot map {size} bytes of guest RAM: {source}")]
    Mmap {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    /// vm-memory refused a region.
    #[error("cannot describe guest RAM to vm-memory: {0}")]
    Region(#[source] vm_memory::mmap::MmapRegionError),
    /// vm-memory refused the region list.
    #[error("cannot build the guest memory map: {0}")]
    Collection(#[source] vm_memory::GuestRegionCollectionError),
}

/// Checks that `size` is a RAM size we can give a guest.
pub fn validate_size(size: u64) -> Result<(), MemoryError> {
    if !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&size) {
        return Err(MemoryError::BadSize(size));
    }
    if !size.is_multiple_of(PAGE_SIZE) {
        return Err(MemoryError::Unaligned(size));
    }
    Ok(())
}

/// The guest-physical RAM ranges `(start, len)` of a guest with `size`
/// bytes of RAM: below the hole, and above 4 GiB for what does not fit.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low)];
    if size > low {
        ranges.push((HIGH_RAM_START, size - low));
    }
    ranges
}

/// End of conventional low memory (the EBDA starts here on a PC): the
/// memory map calls `LOW_RAM_END..KERNEL_START` reserved.
pub const LOW_RAM_END: u64 = 0x9_fc00;

/// The ranges `(start, len)` the guest's memory map (E820) calls RAM: the
/// [`ram_ranges`] less the legacy area `LOW_RAM_END..KERNEL_START` (the
/// EBDA, VGA and BIOS windows of a PC), which is reserved.
pub fn e820_ram_ranges(size: u64) -> Vec<(u64, u64)> {
    use pagehint_abi::boot::KERNEL_START;
    let mut out = Vec::new();
    for (start, len) in ram_ranges(size) {
        if start == 0 {
            out.push((0, LOW_RAM_END));
            out.push((KERNEL_START, len.saturating_sub(KERNEL_START)));
        } else {
            out.push((start, len));
        }
    }
    out
}

/// True if `gpa..gpa + len` lies wholly inside one range the memory map
/// calls RAM ([`e820_ram_ranges`]).
pub fn in_one_e820_ram_range(size: u64, gpa: GuestPhys, len: u64) -> bool {
    let gpa = gpa.as_u64();
    gpa.checked_add(len).is_some_and(|end| {
        e820_ram_ranges(size)
            .into_iter()
            .any(|(s, l)| gpa >= s && end <= s + l)
    })
}

/// The host mapping behind guest RAM; unmapped when the last user drops.
#[derive(Debug)]
struct HostMapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the pointer is
// only an address, and every access to the memory goes through vm-memory
// (volatile copies) or the kernel, which are safe from any thread.
unsafe impl Send for HostMapping {}
// SAFETY: as above; `HostMapping` itself is never mutated after creation.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// Maps `span` bytes: readable and writable where `ranges` say RAM is,
    /// `PROT_NONE` in between.
    fn new(span: u64, ranges: &[(u64, u64)]) -> Result<Self, MemoryError> {
        let size = span;
        let mmap_err = |source| MemoryError::Mmap { size, source };
        let len = usize::try_from(span).map_err(|_| MemoryError::BadSize(span))?;
        // SAFETY: a fresh anonymous private mapping at an address the
        // kernel picks; nothing else refers to it yet.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(mmap_err(std::io::Error::last_os_error()));
        }
        let mapping = Self { ptr, len };
        for &(gpa, bytes) in ranges {
            // Cannot overflow: every range lies inside `span`.
            let at = (ptr as u64 + gpa) as *mut libc::c_void;
            let n = bytes as usize;
            // SAFETY: [at, at + n) lies inside the mapping created above,
            // which this function owns; changing its protection affects no
            // other memory.
            if unsafe { libc::mprotect(at, n, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
                return Err(mmap_err(std::io::Error::last_os_error()));
            }
        }
        // SAFETY: as above; MADV_NOHUGEPAGE only changes the kernel's
        // paging policy for the range and never its contents.
        if unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) } != 0 {
            // Hosts without THP refuse the advice; nothing to turn off then.
            log::warn!(
                "madvise(MADV_NOHUGEPAGE) on guest RAM failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(mapping)
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` created; the last owner
        // is going away, so no region or memslot user is left (the VM keeps
        // a `GuestRam` clone for as long as KVM may touch the memory).
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Guest RAM and its host mapping.
#[derive(Debug, Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    /// One past the highest guest-physical RAM address.
    top: u64,
    host: Arc<HostMapping>,
}

impl GuestRam {
    /// Maps `size` bytes of guest RAM: from guest-physical 0, continued at
    /// 4 GiB when it does not fit below the MMIO hole.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        validate_size(size)?;
        let ranges = ram_ranges(size);
        let top = ranges.last().map_or(0, |&(gpa, len)| gpa + len);
        let host = Arc::new(HostMapping::new(top, &ranges)?);
        let mut regions = Vec::with_capacity(ranges.len());
        for &(gpa, len) in &ranges {
            let at = (host.ptr as u64 + gpa) as *mut u8;
            // SAFETY: [at, at + len) is a readable and writable part of the
            // mapping `host` owns, and every `GuestRam` clone (hence every
            // user of these regions) holds `host` alive.
            let builder = unsafe {
                MmapRegionBuilder::new(len as usize)
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
                    .with_raw_mmap_pointer(at)
            };
            let region = builder.build().map_err(MemoryError::Region)?;
            let region = GuestRegionMmap::new(region, GuestAddress(gpa))
                .ok_or(MemoryError::BadSize(size))?;
            regions.push(region);
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Collection)?;
        log::debug!(
            "memory: {size} bytes of guest RAM in {} range(s), host {:p}",
            ranges.len(),
            host.ptr
        );
        Ok(Self {
            mem,
            size,
            top,
            host,
        })
    }

    /// The guest memory, for `Bytes` accesses.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Size of guest RAM in bytes (not counting the MMIO hole).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Frame numbers span `0..frames()`: one past the highest RAM frame.
    /// Frames in the MMIO hole are in this span but are not RAM.
    pub fn frames(&self) -> u64 {
        self.top / PAGE_SIZE
    }

    /// The guest-physical RAM ranges, `(start, len)`, in address order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        ram_ranges(self.size)
    }

    /// The frames of the MMIO hole inside `0..frames()` (empty when RAM
    /// ends below the hole).
    pub fn hole_frames(&self) -> std::ops::Range<u64> {
        if self.top > HIGH_RAM_START {
            MMIO_HOLE_START / PAGE_SIZE..HIGH_RAM_START / PAGE_SIZE
        } else {
            0..0
        }
    }

    /// Host virtual address of guest-physical 0; guest-physical `gpa` of
    /// RAM is at `host_base() + gpa`.
    pub fn host_base(&self) -> u64 {
        self.host.ptr as u64
    }

    /// True if `[gpa, gpa + len)` lies inside one RAM range
    /// (overflow-checked; a range across the MMIO hole is not RAM).
    pub fn contains(&self, gpa: GuestPhys, len: u64) -> bool {
        let gpa = gpa.as_u64();
        let low = self.size.min(MMIO_HOLE_START);
        gpa.checked_add(len).is_some_and(|end| {
            end <= low || (gpa >= HIGH_RAM_START && end <= self.top && self.top > HIGH_RAM_START)
        })
    }

    /// True if `gpa..gpa + len` lies wholly inside one range the guest's
    /// memory map calls RAM (not the legacy area below 1 MiB, not the
    /// hole).
    pub fn in_usable_ram(&self, gpa: GuestPhys, len: u64) -> bool {
        in_one_e820_ram_range(self.size, gpa, len)
    }

    /// True if frame `pfn` is RAM (inside `0..frames()` and not in the
    /// hole).
    pub fn is_ram_frame(&self, pfn: u64) -> bool {
        pfn < self.frames() && !self.hole_frames().contains(&pfn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn rejects_sizes_out_of_range() {
        assert!(matches!(
            validate_size(1 << 20),
            Err(MemoryError::BadSize(_))
        ));
        assert!(matches!(
            validate_size(MAX_MEM_SIZE + 4096),
            Err(MemoryError::BadSize(_))
        ));
        assert!(matches!(
            validate_size((16 << 20) + 1),
            Err(MemoryError::Unaligned(_))
        ));
        assert!(validate_size(16 << 20).is_ok());
        assert!(validate_size(MMIO_HOLE_START).is_ok());
        assert!(validate_size(MMIO_HOLE_START + 4096).is_ok());
        assert!(validate_size(MAX_MEM_SIZE).is_ok());
    }

    #[test]
    fn ranges_split_at_the_hole() {
        assert_eq!(ram_ranges(64 << 20), vec![(0, 64 << 20)]);
        assert_eq!(ram_ranges(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
        assert_eq!(
            ram_ranges(16 << 30),
            vec![
                (0, MMIO_HOLE_START),
                (HIGH_RAM_START, (16 << 30) - MMIO_HOLE_START)
            ]
        );
    }

    #[test]
    fn ram_above_4g_is_lazily_mapped_and_the_hole_is_not_ram() {
        // 16 GiB costs nothing until touched (MAP_NORESERVE).
        let ram = GuestRam::new(16 << 30).expect("map 16 GiB");
        let top = HIGH_RAM_START + (16 << 30) - MMIO_HOLE_START;
        assert_eq!(ram.frames(), top / PAGE_SIZE);
        assert_eq!(
            ram.hole_frames(),
            MMIO_HOLE_START / PAGE_SIZE..HIGH_RAM_START / PAGE_SIZE
        );
        // Low and high RAM read back; the host address is base + gpa.
        for gpa in [0x1000, MMIO_HOLE_START - 8, HIGH_RAM_START, top - 8] {
            ram.mem().write_obj(gpa ^ 0x55, GuestAddress(gpa)).unwrap();
            assert_eq!(
                ram.mem().read_obj::<u64>(GuestAddress(gpa)).unwrap(),
                gpa ^ 0x55
            );
            // SAFETY: gpa is RAM, so base + gpa is inside the readable
            // mapping that `ram` keeps alive; a plain 8-byte read.
            let direct = unsafe { std::ptr::read_volatile((ram.host_base() + gpa) as *const u64) };
            assert_eq!(direct, gpa ^ 0x55);
        }
        assert!(ram
            .mem()
            .read_obj::<u64>(GuestAddress(MMIO_HOLE_START))
            .is_err());
        assert!(ram.contains(GuestPhys(0), MMIO_HOLE_START));
        assert!(!ram.contains(GuestPhys(MMIO_HOLE_START - 8), 16));
        assert!(!ram.contains(GuestPhys(MMIO_HOLE_START), 8));
        assert!(ram.contains(GuestPhys(HIGH_RAM_START), 4096));
        assert!(!ram.contains(GuestPhys(top - 8), 16));
        assert!(ram.is_ram_frame(0) && ram.is_ram_frame(top / PAGE_SIZE - 1));
        assert!(!ram.is_ram_frame(MMIO_HOLE_START / PAGE_SIZE));
        assert!(!ram.is_ram_frame(top / PAGE_SIZE));
        // A small guest has no hole.
        let small = GuestRam::new(64 << 20).unwrap();
        assert_eq!(small.hole_frames(), 0..0);
        assert_eq!(small.frames(), (64 << 20) / PAGE_SIZE);
    }

    #[test]
    fn maps_lazily_and_reads_back() {
        let ram = GuestRam::new(64 << 20).expect("map");
        assert_eq!(ram.size(), 64 << 20);
        assert_ne!(ram.host_base(), 0);
        ram.mem()
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let v: u32 = ram.mem().read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(v, 0xdead_beef);
        assert!(ram.contains(GuestPhys(0), 64 << 20));
        assert!(!ram.contains(GuestPhys(1), 64 << 20));
        assert!(!ram.contains(GuestPhys(u64::MAX), 2));
    }
}
