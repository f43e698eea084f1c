//! A strict reader of the static x86-64 ELF executables the kernel runs as
//! user programs.
//!
//! It checks every header field it relies on and every offset against the
//! image size, and refuses segments outside the user half: the image is
//! embedded in the kernel, but a corrupt one must end in an error, not in a
//! wild copy.

use crate::le::{u16_at, u32_at, u64_at};
use pagehint_abi::syscall::{USER_BASE, USER_END};

/// `PT_LOAD`.
const PT_LOAD: u32 = 1;
/// Segment flag: writable.
pub const PF_W: u32 = 2;
/// Segment flag: executable.
pub const PF_X: u32 = 1;

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort,
    NotElf64LittleEndian,
    NotExecutable,
    NotX86_64,
    BadProgramHeaders,
    SegmentOutsideImage,
    SegmentOutsideUserSpace,
    EntryOutsideUserSpace,
}

/// One loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub mem_size: u64,
    pub file_offset: u64,
    pub file_size: u64,
    pub flags: u32,
}

/// A checked ELF image.
pub struct Elf<'a> {
    image: &'a [u8],
    entry: u64,
    phoff: u64,
    phnum: u16,
}

const PHDR_SIZE: usize = 56;

impl<'a> Elf<'a> {
    /// Checks the header and every program header.
    pub fn parse(image: &'a [u8]) -> Result<Self, ElfError> {
        if image.len() < 64 {
            return Err(ElfError::TooShort);
        }
        if image[..4] != *b"\x7fELF" || image[4] != 2 || image[5] != 1 {
            return Err(ElfError::NotElf64LittleEndian);
        }
        if u16_at(image, 16) != 2 {
            return Err(ElfError::NotExecutable);
        }
        if u16_at(image, 18) != 62 {
            return Err(ElfError::NotX86_64);
        }
        let elf = Self {
            image,
            entry: u64_at(image, 24),
            phoff: u64_at(image, 32),
            phnum: u16_at(image, 56),
        };
        if u16_at(image, 54) as usize != PHDR_SIZE {
            return Err(ElfError::BadProgramHeaders);
        }
        let table_end = (elf.phnum as u64)
            .checked_mul(PHDR_SIZE as u64)
            .and_then(|n| n.checked_add(elf.phoff))
            .ok_or(ElfError::BadProgramHeaders)?;
        if table_end > image.len() as u64 {
            return Err(ElfError::BadProgramHeaders);
        }
        let mut entry_ok = false;
        for s in elf.raw_segments() {
            let file_end = s.file_offset.checked_add(s.file_size);
            if file_end.is_none_or(|e| e > image.len() as u64) || s.file_size > s.mem_size {
                return Err(ElfError::SegmentOutsideImage);
            }
            let mem_end = s.vaddr.checked_add(s.mem_size);
            if s.vaddr < USER_BASE || mem_end.is_none_or(|e| e > USER_END) {
                return Err(ElfError::SegmentOutsideUserSpace);
            }
            if s.flags & PF_X != 0 && s.vaddr <= elf.entry && elf.entry < s.vaddr + s.mem_size {
                entry_ok = true;
            }
        }
        if !entry_ok {
            return Err(ElfError::EntryOutsideUserSpace);
        }
        Ok(elf)
    }

    fn raw_segments(&self) -> impl Iterator<Item = Segment> + '_ {
        (0..self.phnum as usize).filter_map(move |i| {
            let p = self.phoff as usize + i * PHDR_SIZE;
            let b = self.image;
            (u32_at(b, p) == PT_LOAD).then(|| Segment {
                flags: u32_at(b, p + 4),
                file_offset: u64_at(b, p + 8),
                vaddr: u64_at(b, p + 16),
                file_size: u64_at(b, p + 32),
                mem_size: u64_at(b, p + 40),
            })
        })
    }

    /// The loadable segments (all checked by [`Self::parse`]).
    pub fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        self.raw_segments()
    }

    /// The file bytes of a segment.
    pub fn data(&self, s: &Segment) -> &'a [u8] {
        &self.image[s.file_offset as usize..(s.file_offset + s.file_size) as usize]
    }

    /// The entry point.
    pub fn entry(&self) -> u64 {
        self.entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal image: header, one PT_LOAD phdr, 16 bytes of code.
    fn image(vaddr: u64, entry: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64 + PHDR_SIZE + 16];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let p = 64;
        b[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[p + 4..p + 8].copy_from_slice(&(PF_X | 4).to_le_bytes());
        b[p + 8..p + 16].copy_from_slice(&120u64.to_le_bytes());
        b[p + 16..p + 24].copy_from_slice(&vaddr.to_le_bytes());
        b[p + 32..p + 40].copy_from_slice(&16u64.to_le_bytes());
        b[p + 40..p + 48].copy_from_slice(&4096u64.to_le_bytes());
        b
    }

    #[test]
    fn accepts_a_well_formed_executable() {
        let img = image(0x40_0000, 0x40_0004);
        let elf = Elf::parse(&img).unwrap();
        let segs: Vec<_> = elf.segments().collect();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].vaddr, 0x40_0000);
        assert_eq!(elf.data(&segs[0]).len(), 16);
        assert_eq!(elf.entry(), 0x40_0004);
    }

    #[test]
    fn refuses_kernel_addresses_and_bad_entries() {
        assert_eq!(
            Elf::parse(&image(0xffff_ffff_8000_0000, 0xffff_ffff_8000_0000)).err(),
            Some(ElfError::SegmentOutsideUserSpace)
        );
        assert_eq!(
            Elf::parse(&image(0x40_0000, 0x90_0000)).err(),
            Some(ElfError::EntryOutsideUserSpace)
        );
    }

    #[test]
    fn refuses_truncated_and_foreign_images() {
        let img = image(0x40_0000, 0x40_0000);
        assert_eq!(
            Elf::parse(&img[..130]).err(),
            Some(ElfError::SegmentOutsideImage)
        );
        assert_eq!(
            Elf::parse(&img[..100]).err(),
            Some(ElfError::BadProgramHeaders)
        );
        assert_eq!(Elf::parse(&img[..20]).err(), Some(ElfError::TooShort));
        let mut bad = img.clone();
        bad[18] = 3;
        assert_eq!(Elf::parse(&bad).err(), Some(ElfError::NotX86_64));
        let mut bad = img;
        bad[0] = 0;
        assert_eq!(Elf::parse(&bad).err(), Some(ElfError::NotElf64LittleEndian));
    }
}
