//! Parsing and checking of a PHFS image's superblock and directory (the
//! format is defined in `pagehint_abi::disk`).
//!
//! Byte-level and bounds-checked: the image comes from a file the user
//! chose, so nothing in it is trusted.

use alloc::vec::Vec;

use crate::le::{u32_at, u64_at};

use pagehint_abi::disk::{
    DirEntry, Superblock, BLOCK_SIZE, DIR_ENTRIES_PER_BLOCK, MAGIC, MAX_FILES, NAME_MAX,
};

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsError {
    BadMagic,
    BadBlockSize,
    TooManyFiles,
    /// The image is smaller than its superblock says.
    Truncated,
    /// A file reaches outside the image or into the directory.
    FileOutOfRange {
        index: usize,
    },
    BadName {
        index: usize,
    },
}

/// Reads block 0; `image_blocks` is the device's size in 4 KiB blocks.
pub fn parse_superblock(
    block: &[u8; BLOCK_SIZE],
    image_blocks: u64,
) -> Result<Superblock, FsError> {
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&block[..8]);
    if magic != MAGIC {
        return Err(FsError::BadMagic);
    }
    let sb = Superblock {
        magic,
        file_count: u32_at(block, 8),
        block_size: u32_at(block, 12),
        total_blocks: u64_at(block, 16),
        dir_block: u64_at(block, 24),
    };
    if sb.block_size as usize != BLOCK_SIZE {
        return Err(FsError::BadBlockSize);
    }
    if sb.file_count > MAX_FILES {
        return Err(FsError::TooManyFiles);
    }
    if sb.total_blocks > image_blocks || sb.dir_block == 0 || dir_end(&sb) > sb.total_blocks {
        return Err(FsError::Truncated);
    }
    Ok(sb)
}

/// First block after the directory.
pub fn dir_end(sb: &Superblock) -> u64 {
    sb.dir_block + (sb.file_count as u64).div_ceil(DIR_ENTRIES_PER_BLOCK as u64)
}

/// Decodes the entries of one directory block.
pub fn parse_dir_block(block: &[u8; BLOCK_SIZE], count: usize, out: &mut Vec<DirEntry>) {
    for i in 0..count.min(DIR_ENTRIES_PER_BLOCK) {
        let b = &block[i * 64..(i + 1) * 64];
        let mut name = [0u8; NAME_MAX];
        name.copy_from_slice(&b[..NAME_MAX]);
        out.push(DirEntry {
            name,
            size: u64_at(b, 40),
            first_block: u64_at(b, 48),
            file_id: u32_at(b, 56),
            _reserved: 0,
        });
    }
}

/// Checks every entry against the image.
pub fn validate(sb: &Superblock, entries: &[DirEntry]) -> Result<(), FsError> {
    let data_start = dir_end(sb);
    for (index, e) in entries.iter().enumerate() {
        if e.name().is_none_or(|n| n.is_empty()) {
            return Err(FsError::BadName { index });
        }
        let end = e.first_block.checked_add(e.blocks());
        if e.first_block < data_start || end.is_none_or(|end| end > sb.total_blocks) {
            return Err(FsError::FileOutOfRange { index });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(files: u32, total: u64) -> [u8; BLOCK_SIZE] {
        let mut b = [0u8; BLOCK_SIZE];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&files.to_le_bytes());
        b[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&total.to_le_bytes());
        b[24..32].copy_from_slice(&1u64.to_le_bytes());
        b
    }

    fn entry(name: &str, size: u64, first: u64) -> DirEntry {
        let mut e = DirEntry::default();
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        e.size = size;
        e.first_block = first;
        e
    }

    #[test]
    fn a_good_image_parses() {
        let sb = parse_superblock(&superblock(2, 10), 10).unwrap();
        assert_eq!(dir_end(&sb), 2);
        let mut dir = [0u8; BLOCK_SIZE];
        dir[..5].copy_from_slice(b"a.bin");
        dir[40..48].copy_from_slice(&5000u64.to_le_bytes());
        dir[48..56].copy_from_slice(&2u64.to_le_bytes());
        dir[56..60].copy_from_slice(&9u32.to_le_bytes());
        let mut v = Vec::new();
        parse_dir_block(&dir, 1, &mut v);
        assert_eq!(v[0].name(), Some("a.bin"));
        assert_eq!(v[0].file_id, 9);
        assert_eq!(v[0].blocks(), 2);
        assert_eq!(validate(&sb, &v), Ok(()));
    }

    #[test]
    fn bad_images_are_refused() {
        let mut b = superblock(1, 10);
        b[0] = b'X';
        assert_eq!(parse_superblock(&b, 10), Err(FsError::BadMagic));
        assert_eq!(
            parse_superblock(&superblock(1, 10), 5),
            Err(FsError::Truncated)
        );
        let sb = parse_superblock(&superblock(2, 10), 10).unwrap();
        assert_eq!(
            validate(&sb, &[entry("a", 4096 * 9, 2)]),
            Err(FsError::FileOutOfRange { index: 0 })
        );
        assert_eq!(
            validate(&sb, &[entry("a", 10, 1)]),
            Err(FsError::FileOutOfRange { index: 0 })
        );
        assert_eq!(
            validate(&sb, &[entry("", 10, 3)]),
            Err(FsError::BadName { index: 0 })
        );
    }
}
