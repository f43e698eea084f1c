//! Loads the guest kernel (a PVH ELF) and writes the PVH boot information.
//!
//! The image is checked before a byte of it is copied: a 64-bit
//! little-endian x86-64 `ET_EXEC` whose loadable segments all sit between
//! [`KERNEL_START`] and the end of RAM, and that carries a
//! `XEN_ELFNOTE_PHYS32_ENTRY` note. Then the command line, `hvm_start_info`
//! and the memory map go to the fixed addresses of `pagehint_abi::boot`.
//! This module must never trust a size or an offset read from the image
//! without checked arithmetic, and never write outside the low boot area
//! and the kernel's own segments.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use pagehint_abi::boot::{
    MemmapEntry, StartInfo, CMDLINE_ADDR, CMDLINE_MAX, E820_RAM, E820_RESERVED, KERNEL_START,
    MEMMAP_ADDR, MMIO_HOLE_START, START_INFO_ADDR, START_INFO_MAGIC,
};
use pagehint_abi::GuestPhys;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestRam;

pub use crate::memory::LOW_RAM_END;

const ELF_HEADER_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;

/// Why the kernel could not be loaded or booted.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel file could not be read.
    #[error("cannot read kernel {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The image is not an ELF file this VMM can boot.
    #[error("not an x86-64 ELF executable: {0}")]
    NotElf(&'static str),
    /// A loadable segment overlaps the low boot area.
    #[error("kernel segment at {addr:#x} overlaps the boot area below {KERNEL_START:#x}")]
    OverlapsBootArea { addr: u64 },
    /// A loadable segment does not fit in guest RAM.
    #[error("kernel segment at {addr:#x} (+{len:#x} bytes) exceeds guest RAM of {ram:#x} bytes")]
    ExceedsRam { addr: u64, len: u64, ram: u64 },
    /// linux-loader refused the image.
    #[error("cannot load kernel ELF: {0}")]
    Elf(#[source] linux_loader::loader::Error),
    /// The ELF has no PVH entry point.
    #[error("not a PVH ELF: no XEN_ELFNOTE_PHYS32_ENTRY note")]
    NoPvhNote,
    /// The PVH entry point is outside the loaded kernel's RAM.
    #[error("PVH entry point {0:#x} lies outside guest RAM")]
    BadEntry(GuestPhys),
    /// The command line does not fit.
    #[error("guest command line is {0} bytes, the limit is {max}", max = CMDLINE_MAX - 1)]
    CmdlineTooLong(usize),
    /// Writing the boot structures to guest memory failed.
    #[error("cannot write boot information to guest memory: {0}")]
    WriteBootInfo(#[source] vm_memory::GuestMemoryError),
}

/// Reads a kernel image from disk.
pub fn read_kernel(path: &Path) -> Result<Vec<u8>, LoaderError> {
    std::fs::read(path).map_err(|source| LoaderError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Checks the ELF header and every loadable segment against RAM of
/// `ram_size` bytes, before anything is copied into the guest.
pub fn check_image(image: &[u8], ram_size: u64) -> Result<(), LoaderError> {
    let truncated = LoaderError::NotElf("truncated header");
    if image.len() < ELF_HEADER_LEN {
        return Err(truncated);
    }
    if image[0..4] != *b"\x7fELF" {
        return Err(LoaderError::NotElf("bad magic"));
    }
    if image[4] != ELFCLASS64 {
        return Err(LoaderError::NotElf("not a 64-bit ELF"));
    }
    if image[5] != ELFDATA2LSB {
        return Err(LoaderError::NotElf("not little-endian"));
    }
    if u16_at(image, 16) != Some(ET_EXEC) {
        return Err(LoaderError::NotElf("not an ET_EXEC executable"));
    }
    if u16_at(image, 18) != Some(EM_X86_64) {
        return Err(LoaderError::NotElf("machine is not x86-64"));
    }
    let phoff = u64_at(image, 32).ok_or(LoaderError::NotElf("truncated header"))?;
    let phentsize = u16_at(image, 54).ok_or(LoaderError::NotElf("truncated header"))?;
    let phnum = u16_at(image, 56).ok_or(LoaderError::NotElf("truncated header"))?;
    if usize::from(phentsize) != PHDR_LEN {
        return Err(LoaderError::NotElf("bad program header size"));
    }
    let phoff =
        usize::try_from(phoff).map_err(|_| LoaderError::NotElf("bad program header offset"))?;
    let mut any_load = false;
    for i in 0..usize::from(phnum) {
        let off = i
            .checked_mul(PHDR_LEN)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(LoaderError::NotElf("program headers outside the file"))?;
        let ph = image
            .get(off..off.saturating_add(PHDR_LEN))
            .filter(|s| s.len() == PHDR_LEN)
            .ok_or(LoaderError::NotElf("program headers outside the file"))?;
        let p_type = u32_at(ph, 0).ok_or(LoaderError::NotElf("bad program header"))?;
        let p_offset = u64_at(ph, 8).ok_or(LoaderError::NotElf("bad program header"))?;
        let p_paddr = u64_at(ph, 24).ok_or(LoaderError::NotElf("bad program header"))?;
        let p_filesz = u64_at(ph, 32).ok_or(LoaderError::NotElf("bad program header"))?;
        let p_memsz = u64_at(ph, 40).ok_or(LoaderError::NotElf("bad program header"))?;
        // linux-loader copies every PT_LOAD that has file bytes, whatever
        // its memory size: only a segment with neither is nothing.
        if p_type != PT_LOAD || (p_memsz == 0 && p_filesz == 0) {
            continue;
        }
        any_load = true;
        if p_filesz > p_memsz {
            return Err(LoaderError::NotElf(
                "segment file size exceeds its memory size",
            ));
        }
        let file_end = p_offset.checked_add(p_filesz);
        if file_end.is_none_or(|end| end > image.len() as u64) {
            return Err(LoaderError::NotElf("segment data outside the file"));
        }
        if p_paddr < KERNEL_START {
            return Err(LoaderError::OverlapsBootArea { addr: p_paddr });
        }
        if p_paddr
            .checked_add(p_memsz)
            .is_none_or(|end| end > ram_size)
        {
            return Err(LoaderError::ExceedsRam {
                addr: p_paddr,
                len: p_memsz,
                ram: ram_size,
            });
        }
    }
    if !any_load {
        return Err(LoaderError::NotElf("no loadable segment"));
    }
    Ok(())
}

/// Copies the kernel into guest RAM and returns its PVH entry point.
pub fn load_kernel(ram: &GuestRam, image: &[u8]) -> Result<GuestPhys, LoaderError> {
    // The kernel must load below the MMIO hole (the guest starts with
    // paging off and its boot page tables map low memory).
    check_image(image, ram.size().min(MMIO_HOLE_START))?;
    let result =
        Elf::load(ram.mem(), None, &mut Cursor::new(image), None).map_err(LoaderError::Elf)?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => GuestPhys(entry.0),
        _ => return Err(LoaderError::NoPvhNote),
    };
    if entry < GuestPhys(KERNEL_START) || !ram.contains(entry, 1) {
        return Err(LoaderError::BadEntry(entry));
    }
    log::debug!(
        "loader: kernel loaded, end {:#x}, PVH entry {entry:#x}",
        result.kernel_end
    );
    Ok(entry)
}

/// Joins the guest arguments into the command line, checking its length.
pub fn build_cmdline(args: &[String]) -> Result<String, LoaderError> {
    let line = args.join(" ");
    if line.len() > CMDLINE_MAX - 1 || line.as_bytes().contains(&0) {
        return Err(LoaderError::CmdlineTooLong(line.len()));
    }
    Ok(line)
}

/// The PVH memory map for RAM of `ram_size` bytes (at least 1 MiB): low
/// memory, the legacy hole below 1 MiB, RAM up to the MMIO hole, and RAM
/// above 4 GiB for a guest larger than 3 GiB.
pub fn memory_map(ram_size: u64) -> Vec<MemmapEntry> {
    let entry = |addr, size, kind| MemmapEntry {
        addr,
        size,
        kind,
        reserved: 0,
    };
    // The RAM ranges are `memory::e820_ram_ranges` (what SET_STATE_TABLE
    // checks against); the legacy area between its first two is reserved.
    let mut map = Vec::new();
    for (start, len) in crate::memory::e820_ram_ranges(ram_size) {
        if start == KERNEL_START {
            map.push(entry(
                LOW_RAM_END,
                KERNEL_START - LOW_RAM_END,
                E820_RESERVED,
            ));
        }
        map.push(entry(start, len, E820_RAM));
    }
    map
}

/// Writes the command line, the memory map and `hvm_start_info`.
pub fn write_boot_info(ram: &GuestRam, cmdline: &str) -> Result<(), LoaderError> {
    if cmdline.len() > CMDLINE_MAX - 1 {
        return Err(LoaderError::CmdlineTooLong(cmdline.len()));
    }
    let mem = ram.mem();
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(LoaderError::WriteBootInfo)?;

    let map = memory_map(ram.size());
    let entry_len = core::mem::size_of::<MemmapEntry>() as u64;
    for (i, entry) in map.iter().enumerate() {
        let addr = MEMMAP_ADDR + i as u64 * entry_len;
        mem.write_obj(*entry, GuestAddress(addr))
            .map_err(LoaderError::WriteBootInfo)?;
    }
    let info = StartInfo {
        magic: START_INFO_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: 0,
        modlist_paddr: 0,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: 0,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        reserved: 0,
    };
    mem.write_obj(info, GuestAddress(START_INFO_ADDR))
        .map_err(LoaderError::WriteBootInfo)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};
    use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
    use pagehint_abi::boot::HIGH_RAM_START;

    #[test]
    fn abi_boot_structs_match_linux_loader() {
        assert_eq!(size_of::<StartInfo>(), size_of::<hvm_start_info>());
        assert_eq!(
            size_of::<MemmapEntry>(),
            size_of::<hvm_memmap_table_entry>()
        );
        macro_rules! same {
            ($a:ty, $af:ident, $b:ty, $bf:ident) => {
                assert_eq!(offset_of!($a, $af), offset_of!($b, $bf), stringify!($af));
            };
        }
        same!(StartInfo, magic, hvm_start_info, magic);
        same!(StartInfo, version, hvm_start_info, version);
        same!(StartInfo, flags, hvm_start_info, flags);
        same!(StartInfo, nr_modules, hvm_start_info, nr_modules);
        same!(StartInfo, modlist_paddr, hvm_start_info, modlist_paddr);
        same!(StartInfo, cmdline_paddr, hvm_start_info, cmdline_paddr);
        same!(StartInfo, rsdp_paddr, hvm_start_info, rsdp_paddr);
        same!(StartInfo, memmap_paddr, hvm_start_info, memmap_paddr);
        same!(StartInfo, memmap_entries, hvm_start_info, memmap_entries);
        same!(StartInfo, reserved, hvm_start_info, reserved);
        same!(MemmapEntry, addr, hvm_memmap_table_entry, addr);
        same!(MemmapEntry, size, hvm_memmap_table_entry, size);
        same!(MemmapEntry, kind, hvm_memmap_table_entry, type_);
        same!(MemmapEntry, reserved, hvm_memmap_table_entry, reserved);
    }

    /// A minimal ELF header plus one PT_LOAD program header.
    fn elf(paddr: u64, memsz: u64) -> Vec<u8> {
        let mut b = vec![0u8; ELF_HEADER_LEN + PHDR_LEN + 16];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = ELFCLASS64;
        b[5] = ELFDATA2LSB;
        b[6] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[24..32].copy_from_slice(&paddr.to_le_bytes());
        b[32..40].copy_from_slice(&(ELF_HEADER_LEN as u64).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = ELF_HEADER_LEN;
        b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&((ELF_HEADER_LEN + PHDR_LEN) as u64).to_le_bytes());
        b[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&16u64.to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        b
    }

    #[test]
    fn checks_segments_against_boot_area_and_ram() {
        let ram = 16 << 20;
        assert!(check_image(&elf(KERNEL_START, 0x1000), ram).is_ok());
        assert!(matches!(
            check_image(&elf(0x8000, 0x1000), ram),
            Err(LoaderError::OverlapsBootArea { .. })
        ));
        assert!(matches!(
            check_image(&elf(ram - 0x10, 0x1000), ram),
            Err(LoaderError::ExceedsRam { .. })
        ));
        assert!(matches!(
            check_image(&elf(u64::MAX - 4, 0x1000), ram),
            Err(LoaderError::ExceedsRam { .. })
        ));
        assert!(matches!(
            check_image(b"root:x:0:0", ram),
            Err(LoaderError::NotElf(_))
        ));
        let mut not_x86 = elf(KERNEL_START, 0x1000);
        not_x86[18] = 183;
        assert!(matches!(
            check_image(&not_x86, ram),
            Err(LoaderError::NotElf(_))
        ));
    }

    /// Found by the `elf_loader` fuzz target: a PT_LOAD with file bytes but
    /// a memory size of 0 was skipped by the check, yet linux-loader copies
    /// its file bytes to its address, here into the boot area.
    #[test]
    fn a_segment_with_data_but_no_memory_size_is_refused() {
        let good = elf(KERNEL_START, 0x1000);
        let mut b = vec![0u8; ELF_HEADER_LEN + 2 * PHDR_LEN + 16];
        b[..ELF_HEADER_LEN + PHDR_LEN].copy_from_slice(&good[..ELF_HEADER_LEN + PHDR_LEN]);
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        let data = (ELF_HEADER_LEN + 2 * PHDR_LEN) as u64;
        let first = ELF_HEADER_LEN;
        b[first + 8..first + 16].copy_from_slice(&data.to_le_bytes());
        let ph = ELF_HEADER_LEN + PHDR_LEN;
        b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&data.to_le_bytes());
        b[ph + 24..ph + 32].copy_from_slice(&0x1000u64.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&16u64.to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&0u64.to_le_bytes());
        b[data as usize..].fill(0xcc);
        let ram = GuestRam::new(16 << 20).unwrap();
        assert!(matches!(
            check_image(&b, 16 << 20),
            Err(LoaderError::NotElf(_))
        ));
        assert!(load_kernel(&ram, &b).is_err());
        let low: u64 = ram.mem().read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(low, 0, "the boot area was written");
    }

    #[test]
    fn an_elf_without_a_pvh_note_is_refused() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let err = load_kernel(&ram, &elf(KERNEL_START, 0x1000)).unwrap_err();
        assert!(matches!(err, LoaderError::NoPvhNote), "{err}");
    }

    #[test]
    fn memory_map_continues_above_4g() {
        let small = memory_map(64 << 20);
        assert_eq!(small.len(), 3);
        assert_eq!(small[2].addr + small[2].size, 64 << 20);
        let at_hole = memory_map(MMIO_HOLE_START);
        assert_eq!(at_hole.len(), 3);
        assert_eq!(at_hole[2].addr + at_hole[2].size, MMIO_HOLE_START);
        let big = memory_map(16 << 30);
        assert_eq!(big.len(), 4);
        assert_eq!(big[2].addr + big[2].size, MMIO_HOLE_START);
        assert_eq!((big[3].addr, big[3].kind), (HIGH_RAM_START, E820_RAM));
        // Every byte of RAM is listed once.
        let ram: u64 = big
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (16 << 30) - (KERNEL_START - LOW_RAM_END));
    }

    #[test]
    fn writes_start_info_memmap_and_cmdline() {
        let ram = GuestRam::new(32 << 20).unwrap();
        write_boot_info(&ram, "hello world").unwrap();
        let info: StartInfo = ram.mem().read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, START_INFO_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        let last: MemmapEntry = ram.mem().read_obj(GuestAddress(MEMMAP_ADDR + 48)).unwrap();
        assert_eq!(last.addr + last.size, 32 << 20);
        let mut buf = [0u8; 12];
        ram.mem()
            .read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"hello world\0");
        assert!(build_cmdline(&["a".repeat(CMDLINE_MAX)]).is_err());
        assert_eq!(build_cmdline(&["a".into(), "b".into()]).unwrap(), "a b");
    }
}
