//! The disk image format ("PHFS", a small read-only file system of our own)
//! and the verifiable content of generated test files.
//!
//! Both the host tool that builds images (`vmm mkdisk`) and the guest's file
//! system reader use these definitions; the guest's workloads use
//! [`fill_block`]/[`verify_block`] to check every byte they read.
//!
//! Layout, in 4 KiB blocks: block 0 is the [`Superblock`]; the directory
//! ([`DirEntry`] × `file_count`) starts at block 1; each file's data is
//! contiguous from its `first_block`, the last block zero-padded.

/// Block size of the image (= the guest page size).
pub const BLOCK_SIZE: usize = 4096;
/// `Superblock::magic`.
pub const MAGIC: [u8; 8] = *b"PHFS0001";
/// Longest file name, in bytes (NUL-padded in the entry).
pub const NAME_MAX: usize = 40;
/// Directory entries per block.
pub const DIR_ENTRIES_PER_BLOCK: usize = BLOCK_SIZE / core::mem::size_of::<DirEntry>();
/// Most files an image may hold.
pub const MAX_FILES: u32 = 65_536;

/// Block 0 of the image.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Superblock {
    pub magic: [u8; 8],
    pub file_count: u32,
    pub block_size: u32,
    /// Blocks in the image, superblock included.
    pub total_blocks: u64,
    /// First block of the directory (always 1).
    pub dir_block: u64,
}

/// One file of the directory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// UTF-8, NUL-padded.
    pub name: [u8; NAME_MAX],
    pub size: u64,
    pub first_block: u64,
    /// Generated files: the id their blocks carry ([`fill_block`]); other
    /// files: 0.
    pub file_id: u32,
    pub _reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Superblock>() == 32);
const _: () = assert!(core::mem::size_of::<DirEntry>() == 64);

impl Default for DirEntry {
    fn default() -> Self {
        Self {
            name: [0; NAME_MAX],
            size: 0,
            first_block: 0,
            file_id: 0,
            _reserved: 0,
        }
    }
}

impl DirEntry {
    /// The name, up to the first NUL; `None` if not UTF-8.
    pub fn name(&self) -> Option<&str> {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_MAX);
        core::str::from_utf8(&self.name[..len]).ok()
    }

    /// Blocks of data.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(BLOCK_SIZE as u64)
    }
}

#[cfg(feature = "vmm")]
// SAFETY: `#[repr(C)]`, integers and byte arrays only, no padding (the size
// assertions), valid for any bit pattern.
unsafe impl vm_memory::ByteValued for Superblock {}
#[cfg(feature = "vmm")]
// SAFETY: as above.
unsafe impl vm_memory::ByteValued for DirEntry {}

/// First 8 bytes of every generated block.
pub const BLOCK_MAGIC: [u8; 8] = *b"PHBLOCK1";

/// FNV-1a over `bytes`.
pub const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// Fills one generated block: `BLOCK_MAGIC`, file id (u32), block index
/// (u64), file size (u64), then a xorshift stream seeded by id and index,
/// and the FNV-1a of everything before it in the last 8 bytes.
pub fn fill_block(file_id: u32, index: u64, file_size: u64, out: &mut [u8; BLOCK_SIZE]) {
    out[..8].copy_from_slice(&BLOCK_MAGIC);
    out[8..12].copy_from_slice(&file_id.to_le_bytes());
    out[12..20].copy_from_slice(&index.to_le_bytes());
    out[20..28].copy_from_slice(&file_size.to_le_bytes());
    let mut x = (file_id as u64) << 32 ^ index ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in out[28..BLOCK_SIZE - 8].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let sum = fnv1a(&out[..BLOCK_SIZE - 8]);
    out[BLOCK_SIZE - 8..].copy_from_slice(&sum.to_le_bytes());
}

/// Fills block `index` of a generated file as rewritten for the
/// `version`th time: version 0 is exactly [`fill_block`]; a later version
/// keeps the header and checksum layout, seeds the stream with the version
/// too and stores the version in bytes 28..36, so a reader that knows
/// which version it must find can tell a lost write from a kept one.
pub fn fill_block_version(
    file_id: u32,
    index: u64,
    file_size: u64,
    version: u64,
    out: &mut [u8; BLOCK_SIZE],
) {
    fill_block(file_id, index, file_size, out);
    if version == 0 {
        return;
    }
    out[28..36].copy_from_slice(&version.to_le_bytes());
    let mut x = version.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ index ^ (file_id as u64) << 40;
    for chunk in out[36..BLOCK_SIZE - 8].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let sum = fnv1a(&out[..BLOCK_SIZE - 8]);
    out[BLOCK_SIZE - 8..].copy_from_slice(&sum.to_le_bytes());
}

/// The version a block that passes [`verify_block`] carries (0 for the
/// generated contents).
pub fn block_version(file_id: u32, index: u64, block: &[u8; BLOCK_SIZE]) -> u64 {
    let mut first = [0u8; BLOCK_SIZE];
    fill_block(file_id, index, 0, &mut first);
    if block[28..36] == first[28..36] {
        return 0;
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&block[28..36]);
    u64::from_le_bytes(v)
}

/// Why a block failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// Zeroes where data should be (a page lost by the host, say).
    Zeroed,
    BadMagic,
    WrongFile {
        found: u32,
    },
    WrongIndex {
        found: u64,
    },
    BadChecksum,
}

/// Checks a block read back against what [`fill_block`] wrote for
/// (`file_id`, `index`). Cheap: the checksum covers the payload.
pub fn verify_block(file_id: u32, index: u64, block: &[u8; BLOCK_SIZE]) -> Result<(), BlockError> {
    if block[..8] != BLOCK_MAGIC {
        return Err(if block.iter().all(|&b| b == 0) {
            BlockError::Zeroed
        } else {
            BlockError::BadMagic
        });
    }
    let found = u32::from_le_bytes([block[8], block[9], block[10], block[11]]);
    if found != file_id {
        return Err(BlockError::WrongFile { found });
    }
    let mut idx = [0u8; 8];
    idx.copy_from_slice(&block[12..20]);
    let found = u64::from_le_bytes(idx);
    if found != index {
        return Err(BlockError::WrongIndex { found });
    }
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&block[BLOCK_SIZE - 8..]);
    if u64::from_le_bytes(sum) != fnv1a(&block[..BLOCK_SIZE - 8]) {
        return Err(BlockError::BadChecksum);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_blocks_verify_and_corruption_is_caught() {
        let mut b = [0u8; BLOCK_SIZE];
        assert_eq!(verify_block(1, 0, &b), Err(BlockError::Zeroed));
        fill_block(7, 3, 40960, &mut b);
        assert_eq!(verify_block(7, 3, &b), Ok(()));
        assert_eq!(
            verify_block(8, 3, &b),
            Err(BlockError::WrongFile { found: 7 })
        );
        assert_eq!(
            verify_block(7, 4, &b),
            Err(BlockError::WrongIndex { found: 3 })
        );
        b[2000] ^= 1;
        assert_eq!(verify_block(7, 3, &b), Err(BlockError::BadChecksum));
    }

    #[test]
    fn rewritten_versions_verify_and_tell_themselves_apart() {
        let mut b = [0u8; BLOCK_SIZE];
        fill_block_version(7, 3, 8192, 0, &mut b);
        let mut g = [0u8; BLOCK_SIZE];
        fill_block(7, 3, 8192, &mut g);
        assert_eq!(b, g);
        assert_eq!(block_version(7, 3, &b), 0);
        for v in [1u64, 2, 1 << 40] {
            fill_block_version(7, 3, 8192, v, &mut b);
            assert_eq!(verify_block(7, 3, &b), Ok(()));
            assert_eq!(block_version(7, 3, &b), v);
            assert_ne!(b, g);
        }
    }

    #[test]
    fn blocks_differ_between_files_and_indices() {
        let (mut a, mut b) = ([0u8; BLOCK_SIZE], [0u8; BLOCK_SIZE]);
        fill_block(1, 0, 0, &mut a);
        fill_block(1, 1, 0, &mut b);
        assert_ne!(a[100..200], b[100..200]);
        fill_block(2, 0, 0, &mut b);
        assert_ne!(a[100..200], b[100..200]);
    }

    #[test]
    fn names_stop_at_the_first_nul() {
        let mut e = DirEntry::default();
        e.name[..5].copy_from_slice(b"a.bin");
        assert_eq!(e.name(), Some("a.bin"));
        e.size = 4097;
        assert_eq!(e.blocks(), 2);
    }
}
