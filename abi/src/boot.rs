//! PVH boot structures (Xen's `hvm_start_info`, version 1) and the guest
//! memory layout both sides rely on.
//!
//! The layouts are the published PVH boot ABI, so the same guest ELF boots
//! under this VMM and under QEMU's `-kernel`. The VMM writes them through
//! linux-loader's PVH configurator; a VMM unit test checks that these
//! definitions match linux-loader's field for field.

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// `hvm_memmap_table_entry.type` for usable RAM.
pub const E820_RAM: u32 = 1;
/// `hvm_memmap_table_entry.type` for reserved ranges.
pub const E820_RESERVED: u32 = 2;

/// Guest-physical address where the VMM places `hvm_start_info`.
pub const START_INFO_ADDR: u64 = 0x6000;
/// Guest-physical address of the E820-style memory map that follows it.
pub const MEMMAP_ADDR: u64 = 0x7000;
/// Guest-physical address of the NUL-terminated command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line, terminating NUL included.
pub const CMDLINE_MAX: usize = 4096;
/// Where the guest copies its application-processor start-up code: the
/// SIPI vector is this address >> 12, so it must sit below 1 MiB.
pub const AP_TRAMPOLINE_ADDR: u64 = 0x8000;
/// Lowest address of the kernel image (ELF physical load address).
pub const KERNEL_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole: RAM below 4 GiB ends here at the
/// latest; the rest of a larger guest's RAM starts at [`HIGH_RAM_START`].
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Where guest RAM resumes above the MMIO hole (4 GiB), for guests larger
/// than [`MMIO_HOLE_START`]; the E820 map lists it as a second RAM range.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// The virtio-mmio block device: base, register window size and GSI. The
/// VMM announces it on the guest command line the way Linux and Firecracker
/// do: `virtio_mmio.device=4K@0xd0000000:5`.
pub const VIRTIO_BLK_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_BLK_IRQ: u32 = 5;
/// The command-line key of a virtio-mmio device.
pub const VIRTIO_MMIO_CMDLINE_KEY: &str = "virtio_mmio.device";
/// I/O APIC base address (KVM's in-kernel IOAPIC).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const LAPIC_BASE: u64 = 0xfee0_0000;

/// `struct hvm_start_info` of the PVH ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// `struct hvm_memmap_table_entry` of the PVH ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<StartInfo>() == 56);
const _: () = assert!(core::mem::size_of::<MemmapEntry>() == 24);

#[cfg(feature = "vmm")]
// SAFETY: plain-old-data `#[repr(C)]` structures made only of integers, with
// no padding (the size assertions above) and valid for any bit pattern.
unsafe impl vm_memory::ByteValued for StartInfo {}
#[cfg(feature = "vmm")]
// SAFETY: as above.
unsafe impl vm_memory::ByteValued for MemmapEntry {}
