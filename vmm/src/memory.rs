//! Guest RAM: one anonymous, lazily populated mapping at guest-physical 0.
//!
//! The mapping is private, `MAP_NORESERVE` (pages are only allocated when the
//! guest touches them) and kept out of transparent huge pages, because later
//! host-side reclaim discards single 4 KiB pages. RAM always ends below the
//! 32-bit MMIO hole. This module must never register the memory with KVM
//! (that is `vstate::vm`) nor interpret its contents.

use pagehint_abi::boot::MMIO_HOLE_START;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Least guest RAM we accept.
pub const MIN_MEM_SIZE: u64 = 16 << 20;
/// Most guest RAM we accept: everything below the MMIO hole.
pub const MAX_MEM_SIZE: u64 = MMIO_HOLE_START;

/// Why guest RAM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is outside [`MIN_MEM_SIZE`, `MAX_MEM_SIZE`].
    #[error(
        "--mem {0} bytes is out of range: need at least {MIN_MEM_SIZE} (16 MiB) and at most {MAX_MEM_SIZE} (the MMIO hole at 3 GiB)"
    )]
    BadSize(u64),
    /// The size is not a multiple of the page size.
    #[error("--mem {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// `mmap` failed.
    #[error("cannot map {size} bytes of guest RAM: {source}")]
    Mmap {
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// vm-memory refused the region.
    #[error("cannot build the guest memory map: {0}")]
    Collection(#[source] vm_memory::GuestRegionCollectionError),
}

/// Checks that `size` is a RAM size we can give a guest.
pub fn validate_size(size: u64) -> Result<(), MemoryError> {
    if !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&size) {
        return Err(MemoryError::BadSize(size));
    }
    if !size.is_multiple_of(pagehint_abi::PAGE_SIZE) {
        return Err(MemoryError::Unaligned(size));
    }
    Ok(())
}

/// Guest RAM and its host mapping.
#[derive(Debug, Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
}

impl GuestRam {
    /// Maps `size` bytes of guest RAM at guest-physical address 0.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        validate_size(size)?;
        // Cannot fail: size <= 3 GiB fits usize on a 64-bit host.
        let len = usize::try_from(size).map_err(|_| MemoryError::BadSize(size))?;
        let region = MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| MemoryError::Mmap { size, source })?;
        let host = region.as_ptr();
        // SAFETY: `host..host + len` is exactly the anonymous mapping that
        // `region` owns and keeps alive; MADV_NOHUGEPAGE only changes the
        // kernel's paging policy for it and never its contents.
        let ret = unsafe { libc::madvise(host.cast(), len, libc::MADV_NOHUGEPAGE) };
        if ret != 0 {
            // Hosts without THP refuse the advice; nothing to turn off then.
            log::warn!(
                "madvise(MADV_NOHUGEPAGE) on guest RAM failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let region =
            GuestRegionMmap::new(region, GuestAddress(0)).ok_or(MemoryError::BadSize(size))?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(MemoryError::Collection)?;
        log::debug!("memory: {size} bytes of guest RAM at host {host:p}");
        Ok(Self { mem, size })
    }

    /// The guest memory, for `Bytes` accesses.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Size of guest RAM in bytes (RAM spans `[0, size)`).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host virtual address of guest-physical 0.
    pub fn host_base(&self) -> u64 {
        use vm_memory::GuestMemoryBackend;
        self.mem
            .get_host_address(GuestAddress(0))
            .map(|p| p as u64)
            .unwrap_or(0)
    }

    /// True if `[gpa, gpa + len)` lies inside RAM (overflow-checked).
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len).is_some_and(|end| end <= self.size)
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
            validate_size(MMIO_HOLE_START + 4096),
            Err(MemoryError::BadSize(_))
        ));
        assert!(matches!(
            validate_size((16 << 20) + 1),
            Err(MemoryError::Unaligned(_))
        ));
        assert!(validate_size(16 << 20).is_ok());
        assert!(validate_size(MMIO_HOLE_START).is_ok());
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
        assert!(ram.contains(0, 64 << 20));
        assert!(!ram.contains(1, 64 << 20));
        assert!(!ram.contains(u64::MAX, 2));
    }
}
